import Foundation

/// The options of a DoReFa run (uniform quantization-aware training, MSQ-SPEC §7); CLI names in brackets.
public struct DoReFaOptions: Codable, Sendable, Equatable {
    /// k, bits per weight (sign included) of every conv/linear layer [--weight-bits]. C = 32 / k.
    public var weightBits: Int
    /// Multiply each layer's w_q by max|W| (``DoReFaQuantizer/scaled``) [--dorefa-scaled]. Default
    /// off: DoReFa's formula.
    public var scaled: Bool = false
    /// M (and s when ``scaled``) per tensor (default) or per output channel
    /// (``DoReFaQuantizer/granularity``) [--scale].
    public var scaleGranularity: ScaleGranularity = .perTensor

    /// Options for k-bit weights.
    public init(weightBits: Int) {
        self.weightBits = weightBits
    }

    /// The options as name → value, for the run fingerprint. `dorefa.scale` only when per channel:
    /// checkpoints written before the option existed still resume.
    public var identity: [String: String] {
        ["dorefa.weight_bits": String(weightBits), "dorefa.scaled": String(scaled)]
            .merging(scaleGranularity.identity(method: "dorefa")) { shared, _ in shared }
    }

    /// Checks the range a user can get wrong.
    public func validate() throws(TrainingError) {
        if !msqBitRange.contains(weightBits) {
            throw .invalidMethodOption(options: "DoReFaOptions", property: "weightBits", problem: "must be in 2...16 (got \(weightBits))")
        }
    }
}

/// DoReFa-Net uniform quantization-aware training as a ``TrainingMethod`` (MSQ-SPEC §7): every
/// conv/linear layer computes with ``DoReFaQuantizer`` k-bit weights for the whole run (there is no
/// search phase: the run is its own "finetuning phase" from step 0), PACT activations when
/// `activationBits` is set (MSQ-SPEC §5, the network input excluded, as for MSQ).
///
/// ``init(model:options:activationBits:bitScheme:)`` attaches the quantizers, so build the method before the
/// ``Trainer`` (whose optimizer must see the PACT clip levels). The checkpointed state is the
/// per-layer precision table under the key `precisions` (deliberately not `scheme`: `msq export`
/// reads `scheme` as RoundClamp codes, and DoReFa's levels are not RoundClamp's, so export refuses
/// DoReFa checkpoints as "not from an MSQ run").
///
/// **Several processes** (``TrainingPlan/collective``): DoReFa decides nothing during training.
/// Its precisions are its options (or `--bit-scheme`), fixed at construction, and its quantizers are
/// functions of the weights, computed on every rank from its replica; so it neither splits work
/// nor checks the scheme between ranks (there is no decision point to check after).
public final class DoReFaTraining: TrainingMethod {
    /// The run's options.
    public let options: DoReFaOptions
    /// The quantized layers' paths, in walk order.
    public let paths: [String]
    /// N_l per layer.
    public let counts: [Int]
    /// The attached quantizers, in ``paths`` order.
    public let quantizers: [DoReFaQuantizer]
    let activationBits: Int?
    let activationExcluded: [String]
    var plan = TrainingPlan(stepsPerEpoch: 1, epochs: 1, log: { _ in })

    struct State: Codable {
        var precisions: QuantizationScheme
    }

