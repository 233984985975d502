import CKernels

/// MSQ's per-tensor weight quantizer, "RoundClamp" (MSQ-SPEC §1, paper Eq. 4), as a ``WeightTransform``.
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

    /// The scale s = max|W| computed by the most recent ``forward(_:)`` (0 before any forward).
    public private(set) var lastScale: Float = 0

    /// A quantizer at precision `bits` (n, sign included).
    public init(bits: Int, zeroGradientOutsideClamp: Bool = false) {
        precondition((1...16).contains(bits), "RoundClampQuantizer: bits \(bits) outside 1...16")
        self.bits = bits
        self.zeroGradientOutsideClamp = zeroGradientOutsideClamp
    }

    /// The per-tensor scale s = max_i |W_i| (NaNs ignored; 0 for an all-zero tensor).
    public static func scale(of weight: Tensor) -> Float {
        weight.withUnsafePointer { msq_absmax($0, weight.count) }
    }

    /// Q_n(W) = s · j_n / 2^(n−1) with s = max|W| (shape of `weight`); records s in ``lastScale``.
    public func forward(_ weight: Tensor) -> Tensor {
        if isBypassed { return weight }
        let s = Self.scale(of: weight)
        lastScale = s
        var out = Tensor(unfilledShape: weight.shape)
        let n = weight.count, b = Int32(bits)
        weight.withUnsafePointer { w in
            out.withUnsafeMutablePointer { q in msq_roundclamp_forward(q, nil, w, n, s, b) }
        }
        return out
    }

    /// The straight-through estimator: dL/dW = dL/dQ (masked outside the clamp if
    /// ``zeroGradientOutsideClamp``). s is recomputed from `weight` (the weight the matching
    /// forward saw), so it is the forward's scale. Returns a tensor of `weight`'s shape.
    public func backward(gradEffective: Tensor, weight: Tensor) -> Tensor {
        precondition(gradEffective.count == weight.count,
                     "RoundClampQuantizer: gradient has \(gradEffective.count) elements, weight \(weight.count)")
        if isBypassed { return gradEffective }
        let s = Self.scale(of: weight)
        var dw = Tensor(shape: weight.shape)
        let n = weight.count, b = Int32(bits), z: Int32 = zeroGradientOutsideClamp ? 1 : 0
        gradEffective.withUnsafePointer { g in
            weight.withUnsafePointer { w in
                dw.withUnsafeMutablePointer { d in msq_roundclamp_backward(d, g, w, n, s, b, z) }
            }
        }
        return dw
    }

    /// ||Q_b(W) − W||² in double for every precision b in `bits` (the layer's own ``bits`` untouched),
    /// with this quantizer's scale rule: the quantization error the allocation costs of MSQ-SPEC §3
    /// and HAWQ's Ω_l(n) are built from. Returns the errors in the order of `bits`.
    public func squaredErrors(of weight: Tensor, bits: [Int]) -> [Double] {
        let s = Self.scale(of: weight)
        let n = weight.count
        var scratch = [Float](repeating: 0, count: n)
        return bits.map { b in
            precondition((1...16).contains(b), "RoundClampQuantizer: bits \(b) outside 1...16")
            return weight.withUnsafePointer { w in
                scratch.withUnsafeMutableBufferPointer { q in
                    msq_roundclamp_forward(q.baseAddress, nil, w, n, s, Int32(b))
                    var err = 0.0
                    for i in 0..<n { let d = Double(q[i]) - Double(w[i]); err += d * d }
                    return err
                }
            }
        }
    }

    /// The deployable form of `weight` at the current precision: s = max|W| and the n-bit
    /// two's-complement codes j_n ∈ [−2^(n−1), 2^(n−1) − 1] (row-major, `weight.count` of them),
    /// so that Q_n(W) = s · j_n / 2^(n−1). Does not change ``lastScale``.
    public func codes(of weight: Tensor) -> (scale: Float, codes: [Int32]) {
        let s = Self.scale(of: weight)
        let n = weight.count, b = Int32(bits)
        var codes = [Int32](repeating: 0, count: n)
        var scratch = [Float](repeating: 0, count: n)
        weight.withUnsafePointer { w in
            scratch.withUnsafeMutableBufferPointer { q in
                codes.withUnsafeMutableBufferPointer { c in
                    msq_roundclamp_forward(q.baseAddress, c.baseAddress, w, n, s, b)
                }
            }
        }
        return (s, codes)
    }
}
