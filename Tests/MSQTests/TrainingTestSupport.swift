import Foundation
import MSQ
import Testing

// Helpers shared by the training test suites (MSQ, the baselines, the trainer), kept in one place
// so that the resume tests of every method crash and compare the same way.

/// Wraps a method and throws after `crashEpoch`'s evaluation, before its checkpoint: a run killed
/// there must resume from the previous epoch's checkpoint.
final class CrashAfterEpoch: TrainingMethod {
    struct Crash: Error {}
    let inner: TrainingMethod
    let crashEpoch: Int
    init(_ inner: TrainingMethod, crashEpoch: Int) {
        self.inner = inner
        self.crashEpoch = crashEpoch
    }
    var name: String { inner.name }
    func prepare(model: Module, plan: TrainingPlan) throws { try inner.prepare(model: model, plan: plan) }
    func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
        try inner.afterBackward(model: model, epoch: epoch, step: step)
    }
    func afterStep(model: Module, step: Int) throws { try inner.afterStep(model: model, step: step) }
    func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
        if epoch == crashEpoch { throw Crash() }
        try inner.endOfEpoch(model: model, epoch: epoch, log: log)
    }
    func encodeState() throws -> String { try inner.encodeState() }
    func restoreState(_ json: String) throws { try inner.restoreState(json) }
    func summaryFields() -> [String: Any] { inner.summaryFields() }
}

/// The setup of the quantized methods' tiny runs: a ResNet-20 on 8×8 synthetic images (4 classes,
/// 48 training images: 3-step epochs at batch 16), seed 4, two threads.
struct TinyTrainingSetup {
    let train: SyntheticDataset
    let test: SyntheticDataset
    let normalization = Normalization(mean: [0.5], std: [0.3])
    var config: TrainingConfig

    init(method: String, epochs: Int) throws {
        train = try SyntheticDataset(count: 48, sampleShape: [1, 8, 8], numClasses: 4, seed: 1)
        test = try SyntheticDataset(count: 16, sampleShape: [1, 8, 8], numClasses: 4, seed: 2)
        config = TrainingConfig(model: "resnet20", dataset: "synthetic", epochs: epochs, batchSize: 16, learningRate: 0.05)
        config.method = method
        config.threads = 2
        config.seed = 4
    }

    /// A fresh model, seeded by the config.
    func makeModel() -> any Module { MSQ.makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: config.seed) }

    /// A trainer of `model` with `method` writing to `out`.
    func trainer(model: any Module, method: TrainingMethod, out: String, log: @escaping (String) -> Void) -> Trainer {
        Trainer(config: config, model: model, method: method, train: train, test: test,
                normalization: normalization, outDirectory: out, log: log)
    }
}

/// A new run directory under the system temporary directory (not created: the trainer does).
func freshDirectory() -> String { NSTemporaryDirectory() + "msq-run-\(UUID().uuidString)" }

/// Every parameter's values, for bit-for-bit comparisons of two runs.
func weights(_ model: Module) -> [[Float]] { model.namedParameters().map(\.parameter.value.scalars) }

/// Expects resuming with `trainer` to be refused by a ``CheckpointError`` naming `key`, the
/// fingerprint entry that differs from the checkpoint's; other errors propagate.
func expectResumeRefused(_ trainer: Trainer, naming key: String,
                         sourceLocation: SourceLocation = #_sourceLocation) throws {
    do {
        try trainer.run(resume: true)
        Issue.record("resume with other options should be refused", sourceLocation: sourceLocation)
    } catch let error as CheckpointError {
        #expect(error.description.contains(key), sourceLocation: sourceLocation)
    }
}
