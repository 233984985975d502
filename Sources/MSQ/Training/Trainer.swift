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

/// The training loop: epochs of SGD with a warm-up + cosine schedule, evaluation after each
/// epoch, progress lines, `metrics.jsonl`, atomic per-epoch checkpoints and `summary.json`.
///
/// Files in the output directory: `checkpoint.msqckpt` (the latest completed epoch),
/// `metrics.jsonl` (one JSON object per completed epoch), `summary.json` (written at the end).
public final class Trainer {
    /// The run's definition.
    public let config: TrainingConfig
    /// The model being trained.
    public let model: Module
    /// What the method adds to float training.
    public let method: TrainingMethod
    let train: any Dataset
    let test: any Dataset
    let normalization: Normalization
    let outDirectory: String
    let log: (String) -> Void

    /// Checkpoint file name inside the output directory.
    public static let checkpointName = "checkpoint.msqckpt"

    /// Prepares a run; nothing is read or written until ``run(resume:)``.
    public init(config: TrainingConfig, model: Module, method: TrainingMethod, train: any Dataset, test: any Dataset,
                normalization: Normalization, outDirectory: String, log: @escaping (String) -> Void = writeLine) {
        self.config = config
        self.model = model
        self.method = method
        self.train = train
        self.test = test
        self.normalization = normalization
        self.outDirectory = outDirectory
        self.log = log
    }

    var checkpointPath: String { (outDirectory as NSString).appendingPathComponent(Trainer.checkpointName) }
    var metricsPath: String { (outDirectory as NSString).appendingPathComponent("metrics.jsonl") }
    var summaryPath: String { (outDirectory as NSString).appendingPathComponent("summary.json") }

