import Foundation

/// The options of a HAWQ run (HAWQ-V2-style allocation, issue 13); CLI names in brackets.
public struct HAWQOptions: Codable, Sendable, Equatable {
    /// Target compression C, sign counted [--target-compression].
    public var targetCompression: Double
    /// n_min, the lowest precision a layer may get [--min-bits].
    public var minBits: Int = 2
    /// The highest precision a layer may get [--weight-bits].
    public var maxBits: Int = 8
    /// Float training before the traces are taken, in epochs; 0 allocates at step 0 (after
    /// `--init-from` a float run's weights) [--hawq-warmup].
    public var warmupEpochs: Double = 1
    /// Calibration images for the traces [--hessian-batch].
    public var hessianBatch: Int = 64
    /// Most probes of the trace estimate [--hessian-probes].
    public var hessianProbes: Int = 32
    /// Relative change of the running trace mean under which probing stops.
    public var hessianTolerance: Double = 0.01
    /// The trace estimator [--hessian-trace].
    public var hessianTrace: TraceEstimator = .sampledGaussNewton
    /// Per-tensor or per-output-channel RoundClamp scales [--scale]. Used by
    /// ``HAWQTraining/setUp(model:options:context:)``; fingerprinted as `hawq.scale` when per channel.
    public var scaleGranularity: ScaleGranularity = .perTensor

    /// Options with the given target and the defaults above.
    public init(targetCompression: Double) {
        self.targetCompression = targetCompression
    }

    /// The options as name → value, for the run fingerprint.
    public var identity: [String: String] {
        ["hawq.target_compression": String(targetCompression), "hawq.min_bits": String(minBits),
         "hawq.weight_bits": String(maxBits), "hawq.warmup": String(warmupEpochs),
         "hawq.hessian_batch": String(hessianBatch), "hawq.hessian_probes": String(hessianProbes),
         "hawq.hessian_tolerance": String(hessianTolerance), "hawq.hessian_trace": hessianTrace.rawValue]
    }

    /// Checks ranges a user can get wrong for a model of `counts` weights per layer.
    public func validate(counts: [Int]) throws(TrainingError) {
        if !msqBitRange.contains(minBits) { throw .invalidMethodOption(options: "HAWQOptions", property: "minBits", problem: "must be in 2...16 (got \(minBits))") }
        if !msqBitRange.contains(maxBits) || maxBits < minBits {
            throw .invalidMethodOption(options: "HAWQOptions", property: "maxBits", problem: "must be in \(minBits)...16 (from minBits to 16; got \(maxBits))")
        }
        let most = LSBPruningScheduler.compression(counts: counts, bits: counts.map { _ in minBits })
        if !(targetCompression > 1) || !targetCompression.isFinite || targetCompression > most + 1e-9 {
            throw .invalidMethodOption(options: "HAWQOptions", property: "targetCompression", problem: String(format: "must be above 1 and at most %.2f (every layer at minBits %d) (got %g)", most, minBits, targetCompression))
        }
        if !(warmupEpochs >= 0) || !warmupEpochs.isFinite { throw .invalidMethodOption(options: "HAWQOptions", property: "warmupEpochs", problem: "must be ≥ 0 epochs (got \(warmupEpochs))") }
        try validateHessianSampling(batch: hessianBatch, probes: hessianProbes, options: "HAWQOptions")
    }
}

