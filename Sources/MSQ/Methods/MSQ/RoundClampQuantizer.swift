import CKernels

/// MSQ's weight quantizer, "RoundClamp" (MSQ-SPEC §1, paper Eq. 4), as a ``WeightTransform``.
///
/// Shapes: any weight tensor (conv `[O, I/g, k, k]`, linear `[out, in]`); the output has the
/// input's shape. With n = ``bits`` (sign included) and s = max|W| recomputed on every forward:
///
///     w~     = 1/2 + W / (2 s)
///     q_n    = clamp(round(2^n · w~), 0, 2^n − 1)        round half to even
///     j_n    = q_n − 2^(n−1)                             n-bit two's complement
///     Q_n(W) = s · j_n / 2^(n−1)
///
/// Backward is the straight-through estimator dQ_n/dW = 1 with s treated as a constant (see
/// ``zeroGradientOutsideClamp``). The arithmetic is the C kernels' (`msq_roundclamp_forward`,
/// `msq_roundclamp_backward`), so results match `msq_roundclamp_forward_ref` bit for bit.
///
/// ``granularity`` chooses the scale: per tensor (default, s = max|W|) or per output channel
/// (s_c = max|W_c| over channel c = the first dimension, every formula above applied channel by
/// channel: one kernel call per contiguous channel slice, so each slice gets exactly the bits the
/// per-tensor kernel gives it with its own s).
public final class RoundClampQuantizer: WeightTransform {
    /// The precision n in bits, sign included (MSQ uses 2…8; the kernels accept 1…16).
    /// Mutable: pruning lowers it, and the next forward requantizes at the new precision.
    public var bits: Int {
        didSet { precondition((1...16).contains(bits), "RoundClampQuantizer: bits \(bits) outside 1...16") }
    }

    /// STE variant. `false` (default, MSQ-SPEC §1): dL/dW = dL/dQ everywhere. `true`: the gradient
    /// is zeroed where the clamp changed the code (round(2^n · w~) outside [0, 2^n − 1]); note that
    /// with s = max|W| this includes the largest positive weight itself, since round(2^n) = 2^n is clamped.
    public var zeroGradientOutsideClamp: Bool

    /// When true, ``forward(_:)`` and ``backward(gradEffective:weight:)`` are the identity. Used to
    /// take Hessians of the task loss AT the quantized weights (the caller stores Q_n(W) in the
    /// parameter first): finite differences through the rounding would measure its jumps instead.
    public var isBypassed = false

    /// Per tensor or per output channel (see the type's documentation). Fixed at init: a run's
    /// checkpoints, its fingerprint and its exported file all record it.
    public let granularity: ScaleGranularity

    /// The scales the most recent ``forward(_:)`` computed: `[s]` per tensor, `[s_0, …, s_{O−1}]`
    /// per channel (empty before any forward).
    public private(set) var lastScales: [Float] = []

    /// max|W| as seen by the most recent ``forward(_:)``: the scale s per tensor, the largest
    /// channel scale per channel (0 before any forward).
    public var lastScale: Float { lastScales.max() ?? 0 }

    /// A quantizer at precision `bits` (n, sign included) with a per-tensor (default) or
    /// per-output-channel scale.
    public init(bits: Int, granularity: ScaleGranularity = .perTensor, zeroGradientOutsideClamp: Bool = false) {
        precondition((1...16).contains(bits), "RoundClampQuantizer: bits \(bits) outside 1...16")
        self.bits = bits
        self.granularity = granularity
        self.zeroGradientOutsideClamp = zeroGradientOutsideClamp
    }

    /// The per-tensor scale s = max_i |W_i| (NaNs ignored; 0 for an all-zero tensor), whatever
    /// a quantizer's ``granularity``.
    public static func scale(of weight: Tensor) -> Float {
        weight.withUnsafePointer { msq_absmax($0, weight.count) }
    }

    /// This quantizer's scales of `weight`: `[max|W|]` per tensor, `[max|W_c|]` per output channel
    /// (see ``ScaleGranularity/scales(of:)``).
    public func scales(of weight: Tensor) -> [Float] { granularity.scales(of: weight) }

    /// Q_n(W) = s · j_n / 2^(n−1) with s = max|W| (per channel: s_c = max|W_c| on channel c),
    /// shape of `weight`; records the scales in ``lastScales``.
    public func forward(_ weight: Tensor) -> Tensor {
        if isBypassed { return weight }
        var out = Tensor(unfilledShape: weight.shape)
        lastScales = weight.withUnsafePointer { w in
            out.withUnsafeMutablePointer { q in Self.quantize(q, nil, w, shape: weight.shape, bits: bits, granularity: granularity) }
        }
        return out
    }

