import CKernels
import Foundation

/// Result of evaluating a model on a dataset.
public struct Evaluation: Sendable {
    /// Mean cross-entropy.
    public var loss: Double
    /// Fraction of correctly classified images, 0–1.
    public var accuracy: Double
    /// Number of images evaluated.
    public var count: Int
}

/// The training loop: epochs of optimizer steps on a learning-rate schedule, evaluation after
/// each epoch, per-step and per-epoch callbacks, and a ``TrainingSummary`` at the end.
///
/// By default the optimizer is the one ``TrainingConfig/optimizer`` names and the schedule is a
/// linear warm-up then cosine annealing (``LearningRateSchedule``); give either to replace it.
/// With an output directory the run also writes `checkpoint.msqckpt` (the latest completed
/// epoch, optimizer state included), `metrics.jsonl` (one JSON object per epoch) and
/// `summary.json`, and can be resumed; without one it touches no file. The kernels' thread count
/// is the caller's (``setKernelThreads(_:)``): the trainer only reads it.
public final class Trainer {
    /// The run's definition.
    public let config: TrainingConfig
    /// The model being trained.
    public let model: Module
    /// What the method adds to float training.
    public let method: TrainingMethod
    /// Where checkpoints, metrics and the summary go; nil = no files at all.
    public let outputDirectory: String?
    /// Called after every optimizer step; a throw stops the run (nothing of the epoch is saved).
    public var onStep: ((StepReport) throws -> Void)?
    /// Called after every epoch's evaluation (and its metrics line and checkpoint, when there is a
    /// directory); a throw stops the run after that epoch.
    public var onEpoch: ((EpochReport) throws -> Void)?
    /// The processes training this model together (``SingleProcess`` by default). Under P > 1
    /// every rank builds the same model from the same seed and runs this trainer with the same
    /// configuration: each takes its shard of every global batch (``TrainingConfig/batchSize`` stays
    /// the global batch, so the data order and schedule do not depend on P), the gradients are
    /// summed over the ranks before the method and the optimizer see them, evaluation is sharded
    /// and reduced, and only rank 0 logs and writes files. Set before ``run(resume:)``. A throw on
    /// one rank only (a callback, a non-finite loss in one shard) leaves the others waiting in the
    /// next collective operation: end them all (`msq` calls ``Collective/abort(_:code:)``).
    public var collective: any Collective = SingleProcess()
    /// Whether batch norms normalise with the global batch's statistics (all-reduced every step)
    /// instead of their own shard's; with per-shard statistics (the default) the running averages
    /// are averaged over the ranks every step so the replicas stay identical. No effect at P = 1.
    public var synchronizeBatchNorm = false
    /// The gradient buckets of the last run (nil at P = 1): their counters tell how much of the
    /// all-reduce the backward pass hid.
    public internal(set) var gradientBuckets: GradientBuckets?
    let train: any Dataset
    let test: any Dataset
    let normalization: Normalization
    let givenOptimizer: (any Optimizer)?
    let givenSchedule: (any LearningRateScheduling)?
    let files: RunDirectory?

    /// Checkpoint file name inside the output directory.
    public static let checkpointName = "checkpoint.msqckpt"

    /// Prepares a run; nothing is read or written until ``run(resume:)``.
    ///
    /// - Parameters:
    ///   - config: the run's definition (epochs, batch, learning rate, optimizer, seed, fingerprint entries).
    ///   - model: the network, with the method's quantizers already attached (``MethodSetUp``).
    ///   - method: what the method adds to float training (``FloatTraining`` for none).
    ///   - train: the training images, `[C, H, W]` each; shuffled every epoch.
    ///   - test: the images evaluated after every epoch, the same shape and classes.
    ///   - normalization: the per-channel mean and std applied to both.
    ///   - outDirectory: the output directory, created if missing; nil = write no file.
    ///   - optimizer: the optimizer, built over `model`; nil = ``TrainingConfig/makeOptimizer(for:)``.
    ///     A given one is not in the run's fingerprint, so a resume cannot tell it changed.
    ///   - schedule: the learning rate per global step; nil = warm-up over
    ///     ``TrainingConfig/warmupEpochs`` to ``TrainingConfig/learningRate``, then cosine to 0.
    ///     A given one is likewise not in the fingerprint.
    ///   - log: where progress lines go.
    public init(config: TrainingConfig, model: Module, method: TrainingMethod, train: any Dataset, test: any Dataset,
                normalization: Normalization, outDirectory: String?, optimizer: (any Optimizer)? = nil,
                schedule: (any LearningRateScheduling)? = nil, log: @escaping (String) -> Void = writeLine) {
        self.config = config
        self.model = model
        self.method = method
        self.train = train
        self.test = test
        self.normalization = normalization
        self.outputDirectory = outDirectory
        self.givenOptimizer = optimizer
        self.givenSchedule = schedule
        self.files = outDirectory.map { RunDirectory(path: $0, log: log) }
        self.givenLog = log
    }

