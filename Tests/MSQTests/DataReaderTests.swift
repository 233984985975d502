import Foundation
import MSQ
import Testing

private typealias F = DataFixtures

@Suite("Data: IDX and Fashion-MNIST readers")
struct DataIDXReaderTests {
    @Test("IDX files round-trip through plain and gzip encodings", arguments: [false, true])
    func idxRoundTrip(compressed: Bool) throws {
        let dir = try F.temporaryDirectory()
        let labels: [UInt8] = [3, 0, 9, 1, 1]
        try F.writeIDXSplit(dir: dir, split: .train, labels: labels, compressed: compressed)
        let ds = try FashionMNIST.load(directory: dir, split: .train)
        #expect(ds.count == 5)
        #expect(ds.sampleShape == [1, 4, 3])
        #expect(ds.images.shape == [5, 1, 4, 3])
        #expect(ds.labels == labels.map(Int32.init))
        #expect(ds.numClasses == 10)
        #expect(ds.name == "fashion-mnist/train")
        for (n, y, x) in [(0, 0, 0), (2, 3, 1), (4, 1, 2)] {
            #expect(ds.images[flat: (n * 4 + y) * 3 + x] == Float(F.pixel(n, 0, y, x)) / 255)
        }
        let limited = try FashionMNIST.load(directory: dir, split: .train, limit: 2)
        #expect(limited.count == 2)
        #expect(limited.labels == [3, 0])
        #expect(limited.images.scalars == Array(ds.images.scalars.prefix(24)))
        #expect(try FashionMNIST.load(directory: dir, split: .train, limit: 99).count == 5)
        #expect(ds.prefix(3).labels == [3, 0, 9])

        let file = try IDXFile.read(path: dir + "/train-images-idx3-ubyte" + (compressed ? ".gz" : ""),
                                    expectedMagic: IDXFile.imagesMagic)
        #expect(file.dimensions == [5, 4, 3])
        #expect(file.magic == 0x0803)
        #expect(try IDXFile(parsing: file.serialized(), path: "x", expectedMagic: 0x0803) == file)
    }

    @Test("the plain file is used when both plain and gzipped files exist")
    func prefersPlain() throws {
        let dir = try F.temporaryDirectory()
        try F.writeIDXSplit(dir: dir, split: .test, labels: [1, 2], compressed: true)
        try F.writeIDXSplit(dir: dir, split: .test, labels: [7, 8, 9], compressed: false)
        #expect(try FashionMNIST.load(directory: dir, split: .test).labels == [7, 8, 9])
    }

