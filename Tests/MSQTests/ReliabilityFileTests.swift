import Foundation
import MSQ
import Testing

/// Packed models with hostile but checksummed contents, and the files a killed run leaves
/// behind (issue 14, deliverables 1 and 4).
@Suite("Reliability: packed models and leftover files")
struct ReliabilityFileTests {
    /// A one-tensor model file: a float32 `bn1.running_var` of `values`, 4 classes, 1×8×8 inputs.
    func tinyPacked(values: [Float] = [1, 2], numClasses: Int = 4) throws -> PackedModel {
        let header = PackedModel.Header(
            model: "resnet20", dataset: "synthetic", inputShape: [1, 8, 8], numClasses: numClasses,
            normalization: Normalization(mean: [0.5], std: [0.3]), activationBits: nil, activationExcluded: [],
            source: [:], tensors: [.init(name: "bn1.running_var", shape: [values.count], kind: .float32, offset: 0, length: 4 * values.count)])
        var payload: [UInt8] = []
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { payload += $0 } }
        return try PackedModel(header: header, payload: payload)
    }

    @Test("a NaN in a float tensor of a checksummed .msqmodel is refused with the tensor's name")
    func nanInPackedModel() throws {
        var bytes = try tinyPacked().serialized()
        // The payload's last float sits just before the checksum.
        let at = bytes.count - 8 - 4
        withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { for i in 0..<4 { bytes[at + i] = $0[i] } }
        bytes.replaceSubrange((bytes.count - 8)..., with: withUnsafeBytes(of: testFNV1a64(bytes.dropLast(8)).littleEndian, Array.init))
        let error = thrownError { _ = try PackedModel(serialized: bytes, source: "m.msqmodel") }
        #expect(error as? PackedModelError == .corrupt(path: "m.msqmodel", reason: "float tensor bn1.running_var holds a NaN or infinite value at element 1"))
    }

    @Test("class counts and channels that would make the network unbuildable are refused before it is built")
    func hugeClassCount() throws {
        #expect(throws: PackedModelError.self) { _ = try tinyPacked(numClasses: 1 << 40) }
        _ = try tinyPacked(numClasses: 10)
    }

    @Test("evaluating on a split with no images is refused instead of printing NaN")
    func emptyEvaluationSplit() throws {
        let packed = try tinyPacked()
        let empty = try InMemoryDataset(name: "empty/test", images: Tensor(shape: [0, 1, 8, 8]), labels: [], numClasses: 4)
        #expect(throws: PackedModelError.incompatibleData(reason: "empty/test has no images: there is nothing to evaluate")) {
            try packed.checkCompatible(with: empty)
        }
    }

    @Test("startup removes dead runs' temporary checkpoints, and only those")
    func staleTemporaryCheckpoints() throws {
        let run = try SmallRun(epochs: 1)
        let dir = freshDirectory()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // PID 2^22 + 1 is above Linux's pid_max ceiling, so no process has it.
        let stale = dir + "/checkpoint.msqckpt.tmp-4194305"
        let live = dir + "/checkpoint.msqckpt.tmp-\(getpid() == 1 ? 2 : 1)"  // init (or kthreadd) is alive
        let others = [dir + "/checkpoint.msqckpt.tmp-12x", dir + "/notes.tmp-4194305", dir + "/checkpoint.msqckpt.tmp-"]
        for path in [stale, live] + others { try DataFixtures.write([1, 2, 3], to: path) }
        var lines: [String] = []
        try run.trainer(out: dir, log: { lines.append($0) }).run(resume: false)
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(lines.contains("removed a stale temporary checkpoint \(stale) (left by a killed run)"))
        for path in [live] + others { #expect(FileManager.default.fileExists(atPath: path), "\(path)") }
    }

    @Test("--resume without a checkpoint drops the metrics of the epochs it trains again")
    func resumeWithoutCheckpointTruncatesMetrics() throws {
        let run = try SmallRun(epochs: 2)
        let dir = freshDirectory()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // A run killed after epoch 1's metrics line but before its first checkpoint.
        try Data("{\"epoch\":1,\"test_accuracy\":0.5}\n".utf8).write(to: URL(fileURLWithPath: dir + "/metrics.jsonl"))
        try run.trainer(out: dir).run(resume: true)
        let lines = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let epochs = try lines.map { line -> Int in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return try #require(object?["epoch"] as? Int)
        }
        #expect(epochs == [1, 2])
        #expect(!lines.contains { $0.contains("\"test_accuracy\":0.5}") })
    }
}