    let givenLog: (String) -> Void
    /// Rank 0's lines; the other ranks' are dropped (their errors still reach the caller).
    var log: (String) -> Void { collective.isRoot ? givenLog : { _ in } }
    /// Where this rank writes: the directory on rank 0, nowhere on the others.
    var writer: RunDirectory? { collective.isRoot ? files : nil }

    /// Trains to the last epoch and returns the summary (also written as `summary.json` when
    /// there is an output directory).
    ///
    /// With `resume`, continues from the directory's checkpoint (weights, optimizer state,
    /// schedule position, RNG and method state); without it, refuses a directory that already
    /// holds a checkpoint rather than overwriting it. `resume` needs an output directory.
    @discardableResult
    public func run(resume: Bool) throws -> TrainingSummary {
        // Everything that can be refused is refused here, before the first step: options, the
        // data against the model and each other, the plan's arithmetic, the output directory.
        try config.validate()
        try checkData()
        let runPlan = try makePlan()
        try checkShards()
        let optimizer = givenOptimizer ?? config.makeOptimizer(for: model)
        try checkOptimizer(optimizer)
        if config.threads > 0, config.threads != kernelThreads {
            log("warning: TrainingConfig.threads is \(config.threads), but the kernels run \(kernelThreads) threads "
                + "(setKernelThreads); the fingerprint records \(config.threads)")
        }
        if resume, files == nil { throw TrainingError.resumeWithoutDirectory }
        try writer?.prepare(resume: resume)
        // Rank 0 may have refused the directory; the others must not train alone.
        try collective.barrier()

        let stepsPerEpoch = runPlan.stepsPerEpoch
        let schedule = givenSchedule ?? LearningRateSchedule(base: config.learningRate, warmupSteps: runPlan.warmupSteps,
                                                             totalSteps: runPlan.totalSteps)
        var progress = Progress()
        var rng = RandomSource(seed: config.seed, stream: [0x7472_6169_6E])

        // Rank 0 reads the checkpoint and sends its bytes: the other ranks need not see its disk.
        let checkpoint = resume ? try files.flatMap { try sharedCheckpoint(at: $0.checkpointPath) } : nil
        if let files, let checkpoint {
            progress = try restore(checkpoint, path: files.checkpointPath, into: optimizer, rng: &rng, plan: runPlan)
            log("resumed from \(files.checkpointPath) after epoch \(progress.epochsCompleted) (step \(progress.globalStep))"
                + (config.initFrom.map { "; the weights are this run's own, \($0.path) only had to match the fingerprint" } ?? ""))
            try writer?.truncateMetrics(toEpochs: progress.epochsCompleted)
        } else if resume, let files {
            log("no checkpoint in \(files.path): starting from scratch")
            // A run killed before its first checkpoint may have left an epoch's metrics line,
            // which that epoch, trained again, would otherwise duplicate.
            try writer?.truncateMetrics(toEpochs: 0)
        }
        do {
            try method.prepare(model: model, plan: TrainingPlan(stepsPerEpoch: stepsPerEpoch, epochs: config.epochs, log: log,
                                                                collective: collective))
        } catch let error as CheckpointError {
            // Only restored state fails this way; the user needs the file it came from.
            throw files.map { error.naming($0.checkpointPath) } ?? error
        }

        let lossFunction = SoftmaxCrossEntropy(labelSmoothing: Float(config.labelSmoothing))
        var lastEval = Evaluation(loss: .nan, accuracy: .nan, count: 0)
        if progress.epochsCompleted >= config.epochs {
            lastEval = try evaluateSharded()
        }
        let parallel = try prepareDataParallel()
        for epoch in stride(from: progress.epochsCompleted + 1, through: config.epochs, by: 1) {
            let epochStart = Date()
            var lossSum = 0.0, correct = 0, seen = 0
            let loader = try BatchLoader(dataset: train, batchSize: config.batchSize, shuffle: true,
                                         augmentation: augmentation, normalization: normalization,
                                         seed: config.seed, epoch: epoch, dropLast: false, shard: shard)
            var lastReport = Date()
            var stepInEpoch = 0
            for batch in loader {
                let lr = schedule.learningRate(at: progress.globalStep)
                model.zeroGradients()
                let logits = model.forward(batch.images, mode: .train)
                var loss = try lossFunction.forward(logits: logits, labels: batch.labels)
                guard loss.isFinite else {
                    // Nothing of this step is saved: the checkpoint of the last completed epoch stays.
                    // Steps counted from 1, as in the progress lines.
                    throw TrainingError.nonFinite(epoch: epoch, step: stepInEpoch + 1, globalStep: progress.globalStep + 1,
                                                  loss: loss, culprit: nonFiniteCulprit(lossFunction: lossFunction))
                }
                let buckets = parallel.map(currentBuckets)
                buckets?.beginStep(share: Double(batch.count) / Double(batch.globalCount))
                model.backwardParameters(lossFunction.backward())
                var n = batch.labels.count
                var batchCorrect = correctPredictions(logits: logits, labels: batch.labels)
                if let parallel, let buckets {
                    try buckets.finish()
                    (loss, batchCorrect, n) = try reduceStep(parallel, loss: loss, correct: batchCorrect, count: n)
                }
                let methodLoss = try method.afterBackward(model: model, epoch: epoch, step: progress.globalStep)
                optimizer.step(learningRate: lr)
                try method.afterStep(model: model, step: progress.globalStep)

                lossSum += Double(loss) * Double(n)
                correct += batchCorrect
                seen += n
                stepInEpoch += 1
                progress.globalStep += 1
                try onStep?(StepReport(epoch: epoch, step: stepInEpoch, stepsInEpoch: loader.batchCount,
                                       globalStep: progress.globalStep, loss: Double(loss), methodLoss: methodLoss,
                                       learningRate: lr, batchSize: n))
                if Date().timeIntervalSince(lastReport) >= 10 || stepInEpoch == loader.batchCount {
                    lastReport = Date()
                    let elapsed = Date().timeIntervalSince(epochStart)
                    let rate = Double(seen) / max(elapsed, 1e-9)
                    let remaining = Double(loader.batchCount - stepInEpoch) / Double(stepInEpoch) * elapsed
                        + Double(config.epochs - epoch) * elapsed / Double(stepInEpoch) * Double(loader.batchCount)
                    log(String(format: "epoch %d/%d  step %d/%d  loss %.4f  acc %.4f  lr %.4f  %.1f img/s  ETA %@",
                               epoch, config.epochs, stepInEpoch, loader.batchCount, lossSum / Double(seen),
                               Double(correct) / Double(seen), lr, rate, formatDuration(remaining)))
                }
            }
            let trainSeconds = Date().timeIntervalSince(epochStart)
            progress.trainSeconds += trainSeconds
            progress.trainImagesSeen += seen

            lastEval = try evaluateSharded()
            log(String(format: "epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  (%.1f s, %.1f img/s)",
                       epoch, config.epochs, lossSum / Double(max(seen, 1)), Double(correct) / Double(max(seen, 1)),
                       lastEval.loss, lastEval.accuracy, trainSeconds, Double(seen) / max(trainSeconds, 1e-9)))
            try method.endOfEpoch(model: model, epoch: epoch, log: log)
            let report = EpochReport(
                epoch: epoch, trainLoss: lossSum / Double(max(seen, 1)), trainAccuracy: Double(correct) / Double(max(seen, 1)),
                testLoss: lastEval.loss, testAccuracy: lastEval.accuracy,
                learningRate: schedule.learningRate(at: max(progress.globalStep - 1, 0)),
                trainSeconds: trainSeconds, imagesPerSecond: Double(seen) / max(trainSeconds, 1e-9),
                globalStep: progress.globalStep)
            progress.epochsCompleted = epoch
            if collective.size > 1 { try checkReplicasAgree(after: "epoch \(epoch)") }
            if let writer {
                try writer.appendMetrics(report.metricsObject)
                try saveCheckpoint(to: writer.checkpointPath, progress: progress, optimizer: optimizer, rng: rng)
            }
            try onEpoch?(report)
        }

        let summary = try makeSummary(evaluation: lastEval, progress: progress, optimizer: optimizer)
        if let files = writer {
            try summary.write(to: files.summaryPath)
            log(String(format: "done: test accuracy %.4f after %d epochs; summary in %@", lastEval.accuracy,
                       config.epochs, files.summaryPath))
        } else {
            log(String(format: "done: test accuracy %.4f after %d epochs", lastEval.accuracy, config.epochs))
        }
        return summary
    }

