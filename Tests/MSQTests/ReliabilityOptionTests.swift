import Foundation
import MSQ
import Testing

/// Options near the limits of their types: each ends in an error naming the property (the CLI
/// maps it to its flag), never in an overflow trap or a hang (issue 14).
@Suite("Reliability: options")
struct ReliabilityOptionTests {
    /// The property a ``TrainingError/invalidProperty(property:problem:)`` names, or nil.
    func refusedProperty(_ body: () throws -> Void) -> String? {
        if case let .invalidProperty(property, _)? = thrownError(body) as? TrainingError { return property }
        return nil
    }

    @Test("every Double property refuses NaN and infinity by name")
    func nonFiniteDoubles() throws {
        let edits: [(String, (inout TrainingConfig, Double) -> Void)] = [
            ("warmupEpochs", { $0.warmupEpochs = $1 }), ("learningRate", { $0.learningRate = $1 }),
            ("momentum", { $0.momentum = $1 }), ("weightDecay", { $0.weightDecay = $1 }),
            ("labelSmoothing", { $0.labelSmoothing = $1 }), ("beta1", { $0.beta1 = $1 }),
            ("beta2", { $0.beta2 = $1 }), ("epsilon", { $0.epsilon = $1 }),
        ]
        for (property, edit) in edits {
            for value in [Double.nan, .infinity, -.infinity] {
                var c = TrainingConfig(model: "resnet20", dataset: "synthetic", epochs: 2, batchSize: 16, learningRate: 0.1)
                edit(&c, value)
                #expect(refusedProperty { try c.validate() } == property, "\(property) = \(value)")
            }
        }
    }

    @Test("--warmup-epochs nan is refused before the schedule converts it to an Int")
    func warmupNaNInTrainer() throws {
        let run = try SmallRun { $0.warmupEpochs = .nan }
        #expect(refusedProperty { try run.trainer(out: freshDirectory()).run(resume: false) } == "warmupEpochs")
    }

    @Test("--epochs Int.max, or epochs × steps beyond the plan limit, is refused naming epochs")
    func hugeEpochs() throws {
        let direct = try SmallRun { $0.epochs = Int.max }
        #expect(refusedProperty { try direct.trainer(out: freshDirectory()).run(resume: false) } == "epochs")
        // 3 steps per epoch: 2^31 epochs fit the Int, but not the plan's limit.
        let product = try SmallRun { $0.epochs = 1 << 31 }
        let dir = freshDirectory()
        #expect(refusedProperty { try product.trainer(out: dir).run(resume: false) } == "epochs")
        #expect(!FileManager.default.fileExists(atPath: dir), "refused before the output directory is made")
    }

