import Foundation

// Helpers shared by the baseline methods (DoReFa, BSQ, CSQ; MSQ-SPEC §7).

/// The conv/linear layers a baseline quantizes (all of them, MSQ-SPEC §3's default), with their
/// weight counts. Throws when the model has none.
func baselineLayers(of model: any Module, method: String) throws -> [(path: String, module: any Module, count: Int)] {
    let layers = quantizableLayers(of: model).compactMap { path, module in
        layerWeight(of: module).map { (path: path, module: module, count: $0.value.count) }
    }
    if layers.isEmpty { throw TrainingError.invalidOption("\(method): the model has no Conv2d or Linear layer to quantize") }
    return layers
}

/// Attaches PACT input quantizers at `bits` to every conv/linear layer except the one reading the
/// network input (MSQ-SPEC §5, as ``QuantizationScheme/apply(to:)`` does for MSQ). Returns the
/// excluded paths. `bits` nil: nothing is attached.
func attachActivationQuantizers(_ model: any Module, bits: Int?) throws -> [String] {
    guard let bits else { return [] }
    let excluded = defaultActivationExclusions(model)
    try quantizeActivations(model, bits: bits, excluded: excluded)
    return excluded.sorted()
}

/// The conv/linear layers of a bit-plane baseline (BSQ, CSQ) after checking `options` against them
/// and `activationBits`, with PACT input quantizers attached (the returned paths are the ones left
/// float). Everything is checked before anything is attached, so nothing changes on a throw.
func attachBitLevelBaseline(to model: any Module, method: String, options: some PruningScheduleOptions,
                            activationBits: Int?) throws -> (layers: [(path: String, module: any Module, count: Int)],
                                                             activationExcluded: [String]) {
    let layers = try baselineLayers(of: model, method: method)
    try options.validate(maxCompression: options.maxCompression(counts: layers.map(\.count)))
    try validateActivationBits(activationBits)
    return (layers, try attachActivationQuantizers(model, bits: activationBits))
}

/// A baseline's precision table over `paths` (what its checkpoint stores as `precisions`).
func precisionScheme(paths: [String], bits: [Int], activationBits: Int?, activationExcluded: [String]) -> QuantizationScheme {
    QuantizationScheme(layers: zip(paths, bits).map { .init(path: $0, bits: $1) },
                       activationBits: activationBits, activationExcluded: activationExcluded)
}

/// The checkpointed progress BSQ's and CSQ's method states share (the same JSON keys in both).
protocol BitPlaneProgress {
    var events: [BitPlaneEvent] { get }
    var finalPhaseStartStep: Int? { get }
    var intervals: Int { get }
}

/// What the bit-plane baselines (``BSQTraining``, ``CSQTraining``) share to report a run: the
/// precisions of the conv/linear layers in walk order and the progress in their state.
protocol BitPlaneMethod: AnyObject {
    associatedtype Options: PruningScheduleOptions
    associatedtype State: BitPlaneProgress
    var options: Options { get }
    var paths: [String] { get }
    var counts: [Int] { get }
    var bits: [Int] { get }
    var activationBits: Int? { get }
    var activationExcluded: [String] { get }
    var plan: TrainingPlan { get }
    var state: State { get }
}

extension BitPlaneMethod {
    /// The current precision table (what the checkpoint stores as `precisions`).
    var currentScheme: QuantizationScheme {
        precisionScheme(paths: paths, bits: bits, activationBits: activationBits, activationExcluded: activationExcluded)
    }

    /// ``pruningRunSummary(paths:counts:bits:targetCompression:events:forcedPrunings:intervals:finalLambda:hessian:activationBits:finalPhaseStartStep:stepsPerEpoch:)``
    /// for this run (no Hessian) with `weight_quantizer` and `bit_planes_allocated` (planes per weight).
    func bitPlaneSummary(weightQuantizer: String, planes: Int, finalLambda: Double) -> [String: Any] {
        var fields = pruningRunSummary(paths: paths, counts: counts, bits: bits, targetCompression: options.targetCompression,
                                       events: state.events.map(\.summaryObject),
                                       forcedPrunings: state.events.filter(\.decision.forced).count,
                                       intervals: state.intervals, finalLambda: finalLambda,
                                       activationBits: activationBits, finalPhaseStartStep: state.finalPhaseStartStep,
                                       stepsPerEpoch: plan.stepsPerEpoch)
        fields["weight_quantizer"] = weightQuantizer
        fields["bit_planes_allocated"] = planes
        return fields
    }
}

