import Foundation
import MSQ

/// Fixture builders shared by the Data* test files.
enum DataFixtures {
    /// A fresh empty directory under the system temporary directory.
    static func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "msq-data-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A deterministic pixel value for image `n`, row `y`, column `x` (channel `c` for colour).
    static func pixel(_ n: Int, _ c: Int, _ y: Int, _ x: Int) -> UInt8 {
        UInt8((n * 37 + c * 101 + y * 11 + x * 3) % 256)
    }

    /// Writes an MNIST-style split of `labels.count` images of `rows × cols` into `dir`.
    static func writeIDXSplit(dir: String, split: DataSplit, labels: [UInt8], rows: Int = 4, cols: Int = 3,
                              compressed: Bool) throws {
        let n = labels.count
        var pixels: [UInt8] = []
        for i in 0..<n {
            for y in 0..<rows {
                for x in 0..<cols { pixels.append(pixel(i, 0, y, x)) }
            }
        }
        let names = FashionMNIST.fileNames(for: split)
        let suffix = compressed ? ".gz" : ""
        try IDXFile(dimensions: [n, rows, cols], data: pixels)
            .write(to: dir + "/" + names.images + suffix, compressed: compressed)
        try IDXFile(dimensions: [n], data: labels).write(to: dir + "/" + names.labels + suffix, compressed: compressed)
    }

    /// The bytes of a CIFAR-10 binary file holding `labels.count` records; `first` numbers the images.
    static func cifarRecords(labels: [UInt8], first: Int) -> [UInt8] {
        var out: [UInt8] = []
        for (r, label) in labels.enumerated() {
            out.append(label)
            for c in 0..<3 {
                for y in 0..<32 {
                    for x in 0..<32 { out.append(pixel(first + r, c, y, x)) }
                }
            }
        }
        return out
    }

    /// Reads a file's raw bytes.
    static func bytes(_ path: String) throws -> [UInt8] { try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) }

    /// Writes raw bytes to a file.
    static func write(_ bytes: [UInt8], to path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

    /// The error `body` throws, if it is a ``DataError``.
    static func dataError(_ body: () throws -> Void) -> DataError? {
        do {
            try body()
            return nil
        } catch {
            return error as? DataError
        }
    }
}
