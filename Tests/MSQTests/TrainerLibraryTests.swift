import Foundation
import MSQ
import Testing

// The Trainer as a library: no files without a directory, callbacks, an injected schedule and
// optimizer, the typed summary with summary.json's keys, the caller's thread count, and AdamW
// runs that resume bit for bit.

/// A float method whose summary fields hold every kind of value the methods write.
private final class FieldsMethod: TrainingMethod {
    static var fields: [String: Any] { [
        "compression_ratio": 10.67, "pruning_intervals": 3, "fixed_scheme": true, "bit_scheme": "conv1:8 fc:4",
        "final_phase_start_epoch": NSNull(), "hawq_traces": [1.5, 2.5],
        "layers": [["name": "conv1", "params": 432, "bits": 8] as [String: Any]],
        "final_lambda": Double.nan,
    ] }
    var name: String { "fp" }
    func prepare(model: Module, plan: TrainingPlan) throws {}
    func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double { 0 }
    func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {}
    func encodeState() throws -> String { "{}" }
    func restoreState(_ json: String) throws {}
    func summaryFields() -> [String: Any] { FieldsMethod.fields }
}

/// A constant learning rate that records the steps it was asked about.
private final class RecordingSchedule: LearningRateScheduling {
    let rate: Double
    var asked: [Int] = []
    init(rate: Double) { self.rate = rate }
    func learningRate(at step: Int) -> Double {
        asked.append(step)
        return rate
    }
}

/// The keys of summary.json for a float run before the typed summary (commit ed21f6f's Trainer).
private let floatSummaryKeys: Set<String> = [
    "model", "dataset", "method", "epochs", "batch_size", "lr", "train_images", "test_images", "test_accuracy",
    "test_loss", "trainable_params", "train_seconds", "images_per_second", "peak_rss_bytes", "seed", "threads",
]

/// The names in `directory`, sorted.
private func listing(_ directory: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
}

@Suite("Trainer as a library", .serialized)
struct TrainerLibraryTests {
    @Test("without an output directory the run writes no file, and resume is refused")
    func noDirectoryNoFiles() throws {
        // The working directory is where a relative path would land; it must stay empty.
        let scratch = freshDirectory()
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let previous = FileManager.default.currentDirectoryPath
        #expect(FileManager.default.changeCurrentDirectoryPath(scratch))
        defer { _ = FileManager.default.changeCurrentDirectoryPath(previous) }

        let run = try SmallRun(epochs: 2)
        let summary = try run.trainer(out: nil).run(resume: false)
        #expect(summary.epochs == 2)
        #expect(summary.testAccuracy.isFinite)
        #expect(try listing(scratch).isEmpty)
        #expect(throws: TrainingError.self) { try run.trainer(out: nil).run(resume: true) }
    }

    @Test("onStep fires once per step and onEpoch once per epoch, with running counters")
    func callbacks() throws {
        // 40 images at batch 16: 3 steps per epoch (16, 16, 8 images).
        let run = try SmallRun(epochs: 2)
        let trainer = run.trainer(out: nil)
        var steps: [StepReport] = []
        var epochs: [EpochReport] = []
        trainer.onStep = { steps.append($0) }
        trainer.onEpoch = { epochs.append($0) }
        let summary = try trainer.run(resume: false)
        #expect(steps.map(\.globalStep) == [1, 2, 3, 4, 5, 6])
        #expect(steps.map(\.epoch) == [1, 1, 1, 2, 2, 2])
        #expect(steps.map(\.step) == [1, 2, 3, 1, 2, 3])
        #expect(steps.map(\.batchSize) == [16, 16, 8, 16, 16, 8])
        #expect(steps.allSatisfy { $0.stepsInEpoch == 3 && $0.loss.isFinite && $0.learningRate > 0 })
        #expect(epochs.map(\.epoch) == [1, 2])
        #expect(epochs.map(\.globalStep) == [3, 6])
        #expect(epochs.last?.testAccuracy == summary.testAccuracy)
    }

    @Test("a throwing callback stops the run")
    func callbackStops() throws {
        struct Enough: Error {}
        let trainer = try SmallRun(epochs: 3).trainer(out: nil)
        var seen = 0
        trainer.onStep = { report in
            seen += 1
            if report.globalStep == 2 { throw Enough() }
        }
        #expect(throws: Enough.self) { try trainer.run(resume: false) }
        #expect(seen == 2)
    }