    /// Quantizes every Conv2d and Linear of `model` to `options.weightBits` DoReFa weights (and their
    /// inputs, except the network input, to `activationBits` with PACT). Nothing changes on a throw.
    ///
    /// `bitScheme` (`--bit-scheme`) gives each layer its own precision instead of
    /// `options.weightBits` (which is then unused); it must name every conv/linear layer exactly once
    /// (``BitSchemeSpec/resolve(layerPaths:)`` makes such a list; ``BitSchemeError`` otherwise).
    public init(model: any Module, options: DoReFaOptions, activationBits: Int? = nil,
                bitScheme: [QuantizationScheme.LayerBits]? = nil) throws {
        try options.validate()
        try validateActivationBits(activationBits)
        let layers = try baselineLayers(of: model, method: "dorefa")
        let layerBits = try bitScheme.map { scheme throws(BitSchemeError) in
            try BitSchemeSpec(entries: scheme).resolve(layerPaths: layers.map(\.path)).map(\.bits)
        } ?? layers.map { _ in options.weightBits }
        self.options = options
        self.paths = layers.map(\.path)
        self.counts = layers.map(\.count)
        self.quantizers = layerBits.map {
            DoReFaQuantizer(bits: $0, scaled: options.scaled, granularity: options.scaleGranularity)
        }
        self.activationBits = activationBits
        self.activationExcluded = try attachActivationQuantizers(model, bits: activationBits)
        for (layer, q) in zip(layers, quantizers) { attachWeightTransform(q, to: layer.module) }
    }

    public var name: String { "dorefa" }

    public var scaleGranularity: ScaleGranularity? { options.scaleGranularity }

    var bits: [Int] { quantizers.map(\.bits) }

    /// The precision table (every layer at k bits, and the scale granularity).
    public var scheme: QuantizationScheme {
        var scheme = precisionScheme(paths: paths, bits: bits, activationBits: activationBits, activationExcluded: activationExcluded)
        scheme.scaleGranularity = options.scaleGranularity
        return scheme
    }

    public func prepare(model: Module, plan: TrainingPlan) throws {
        self.plan = plan
        plan.log(String(format: "dorefa: %d layers, %d weights%@ at %@, %@ scales (C %.2fx, paper %.2fx); activations %@",
                        paths.count, counts.reduce(0, +), options.scaled ? " (× max|W|)" : "", precisionDescription,
                        options.scaleGranularity.rawValue,
                        LSBPruningScheduler.compression(counts: counts, bits: bits),
                        paperCompression(counts: counts, bits: bits),
                        activationBits.map { "\($0)-bit PACT" } ?? "float"))
    }

    public func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double { 0 }

    public func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
        log(String(format: "dorefa: after epoch %d: weights at %@, C %.2fx (paper %.2fx)", epoch, precisionDescription,
                   LSBPruningScheduler.compression(counts: counts, bits: bits), paperCompression(counts: counts, bits: bits)))
    }

    /// `3 bits` for a uniform run, else the average and the scheme.
    var precisionDescription: String {
        Set(bits).count == 1 ? "\(bits[0]) bits"
            : String(format: "a mixed scheme, %.3f bits average: ", meanBits(counts: counts, bits: bits))
                + bitSchemeLine(paths: paths, bits: bits)
    }

    public func encodeState() throws -> String { try encodeMethodState(State(precisions: scheme)) }

    public func restoreState(_ json: String) throws {
        let restored = try decodeMethodState(State.self, from: json, method: "DoReFa")
        guard restored.precisions.layers == scheme.layers else {
            throw CheckpointError.mismatch(path: "method state", reason: "its DoReFa layers or bits differ from this run's")
        }
        guard restored.precisions.scaleGranularity == options.scaleGranularity else {
            throw CheckpointError.mismatch(path: "method state", reason: "its DoReFa scales are \(restored.precisions.scaleGranularity), this run's are \(options.scaleGranularity) (--scale)")
        }
    }

    public func summaryFields() -> [String: Any] {
        var fields = precisionSummary(paths: paths, counts: counts, bits: bits)
        fields["weight_quantizer"] = options.scaled ? "dorefa-scaled" : "dorefa"
        fields["pruning_events"] = [Any]()
        fields["forced_prunings"] = 0
        fields["pruning_intervals"] = 0
        fields["final_phase_start_step"] = 0
        fields["final_phase_start_epoch"] = 0.0
        fields["activation_bits"] = activationBits ?? 32
        return fields
    }
}