    @Test("a missing directory or file names what is missing")
    func missing() throws {
        let dir = try F.temporaryDirectory()
        #expect(throws: DataError.missingDirectory(path: dir + "/nope", dataset: "Fashion-MNIST")) {
            try FashionMNIST.load(directory: dir + "/nope", split: .test)
        }
        try F.writeIDXSplit(dir: dir, split: .test, labels: [1], compressed: false)
        try FileManager.default.removeItem(atPath: dir + "/t10k-labels-idx1-ubyte")
        let error = F.dataError { _ = try FashionMNIST.load(directory: dir, split: .test) }
        #expect(error == .missingFile(directory: dir, file: "t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz",
                                      expected: ["t10k-images-idx3-ubyte(.gz)", "t10k-labels-idx1-ubyte(.gz)"]))
        #expect(error?.description.contains("t10k-images-idx3-ubyte(.gz)") == true)
        // The train split's files are a different pair.
        #expect(throws: DataError.self) { try FashionMNIST.load(directory: dir, split: .train) }
    }

    @Test("a wrong magic number reports found and expected values")
    func badMagic() throws {
        let dir = try F.temporaryDirectory()
        try F.writeIDXSplit(dir: dir, split: .test, labels: [1, 2], compressed: false)
        // A label file where the image file should be.
        try FileManager.default.removeItem(atPath: dir + "/t10k-images-idx3-ubyte")
        try FileManager.default.copyItem(atPath: dir + "/t10k-labels-idx1-ubyte", toPath: dir + "/t10k-images-idx3-ubyte")
        let error = F.dataError { _ = try FashionMNIST.load(directory: dir, split: .test) }
        #expect(error == .badMagic(path: dir + "/t10k-images-idx3-ubyte", found: 0x0801, expected: 0x0803))
        #expect(error?.description.contains("0x00000801") == true)
        #expect(error?.description.contains("0x00000803") == true)
    }

    @Test("a truncated plain file reports expected and actual sizes")
    func truncatedPlain() throws {
        let dir = try F.temporaryDirectory()
        try F.writeIDXSplit(dir: dir, split: .test, labels: [1, 2, 3], compressed: false)
        let path = dir + "/t10k-images-idx3-ubyte"
        let bytes = try F.bytes(path)
        #expect(bytes.count == 16 + 36)
        try F.write(Array(bytes.dropLast(5)), to: path)
        #expect(throws: DataError.truncated(path: path, expectedBytes: 52, actualBytes: 47)) {
            try FashionMNIST.load(directory: dir, split: .test)
        }
        // Cut inside the header.
        try F.write(Array(bytes.prefix(9)), to: path)
        #expect(throws: DataError.truncated(path: path, expectedBytes: 16, actualBytes: 9)) {
            try FashionMNIST.load(directory: dir, split: .test)
        }
        // Extra bytes after the data contradict the header.
        try F.write(bytes + [0, 0], to: path)
        let error = F.dataError { _ = try FashionMNIST.load(directory: dir, split: .test) }
        guard case .inconsistentHeader(let p, _)? = error else {
            Issue.record("expected inconsistentHeader, got \(String(describing: error))")
            return
        }
        #expect(p == path)
    }

    @Test("a truncated or corrupted gzip file is refused as corrupt gzip")
    func truncatedGzip() throws {
        let dir = try F.temporaryDirectory()
        try F.writeIDXSplit(dir: dir, split: .test, labels: Array(repeating: 4, count: 50), rows: 28, cols: 28,
                            compressed: true)
        let path = dir + "/t10k-images-idx3-ubyte.gz"
        let bytes = try F.bytes(path)
        try F.write(Array(bytes.prefix(bytes.count / 2)), to: path)
        let error = F.dataError { _ = try FashionMNIST.load(directory: dir, split: .test) }
        guard case .corruptGzip(let p, _)? = error else {
            Issue.record("expected corruptGzip, got \(String(describing: error))")
            return
        }
        #expect(p == path)
        #expect(error?.description.contains(path) == true)

        var flipped = bytes
        flipped[bytes.count - 6] ^= 0xFF  // inside the CRC/length trailer
        try F.write(flipped, to: path)
        let crc = F.dataError { _ = try FashionMNIST.load(directory: dir, split: .test) }
        guard case .corruptGzip? = crc else {
            Issue.record("expected corruptGzip for a bad trailer, got \(String(describing: crc))")
            return
        }
    }

    @Test("a label out of range names the file, index, value and class count")
    func labelOutOfRange() throws {
        let dir = try F.temporaryDirectory()
        try F.writeIDXSplit(dir: dir, split: .train, labels: [1, 2, 10, 3], compressed: true)
        let path = dir + "/train-labels-idx1-ubyte.gz"
        #expect(throws: DataError.labelOutOfRange(path: path, index: 2, value: 10, numClasses: 10)) {
            try FashionMNIST.load(directory: dir, split: .train)
        }
        // Samples beyond the limit are never decoded.
        #expect(try FashionMNIST.load(directory: dir, split: .train, limit: 2).count == 2)
    }

    @Test("image and label files with different counts are refused")
    func countMismatch() throws {
        let dir = try F.temporaryDirectory()
        try F.writeIDXSplit(dir: dir, split: .test, labels: [1, 2, 3], compressed: false)
        try IDXFile(dimensions: [2], data: [1, 2]).write(to: dir + "/t10k-labels-idx1-ubyte", compressed: false)
        #expect(throws: DataError.countMismatch(imagesPath: dir + "/t10k-images-idx3-ubyte", images: 3,
                                                labelsPath: dir + "/t10k-labels-idx1-ubyte", labels: 2)) {
            try FashionMNIST.load(directory: dir, split: .test)
        }
    }

    @Test("a limit below 1 is a bad argument")
    func badLimit() throws {
        let dir = try F.temporaryDirectory()
        try F.writeIDXSplit(dir: dir, split: .test, labels: [1], compressed: false)
        for limit in [0, -3] {
            let error = F.dataError { _ = try FashionMNIST.load(directory: dir, split: .test, limit: limit) }
            guard case .invalidArgument(let message)? = error else {
                Issue.record("expected invalidArgument, got \(String(describing: error))")
                continue
            }
            #expect(message.contains("limit"))
        }
        #expect(throws: DataError.self) { try IDXFile(dimensions: [2, 2], data: [1, 2, 3]) }
    }
}

