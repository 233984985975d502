import Foundation
import MSQ
import Testing

private func temporaryDirectory() throws -> String {
    let dir = NSTemporaryDirectory() + "msq-ckpt-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

private func sampleCheckpoint() -> Checkpoint {
    var rng = RandomSource(seed: 7)
    let a = Tensor.randomNormal([3, 5], std: 1, using: &rng)
    // Extreme but finite values: a checkpoint holding NaN or infinity is refused on load.
    let b = Tensor(shape: [4], scalars: [1, -2, .greatestFiniteMagnitude, -0.0])
    let header = Checkpoint.Header(
        runFingerprint: "model=x", runDescription: ["model": "x"], epochsCompleted: 2, globalStep: 17,
        trainSeconds: 1.5, trainImagesSeen: 200, rngState: [1, 2, 3, 4], methodState: "{\"k\":1}",
        tensors: [CheckpointTensor(name: "a", shape: [3, 5]), CheckpointTensor(name: "b", shape: [4])])
    return Checkpoint(header: header, tensorData: [a, b])
}

@Suite("Checkpoint")
struct CheckpointTests {
    @Test("write then read gives back the same header and bits")
    func roundTrip() throws {
        let path = try temporaryDirectory() + "/c.msqckpt"
        let ckpt = sampleCheckpoint()
        try ckpt.write(to: path)
        let back = try Checkpoint.read(from: path)
        #expect(back.header == ckpt.header)
        #expect(back.tensorData.map(\.scalars) == ckpt.tensorData.map(\.scalars))
        #expect(back.tensor(named: "b")?.shape == [4])
        // No temporary file is left behind by the atomic write.
        let files = try FileManager.default.contentsOfDirectory(atPath: (path as NSString).deletingLastPathComponent)
        #expect(files == ["c.msqckpt"])
    }

    @Test("a flipped byte, a truncated file and a foreign file are refused with a message")
    func corruption() throws {
        let dir = try temporaryDirectory()
        let path = dir + "/c.msqckpt"
        try sampleCheckpoint().write(to: path)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))

        var flipped = bytes
        flipped[flipped.count - 20] ^= 0x01
        try Data(flipped).write(to: URL(fileURLWithPath: dir + "/flipped"))
        #expect(throws: CheckpointError.self) { try Checkpoint.read(from: dir + "/flipped") }
        do {
            _ = try Checkpoint.read(from: dir + "/flipped")
        } catch {
            #expect(error.description.contains("checksum"))
        }

        bytes.removeLast(9)
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/short"))
        #expect(throws: CheckpointError.self) { try Checkpoint.read(from: dir + "/short") }

        try Data("hello, not a checkpoint".utf8).write(to: URL(fileURLWithPath: dir + "/foreign"))
        #expect(throws: CheckpointError.notACheckpoint(path: dir + "/foreign")) {
            try Checkpoint.read(from: dir + "/foreign")
        }
        #expect(throws: CheckpointError.self) { try Checkpoint.read(from: dir + "/missing") }
    }
}

@Suite("LearningRateSchedule")
struct LearningRateScheduleTests {
    @Test("warm-up rises linearly to the base rate, then cosine decays to the final rate")
    func shape() {
        let s = LearningRateSchedule(base: 0.1, final: 0, warmupSteps: 4, totalSteps: 14)
        #expect(abs(s.learningRate(at: 0) - 0.025) < 1e-12)
        #expect(abs(s.learningRate(at: 3) - 0.1) < 1e-12)
        #expect(abs(s.learningRate(at: 4) - 0.1) < 1e-12)
        #expect(abs(s.learningRate(at: 9) - 0.05) < 1e-12)
        #expect(s.learningRate(at: 13) < s.learningRate(at: 12))
        #expect(abs(s.learningRate(at: 14)) < 1e-12)
    }

    @Test("no warm-up starts at the base rate")
    func noWarmup() {
        let s = LearningRateSchedule(base: 0.2, warmupSteps: 0, totalSteps: 10)
        #expect(s.learningRate(at: 0) == 0.2)
    }
}

@Suite("TrainingConfig")
struct TrainingConfigTests {
    @Test("out-of-range options are rejected naming the option")
    func validation() {
        var c = TrainingConfig(model: "resnet20", dataset: "fashion-mnist", epochs: 0, batchSize: 8, learningRate: 0.1)
        #expect(throws: TrainingError.self) { try c.validate() }
        c.epochs = 1
        #expect(throws: Never.self) { try c.validate() }
        c.learningRate = -1
        do { try c.validate() } catch { #expect(error.description.contains("learningRate")) }
    }

    @Test("the fingerprint changes with the recipe")
    func fingerprint() {
        let a = TrainingConfig(model: "resnet20", dataset: "fashion-mnist", epochs: 3, batchSize: 8, learningRate: 0.1)
        var b = a
        #expect(a.fingerprint == b.fingerprint)
        b.seed = 1
        #expect(a.fingerprint != b.fingerprint)
    }
}
