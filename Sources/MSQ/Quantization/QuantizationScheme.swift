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
    /// listed stay float) and returns them in the scheme's order.
    /// - Throws: ``QuantizationError`` when a path names no conv/linear layer or bits are out of range.
    public func apply(to model: any Module) throws -> [QuantizedLayer] {
        let listed = Set(layers.map(\.path))
        let all = quantizableLayers(of: model).map(\.path)
        let excluded = Set(all.filter { !listed.contains($0) })
        var overrides: [String: Int] = [:]
        for l in layers { overrides[l.path] = l.bits }
        let quantized = try quantizeForMSQ(model, initialBits: 8, overrides: overrides, excluded: excluded)
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