    /// The run's summary: the configuration, the last evaluation, the counters and the method's fields.
    func makeSummary(evaluation: Evaluation, progress: Progress, optimizer: any Optimizer) throws -> TrainingSummary {
        var methodFields: [String: JSONValue] = [:]
        for (key, value) in method.summaryFields() {
            guard let converted = JSONValue(any: value) else {
                throw TrainingError.invalidOption("the \(method.name) method's summary field \(key) holds a \(type(of: value)), which is not a JSON value")
            }
            methodFields[key] = converted
        }
        let adamW = optimizer as? AdamW
        var summary = TrainingSummary(
            model: config.model, dataset: config.dataset, method: method.name, epochs: config.epochs,
            batchSize: config.batchSize, learningRate: config.learningRate, trainImages: train.count,
            testImages: test.count, testAccuracy: evaluation.accuracy, testLoss: evaluation.loss,
            trainableParams: model.trainableParameterCount, trainSeconds: progress.trainSeconds,
            imagesPerSecond: Double(progress.trainImagesSeen) / max(progress.trainSeconds, 1e-9),
            peakRSSBytes: peakResidentSetBytes(), seed: config.seed, threads: kernelThreads,
            initFrom: try config.initFrom.map { loaded in
                guard let value = JSONValue(any: loaded.summaryObject) else {
                    throw TrainingError.invalidOption("init_from of \(loaded.path) cannot be written as JSON")
                }
                return value
            },
            givenBitScheme: config.bitScheme, scaleGranularity: method.scaleGranularity?.rawValue,
            optimizer: optimizer.name == OptimizerKind.sgd.rawValue ? nil : optimizer.name,
            adamW: adamW.map { TrainingSummary.AdamWSettings(beta1: $0.beta1, beta2: $0.beta2, epsilon: $0.epsilon) },
            methodFields: methodFields)
        summary.processes = collective.size
        summary.dataParallel = dataParallelSummary()
        return summary
    }