    @Test("--crop-padding Int.max is refused naming cropPadding; the loader refuses it too")
    func hugeCropPadding() throws {
        let run = try SmallRun { $0.cropPadding = Int.max }
        #expect(refusedProperty { try run.trainer(out: freshDirectory()).run(resume: false) } == "cropPadding")
        let data = try SyntheticDataset(count: 4, sampleShape: [1, 8, 8], numClasses: 2)
        #expect(throws: DataError.self) {
            _ = try BatchLoader(dataset: data, batchSize: 2, shuffle: true,
                                augmentation: Augmentation(randomCropPadding: Int.max), seed: 0)
        }
    }

    @Test("--batch-size Int.max trains one batch per epoch without overflow")
    func hugeBatchSize() throws {
        let run = try SmallRun(epochs: 1) { $0.batchSize = Int.max }
        let summary = try run.trainer(out: freshDirectory()).run(resume: false)
        #expect(summary["train_images"] as? Int == 40)
        let loader = try BatchLoader(dataset: run.train, batchSize: Int.max, shuffle: false, seed: 0)
        #expect(loader.batchCount == 1)
        #expect(Array(loader).map(\.count) == [40])
    }

    @Test("a batch too large for memory is refused by the loader")
    func batchBeyondMemory() throws {
        let data = try SyntheticDataset(count: Int.max, sampleShape: [3, 32, 32], numClasses: 10)
        let error = thrownError { _ = try BatchLoader(dataset: data, batchSize: Int.max, shuffle: false, seed: 0) }
        guard case let .invalidArgument(message)? = error as? DataError else {
            Issue.record("expected invalidArgument, got \(String(describing: error))")
            return
        }
        #expect(message.contains("memory"))
    }

    @Test("thread counts above the cores are capped; the trainer leaves the caller's count alone")
    func threadCap() throws {
        let cores = RunLimits.availableCores
        #expect(RunLimits.cappedThreads(1000) == cores)
        #expect(RunLimits.cappedThreads(Int.max) == cores)
        #expect(RunLimits.cappedThreads(0) == 0)
        #expect(RunLimits.cappedThreads(1) == 1)
        #expect(setKernelThreads(Int.max) == cores)
        // The caller set one thread; the config records 1000. The trainer warns and trains on one.
        setKernelThreads(1)
        defer { setKernelThreads(2) }
        var lines: [String] = []
        let run = try SmallRun(epochs: 1) { $0.threads = 1000 }
        let summary = try run.trainer(out: freshDirectory(), log: { lines.append($0) }).run(resume: false)
        #expect(kernelThreads == 1)
        #expect(summary.threads == 1)
        #expect(lines.contains { $0.hasPrefix("warning: TrainingConfig.threads is 1000, but the kernels run 1 threads") })
    }

    @Test("fractional epochs far beyond Int convert to clamped step counts")
    func clampedSteps() {
        #expect(RunLimits.steps(epochs: 1e300, stepsPerEpoch: 10) == RunLimits.maxTotalSteps)
        #expect(RunLimits.steps(epochs: .infinity, stepsPerEpoch: 10) == RunLimits.maxTotalSteps)
        #expect(RunLimits.steps(epochs: .nan, stepsPerEpoch: 10) == 0)
        #expect(RunLimits.steps(epochs: 0.5, stepsPerEpoch: 10) == 5)
        #expect(RunLimits.ceilDiv(40, Int.max) == 1)
        #expect(RunLimits.ceilDiv(Int.max, 1) == Int.max)
    }

    @Test("a pruning interval of 1e300 epochs is refused, not trapped on")
    func hugePruneInterval() throws {
        let setup = try TinyTrainingSetup(method: "msq", epochs: 1)
        let model = setup.makeModel()
        var options = MSQOptions(targetCompression: 10.67)
        options.hessian = false
        options.pruneIntervalEpochs = 1e300
        let method = try MSQTraining(layers: try quantizeForMSQ(model), options: options, calibration: nil, seed: 0)
        let error = thrownError {
            try setup.trainer(model: model, method: method, out: freshDirectory(), log: { _ in }).run(resume: false)
        }
        let message = error.map { String(describing: $0) } ?? "no error"
        #expect(message.contains("MSQOptions.pruneIntervalEpochs"), "\(message)")
    }

    @Test("MSQOptions.minBits Int.max is refused by its range, not reported as a garbled compression")
    func hugeMinBits() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        var options = MSQOptions(targetCompression: 8)
        options.hessian = false
        options.minBits = Int.max
        let error = thrownError { _ = try MSQTraining(layers: try quantizeForMSQ(model), options: options, calibration: nil, seed: 0) }
        #expect(error.map { String(describing: $0) } == "MSQOptions.minBits must be in 2...16 (got \(Int.max))")
    }

    @Test("MSQOptions.hessianBatch Int.max is refused by range rather than taking the whole training set into one pass")
    func hugeHessianBatch() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        var options = MSQOptions(targetCompression: 8)
        options.hessian = false
        options.hessianBatch = Int.max
        let error = thrownError { _ = try MSQTraining(layers: try quantizeForMSQ(model), options: options, calibration: nil, seed: 0) }
        #expect(error.map { String(describing: $0) } == "MSQOptions.hessianBatch must be in 1...4096 (got \(Int.max))")
        var hawq = HAWQOptions(targetCompression: 8)
        hawq.hessianBatch = RunLimits.maxCalibrationImages + 1
        #expect(throws: TrainingError.self) { try hawq.validate(counts: [100, 200]) }
    }

    @Test("MSQOptions.hessianProbes Int.max is refused by range rather than probing until the mean settles")
    func hugeHessianProbes() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        var options = MSQOptions(targetCompression: 8)
        options.hessian = false
        options.hessianProbes = Int.max
        let error = thrownError { _ = try MSQTraining(layers: try quantizeForMSQ(model), options: options, calibration: nil, seed: 0) }
        #expect(error.map { String(describing: $0) } == "MSQOptions.hessianProbes must be in 1...4096 (got \(Int.max))")
        var hawq = HAWQOptions(targetCompression: 8)
        hawq.hessianProbes = RunLimits.maxProbes + 1
        #expect(throws: TrainingError.self) { try hawq.validate(counts: [100, 200]) }
        hawq.hessianProbes = RunLimits.maxProbes
        #expect(throws: Never.self) { try hawq.validate(counts: [100, 200]) }
    }
}
