import Foundation

/// One logged pruning: a ``PruningDecision`` with when it happened.
public struct PruningEvent: Codable, Sendable, Equatable {
    /// The global step after which the precision changed (1-based count of steps done).
    public var step: Int
    /// The same moment in epochs (step / steps per epoch).
    public var epoch: Double
    /// What changed.
    public var decision: PruningDecision
}

/// MSQ training (MSQ-SPEC §2–4) as a ``TrainingMethod``: the LSB regulariser in every step of the
/// pruning phase, and at every pruning interval Hessian traces → k_l, the
/// ``LSBPruningScheduler``'s decisions and a per-layer table; once the target compression is met,
/// plain quantization-aware training at the fixed scheme (the finetuning phase).
///
/// The model must already carry its quantizers (``QuantizationScheme/apply(to:)`` or
/// ``quantizeForMSQ(_:initialBits:overrides:excluded:scaleGranularity:)``) before the ``Trainer`` builds its
/// optimizer, so PACT clip levels are optimized; this method only changes precisions.
///
/// **Several processes** (``TrainingPlan/collective``): the Hessian traces of a pruning interval
/// are split over the ranks (each evaluates every P-th probe, see
/// ``HutchinsonTrace/estimate(collective:)``), and every rank gets the same traces, the ones one
/// process would estimate. Everything else at an interval (the LSB nonzero rates, the drop losses,
/// the scheduler's decisions, k and λ) is computed on every rank from its replica's weights and
/// those traces: the replicas are identical, so the decisions are, with no communication (rank 0
/// deciding and broadcasting would cost a round of serialisation and hide a drifted replica instead
/// of reporting it). Each interval ends with ``Collective/checkSameBitScheme(paths:bits:step:)``,
/// which throws ``CollectiveError/replicasDiffer(_:)`` if the ranks' schemes differ.
public final class MSQTraining: TrainingMethod {
    /// The run's options.
    public let options: MSQOptions
    /// The quantized layers, in scheme order.
    public let layers: [QuantizedLayer]
    /// The regulariser over ``layers`` (its λ and k change as the run goes).
    public let regularizer: LSBRegularizer
    /// The decision rule.
    public let scheduler: LSBPruningScheduler
    let activationBits: Int?
    let activationExcluded: [String]
    let calibration: (images: Tensor, labels: [Int32])?
    let seed: UInt64

    /// Precision history and phase; all of it is checkpointed.
    struct State: Codable {
        var scheme: QuantizationScheme
        var phase: String = "pruning"
        var k: [Int]
        var lambda: Double
        var initialBits: Double
        var events: [PruningEvent] = []
        var finalPhaseStartStep: Int?
        var intervals: Int = 0
        var hessianEstimates: Int = 0
        var hessianProbesUsed: Int = 0
        var hessianSeconds: Double = 0
        /// Paths of the layers the scheduled pull acts on until the next interval; nil before
        /// the first plan (``MSQOptions/scheduledPull``).
        var scheduled: [String]? = nil
    }
    var state: State
    /// The scheduled layers' weights before this step's optimizer update (by layer index), to
    /// measure how far the update moved them; set in afterBackward, used and cleared in afterStep.
    var pullSnapshots: [Int: [Float]] = [:]
    var plan = TrainingPlan(stepsPerEpoch: 1, epochs: 1, log: { _ in })

    /// An MSQ method over `layers`. `calibration` is the fixed Hessian batch (required when
    /// `options.hessian`, unless `fixedScheme`); `seed` seeds the Hutchinson probes.
    ///
    /// With `fixedScheme` the layers' current precisions are the run's scheme (`--bit-scheme`, a
    /// control run): the method starts in the finetuning phase at step 0, so there is no regulariser,
    /// no pruning and no Hessian; plain QAT with the RoundClamp quantizer. Give `options` the
    /// scheme's own compression as `targetCompression` (it is only reported) and the Hessian off.
    public init(layers: [QuantizedLayer], options: MSQOptions, calibration: (images: Tensor, labels: [Int32])?,
                activationBits: Int? = nil, activationExcluded: [String] = [], seed: UInt64,
                fixedScheme: Bool = false) throws {
        let counts = layers.map(\.count)
        try options.validate(maxCompression: options.maxCompression(counts: counts))
        if options.hessian && calibration == nil && !fixedScheme {
            throw TrainingError.invalidMethodOption(options: "MSQOptions", property: "hessian", problem: "is on, which needs a calibration batch (or MethodContext.calibrationData with MSQTraining.setUp)")
        }
        self.options = options
        self.layers = layers
        self.regularizer = LSBRegularizer(layers: layers, lambda: options.lambda, minBits: options.minBits,
                                          lambdaScaling: options.lambdaScaling)
        self.scheduler = LSBPruningScheduler(targetCompression: options.targetCompression,
                                             threshold: options.pruneThreshold, minBits: options.minBits,
                                             forcedOrder: options.forcedOrder)
        self.activationBits = activationBits
        self.activationExcluded = activationExcluded
        self.calibration = calibration
        self.seed = seed
        let bits = zip(counts, layers.map(\.bits)).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        self.state = State(scheme: QuantizationScheme(quantizedLayers: layers, activationBits: activationBits,
                                                      activationExcluded: activationExcluded),
                           k: Array(repeating: 1, count: layers.count), lambda: options.lambda, initialBits: bits)
        self.fixedScheme = fixedScheme
        if fixedScheme {
            state.phase = "finetuning"
            state.finalPhaseStartStep = 0
        }
    }

