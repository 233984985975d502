/// What every method's set-up call takes besides its own options: activation precision, the data
/// a calibration batch comes from, a seed and an optional fixed scheme.
///
/// Activation bits live here and nowhere else: ``MethodSetUp/setUp(model:options:context:)``
/// attaches the PACT quantizers and hands the same value to the method, so the two cannot disagree.
public struct MethodContext {
    /// PACT activation bits A on the inputs of the quantized layers (MSQ-SPEC §5), sign-free; nil
    /// keeps activations in float. The layer that reads the network input stays float
    /// (``defaultActivationExclusions(_:)``).
    public var activationBits: Int?
    /// The training set and its normalisation, from which methods that take Hessian traces (MSQ with
    /// ``MSQOptions/hessian``, HAWQ) draw their calibration batch: the first `hessianBatch` images,
    /// no augmentation. Nil is fine for the other methods.
    public var calibrationData: (dataset: any Dataset, normalization: Normalization)?
    /// Held-out training images for a method that fits choices on data the weights never train on
    /// (SMPQ's α and Shapley values: the `validation` part of ``randomSplit(_:validationFraction:seed:)``,
    /// whose `train` part goes to the ``Trainer``). Nil for the other methods.
    public var validationData: (dataset: any Dataset, normalization: Normalization)?
    /// Seeds the method's own randomness (trace probes); the Trainer's seed is separate.
    public var seed: UInt64
    /// Per-layer precisions to train from step 0 instead of searching (a control run; every
    /// conv/linear layer named once). Supported by MSQ and DoReFa.
    public var bitScheme: [QuantizationScheme.LayerBits]?

    /// A context; every field but the seed defaults to "not used".
    public init(activationBits: Int? = nil, calibrationData: (dataset: any Dataset, normalization: Normalization)? = nil,
                validationData: (dataset: any Dataset, normalization: Normalization)? = nil,
                seed: UInt64 = 0, bitScheme: [QuantizationScheme.LayerBits]? = nil) {
        self.activationBits = activationBits
        self.calibrationData = calibrationData
        self.validationData = validationData
        self.seed = seed
        self.bitScheme = bitScheme
    }

    /// The calibration batch of `count` images for `method`, whose option `property` asked for it.
    func calibrationBatch(count: Int, method: String, property: String) throws -> (images: Tensor, labels: [Int32]) {
        guard let calibrationData else { throw MethodSetUpError.missingCalibrationData(method: method, property: property) }
        return try MSQ.calibrationBatch(from: calibrationData.dataset, normalization: calibrationData.normalization, count: count)
    }

    /// Refuses a fixed scheme for a method that searches its own.
    func refuseBitScheme(method: String) throws {
        if bitScheme != nil { throw MethodSetUpError.bitSchemeUnsupported(method: method) }
    }

    /// Refuses activation bits for a method without activation quantizers.
    func refuseActivationBits(method: String) throws {
        if activationBits != nil { throw MethodSetUpError.activationsUnsupported(method: method) }
    }

}

/// A training method built by one call from a float model, its options and a ``MethodContext``:
/// the call attaches the method's quantizers to the model (weights, and PACT inputs when
/// ``MethodContext/activationBits`` is set), builds any calibration batch and returns the method
/// with its run fingerprint.
///
/// Call it on the model as built (or after loading float weights into it), before the
/// ``Trainer`` builds its optimizer, so the optimizer sees every quantizer parameter. Nothing in
/// the model changes when it throws.
public protocol MethodSetUp: TrainingMethod {
    /// The method's options type (``MSQOptions``, ``DoReFaOptions``, …).
    associatedtype Options
    /// Quantizes `model` for this method and returns the method.
    static func setUp(model: any Module, options: Options, context: MethodContext) throws -> Self
    /// The options, activation bits and scale choice as name → value, for
    /// ``TrainingConfig/methodOptions`` (a resumed run must match them).
    var runIdentity: [String: String] { get }
}

/// Why a method's set-up call refused its context.
public enum MethodSetUpError: Error, Equatable, CustomStringConvertible {
    /// The method takes Hessian traces but ``MethodContext/calibrationData`` is nil.
    case missingCalibrationData(method: String, property: String)
    /// ``MethodContext/bitScheme`` was given to a method that searches its own scheme.
    case bitSchemeUnsupported(method: String)
    /// ``MethodContext/activationBits`` was given to a method that keeps activations in float.
    case activationsUnsupported(method: String)
    /// The method fits choices on held-out data but ``MethodContext/validationData`` is nil.
    case missingValidationData(method: String)

    /// A message naming the property to set.
    public var description: String {
        switch self {
        case let .missingCalibrationData(method, property):
            return "\(method) takes Hessian traces (\(property)), so MethodContext.calibrationData must give the training set they are computed on"
        case let .bitSchemeUnsupported(method):
            return "MethodContext.bitScheme is only supported by MSQ and DoReFa, not \(method); leave it nil"
        case let .activationsUnsupported(method):
            return "\(method) keeps activations in float: leave MethodContext.activationBits nil"
        case let .missingValidationData(method):
            return "\(method) fits its architecture logits and Shapley values on held-out images: set MethodContext.validationData to the validation part of SMPQTraining.split (and train on the other part)"
        }
    }
}

/// The weight counts of the layers `scheme` quantizes in `model`, after checking that its paths and
/// bits fit, without changing the model.
func checkedCounts(of model: any Module, scheme: QuantizationScheme) throws -> [Int] {
    let layers = quantizableLayers(of: model)
    let valid = layers.map(\.path)
    var countOf: [String: Int] = [:]
    for (path, module) in layers {
        countOf[path] = layerWeight(of: module)?.value.count
    }
    return try scheme.layers.map { layer in
        guard let count = countOf[layer.path] else { throw QuantizationError.unknownLayer(path: layer.path, valid: valid) }
        guard msqBitRange.contains(layer.bits) else { throw QuantizationError.invalidBits(bits: layer.bits, path: layer.path) }
        return count
    }
}

/// The first `count` images of `dataset` (fewer if it is smaller), normalised, no augmentation:
/// the fixed calibration batch of the Hessian traces (MSQ-SPEC §4).
public func calibrationBatch(from dataset: any Dataset, normalization: Normalization,
                             count: Int) throws -> (images: Tensor, labels: [Int32]) {
    let loader = try BatchLoader(dataset: dataset, batchSize: max(1, min(count, dataset.count)), shuffle: false,
                                 augmentation: Augmentation(randomCropPadding: 0, horizontalFlip: false),
                                 normalization: normalization, seed: 0, epoch: 0, dropLast: false)
    for batch in loader { return (batch.images, batch.labels) }
    throw TrainingError.invalidOption("the training set is empty: no calibration batch for the Hessian")
}

/// The `<method>.act_bits` fingerprint entry of a method's ``MethodSetUp/runIdentity`` (`off` for
/// float activations), the key `msq train` has always written.
func activationBitsIdentity(_ bits: Int?, method: String) -> [String: String] {
    [method + ".act_bits": bits.map(String.init) ?? "off"]
}
