/// The method names ``makeBenchmarkMethod(_:model:targetCompression:sampleShape:classes:batch:)`` accepts.
public let benchmarkMethodNames = ["fp", "msq", "dorefa", "bsq", "csq", "smpq"]

/// Sets `model` up for the training method `name` with its default options and returns the method,
/// already prepared, for measuring a method's per-step cost: a plain loop of
/// `zeroGradients`, forward, loss, backward, ``TrainingMethod/afterBackward(model:epoch:step:)`` and
/// an ``SGD`` step (built AFTER this call, from `model.trainableParameters()`) then costs what a
/// training step of that method costs in its search phase.
///
/// - `fp`: ``FloatTraining``, nothing attached.
/// - `msq`: every conv/linear behind a RoundClamp quantizer at 8 bits, ``MSQTraining`` with the
///   default options (λ = 1) and `targetCompression`; Hessian traces off (they only run at pruning
///   intervals; `msq-bench cost --hessian-probes` times them separately).
/// - `dorefa`: ``DoReFaTraining`` at k = round(32 / targetCompression) bits (3 for 10.67), clamped to 2…16.
/// - `bsq`: ``BSQTraining`` with default ``BSQOptions`` (8 bit planes per weight, λ = 0.01).
/// - `csq`: ``CSQTraining`` with default ``CSQOptions`` (8 planes, 2 logits each, β = 1 here).
/// - `smpq`: ``SMPQTraining`` with default ``SMPQOptions`` but no warm-up, so every step is a search
///   step (the W step plus the α step on a validation batch of `batch` synthetic images of
///   `sampleShape` in `classes` classes, the model's input and output); no Shapley estimate falls in a benchmark (their cost is in a run's summary).
///
/// The method is prepared with a plan of 10^9 one-epoch steps, so no pruning interval, deadline or
/// temperature change happens during a benchmark. Activations stay float.
/// - Throws: ``TrainingError/invalidOption(_:)`` for an unknown name or an unreachable target.
public func makeBenchmarkMethod(_ name: String, model: any Module, targetCompression: Double = 10.67,
                                sampleShape: [Int] = [3, 32, 32], classes: Int = 10, batch: Int = 128) throws -> TrainingMethod {
    let method: TrainingMethod
    switch name {
    case "fp":
        method = FloatTraining()
    case "msq":
        let layers = try quantizeForMSQ(model, initialBits: 8)
        var options = MSQOptions(targetCompression: targetCompression)
        options.hessian = false
        method = try MSQTraining(layers: layers, options: options, calibration: nil, seed: 0)
    case "dorefa":
        guard targetCompression > 1 && targetCompression.isFinite else {
            throw TrainingError.invalidOption("--target-compression must be a number above 1 (got \(targetCompression))")
        }
        let bits = min(16, max(2, Int((32 / targetCompression).rounded())))
        method = try DoReFaTraining(model: model, options: DoReFaOptions(weightBits: bits))
    case "bsq":
        method = try BSQTraining(model: model, options: BSQOptions(targetCompression: targetCompression))
    case "csq":
        method = try CSQTraining(model: model, options: CSQOptions(targetCompression: targetCompression))
    case "smpq":
        var options = SMPQOptions(targetCompression: targetCompression)
        options.warmupFraction = 0
        options.shapleyEveryEpochs = 1e9
        options.validationBatchSize = batch
        options.shapleyBatch = batch
        let validation = try SyntheticDataset(count: batch, sampleShape: sampleShape, numClasses: classes, seed: 2)
        method = try SMPQTraining.setUp(model: model, options: options, context: MethodContext(
            validationData: (validation, Normalization(mean: [Float](repeating: 0, count: sampleShape[0]),
                                                       std: [Float](repeating: 1, count: sampleShape[0])))))
    default:
        throw TrainingError.invalidOption("unknown method '\(name)'; choose one of \(benchmarkMethodNames.joined(separator: ", "))")
    }
    try method.prepare(model: model, plan: TrainingPlan(stepsPerEpoch: 1_000_000_000, epochs: 1, log: { _ in }))
    return method
}
