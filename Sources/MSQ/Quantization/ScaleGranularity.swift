import CKernels

/// Which weights share a quantizer's scale (MSQ-SPEC §1): the whole tensor (the spec's default) or
/// each output channel.
///
/// Per output channel, channel c is the weight's first dimension (conv `[O, I/g, k, k]`, linear
/// `[out, in]`), whose elements are contiguous in row-major order, and every formula of the
/// quantizer holds per channel with s_c = max|W_c|. RoundClamp's grids still nest (s_c does not
/// depend on n), so the LSB regulariser and pruning work unchanged, channel by channel. A
/// deployed per-channel layer stores one float32 scale per output channel next to its codes.
///
/// The raw values are the CLI's (`--scale per-tensor|per-channel`) and the JSON's (checkpoints'
/// method state, the packed model header).
public enum ScaleGranularity: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// One scale for the whole tensor, s = max|W| (the default).
    case perTensor = "per-tensor"
    /// One scale per output channel c (first dimension), s_c = max|W_c|.
    case perChannel = "per-channel"

    public var description: String { rawValue }

    /// The scale groups of a weight of `shape`, each `size` contiguous elements in row-major order:
    /// per tensor one group of all elements; per channel `shape[0]` groups of N / shape[0] elements.
    /// A tensor without a first dimension (a scalar) or with `shape[0] == 0` is one group.
    public func groups(shape: [Int]) -> (count: Int, size: Int) {
        let total = shape.reduce(1, *)
        guard self == .perChannel, let channels = shape.first, channels > 0 else { return (1, total) }
        return (channels, total / channels)
    }

    /// The scales s_g = max|W_g| of `weight`'s groups (``groups(shape:)``), in order; NaNs are
    /// ignored and an all-zero group has scale 0. Per tensor this is `[max|W|]`.
    public func scales(of weight: Tensor) -> [Float] {
        let (count, size) = groups(shape: weight.shape)
        return weight.withUnsafePointer { w in
            (0..<count).map { g in msq_absmax(w + g * size, size) }
        }
    }

    /// This option's entry in a run fingerprint (``TrainingConfig/methodOptions``) of `method`
    /// (`msq`, `dorefa`): `["<method>.scale": "per-channel"]` per channel and nothing per tensor,
    /// so checkpoints written before the option existed still resume.
    public func identity(method: String) -> [String: String] {
        self == .perTensor ? [:] : [method + ".scale": rawValue]
    }
}