    @Test("an injected schedule sets every step's learning rate")
    func injectedSchedule() throws {
        let run = try SmallRun(epochs: 2)
        // Learning rate 0 and no momentum history: plain SGD leaves every trainable weight as it was.
        let schedule = RecordingSchedule(rate: 0)
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: run.config.seed)
        let before = model.namedParameters().filter(\.parameter.trainable).map(\.parameter.value.scalars)
        let trainer = Trainer(config: run.config, model: model, method: FloatTraining(), train: run.train, test: run.test,
                              normalization: run.normalization, outDirectory: nil, schedule: schedule, log: { _ in })
        var rates: [Double] = []
        trainer.onStep = { rates.append($0.learningRate) }
        try trainer.run(resume: false)
        #expect(Array(Set(schedule.asked)).sorted() == Array(0..<6))
        #expect(rates == Array(repeating: 0, count: 6))
        #expect(model.namedParameters().filter(\.parameter.trainable).map(\.parameter.value.scalars) == before)
    }

    @Test("an injected optimizer is used, and one over another model is refused")
    func injectedOptimizer() throws {
        let run = try SmallRun(epochs: 1)
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: run.config.seed)
        let adamW = AdamW(model: model, weightDecay: 0.01)
        let trainer = Trainer(config: run.config, model: model, method: FloatTraining(), train: run.train, test: run.test,
                              normalization: run.normalization, outDirectory: nil, optimizer: adamW, log: { _ in })
        let summary = try trainer.run(resume: false)
        #expect(adamW.steps == 3)
        #expect(summary.optimizer == "adamw")

        let stranger = AdamW(model: makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 9))
        let refused = Trainer(config: run.config, model: model, method: FloatTraining(), train: run.train, test: run.test,
                              normalization: run.normalization, outDirectory: nil, optimizer: stranger, log: { _ in })
        #expect(throws: TrainingError.self) { try refused.run(resume: false) }
    }

    @Test("the summary has summary.json's keys, the method's fields beside them, and round-trips")
    func summaryKeys() throws {
        let run = try SmallRun(epochs: 1)
        let dir = freshDirectory()
        let summary = try run.trainer(out: dir).run(resume: false)
        #expect(Set(summary.jsonObject.keys) == floatSummaryKeys)
        let written = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/summary.json")))
        #expect(Set(try #require(written as? [String: Any]).keys) == floatSummaryKeys)

        let withFields = try run.trainer(out: freshDirectory(), method: FieldsMethod()).run(resume: false)
        #expect(Set(withFields.jsonObject.keys) == floatSummaryKeys.union(FieldsMethod.fields.keys))
        #expect(withFields["compression_ratio"] as? Double == 10.67)
        #expect(withFields["pruning_intervals"] as? Int == 3)
        #expect(withFields["fixed_scheme"] as? Bool == true)
        #expect(withFields["final_phase_start_epoch"] is NSNull)
        #expect(withFields["final_lambda"] is NSNull, "a NaN is written as null")
        #expect(withFields["hawq_traces"] as? [Double] == [1.5, 2.5])
        let layers = try #require(withFields["layers"] as? [[String: Any]])
        #expect(layers.first?["bits"] as? Int == 8)

        let encoded = try JSONEncoder().encode(withFields)
        let decoded = try JSONDecoder().decode(TrainingSummary.self, from: encoded)
        #expect(decoded.testAccuracy == withFields.testAccuracy)
        #expect(decoded.seed == withFields.seed)
        #expect(Set(decoded.methodFields.keys) == Set(FieldsMethod.fields.keys))
        #expect(decoded.methodFields["bit_scheme"] == .string("conv1:8 fc:4"))
    }

    @Test("JSON values convert by kind: Bool, Int and Double stay apart")
    func jsonValueKinds() {
        #expect(JSONValue(any: true) == .bool(true))
        #expect(JSONValue(any: 1) == .int(1))
        #expect(JSONValue(any: 1.0) == .double(1))
        #expect(JSONValue(any: Float(0.5)) == .double(0.5))
        #expect(JSONValue(any: UInt64.max) == nil, "beyond Int")
        #expect(JSONValue(any: Optional<String>.none as Any) == .null)
        #expect(JSONValue(any: Date()) == nil)
    }

    @Test("the trainer reads the caller's kernel thread count and never changes it")
    func threadsUntouched() throws {
        defer { setKernelThreads(2) }
        for count in [1, 2] {
            setKernelThreads(count)
            var run = try SmallRun(epochs: 1)
            run.config.threads = count
            let summary = try run.trainer(out: nil).run(resume: false)
            #expect(kernelThreads == count)
            #expect(summary.threads == count)
        }
    }

    @Test("an AdamW run killed mid-way and resumed ends with bit-identical weights")
    func adamWResumeIsBitIdentical() throws {
        let run = try SmallRun(epochs: 3) {
            $0.optimizer = .adamw
            $0.learningRate = 2e-3
            $0.weightDecay = 0.05
        }
        let reference = run.trainer(out: freshDirectory())
        let referenceSummary = try reference.run(resume: false)
        #expect(referenceSummary.optimizer == "adamw")
        #expect(referenceSummary.adamW == TrainingSummary.AdamWSettings(beta1: 0.9, beta2: 0.999, epsilon: 1e-8))

        let dir = freshDirectory()
        #expect(throws: CrashAfterEpoch.Crash.self) { try run.trainer(out: dir, method: CrashAfterEpoch(FloatTraining(), crashEpoch: 2)).run(resume: false) }
        let checkpoint = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        #expect(checkpoint.header.epochsCompleted == 1)
        #expect(checkpoint.header.optimizerSteps == 3)
        #expect(checkpoint.tensor(named: "optimizer.exp_avg_sq.fc.weight") != nil)
        #expect(checkpoint.header.runDescription["optimizer"] == "adamw")

        let resumed = run.trainer(out: dir)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(reference.model))
    }

    @Test("an SGD checkpoint is not resumed by an AdamW run")
    func optimizerInFingerprint() throws {
        let sgd = try SmallRun(epochs: 2)
        let dir = freshDirectory()
        #expect(throws: CrashAfterEpoch.Crash.self) { try sgd.trainer(out: dir, method: CrashAfterEpoch(FloatTraining(), crashEpoch: 2)).run(resume: false) }
        let adamW = try SmallRun(epochs: 2) { $0.optimizer = .adamw }
        try expectResumeRefused(adamW.trainer(out: dir), naming: "optimizer")
    }
}
