/// An IDX file of unsigned bytes (the MNIST family's format), gzipped or plain.
///
/// Layout: a big-endian UInt32 magic `0x0000_08nn` (`08` = unsigned byte, `nn` = number of
/// dimensions), `nn` big-endian UInt32 dimensions, then the row-major data. Other element types are
/// refused as a wrong magic number.
public struct IDXFile: Sendable, Equatable {
    /// Magic number of an image file: unsigned bytes, 3 dimensions `[N, rows, cols]`.
    public static let imagesMagic: UInt32 = 0x0000_0803
    /// Magic number of a label file: unsigned bytes, 1 dimension `[N]`.
    public static let labelsMagic: UInt32 = 0x0000_0801

    /// Extent of each dimension, outermost first.
    public let dimensions: [Int]
    /// The data bytes, row-major; `dimensions.reduce(1, *)` of them.
    public let data: [UInt8]

    /// The magic number this file carries: `0x0000_0800 | dimensions.count`.
    public var magic: UInt32 { 0x0000_0800 | UInt32(dimensions.count) }

    /// An IDX file from its dimensions (1 to 255 of them) and row-major data.
    public init(dimensions: [Int], data: [UInt8]) throws(DataError) {
        guard (1...255).contains(dimensions.count) else {
            throw .invalidArgument("IDX: need 1 to 255 dimensions, got \(dimensions.count)")
        }
        guard dimensions.allSatisfy({ $0 >= 0 && $0 <= Int(UInt32.max) }) else {
            throw .invalidArgument("IDX: every dimension must fit in a UInt32, got \(dimensions)")
        }
        guard dimensions.reduce(1, *) == data.count else {
            throw .invalidArgument("IDX: dimensions \(dimensions) need \(dimensions.reduce(1, *)) bytes, got \(data.count)")
        }
        self.dimensions = dimensions
        self.data = data
    }

    /// Parses the bytes of an IDX file; `path` only names the file in errors.
    public init(parsing bytes: [UInt8], path: String, expectedMagic: UInt32) throws(DataError) {
        guard bytes.count >= 4 else { throw .truncated(path: path, expectedBytes: 4, actualBytes: bytes.count) }
        let found = IDXFile.bigEndian(bytes, at: 0)
        guard found == expectedMagic else { throw .badMagic(path: path, found: found, expected: expectedMagic) }
        let rank = Int(found & 0xFF)
        let headerBytes = 4 + 4 * rank
        guard bytes.count >= headerBytes else {
            throw .truncated(path: path, expectedBytes: headerBytes, actualBytes: bytes.count)
        }
        let dims = (0..<rank).map { Int(IDXFile.bigEndian(bytes, at: 4 + 4 * $0)) }
        var payload = 1
        for d in dims {
            let (p, overflow) = payload.multipliedReportingOverflow(by: d)
            guard !overflow, p <= Int.max - headerBytes else {
                throw .inconsistentHeader(path: path, reason: "dimensions \(dims) describe more bytes than any file holds")
            }
            payload = p
        }
        let expected = headerBytes + payload
        if bytes.count < expected {
            throw .truncated(path: path, expectedBytes: expected, actualBytes: bytes.count)
        }
        if bytes.count > expected {
            throw .inconsistentHeader(
                path: path,
                reason: "dimensions \(dims) account for \(expected) bytes but the file holds \(bytes.count)")
        }
        dimensions = dims
        data = Array(bytes[headerBytes...])
    }

    /// Reads and parses `path` (gzipped or plain), requiring `expectedMagic`.
    public static func read(path: String, expectedMagic: UInt32) throws(DataError) -> IDXFile {
        try IDXFile(parsing: FileBytes.read(path), path: path, expectedMagic: expectedMagic)
    }

    /// The file's bytes: magic, dimensions, data.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + 4 * dimensions.count + data.count)
        for word in [magic] + dimensions.map({ UInt32($0) }) {
            out += [UInt8(word >> 24), UInt8((word >> 16) & 0xFF), UInt8((word >> 8) & 0xFF), UInt8(word & 0xFF)]
        }
        out += data
        return out
    }

    /// Writes the file to `path`, gzip-compressed when `compressed` is true.
    public func write(to path: String, compressed: Bool) throws(DataError) {
        try FileBytes.write(serialized(), to: path, compressed: compressed)
    }

    private static func bigEndian(_ b: [UInt8], at i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }
}
