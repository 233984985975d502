import Foundation
import MSQ
import Testing

private struct TinyRun {
    let config: TrainingConfig
    let train: SyntheticDataset
    let test: SyntheticDataset
    let normalization = Normalization(mean: [0.5], std: [0.3])

    init(epochs: Int = 3, seed: UInt64 = 3) throws {
        var c = TrainingConfig(model: "resnet20", dataset: "synthetic", epochs: epochs, batchSize: 16, learningRate: 0.05)
        c.seed = seed
        c.threads = 2
        config = c
        train = try SyntheticDataset(count: 40, sampleShape: [1, 8, 8], numClasses: 4, seed: 1)
        test = try SyntheticDataset(count: 20, sampleShape: [1, 8, 8], numClasses: 4, seed: 1)
    }

    func trainer(out: String, method: TrainingMethod = FloatTraining(), config: TrainingConfig? = nil) -> Trainer {
        let c = config ?? self.config
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: c.seed)
        return Trainer(config: c, model: model, method: method, train: train, test: test,
                       normalization: normalization, outDirectory: out, log: { _ in })
    }
}

@Suite("Trainer", .serialized)
struct TrainerTests {
    @Test("a run interrupted mid-way and resumed ends with bit-identical weights")
    func resumeIsBitIdentical() throws {
        let run = try TinyRun()
        let reference = run.trainer(out: freshDirectory())
        try reference.run(resume: false)

        let dir = freshDirectory()
        let crashing = run.trainer(out: dir, method: CrashAfterEpoch(FloatTraining(), crashEpoch: 2))
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        let checkpoint = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        #expect(checkpoint.header.epochsCompleted == 1)

        let resumed = run.trainer(out: dir)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(reference.model))

        let metrics = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 3)
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/summary.json")))
        let fields = try #require(summary as? [String: Any])
        for key in ["model", "dataset", "method", "epochs", "train_images", "test_accuracy", "trainable_params",
                    "train_seconds", "images_per_second", "peak_rss_bytes", "seed"] {
            #expect(fields[key] != nil, "summary.json lacks \(key)")
        }
    }

    @Test("a checkpoint from another recipe is refused, naming the difference")
    func mismatchRefused() throws {
        let run = try TinyRun(epochs: 1)
        let dir = freshDirectory()
        try run.trainer(out: dir).run(resume: false)
        var other = run.config
        other.learningRate = 0.2
        do {
            try run.trainer(out: dir, config: other).run(resume: true)
            Issue.record("resume with another learning rate should be refused")
        } catch let error as CheckpointError {
            #expect(error.description.contains("lr"))
        }
    }

    @Test("an existing checkpoint is never overwritten without --resume")
    func noSilentOverwrite() throws {
        let run = try TinyRun(epochs: 1)
        let dir = freshDirectory()
        try run.trainer(out: dir).run(resume: false)
        #expect(throws: TrainingError.self) { try run.trainer(out: dir).run(resume: false) }
    }

    @Test("training lowers the loss on a learnable problem")
    func learns() throws {
        // Synthetic images carry a class-dependent pattern under noise; a few epochs must beat chance (0.25).
        let run = try TinyRun(epochs: 4)
        let trainer = run.trainer(out: freshDirectory())
        let summary = try trainer.run(resume: false)
        let accuracy = try #require(summary["test_accuracy"] as? Double)
        #expect(accuracy > 0.25)
    }
}
