import Foundation
import MSQ
import Testing

/// Data, output directories and divergence: each refused before the first step with a message
/// naming the split, path or layer, never trained into a wrong number (issue 14).
@Suite("Reliability: data, output directory, non-finite guard")
struct ReliabilityDataTests {
    /// The message of a ``TrainingError/incompatibleData(_:)`` or ``TrainingError/outputDirectory(_:)``.
    func trainingMessage(_ body: () throws -> Void) -> String? {
        switch thrownError(body) as? TrainingError {
        case let .incompatibleData(m)?, let .outputDirectory(m)?: return m
        default: return nil
        }
    }

    @Test("a test split of 4×4 or 2×2 images beside 8×8 training images is refused before training")
    func testShapeMismatch() throws {
        for side in [4, 2] {
            var run = try SmallRun()
            run.test = try SyntheticDataset(count: 20, sampleShape: [1, side, side], numClasses: 4, seed: 2, name: "small/test")
            let dir = freshDirectory()
            let message = trainingMessage { try run.trainer(out: dir).run(resume: false) }
            #expect(message?.contains("small/test has images of shape [1, \(side), \(side)]") == true, "\(message ?? "none")")
            #expect(!FileManager.default.fileExists(atPath: dir))
        }
    }

    @Test("images smaller than 8×8 are refused, as the README says")
    func tinyImages() throws {
        for side in [1, 4] {
            var run = try SmallRun()
            run.train = try SyntheticDataset(count: 40, sampleShape: [1, side, side], numClasses: 4, seed: 1, name: "tiny/train")
            run.test = try SyntheticDataset(count: 20, sampleShape: [1, side, side], numClasses: 4, seed: 2, name: "tiny/test")
            let message = trainingMessage { try run.trainer(out: freshDirectory()).run(resume: false) }
            #expect(message?.contains("\(side)×\(side) images; every model needs at least 8×8") == true, "\(message ?? "none")")
        }
    }

    @Test("a class count that differs between the splits is refused")
    func classMismatch() throws {
        var run = try SmallRun()
        run.test = try SyntheticDataset(count: 20, sampleShape: [1, 8, 8], numClasses: 3, seed: 2, name: "other/test")
        #expect(trainingMessage { try run.trainer(out: freshDirectory()).run(resume: false) }?.contains("3 classes") == true)
    }

    @Test("a test split with 0 images (IDX files holding none) is refused before training")
    func emptyTestSplit() throws {
        let data = try DataFixtures.temporaryDirectory()
        try DataFixtures.writeIDXSplit(dir: data, split: .train, labels: Array(repeating: 1, count: 20), rows: 8, cols: 8, compressed: false)
        try DataFixtures.writeIDXSplit(dir: data, split: .test, labels: [], rows: 8, cols: 8, compressed: false)
        var run = try SmallRun()
        run.train = try FashionMNIST.load(directory: data, split: .train)
        run.test = try FashionMNIST.load(directory: data, split: .test)
        let dir = freshDirectory()
        let message = trainingMessage { try run.trainer(out: dir).run(resume: false) }
        #expect(message?.contains("fashion-mnist/test has no images") == true, "\(message ?? "none")")
        #expect(!FileManager.default.fileExists(atPath: dir))
    }

    @Test("a directory where a dataset file should be is named as a directory, not as corrupt gzip")
    func directoryAsDataFile() throws {
        let data = try DataFixtures.temporaryDirectory()
        try DataFixtures.writeIDXSplit(dir: data, split: .train, labels: [1, 2], rows: 8, cols: 8, compressed: false)
        let images = data + "/" + FashionMNIST.fileNames(for: .train).images
        try FileManager.default.removeItem(atPath: images)
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: false)
        let error = DataFixtures.dataError { _ = try FashionMNIST.load(directory: data, split: .train) }
        #expect(error == .unreadable(path: images, reason: "it is a directory, not a data file"))
    }

    @Test("an --out below a regular file is refused naming the path and the system's reason")
    func outBelowAFile() throws {
        let base = freshDirectory()
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: base + "/afile"))
        let message = trainingMessage { try SmallRun().trainer(out: base + "/afile/sub").run(resume: false) }
        #expect(message == "cannot create the output directory \(base)/afile/sub: \(base)/afile is not a directory")
    }

    #if os(Linux)
    @Test("an existing directory that cannot be written is refused before the first step")
    func unwritableOut() throws {
        // /sys/kernel refuses new files even to root, unlike a chmod 555 directory.
        let message = trainingMessage { try SmallRun().trainer(out: "/sys/kernel").run(resume: false) }
        #expect(message == "the output directory /sys/kernel is not writable: Permission denied")
    }
    #endif

    @Test("a loss that turns NaN stops the run naming the step and the first non-finite weight; the last checkpoint stays")
    func nonFiniteGuard() throws {
        let run = try SmallRun(epochs: 3)
        let dir = freshDirectory()
        // 3 steps per epoch: global step index 4 is epoch 2's second step; the poisoned weight
        // makes the loss of its third step (the run's sixth) NaN.
        let method = PoisonGradient(parameterName: "layer2.0.conv1.weight", poisonStep: 4)
        let error = thrownError { try run.trainer(out: dir, method: method).run(resume: false) }
        guard case let .nonFinite(epoch, step, globalStep, loss, culprit)? = error as? TrainingError else {
            Issue.record("expected nonFinite, got \(String(describing: error))")
            return
        }
        #expect((epoch, step, globalStep) == (2, 3, 6))
        #expect(loss.isNaN)
        #expect(culprit == "the first parameter with a non-finite weight is layer2.0.conv1.weight")
        #expect(error.map { String(describing: $0) }?.contains("The checkpoint of epoch 1 was kept") == true)
        let kept = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        #expect(kept.header.epochsCompleted == 1)
        let metrics = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 1)
    }

    @Test("summary and metrics write non-finite numbers as null instead of failing")
    func jsonNonFinite() throws {
        let path = freshDirectory() + ".json"
        try writeJSON(["loss": Double.nan, "nested": ["x": Double.infinity], "ok": 1.5], to: path)
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
        #expect(object?["loss"] is NSNull)
        #expect((object?["nested"] as? [String: Any])?["x"] is NSNull)
        #expect(object?["ok"] as? Double == 1.5)
    }

    @Test("CIFAR10.parseRecords (the loader's and the fuzz harness's parser) takes whole records up to a limit")
    func cifarParseRecords() throws {
        let bytes = DataFixtures.cifarRecords(labels: [3, 9, 0], first: 0)
        let all = try CIFAR10.parseRecords(bytes, path: "b")
        #expect(all.labels == [3, 9, 0] && all.pixels.count == 3 * 3072)
        #expect(Array(all.pixels.prefix(3072)) == Array(bytes[1..<3073]))
        #expect(try CIFAR10.parseRecords(bytes, path: "b", limit: 2).labels == [3, 9])
        #expect(throws: DataError.truncated(path: "b", expectedBytes: 3 * 3073, actualBytes: 3 * 3073 - 1)) {
            _ = try CIFAR10.parseRecords(Array(bytes.dropLast()), path: "b")
        }
        var bad = bytes
        bad[3073] = 10
        #expect(throws: DataError.labelOutOfRange(path: "b", index: 1, value: 10, numClasses: 10)) {
            _ = try CIFAR10.parseRecords(bad, path: "b")
        }
    }
}