    /// Whether the run trains a given scheme from step 0 (`fixedScheme`, `--bit-scheme`).
    public let fixedScheme: Bool

    public var name: String { "msq" }

    /// Whether regularisation and pruning have stopped for good.
    public var isFinetuning: Bool { state.phase == "finetuning" }
    /// Every precision change so far.
    public var events: [PruningEvent] { state.events }

    /// Interval and deadline steps of the current plan (the deadline is itself a pruning interval).
    var pace: PruningPace { PruningPace(options: options, plan: plan) }

    public func prepare(model: Module, plan: TrainingPlan) throws {
        self.plan = plan
        try checkStateAgainstPlan()
        try pace.checkFits(plan, intervalEpochs: options.pruneIntervalEpochs, what: "pruning", options: MSQOptions.optionsName)
        // Precisions come from the state (restored from a checkpoint, or the initial scheme).
        let bitsByPath = Dictionary(uniqueKeysWithValues: state.scheme.layers.map { ($0.path, $0.bits) })
        for layer in layers {
            guard let b = bitsByPath[layer.path] else {
                throw CheckpointError.mismatch(path: "method state", reason: "no precision for layer \(layer.path)")
            }
            layer.quantizer.bits = b
        }
        regularizer.k = state.k
        regularizer.lambda = state.lambda
        if state.phase == "pruning" {
            plan.log(String(format: "msq: %d quantized layers, %d weights, start %.2f bits (C %.2fx); target C %.2fx (paper %.2fx); prune every %d steps, deadline step %d of %d; λ %g, τ %g, Hessian %@",
                            layers.count, regularizer.totalCount, averageWeightBits(layers), compressionRatio(layers),
                            options.targetCompression, 32 / (32 / options.targetCompression - 1),
                            pace.intervalSteps, pace.deadlineStep, plan.totalSteps, state.lambda, options.pruneThreshold,
                            options.hessian ? "on" : "off"))
        } else if fixedScheme {
            plan.log(String(format: "msq: fixed bit scheme, %d quantized layers, %d weights, %.3f bits average, C %.2fx (paper %.2fx); plain QAT from step 0 (no regulariser, pruning or Hessian); scheme %@",
                            layers.count, regularizer.totalCount, averageWeightBits(layers), compressionRatio(layers),
                            compressionRatioPaper(layers), bitScheme))
        }
    }