@Suite("Data: CIFAR-10 reader")
struct DataCIFARReaderTests {
    private func writeCIFAR(_ dir: String, perFile: Int = 3) throws {
        for b in 1...5 {
            let labels = (0..<perFile).map { UInt8((b + $0) % 10) }
            try F.write(F.cifarRecords(labels: labels, first: (b - 1) * perFile), to: "\(dir)/data_batch_\(b).bin")
        }
        try F.write(F.cifarRecords(labels: [9, 0], first: 100), to: dir + "/test_batch.bin")
    }

    @Test("records decode to CHW planes in file order")
    func layout() throws {
        let dir = try F.temporaryDirectory()
        try writeCIFAR(dir)
        let train = try CIFAR10.load(directory: dir, split: .train)
        #expect(train.count == 15)
        #expect(train.images.shape == [15, 3, 32, 32])
        #expect(train.labels == (1...5).flatMap { b in (0..<3).map { Int32((b + $0) % 10) } })
        // Image 7 (the second of data_batch_3), green plane, row 5, column 30.
        let (n, c, y, x) = (7, 1, 5, 30)
        #expect(train.images[flat: ((n * 3 + c) * 32 + y) * 32 + x] == Float(F.pixel(n, c, y, x)) / 255)
        #expect(train.images[flat: ((n * 3 + 2) * 32 + 0) * 32 + 0] == Float(F.pixel(n, 2, 0, 0)) / 255)

        let test = try CIFAR10.load(directory: dir, split: .test)
        #expect(test.labels == [9, 0])
        #expect(test.sample(1).scalars[3 * 1024 - 1] == Float(F.pixel(101, 2, 31, 31)) / 255)

        let limited = try CIFAR10.load(directory: dir, split: .train, limit: 4)
        #expect(limited.count == 4)
        #expect(limited.images.scalars == Array(train.images.scalars.prefix(4 * 3072)))
    }

    @Test("missing files, bad sizes and bad labels are reported with the file")
    func errors() throws {
        let dir = try F.temporaryDirectory()
        #expect(throws: DataError.missingDirectory(path: dir + "/x", dataset: "CIFAR-10")) {
            try CIFAR10.load(directory: dir + "/x", split: .train)
        }
        try writeCIFAR(dir)
        try FileManager.default.removeItem(atPath: dir + "/data_batch_4.bin")
        #expect(throws: DataError.missingFile(directory: dir, file: "data_batch_4.bin",
                                              expected: CIFAR10.fileNames(for: .train))) {
            try CIFAR10.load(directory: dir, split: .train, limit: 1)
        }

        let path = dir + "/test_batch.bin"
        let bytes = try F.bytes(path)
        try F.write(Array(bytes.dropLast(100)), to: path)
        #expect(throws: DataError.truncated(path: path, expectedBytes: 2 * 3073, actualBytes: 2 * 3073 - 100)) {
            try CIFAR10.load(directory: dir, split: .test)
        }
        try F.write([], to: path)
        #expect(throws: DataError.truncated(path: path, expectedBytes: 3073, actualBytes: 0)) {
            try CIFAR10.load(directory: dir, split: .test)
        }
        try F.write(F.cifarRecords(labels: [3, 12], first: 0), to: path)
        #expect(throws: DataError.labelOutOfRange(path: path, index: 1, value: 12, numClasses: 10)) {
            try CIFAR10.load(directory: dir, split: .test)
        }
        #expect(throws: DataError.self) { try CIFAR10.load(directory: dir, split: .test, limit: 0) }
    }
}