    /// Trains to the last epoch and writes `summary.json`; returns its contents.
    ///
    /// With `resume`, continues from the directory's checkpoint (weights, optimizer state,
    /// schedule position, RNG and method state); without it, refuses a directory that already
    /// holds a checkpoint rather than overwriting it.
    @discardableResult
    public func run(resume: Bool) throws -> [String: Any] {
        // Everything that can be refused is refused here, before the first step: options, the
        // data against the model and each other, the plan's arithmetic, the output directory.
        try config.validate()
        try checkData()
        let runPlan = try makePlan()
        let threads = RunLimits.cappedThreads(config.threads)
        if threads != config.threads {
            log("warning: \(config.threads) kernel threads requested, but only \(RunLimits.availableCores) cores are available: using \(threads)")
        }
        msq_set_num_threads(Int32(threads))
        try prepareOutputDirectory(resume: resume)

        let optimizer = SGD(model: model, momentum: Float(config.momentum),
                            weightDecay: Float(config.weightDecay), nesterov: config.nesterov)
        let stepsPerEpoch = runPlan.stepsPerEpoch
        let schedule = LearningRateSchedule(base: config.learningRate, warmupSteps: runPlan.warmupSteps,
                                            totalSteps: runPlan.totalSteps)
        var progress = Progress()
        var rng = RandomSource(seed: config.seed, stream: [0x7472_6169_6E])

        if resume, FileManager.default.fileExists(atPath: checkpointPath) {
            progress = try restore(into: optimizer, rng: &rng, plan: runPlan)
            log("resumed from \(checkpointPath) after epoch \(progress.epochsCompleted) (step \(progress.globalStep))"
                + (config.initFrom.map { "; the weights are this run's own, \($0.path) only had to match the fingerprint" } ?? ""))
            try truncateMetrics(toEpochs: progress.epochsCompleted)
        } else if resume {
            log("no checkpoint in \(outDirectory): starting from scratch")
            // A run killed before its first checkpoint may have left an epoch's metrics line,
            // which that epoch, trained again, would otherwise duplicate.
            try truncateMetrics(toEpochs: 0)
        }
        do {
            try method.prepare(model: model, plan: TrainingPlan(stepsPerEpoch: stepsPerEpoch, epochs: config.epochs, log: log))
        } catch let error as CheckpointError {
            // Only restored state fails this way; the user needs the file it came from.
            throw error.naming(checkpointPath)
        }

        let lossFunction = SoftmaxCrossEntropy(labelSmoothing: Float(config.labelSmoothing))
        var lastEval = Evaluation(loss: .nan, accuracy: .nan, count: 0)
        if progress.epochsCompleted >= config.epochs {
            lastEval = evaluate(model, on: test, normalization: normalization, batchSize: max(config.batchSize, 256))
        }
        for epoch in stride(from: progress.epochsCompleted + 1, through: config.epochs, by: 1) {
            let epochStart = Date()
            var lossSum = 0.0, correct = 0, seen = 0
            let loader = try BatchLoader(dataset: train, batchSize: config.batchSize, shuffle: true,
                                         augmentation: augmentation, normalization: normalization,
                                         seed: config.seed, epoch: epoch, dropLast: false)
            var lastReport = Date()
            var stepInEpoch = 0
            for batch in loader {
                let lr = schedule.learningRate(at: progress.globalStep)
                model.zeroGradients()
                let logits = model.forward(batch.images, mode: .train)
                let loss = try lossFunction.forward(logits: logits, labels: batch.labels)
                guard loss.isFinite else {
                    // Nothing of this step is saved: the checkpoint of the last completed epoch stays.
                    // Steps counted from 1, as in the progress lines.
                    throw TrainingError.nonFinite(epoch: epoch, step: stepInEpoch + 1, globalStep: progress.globalStep + 1,
                                                  loss: loss, culprit: nonFiniteCulprit(lossFunction: lossFunction))
                }
                model.backwardParameters(lossFunction.backward())
                _ = try method.afterBackward(model: model, epoch: epoch, step: progress.globalStep)
                optimizer.step(learningRate: Float(lr))

                let n = batch.labels.count
                lossSum += Double(loss) * Double(n)
                correct += correctPredictions(logits: logits, labels: batch.labels)
                seen += n
                stepInEpoch += 1
                progress.globalStep += 1
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

            lastEval = evaluate(model, on: test, normalization: normalization, batchSize: max(config.batchSize, 256))
            log(String(format: "epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  (%.1f s, %.1f img/s)",
                       epoch, config.epochs, lossSum / Double(max(seen, 1)), Double(correct) / Double(max(seen, 1)),
                       lastEval.loss, lastEval.accuracy, trainSeconds, Double(seen) / max(trainSeconds, 1e-9)))
            try method.endOfEpoch(model: model, epoch: epoch, log: log)
            try appendMetrics([
                "epoch": epoch, "train_loss": lossSum / Double(max(seen, 1)),
                "train_accuracy": Double(correct) / Double(max(seen, 1)),
                "test_loss": lastEval.loss, "test_accuracy": lastEval.accuracy,
                "lr": schedule.learningRate(at: max(progress.globalStep - 1, 0)),
                "epoch_train_seconds": trainSeconds, "images_per_second": Double(seen) / max(trainSeconds, 1e-9),
                "global_step": progress.globalStep,
            ])
            progress.epochsCompleted = epoch
            try saveCheckpoint(progress: progress, optimizer: optimizer, rng: rng)
        }

        var summary: [String: Any] = [
            "model": config.model, "dataset": config.dataset, "method": method.name,
            "epochs": config.epochs, "batch_size": config.batchSize, "lr": config.learningRate,
            "train_images": train.count, "test_images": test.count,
            "test_accuracy": lastEval.accuracy, "test_loss": lastEval.loss,
            "trainable_params": model.trainableParameterCount,
            "train_seconds": progress.trainSeconds,
            "images_per_second": Double(progress.trainImagesSeen) / max(progress.trainSeconds, 1e-9),
            "peak_rss_bytes": peakResidentSetBytes(), "seed": config.seed,
            "threads": Int(msq_get_num_threads()),
        ]
        if let initFrom = config.initFrom { summary["init_from"] = initFrom.summaryObject }
        if let bitScheme = config.bitScheme { summary["given_bit_scheme"] = bitScheme }
        if let granularity = method.scaleGranularity { summary["scale_granularity"] = granularity.rawValue }
        summary.merge(method.summaryFields()) { _, new in new }
        try writeJSON(summary, to: summaryPath)
        log(String(format: "done: test accuracy %.4f after %d epochs; summary in %@", lastEval.accuracy,
                   config.epochs, summaryPath))
        return summary
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

    func saveCheckpoint(progress: Progress, optimizer: SGD, rng: RandomSource) throws {
        var entries: [CheckpointTensor] = []
        var data: [Tensor] = []
        for (name, p) in model.namedParameters() {
            entries.append(CheckpointTensor(name: name, shape: p.value.shape))
            data.append(p.value)
        }
        for (i, (name, _)) in optimizer.parameters.enumerated() {
            entries.append(CheckpointTensor(name: "optimizer.momentum." + name, shape: optimizer.momentumBuffers[i].shape))
            data.append(optimizer.momentumBuffers[i])
        }
        let header = Checkpoint.Header(
            runFingerprint: config.fingerprint, runDescription: config.identity,
            epochsCompleted: progress.epochsCompleted, globalStep: progress.globalStep,
            trainSeconds: progress.trainSeconds, trainImagesSeen: progress.trainImagesSeen,
            rngState: [rng.state.0, rng.state.1, rng.state.2, rng.state.3],
            methodState: try method.encodeState(), tensors: entries)
        try Checkpoint(header: header, tensorData: data).write(to: checkpointPath)
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