    /// `msq_roundclamp_forward` over each scale group of a weight of `shape` with the group's own
    /// s = max|W_g| (one call per group; `codes` may be nil). Returns the scales.
    static func quantize(_ q: UnsafeMutablePointer<Float>?, _ codes: UnsafeMutablePointer<Int32>?, _ w: UnsafePointer<Float>,
                         shape: [Int], bits: Int, granularity: ScaleGranularity) -> [Float] {
        let (groups, size) = granularity.groups(shape: shape)
        let b = Int32(bits)
        return (0..<groups).map { g in
            let at = g * size
            let s = msq_absmax(w + at, size)
            msq_roundclamp_forward(q.map { $0 + at }, codes.map { $0 + at }, w + at, size, s, b)
            return s
        }
    }

    /// The straight-through estimator: dL/dW = dL/dQ (masked outside the clamp if
    /// ``zeroGradientOutsideClamp``). The scales are recomputed from `weight` (the weight the matching
    /// forward saw), so they are the forward's. Returns a tensor of `weight`'s shape.
    public func backward(gradEffective: Tensor, weight: Tensor) -> Tensor {
        precondition(gradEffective.count == weight.count,
                     "RoundClampQuantizer: gradient has \(gradEffective.count) elements, weight \(weight.count)")
        if isBypassed { return gradEffective }
        var dw = Tensor(shape: weight.shape)
        let b = Int32(bits), z: Int32 = zeroGradientOutsideClamp ? 1 : 0
        // Without the mask the scale does not enter: one pass over the whole tensor either way.
        let (groups, size) = zeroGradientOutsideClamp ? granularity.groups(shape: weight.shape) : (1, weight.count)
        gradEffective.withUnsafePointer { g in
            weight.withUnsafePointer { w in
                dw.withUnsafeMutablePointer { d in
                    for c in 0..<groups {
                        let at = c * size
                        msq_roundclamp_backward(d + at, g + at, w + at, size, msq_absmax(w + at, size), b, z)
                    }
                }
            }
        }
        return dw
    }

    /// ||Q_b(W) − W||² in double for every precision b in `bits` (the layer's own ``bits`` untouched),
    /// with this quantizer's scale rule (per tensor or per channel): the quantization error the
    /// allocation costs of MSQ-SPEC §3 and HAWQ's Ω_l(n) are built from. Returns the errors in the
    /// order of `bits`; the sum runs over the elements in order, whatever the granularity.
    public func squaredErrors(of weight: Tensor, bits: [Int]) -> [Double] {
        let n = weight.count
        var scratch = [Float](repeating: 0, count: n)
        return bits.map { b in
            precondition((1...16).contains(b), "RoundClampQuantizer: bits \(b) outside 1...16")
            return weight.withUnsafePointer { w in
                scratch.withUnsafeMutableBufferPointer { q in
                    _ = Self.quantize(q.baseAddress, nil, w, shape: weight.shape, bits: b, granularity: granularity)
                    var err = 0.0
                    for i in 0..<n { let d = Double(q[i]) - Double(w[i]); err += d * d }
                    return err
                }
            }
        }
    }

    /// The deployable form of `weight` at the current precision: the scales (`[s]`, s = max|W|, per
    /// tensor; `[s_c]`, one per output channel, per channel) and the n-bit two's-complement codes
    /// j_n ∈ [−2^(n−1), 2^(n−1) − 1] (row-major, `weight.count` of them), so that
    /// Q_n(W) = s_c · j_n / 2^(n−1) with c the element's group (``ScaleGranularity/groups(shape:)``).
    /// Does not change ``lastScales``.
    public func codes(of weight: Tensor) -> (scales: [Float], codes: [Int32]) {
        let n = weight.count
        var codes = [Int32](repeating: 0, count: n)
        var scratch = [Float](repeating: 0, count: n)
        let scales = weight.withUnsafePointer { w in
            scratch.withUnsafeMutableBufferPointer { q in
                codes.withUnsafeMutableBufferPointer { c in
                    Self.quantize(q.baseAddress, c.baseAddress, w, shape: weight.shape, bits: bits, granularity: granularity)
                }
            }
        }
        return (scales, codes)
    }
}