/// HAWQ-style mixed precision as a ``TrainingMethod``: a baseline practitioners know (NNCF ships it).
///
/// 1. Float training for ``HAWQOptions/warmupEpochs`` (the RoundClamp quantizers are bypassed), or
///    none after `--init-from`.
/// 2. Per-layer traces of the float model on the calibration batch, and for every n in
///    [n_min, n_max] the HAWQ-V2 sensitivity Ω_l(n) = Tr(H_l)/N_l · ‖Q_n(W_l) − W_l‖².
/// 3. The precisions minimising Σ_l Ω_l(n_l) subject to C ≥ target, by the exact dynamic programme
///    ``allocateBits(_:budgetBits:)``.
/// 4. Quantization-aware training at that fixed scheme (RoundClamp, as MSQ's finetuning phase) for
///    the rest of the run. The checkpointed state carries the scheme under `scheme`, so
///    `msq export` and `msq eval` work as for MSQ.
///
/// **Several processes** (``TrainingPlan/collective``): the traces' probes are split over the ranks
/// (each evaluates every P-th probe, see ``HutchinsonTrace/estimate(collective:)`` and
/// ``SampledGaussNewtonTrace/estimate(collective:)``) and every rank gets the same traces, the ones
/// one process would estimate. The sensitivities and the allocation are computed on every rank from
/// its replica's weights and those traces (identical replicas, identical scheme, no communication;
/// a broadcast from rank 0 would hide a drifted replica instead of reporting it), and
/// ``Collective/checkSameBitScheme(paths:bits:step:)`` then checks that the ranks hold the same
/// scheme, throwing ``CollectiveError/replicasDiffer(_:)`` if not.
public final class HAWQTraining: TrainingMethod {
    /// The run's options.
    public let options: HAWQOptions
    /// The quantized layers.
    public let layers: [QuantizedLayer]
    let calibration: (images: Tensor, labels: [Int32])
    let seed: UInt64
    var plan = TrainingPlan(stepsPerEpoch: 1, epochs: 1, log: { _ in })

    struct State: Codable {
        var scheme: QuantizationScheme
        var phase: String = "warmup"
        var traces: [Double]? = nil
        var allocationStep: Int? = nil
        var hessianSeconds: Double = 0
        var hessianProbes: Int = 0
    }
    var state: State

    /// A HAWQ method over `layers` (RoundClamp quantizers attached, e.g. by ``quantizeForMSQ(_:initialBits:overrides:excluded:scaleGranularity:)``).
    public init(layers: [QuantizedLayer], options: HAWQOptions, calibration: (images: Tensor, labels: [Int32]),
                seed: UInt64) throws {
        try options.validate(counts: layers.map(\.count))
        self.options = options
        self.layers = layers
        self.calibration = calibration
        self.seed = seed
        for layer in layers { layer.quantizer.bits = options.maxBits }
        self.state = State(scheme: QuantizationScheme(quantizedLayers: layers))
    }

    public var name: String { "hawq" }

    /// The scale granularity of the layers' RoundClamp quantizers.
    public var scaleGranularity: ScaleGranularity? { QuantizationScheme(quantizedLayers: layers).scaleGranularity }

    /// Whether the scheme has been chosen (the QAT phase).
    public var isAllocated: Bool { state.phase == "qat" }

    var warmupSteps: Int { RunLimits.steps(epochs: options.warmupEpochs, stepsPerEpoch: plan.stepsPerEpoch) }

    public func prepare(model: Module, plan: TrainingPlan) throws {
        self.plan = plan
        if warmupSteps >= plan.totalSteps && !isAllocated {
            throw TrainingError.invalidMethodOption(options: "HAWQOptions", property: "warmupEpochs", problem: String(format: "%g epochs is the whole run (%d steps): nothing would be trained quantized", options.warmupEpochs, plan.totalSteps))
        }
        let bitsByPath = Dictionary(uniqueKeysWithValues: state.scheme.layers.map { ($0.path, $0.bits) })
        for layer in layers {
            layer.quantizer.bits = bitsByPath[layer.path] ?? options.maxBits
            layer.quantizer.isBypassed = !isAllocated
        }
        if !isAllocated {
            plan.log(String(format: "hawq: %d layers; float warm-up for %d steps, then traces (%@) and the least-Ω scheme for C %.2fx (paper %.2fx), bits %d…%d",
                            layers.count, warmupSteps, options.hessianTrace.rawValue, options.targetCompression,
                            32 / (32 / options.targetCompression - 1), options.minBits, options.maxBits))
            if warmupSteps == 0 { try allocate(model: model, stepsDone: 0) }
        }
    }

