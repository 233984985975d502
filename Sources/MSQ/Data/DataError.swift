/// Why a data set could not be loaded or iterated, in words a user can act on.
///
/// Every case names the file (or data set) and the problem; readers never trap on bad input and
/// never return partially decoded data.
public enum DataError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The data set directory does not exist.
    case missingDirectory(path: String, dataset: String)
    /// A file the data set needs is absent; `expected` lists every file name the split needs.
    case missingFile(directory: String, file: String, expected: [String])
    /// The file exists but cannot be opened or read (permissions, I/O error, out of memory).
    case unreadable(path: String, reason: String)
    /// The file is gzip-compressed but its stream is corrupt or cut short.
    case corruptGzip(path: String, reason: String)
    /// The file does not start with the magic number of the expected IDX kind.
    case badMagic(path: String, found: UInt32, expected: UInt32)
    /// The file is shorter than its header (or record size) requires.
    case truncated(path: String, expectedBytes: Int, actualBytes: Int)
    /// The header's dimensions contradict each other or the file's size.
    case inconsistentHeader(path: String, reason: String)
    /// The image file and the label file disagree on the number of samples.
    case countMismatch(imagesPath: String, images: Int, labelsPath: String, labels: Int)
    /// A label is not in `0..<numClasses`; `path` is the file (or data set name) holding it.
    case labelOutOfRange(path: String, index: Int, value: Int, numClasses: Int)
    /// An argument is out of range (a limit or batch size below 1, mismatched shapes, …).
    case invalidArgument(String)
    /// Writing a file failed.
    case writeFailed(path: String, reason: String)

    /// A one-line message naming the file and the problem.
    public var description: String {
        switch self {
        case let .missingDirectory(path, dataset):
            return "\(dataset) directory \(path) does not exist"
        case let .missingFile(directory, file, expected):
            return "\(directory) has no \(file); this split needs: \(expected.joined(separator: ", "))"
        case let .unreadable(path, reason):
            return "cannot read \(path): \(reason)"
        case let .corruptGzip(path, reason):
            return "\(path) is a corrupt or truncated gzip file (\(reason)); download it again"
        case let .badMagic(path, found, expected):
            return "\(path) has magic number \(hex(found)), expected \(hex(expected)); wrong file or not an IDX file"
        case let .truncated(path, expectedBytes, actualBytes):
            return "\(path) is truncated: expected \(expectedBytes) bytes, found \(actualBytes)"
        case let .inconsistentHeader(path, reason):
            return "\(path) has an inconsistent header: \(reason)"
        case let .countMismatch(imagesPath, images, labelsPath, labels):
            return "\(imagesPath) holds \(images) images but \(labelsPath) holds \(labels) labels"
        case let .labelOutOfRange(path, index, value, numClasses):
            return "\(path): label \(value) of sample \(index) is out of range 0..<\(numClasses)"
        case let .invalidArgument(message):
            return message
        case let .writeFailed(path, reason):
            return "cannot write \(path): \(reason)"
        }
    }
}

private func hex(_ v: UInt32) -> String {
    let digits = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
