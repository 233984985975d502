/// Why ``quantizeForMSQ(_:initialBits:overrides:excluded:scaleGranularity:)`` refused a configuration.
public enum QuantizationError: Error, Equatable, CustomStringConvertible {
    /// An override or exclusion names `path`, which is not a Conv2d or Linear in the model;
    /// `valid` lists every conv/linear module path the model has, in walk order.
    case unknownLayer(path: String, valid: [String])
    /// A precision outside 2…16 bits was requested (`path` is nil for `initialBits`).
    case invalidBits(bits: Int, path: String?)
    /// A checkpoint's method state holds no quantization scheme (it is a float run).
    case noScheme

    /// A one-line message for the CLI and logs.
    public var description: String {
        switch self {
        case let .unknownLayer(path, valid):
            return "no Conv2d or Linear layer at path '\(path)'; valid layer paths: \(valid.joined(separator: ", "))"
        case let .invalidBits(bits, path):
            return "bits \(bits)\(path.map { " for '\($0)'" } ?? "") outside the supported range 2...16"
        case .noScheme:
            return "the checkpoint holds no quantization scheme: it is not from a run that has chosen one (--method msq or hawq, or smpq after its search)"
        }
    }
}

/// One quantized layer of a model: where it is, its stored weight, and its quantizer.
///
/// `count` is N_l, the number of quantized weights (the weight tensor's element count); the
/// layer's precision n_l is `quantizer.bits`.
public struct QuantizedLayer {
    /// The module path of the Conv2d / Linear (`layer1.0.conv1`, `fc`, …).
    public let path: String
    /// The layer's weight parameter (the float "latent" weight W_l the optimizer updates).
    public let parameter: Parameter
    /// The RoundClamp quantizer attached to the layer as its ``WeightTransform``.
    public let quantizer: RoundClampQuantizer
    /// N_l, the number of weights in the layer.
    public let count: Int

    /// Bundles a layer's path, weight, quantizer and weight count.
    public init(path: String, parameter: Parameter, quantizer: RoundClampQuantizer, count: Int) {
        self.path = path
        self.parameter = parameter
        self.quantizer = quantizer
        self.count = count
    }

    /// The current precision n_l (bits per stored weight, sign included).
    public var bits: Int { quantizer.bits }
}

/// The supported precision range for MSQ layers (n, sign included).
public let msqBitRange: ClosedRange<Int> = 2...16

/// Every Conv2d and Linear in `model` with its module path, in `visitModules` order (depth first).
/// The root itself is included (path `""`) when it is a conv or linear layer.
public func quantizableLayers(of model: any Module) -> [(path: String, module: any Module)] {
    var out: [(String, any Module)] = []
    if model is Conv2d || model is Linear { out.append(("", model)) }
    model.visitModules(prefix: "") { path, m in
        if m is Conv2d || m is Linear { out.append((path, m)) }
    }
    return out
}

/// Prepares `model` for MSQ training: attaches a ``RoundClampQuantizer`` as the weight transform
/// of every Conv2d and Linear whose module path is not in `excluded`.
///
/// Every layer starts at `initialBits` (MSQ-SPEC §3 default 8) unless `overrides[path]` gives
/// another precision (e.g. `["conv1": 8]`). Paths are those of `visitModules` (`conv1`,
/// `layer2.1.conv2`, `fc`). Excluded layers keep (or get) no quantizer and stay float.
/// `scaleGranularity` chooses every quantizer's scale: per tensor (default) or per output channel.
///
/// - Returns: the quantized layers in walk order.
/// - Throws: ``QuantizationError/unknownLayer(path:valid:)`` for an override or exclusion that
///   names no conv/linear layer; ``QuantizationError/invalidBits(bits:path:)`` for bits outside 2…16.
///   Nothing in the model changes when it throws.
@discardableResult
public func quantizeForMSQ(_ model: any Module, initialBits: Int = 8, overrides: [String: Int] = [:],
                           excluded: Set<String> = [], scaleGranularity: ScaleGranularity = .perTensor) throws -> [QuantizedLayer] {
    guard msqBitRange.contains(initialBits) else { throw QuantizationError.invalidBits(bits: initialBits, path: nil) }
    let candidates = quantizableLayers(of: model)
    let valid = candidates.map(\.path)
    let validSet = Set(valid)
    for path in overrides.keys.sorted() + excluded.sorted() where !validSet.contains(path) {
        throw QuantizationError.unknownLayer(path: path, valid: valid)
    }
    for (path, bits) in overrides.sorted(by: { $0.key < $1.key }) where !msqBitRange.contains(bits) {
        throw QuantizationError.invalidBits(bits: bits, path: path)
    }
    var layers: [QuantizedLayer] = []
    for (path, module) in candidates where !excluded.contains(path) {
        let quantizer = RoundClampQuantizer(bits: overrides[path] ?? initialBits, granularity: scaleGranularity)
        let weight: Parameter
        if let conv = module as? Conv2d {
            conv.weightTransform = quantizer
            weight = conv.weight
        } else if let linear = module as? Linear {
            linear.weightTransform = quantizer
            weight = linear.weight
        } else {
            continue
        }
        layers.append(QuantizedLayer(path: path, parameter: weight, quantizer: quantizer, count: weight.value.count))
    }
    return layers
}

/// Model compression over the quantized layers, sign bit counted (MSQ-SPEC §3):
///
///     C = 32 · Σ_l N_l / Σ_l N_l · n_l
///
/// What storage of the weights really shrinks by (scales, BN and biases not counted). 1 for no layers.
public func compressionRatio(_ layers: [QuantizedLayer]) -> Double {
    let total = layers.reduce(0.0) { $0 + Double($1.count) }
    let bits = layers.reduce(0.0) { $0 + Double($1.count) * Double($1.bits) }
    return bits > 0 ? 32 * total / bits : 1
}

/// Model compression counting magnitude bits only, as bit-level papers do (MSQ-SPEC §3):
///
///     C_paper = 32 · Σ_l N_l / Σ_l N_l · (n_l − 1)
///
/// All layers at 3 bits give 16 here (10.67 with ``compressionRatio(_:)``). +∞ if every layer is at 1 bit.
public func compressionRatioPaper(_ layers: [QuantizedLayer]) -> Double {
    let total = layers.reduce(0.0) { $0 + Double($1.count) }
    let bits = layers.reduce(0.0) { $0 + Double($1.count) * Double($1.bits - 1) }
    if total == 0 { return 1 }
    return bits > 0 ? 32 * total / bits : .infinity
}

/// The weight-count-weighted mean precision, sign included: Σ_l N_l · n_l / Σ_l N_l (0 for no layers).
public func averageWeightBits(_ layers: [QuantizedLayer]) -> Double {
    let total = layers.reduce(0.0) { $0 + Double($1.count) }
    let bits = layers.reduce(0.0) { $0 + Double($1.count) * Double($1.bits) }
    return total > 0 ? bits / total : 0
}
