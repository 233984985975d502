/// Loader for the CIFAR-10 binary version: 3×32×32 images, 10 classes.
///
/// Each record is 1 label byte then 3072 pixel bytes: the red plane, the green plane, the blue
/// plane, each 32×32 row-major — already CHW.
public enum CIFAR10 {
    /// Number of classes.
    public static let numClasses = 10
    /// Class names, indexed by label.
    public static let classNames = ["airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck"]
    /// Shape of one sample, `[C, H, W]`.
    public static let sampleShape = [3, 32, 32]
    /// Bytes per record: one label byte and 3·32·32 pixel bytes.
    public static let recordBytes = 1 + 3 * 32 * 32

    /// The files of a split, in reading order.
    public static func fileNames(for split: DataSplit) -> [String] {
        split == .train ? (1...5).map { "data_batch_\($0).bin" } : ["test_batch.bin"]
    }

    /// The records of one CIFAR-10 binary file's bytes (already gunzipped): each record's 3072
    /// pixel bytes, concatenated, and its label; at most `limit` records. `path` only names the
    /// file in errors.
    /// - Throws: ``DataError/truncated(path:expectedBytes:actualBytes:)`` for an empty file or one
    ///   that is not a whole number of records, ``DataError/labelOutOfRange(path:index:value:numClasses:)``.
    public static func parseRecords(_ bytes: [UInt8], path: String,
                                    limit: Int = Int.max) throws(DataError) -> (pixels: [UInt8], labels: [Int32]) {
        guard !bytes.isEmpty, bytes.count % recordBytes == 0 else {
            let records = bytes.count / recordBytes + 1
            throw .truncated(path: path, expectedBytes: records * recordBytes, actualBytes: bytes.count)
        }
        let take = min(bytes.count / recordBytes, max(limit, 0))
        var pixels: [UInt8] = []
        var labels: [Int32] = []
        pixels.reserveCapacity(take * (recordBytes - 1))
        labels.reserveCapacity(take)
        for r in 0..<take {
            let start = r * recordBytes
            let label = bytes[start]
            guard Int(label) < numClasses else {
                throw .labelOutOfRange(path: path, index: r, value: Int(label), numClasses: numClasses)
            }
            labels.append(Int32(label))
            pixels.append(contentsOf: bytes[(start + 1)..<(start + recordBytes)])
        }
        return (pixels, labels)
    }

    /// Loads a split as `[N, 3, 32, 32]` floats (pixels / 255) and labels in 0..<10.
    ///
    /// Every file of the split must exist (they may be gzipped); with `limit` (at least 1), reading
    /// stops once that many records are in.
    public static func load(directory: String, split: DataSplit, limit: Int? = nil) throws(DataError) -> InMemoryDataset {
        let name = "cifar10/\(split.rawValue)"
        try validateLimit(limit, dataset: name)
        guard FileBytes.isDirectory(directory) else { throw .missingDirectory(path: directory, dataset: "CIFAR-10") }
        let files = fileNames(for: split)
        let paths = files.map { FileBytes.join(directory, $0) }
        // Checked up front so a missing later file is reported even when `limit` would not reach it.
        if let missing = paths.firstIndex(where: { !FileBytes.exists($0) }) {
            throw .missingFile(directory: directory, file: files[missing], expected: files)
        }

        var pixels: [UInt8] = []
        var labels: [Int32] = []
        let wanted = limit ?? Int.max
        for path in paths where labels.count < wanted {
            let records = try parseRecords(FileBytes.read(path), path: path, limit: wanted - labels.count)
            pixels += records.pixels
            labels += records.labels
        }
        let n = labels.count
        let images = Tensor(pixelBytes: pixels, count: pixels.count, shape: [n] + sampleShape)
        return InMemoryDataset(unchecked: name, images: images, labels: labels, numClasses: numClasses)
    }
}
