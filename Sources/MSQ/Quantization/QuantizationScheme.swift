import Foundation

/// A model's quantization layout: which conv/linear layers are quantized at how many bits, and
/// whether their inputs are quantized too. Enough, with the model kind, to rebuild the quantized
/// graph (for `--resume`, `msq export` and `msq eval`).
public struct QuantizationScheme: Codable, Equatable, Sendable {
    /// Per quantized layer, in the model's walk order: module path and precision n_l (sign included).
    public var layers: [LayerBits]
    /// PACT activation bits A on the inputs of the quantized layers (MSQ-SPEC §5); nil = float inputs.
    public var activationBits: Int?
    /// Quantized layers whose INPUT stays float even when ``activationBits`` is set (the layer
    /// that reads the network input; MSQ-SPEC §5).
    public var activationExcluded: [String]
    /// Whether every quantized layer's RoundClamp scale is per tensor (default) or per output
    /// channel (MSQ-SPEC §1). In JSON under `scaleGranularity`, written only when per channel, so
    /// per-tensor schemes serialise as before this option existed and old method states decode as
    /// per tensor.
    public var scaleGranularity: ScaleGranularity

    /// A layer path and its precision.
    public struct LayerBits: Codable, Equatable, Sendable {
        /// Module path (`conv1`, `layer2.1.conv2`, `fc`).
        public var path: String
        /// n_l, bits per stored weight, sign included.
        public var bits: Int
        /// Bundles a path and a precision.
        public init(path: String, bits: Int) {
            self.path = path
            self.bits = bits
        }
    }

    /// A scheme from explicit per-layer precisions.
    public init(layers: [LayerBits], activationBits: Int? = nil, activationExcluded: [String] = [],
                scaleGranularity: ScaleGranularity = .perTensor) {
        self.layers = layers
        self.activationBits = activationBits
        self.activationExcluded = activationExcluded
        self.scaleGranularity = scaleGranularity
    }

    /// The scheme of already-quantized layers (their current precisions and their quantizers'
    /// scale granularity, which must be the same for all; per tensor when there are none).
    public init(quantizedLayers: [QuantizedLayer], activationBits: Int? = nil, activationExcluded: [String] = []) {
        let granularity = quantizedLayers.first?.quantizer.granularity ?? .perTensor
        precondition(quantizedLayers.allSatisfy { $0.quantizer.granularity == granularity },
                     "QuantizationScheme: the layers mix per-tensor and per-channel scales; a scheme has one granularity")
        self.init(layers: quantizedLayers.map { LayerBits(path: $0.path, bits: $0.bits) },
                  activationBits: activationBits, activationExcluded: activationExcluded, scaleGranularity: granularity)
    }

    enum CodingKeys: String, CodingKey {
        case layers, activationBits, activationExcluded, scaleGranularity
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        layers = try c.decode([LayerBits].self, forKey: .layers)
        activationBits = try c.decodeIfPresent(Int.self, forKey: .activationBits)
        activationExcluded = try c.decode([String].self, forKey: .activationExcluded)
        scaleGranularity = try c.decodeIfPresent(ScaleGranularity.self, forKey: .scaleGranularity) ?? .perTensor
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(layers, forKey: .layers)
        try c.encodeIfPresent(activationBits, forKey: .activationBits)
        try c.encode(activationExcluded, forKey: .activationExcluded)
        if scaleGranularity != .perTensor { try c.encode(scaleGranularity, forKey: .scaleGranularity) }
    }

    /// Attaches RoundClamp quantizers to `model`'s layers at this scheme's precisions and
    /// ``scaleGranularity`` (layers not listed stay float) and returns them in the scheme's order. When ``activationBits`` is set, it
    /// then attaches a ``PACTQuantizer`` at that precision (α = 6, the checkpoint's `input_alpha`
    /// tensors overwrite it on restore) to the input of every conv/linear layer not in
    /// ``activationExcluded`` (see ``quantizeActivations(_:bits:excluded:initialClip:)``).
    /// - Throws: ``QuantizationError`` when a path names no conv/linear layer or bits are out of range.
    ///   The activation request is checked before any quantizer is attached, so nothing changes on a throw.
    public func apply(to model: any Module) throws -> [QuantizedLayer] {
        if let activationBits {
            // Validate first: quantizeForMSQ below mutates the model, and a refusal afterwards
            // would leave the weights quantized without their activation quantizers.
            _ = try validateActivationRequest(model, bits: activationBits, excluded: Set(activationExcluded),
                                              initialClip: 6)
        }
        let listed = Set(layers.map(\.path))
        let all = quantizableLayers(of: model).map(\.path)
        let excluded = Set(all.filter { !listed.contains($0) })
        var overrides: [String: Int] = [:]
        for l in layers { overrides[l.path] = l.bits }
        let quantized = try quantizeForMSQ(model, initialBits: 8, overrides: overrides, excluded: excluded,
                                           scaleGranularity: scaleGranularity)
        if let activationBits {
            // Only quantized layers get quantized inputs (MSQ-SPEC §5): float layers stay float.
            try quantizeActivations(model, bits: activationBits, excluded: Set(activationExcluded).union(excluded))
        }
        let byPath = Dictionary(uniqueKeysWithValues: quantized.map { ($0.path, $0) })
        return layers.compactMap { byPath[$0.path] }
    }

    /// The scheme stored under the key `scheme` of a training method's checkpoint state
    /// (``Checkpoint/Header/methodState``).
    /// - Throws: ``QuantizationError/noScheme`` when the state holds none (a float run).
    public static func decode(fromMethodState json: String) throws -> QuantizationScheme {
        struct Wrapper: Decodable { var scheme: QuantizationScheme? }
        guard let wrapper = try? JSONDecoder().decode(Wrapper.self, from: Data(json.utf8)),
              let scheme = wrapper.scheme else { throw QuantizationError.noScheme }
        return scheme
    }
}