    public func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
        if !isAllocated && step + 1 == warmupSteps { try allocate(model: model, stepsDone: step + 1) }
        return 0
    }

    func allocate(model: Module, stepsDone: Int) throws {
        let start = Date()
        for layer in layers { layer.quantizer.isBypassed = true }
        let (estimate, _) = try options.hessianTrace.estimate(model: model, layers: layers, calibration: calibration,
                                                              seed: seed &+ 0x4841_5751, maxProbes: options.hessianProbes,
                                                              relativeTolerance: options.hessianTolerance,
                                                              collective: plan.collective)
        let counts = layers.map(\.count)
        let traces = flooredTraces(estimate.traces, counts: counts)
        let precisions = Array(options.minBits...options.maxBits)
        let choices = layers.enumerated().map { i, layer in
            BitAllocationLayer(count: layer.count, losses: Dictionary(uniqueKeysWithValues: zip(
                precisions, sensitivities(trace: traces[i], layer: layer, bits: precisions))))
        }
        let budget = 32 * Double(counts.reduce(0, +)) / options.targetCompression
        guard let bits = allocateBits(choices, budgetBits: budget) else {
            throw TrainingError.invalidMethodOption(options: "HAWQOptions", property: "targetCompression", problem: "\(options.targetCompression) cannot be met with minBits \(options.minBits)")
        }
        for (layer, b) in zip(layers, bits) {
            layer.quantizer.bits = b
            layer.quantizer.isBypassed = false
        }
        state.traces = estimate.traces
        state.scheme = QuantizationScheme(quantizedLayers: layers)
        state.phase = "qat"
        state.allocationStep = stepsDone
        state.hessianProbes = estimate.probes
        state.hessianSeconds = Date().timeIntervalSince(start)
        try plan.collective.checkSameBitScheme(paths: layers.map(\.path), bits: layers.map(\.bits), step: stepsDone)
        plan.log(String(format: "hawq: at step %d, traces from %d probes in %.1f s; scheme for C %.2fx (paper %.2fx), %.3f bits average: %@",
                        stepsDone, estimate.probes, state.hessianSeconds, compressionRatio(layers),
                        compressionRatioPaper(layers), averageWeightBits(layers),
                        layers.map { "\($0.path):\($0.bits)" }.joined(separator: " ")))
        for (i, layer) in layers.enumerated() {
            plan.log(String(format: "  %@  N %d  Tr(H) %.3e  Ω(%d) %.3e", layer.path, layer.count, estimate.traces[i],
                            layer.bits, choices[i].losses[layer.bits] ?? 0))
        }
    }

    public func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
        log(String(format: "hawq: after epoch %d: %@, C %.2fx (paper %.2fx)", epoch, isAllocated ? "QAT" : "float warm-up",
                   compressionRatio(layers), compressionRatioPaper(layers)))
    }

    public func encodeState() throws -> String { try encodeMethodState(state) }

    public func restoreState(_ json: String) throws {
        let restored = try decodeMethodState(State.self, from: json, method: "HAWQ")
        guard restored.scheme.layers.map(\.path) == layers.map(\.path) else {
            throw CheckpointError.mismatch(path: "method state", reason: "its quantized layers differ from this model's")
        }
        try checkScaleGranularity(restored.scheme, layers: layers)
        try MethodStateChecks.bits(restored.scheme, in: options.minBits...options.maxBits, field: "scheme")
        try MethodStateChecks.phase(restored.phase, ["warmup", "qat"])
        try MethodStateChecks.counters([("allocationStep", restored.allocationStep), ("hessianProbes", restored.hessianProbes)])
        try MethodStateChecks.nonNegative("hessianSeconds", restored.hessianSeconds)
        if let traces = restored.traces, traces.count != layers.count || traces.contains(where: { !$0.isFinite }) {
            throw MethodStateChecks.invalid("traces", "has \(traces.count) values for \(layers.count) layers, or one not finite")
        }
        state = restored
    }

    public func summaryFields() -> [String: Any] {
        var fields = precisionSummary(paths: layers.map(\.path), counts: layers.map(\.count), bits: layers.map(\.bits))
        fields["target_compression"] = options.targetCompression
        fields.merge(overshootSummary(reached: compressionRatio(layers), target: options.targetCompression)) { _, new in new }
        fields["pruning_events"] = [Any]()
        fields["forced_prunings"] = 0
        fields["pruning_intervals"] = 0
        fields["hessian"] = true
        fields["hessian_seconds"] = state.hessianSeconds
        fields["hessian_probes_total"] = state.hessianProbes
        fields["hawq_traces"] = state.traces ?? []
        if let s = state.allocationStep {
            fields["final_phase_start_step"] = s
            fields["final_phase_start_epoch"] = Double(s) / Double(plan.stepsPerEpoch)
        } else {
            fields["final_phase_start_epoch"] = NSNull()
        }
        fields["activation_bits"] = 32
        return fields
    }
}