    /// Refuses an optimizer that does not update exactly this model's trainable parameters.
    func checkOptimizer(_ optimizer: any Optimizer) throws(TrainingError) {
        let expected = trainableParameters(of: model)
        guard optimizer.parameters.count == expected.count,
              zip(optimizer.parameters, expected).allSatisfy({ $0.parameter === $1.parameter }) else {
            throw .invalidOption("the Trainer's optimizer updates \(optimizer.parameters.count) parameters that are not the model's \(expected.count) trainable ones: build it over the same model instance")
        }
    }

    var augmentation: Augmentation {
        Augmentation(randomCropPadding: config.cropPadding, horizontalFlip: config.horizontalFlip)
    }

    struct Progress {
        var epochsCompleted = 0
        var globalStep = 0
        var trainSeconds = 0.0
        var trainImagesSeen = 0
    }

    func saveCheckpoint(to path: String, progress: Progress, optimizer: any Optimizer, rng: RandomSource) throws {
        var entries: [CheckpointTensor] = []
        var data: [Tensor] = []
        for (name, p) in model.namedParameters() {
            entries.append(CheckpointTensor(name: name, shape: p.value.shape))
            data.append(p.value)
        }
        let state = optimizer.state
        for (name, t) in state.tensors {
            entries.append(CheckpointTensor(name: name, shape: t.shape))
            data.append(t)
        }
        var header = Checkpoint.Header(
            runFingerprint: config.fingerprint, runDescription: config.identity,
            epochsCompleted: progress.epochsCompleted, globalStep: progress.globalStep,
            trainSeconds: progress.trainSeconds, trainImagesSeen: progress.trainImagesSeen,
            rngState: [rng.state.0, rng.state.1, rng.state.2, rng.state.3],
            methodState: try method.encodeState(), tensors: entries)
        header.optimizerSteps = state.steps
        try Checkpoint(header: header, tensorData: data).write(to: path)
    }
}

/// Evaluates `model` in inference mode over the whole dataset, in order.
public func evaluate(_ model: Module, on dataset: any Dataset, normalization: Normalization, batchSize: Int = 256) -> Evaluation {
    guard let loader = try? BatchLoader(dataset: dataset, batchSize: batchSize, shuffle: false,
                                        augmentation: Augmentation(randomCropPadding: 0, horizontalFlip: false),
                                        normalization: normalization, seed: 0, epoch: 0, dropLast: false) else {
        return Evaluation(loss: .nan, accuracy: .nan, count: 0)
    }
    let lossFunction = SoftmaxCrossEntropy(labelSmoothing: 0)
    var lossSum = 0.0, correct = 0, seen = 0
    for batch in loader {
        let logits = model.forward(batch.images, mode: .eval)
        let loss = (try? lossFunction.forward(logits: logits, labels: batch.labels)) ?? .nan
        lossSum += Double(loss) * Double(batch.labels.count)
        correct += correctPredictions(logits: logits, labels: batch.labels)
        seen += batch.labels.count
    }
    return Evaluation(loss: lossSum / Double(max(seen, 1)), accuracy: Double(correct) / Double(max(seen, 1)), count: seen)
}

/// Peak resident set size of this process in bytes (Linux reports ru_maxrss in KiB).
public func peakResidentSetBytes() -> Int {
    var usage = rusage()
    #if os(Linux)
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return usage.ru_maxrss * 1024
    #else
    getrusage(RUSAGE_SELF, &usage)
    return usage.ru_maxrss
    #endif
}

func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60)
                     : String(format: "%d:%02d", s / 60, s % 60)
}

/// Writes one line to standard output at once (unbuffered), so progress appears promptly when
/// output goes to a file or a pipe.
public func writeLine(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