    public func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
        guard !isFinetuning else { return 0 }
        if options.scheduledPull > 0 && state.scheduled == nil {
            try planFirstPull(model: model)
        }
        let report = regularizer.apply()
        let done = step + 1
        if done % pace.intervalSteps == 0 || done == pace.deadlineStep {
            try pruningInterval(model: model, stepsDone: done, report: report)
        }
        // After the interval, so a newly scheduled layer is pulled from this step on.
        snapshotScheduledLayers()
        return report.weightedRegularizer
    }

    public func afterStep(model: Module, step: Int) throws {
        pullScheduledLayers()
    }

    /// One pruning interval (MSQ-SPEC §3–4). `report` is this step's regulariser pass, on the grids
    /// of the k the layers were regularised toward during the interval: the decisions use it and
    /// that k. The traces taken here rank the forced drops now and set k for the NEXT interval.
    func pruningInterval(model: Module, stepsDone: Int, report: LSBReport) throws {
        state.intervals += 1
        let counts = layers.map(\.count)
        let hessian = try estimateTraces(model: model)
        let status = layers.indices.map { i in
            PruningLayerStatus(path: layers[i].path, count: counts[i], bits: layers[i].bits,
                               nonzeroRate: report.layers[i].nonzeroRate, k: regularizer.effectiveK(i),
                               dropLoss: dropLoss(layer: i, traces: hessian?.traces))
        }
        let deadline = pace.isDeadline(stepsDone)
        let budget = pace.budget(stepsDone: stepsDone, initialBits: state.initialBits,
                                 targetBits: scheduler.targetBits(counts: counts))
        let decisions = scheduler.decide(status, budgetBits: budget, deadline: deadline)
        let before = layers.map(\.bits)
        for d in decisions {
            guard let i = layers.firstIndex(where: { $0.path == d.path }) else { continue }
            layers[i].quantizer.bits = d.toBits
            state.events.append(PruningEvent(step: stepsDone, epoch: Double(stepsDone) / Double(plan.stepsPerEpoch), decision: d))
        }
        // k for the next interval, from Ω at the precisions the layers now have.
        var omega: [Double]? = nil
        if let hessian {
            let o = sensitivity(traces: hessian.traces, layers: layers)
            omega = o
            regularizer.k = aggressivePruningK(omega: o)
        } else {
            regularizer.k = Array(repeating: 1, count: layers.count)
        }
        state.k = regularizer.k
        if decisions.contains(where: \.forced) && options.lambdaGrowth > 1 {
            regularizer.lambda *= options.lambdaGrowth
        }
        state.lambda = regularizer.lambda
        state.scheme = QuantizationScheme(quantizedLayers: layers, activationBits: activationBits,
                                          activationExcluded: activationExcluded)
        try plan.collective.checkSameBitScheme(paths: layers.map(\.path), bits: layers.map(\.bits), step: stepsDone)
        printTable(stepsDone: stepsDone, status: status, traces: hessian?.raw, standardErrors: hessian?.standardErrors,
                   omega: omega, before: before,
                   decisions: decisions, deadline: deadline, budget: budget)
        schedulePull(stepsDone: stepsDone, traces: hessian?.traces)
        if compressionRatio(layers) >= options.targetCompression - 1e-9 {
            state.scheduled = []
            state.phase = "finetuning"
            state.finalPhaseStartStep = stepsDone
            plan.log(String(format: "msq: target reached at step %d (epoch %.2f): C %.2fx (paper %.2fx), %.3f bits average, overshoot %.2f %%; finetuning at the fixed scheme %@",
                            stepsDone, Double(stepsDone) / Double(plan.stepsPerEpoch), compressionRatio(layers),
                            compressionRatioPaper(layers), averageWeightBits(layers),
                            100 * (compressionRatio(layers) / options.targetCompression - 1), bitScheme))
        }
    }

    /// Per-layer traces of this interval (nil with the Hessian off): `raw` as estimated, `traces`
    /// floored at 1 % of the mean positive per-weight trace, since a Hutchinson estimate of a
    /// Gauss-Newton block (positive semidefinite) can come out negative from cross-layer probe
    /// noise, and a negative trace would rank a layer as the safest to cut. The probes are split over
    /// the plan's ranks; every rank gets the same traces.
    func estimateTraces(model: Module) throws -> (raw: [Double], traces: [Double], standardErrors: [Double])? {
        guard options.hessian, let calibration else { return nil }
        let start = Date()
        let traceSeed = seed &+ 0x4865_7373 &+ UInt64(state.hessianEstimates)
        let (estimate, how) = try atQuantizedWeights(model: model) {
            try options.hessianTrace.estimate(model: model, layers: layers, calibration: calibration, seed: traceSeed,
                                              maxProbes: options.hessianProbes,
                                              relativeTolerance: options.hessianTolerance, mode: options.hessianMode,
                                              collective: plan.collective)
        }
        state.hessianEstimates += 1
        state.hessianProbesUsed += estimate.probes
        let seconds = Date().timeIntervalSince(start)
        state.hessianSeconds += seconds
        plan.log(String(format: "  Hessian traces (%@): %d probes on %d images, %.1f s; total trace %.4g",
                        how, estimate.probes, calibration.labels.count, seconds, estimate.totalTrace))
        return (estimate.traces, flooredTraces(estimate.traces, counts: layers.map(\.count)),
                estimate.variances.map { $0.squareRoot() })
    }

    /// The estimated loss increase of dropping layer `i` by 1, 2, … bits down to n_min
    /// (MSQ-SPEC §3): Tr(H_l)/N_l · (‖Q_{n−j}(W) − W‖² − ‖Q_n(W) − W‖²), the trace factor left out
    /// when `traces` is nil (Hessian off).
    func dropLoss(layer i: Int, traces: [Double]?) -> [Double] {
        let layer = layers[i]
        guard layer.bits > options.minBits else { return [] }
        let precisions = Array((options.minBits...layer.bits).reversed())
        let errors = layer.quantizer.squaredErrors(of: layer.parameter.value, bits: precisions)
        let factor = traces.map { $0[i] / Double(max(1, layer.count)) } ?? 1
        return errors.dropFirst().map { factor * max(0, $0 - errors[0]) }
    }

    /// ``atQuantizedWeights(model:layers:_:)`` over this run's layers.
    func atQuantizedWeights<T>(model: Module, _ body: () throws -> T) rethrows -> T {
        try MSQ.atQuantizedWeights(model: model, layers: layers, body)
    }

    /// The per-layer precisions as one line, `conv1:8 layer1.0.conv1:3 …`.
    public var bitScheme: String { layers.map { "\($0.path):\($0.bits)" }.joined(separator: " ") }

    func printTable(stepsDone: Int, status: [PruningLayerStatus], traces: [Double]?, standardErrors: [Double]?,
                    omega: [Double]?,
                    before: [Int], decisions: [PruningDecision], deadline: Bool, budget: Double) {
        let forced = decisions.filter(\.forced).count
        plan.log(String(format: "pruning interval %d (step %d, epoch %.2f%@): C %.2fx (paper %.2fx), %.3f bits avg, budget %.3f bits avg, λ %g, %d pruned (%d forced)",
                        state.intervals, stepsDone, Double(stepsDone) / Double(plan.stepsPerEpoch),
                        deadline ? ", deadline" : "", compressionRatio(layers), compressionRatioPaper(layers),
                        averageWeightBits(layers), budget / Double(regularizer.totalCount), regularizer.lambda,
                        decisions.count, forced))
        let width = max(5, layers.map(\.path.count).max() ?? 5)
        func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
        func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? s : String(repeating: " ", count: w - s.count) + s }
        plan.log("  " + pad("layer", width) + lpad("params", 8) + lpad("bits", 5) + lpad("r", 8) + lpad("Tr(H)", 11)
                 + lpad("±se", 10) + lpad("Ω", 11) + lpad("k", 3) + "  change")
        for (i, layer) in layers.enumerated() {
            let change: String
            if let d = decisions.last(where: { $0.path == layer.path }) {
                change = "\(before[i])→\(d.toBits)" + (d.forced ? " forced" : "")
            } else {
                change = ""
            }
            plan.log("  " + pad(layer.path, width) + lpad(String(layer.count), 8) + lpad(String(before[i]), 5)
                     + lpad(status[i].nonzeroRate.map { String(format: "%.4f", $0) } ?? "-", 8)
                     + lpad(traces.map { String(format: "%.3e", $0[i]) } ?? "-", 11)
                     + lpad(standardErrors.map { String(format: "%.1e", $0[i]) } ?? "-", 10)
                     + lpad(omega.map { String(format: "%.3e", $0[i]) } ?? "-", 11)
                     + lpad(String(status[i].k), 3) + "  " + change)
        }
    }

    public func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
        log(String(format: "msq: after epoch %d: %@, C %.2fx (paper %.2fx), %.3f bits average; scheme %@",
                   epoch, isFinetuning ? "finetuning" : "pruning", compressionRatio(layers),
                   compressionRatioPaper(layers), averageWeightBits(layers), bitScheme))
    }

    public func encodeState() throws -> String {
        state.scheme = QuantizationScheme(quantizedLayers: layers, activationBits: activationBits,
                                          activationExcluded: activationExcluded)
        state.k = regularizer.k
        state.lambda = regularizer.lambda
        return try encodeMethodState(state)
    }

    public func restoreState(_ json: String) throws {
        let restored = try decodeMethodState(State.self, from: json, method: "MSQ")
        guard restored.scheme.layers.map(\.path) == layers.map(\.path), restored.k.count == layers.count else {
            throw CheckpointError.mismatch(path: "method state", reason: "its quantized layers differ from this model's")
        }
        if fixedScheme && restored.scheme.layers != state.scheme.layers {
            throw CheckpointError.mismatch(path: "method state", reason: "its precisions differ from the fixed bit scheme")
        }
        try checkScaleGranularity(restored.scheme, layers: layers)
        try validateRestored(restored)
        state = restored
    }

    public func summaryFields() -> [String: Any] {
        var fields = pruningRunSummary(paths: layers.map(\.path), counts: layers.map(\.count), bits: layers.map(\.bits),
                          targetCompression: options.targetCompression,
                          events: state.events.map { pruningEventObject(step: $0.step, epoch: $0.epoch, decision: $0.decision) },
                          forcedPrunings: state.events.filter(\.decision.forced).count, intervals: state.intervals,
                          finalLambda: regularizer.lambda,
                          hessian: HessianSummary(enabled: options.hessian, estimates: state.hessianEstimates,
                                                  probes: state.hessianProbesUsed, seconds: state.hessianSeconds),
                          activationBits: activationBits, finalPhaseStartStep: state.finalPhaseStartStep,
                          stepsPerEpoch: plan.stepsPerEpoch)
        fields.merge(overshootSummary(reached: compressionRatio(layers), target: options.targetCompression)) { _, new in new }
        fields["lambda_scaling"] = options.lambdaScaling.rawValue
        fields["forced_order"] = options.forcedOrder.rawValue
        fields["scheduled_pull"] = options.scheduledPull
        fields["fixed_scheme"] = fixedScheme
        return fields
    }
}