/// Checks --act-bits for a baseline before anything is attached.
func validateActivationBits(_ bits: Int?) throws(TrainingError) {
    if let a = bits, !msqBitRange.contains(a) { throw .invalidMethodOption(options: "MethodContext", property: "activationBits", problem: "must be in 2...16 (got \(a))") }
}

/// C_paper = 32 · Σ N_l / Σ N_l · (n_l − 1) (magnitude bits only; +∞ when every layer is at 1 bit).
func paperCompression(counts: [Int], bits: [Int]) -> Double {
    let total = counts.reduce(0.0) { $0 + Double($1) }
    let stored = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1 - 1) }
    if total == 0 { return 1 }
    return stored > 0 ? 32 * total / stored : .infinity
}

/// Σ N_l n_l / Σ N_l (0 for no layers).
func meanBits(counts: [Int], bits: [Int]) -> Double {
    let total = counts.reduce(0.0) { $0 + Double($1) }
    let stored = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    return total > 0 ? stored / total : 0
}

/// Σ N_l n_l.
func storedBits(counts: [Int], bits: [Int]) -> Double {
    zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
}

/// `conv1:8 layer1.0.conv1:3 …`.
func bitSchemeLine(paths: [String], bits: [Int]) -> String {
    zip(paths, bits).map { "\($0):\($1)" }.joined(separator: " ")
}

/// The precision fields every quantized method writes into `summary.json`, named as MSQ's
/// (``MSQTraining/summaryFields()``): `compression_ratio` (sign counted), `compression_ratio_paper`,
/// `average_weight_bits`, `layers` (`name`, `params`, `bits`) and `bit_scheme`.
func precisionSummary(paths: [String], counts: [Int], bits: [Int]) -> [String: Any] {
    [
        "compression_ratio": LSBPruningScheduler.compression(counts: counts, bits: bits),
        "compression_ratio_paper": paperCompression(counts: counts, bits: bits),
        "average_weight_bits": meanBits(counts: counts, bits: bits),
        "layers": zip(paths, zip(counts, bits)).map { ["name": $0, "params": $1.0, "bits": $1.1] as [String: Any] },
        "bit_scheme": bitSchemeLine(paths: paths, bits: bits),
    ]
}

/// One precision change of a bit-level baseline (BSQ plane removal, CSQ mask hardening): a
/// ``PruningDecision`` with when it happened and which plane went.
public struct BitPlaneEvent: Codable, Sendable, Equatable {
    /// The global step after which the precision changed (1-based count of steps done).
    public var step: Int
    /// The same moment in epochs.
    public var epoch: Double
    /// Layer, bits before and after (sign counted), the removed plane's nonzero rate, forced or not.
    public var decision: PruningDecision
    /// Which plane: `msb` or `lsb` (BSQ), `plane b` (CSQ; b = significance on the initial grid).
    public var plane: String

    /// Bundles one event.
    public init(step: Int, epoch: Double, decision: PruningDecision, plane: String) {
        self.step = step
        self.epoch = epoch
        self.decision = decision
        self.plane = plane
    }

    /// The event as a `summary.json` object, with MSQ's keys plus `plane`.
    var summaryObject: [String: Any] {
        pruningEventObject(step: step, epoch: epoch, decision: decision).merging(["plane": plane]) { _, new in new }
    }
}

/// Encodes a method state as sorted-key JSON.
func encodeMethodState<T: Encodable>(_ state: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(state), as: UTF8.self)
}

/// Decodes a method state, mapping decoding failures to ``CheckpointError/corrupt(path:reason:)``.
func decodeMethodState<T: Decodable>(_ type: T.Type, from json: String, method: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: Data(json.utf8))
    } catch {
        throw CheckpointError.corrupt(path: "method state", reason: "cannot read the \(method) state: \(error)")
    }
}

/// Left/right padding for the per-interval tables.
func padRight(_ s: String, _ w: Int) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
func padLeft(_ s: String, _ w: Int) -> String { s.count >= w ? s : String(repeating: " ", count: w - s.count) + s }
