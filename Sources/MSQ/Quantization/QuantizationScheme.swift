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
    public init(layers: [LayerBits], activationBits: Int? = nil, activationExcluded: [String] = []) {
        self.layers = layers
        self.activationBits = activationBits
        self.activationExcluded = activationExcluded
    }

    /// The scheme of already-quantized layers (their current precisions).
    public init(quantizedLayers: [QuantizedLayer], activationBits: Int? = nil, activationExcluded: [String] = []) {
        self.init(layers: quantizedLayers.map { LayerBits(path: $0.path, bits: $0.bits) },
                  activationBits: activationBits, activationExcluded: activationExcluded)
    }

    /// Attaches RoundClamp quantizers to `model`'s layers at this scheme's precisions (layers not
    /// listed stay float) and returns them in the scheme's order. When ``activationBits`` is set, it
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
        let quantized = try quantizeForMSQ(model, initialBits: 8, overrides: overrides, excluded: excluded)
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
