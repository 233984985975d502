import Foundation

/// DoReFa-Net's k-bit weight quantizer (Zhou et al., "DoReFa-Net", 2016) as a ``WeightTransform``:
/// the uniform quantization-aware-training baseline of MSQ-SPEC §7 (`msq train --method dorefa`).
///
/// Shapes: any weight tensor; the output has the input's shape. With k = ``bits`` and
/// L = 2^k − 1, per tensor:
///
///     t   = tanh(W)
///     M   = max_i |t_i|                                   (recomputed every forward)
///     w_t = t / (2 M) + 1/2                               ∈ [0, 1]
///     q   = round(L · w_t)                                integer code in [0, L], round half to even
///     w_q = 2 q / L − 1                                   ∈ [−1, 1]
///
/// The 2^k levels are the odd multiples of 1/L, symmetric around 0 (there is no zero level), so a
/// stored weight is exactly its k-bit code q: k bits per weight, sign included, the same counting as
/// MSQ's precisions (C = 32 / k). DoReFa has no per-layer scale: its weights live in [−1, 1], and the
/// batch norm after each convolution absorbs the magnitude. A layer with no batch norm after it (the
/// classifier `fc`) then computes with weights ~10x larger than its float initialisation; measured
/// on ResNet-20 (Fashion-MNIST 2k, 3 epochs, 3 bits) this stalls training (train accuracy 0.24 vs
/// 0.73 for RoundClamp 3-bit QAT). ``scaled`` (`--dorefa-scaled`) multiplies w_q by s = max|W|
/// (a per-layer constant, like MSQ's scale; 0.73 in the same run). Off by default: the formula is
/// DoReFa's.
///
/// Backward (the project's documented choice, as in DoReFa): straight-through through the rounding
/// (dq/d(L·w_t) = 1), the true derivative of tanh, and M (and s) treated as constants:
///
///     dL/dW = dL/dw_q · 2 · (1 − t²) / (2 M) = dL/dw_q · (1 − t²) / M        (times s when scaled)
///
/// An all-zero tensor (M = 0) quantizes to zeros and passes the gradient straight through.
///
/// ``granularity`` `.perChannel` (`--scale per-channel`, for a comparison with per-channel MSQ on
/// equal terms) applies every formula above per output channel c (the first dimension):
/// M_c = max over channel c of |tanh W|, and s_c = max|W_c| when scaled. Default per tensor.
///
/// The arithmetic is plain Swift in Float, in the order written above, so the tests' transcription
/// of the formula reproduces it bit for bit.
public final class DoReFaQuantizer: WeightTransform {
    /// k, bits per weight (sign included), 1…16.
    public let bits: Int
    /// Whether w_q is multiplied by s = max|W| (see the type's documentation).
    public let scaled: Bool
    /// Whether M (and s) are per tensor (default) or per output channel.
    public let granularity: ScaleGranularity

    /// A k-bit DoReFa quantizer, optionally ``scaled``, with per-tensor (default) or per-channel M and s.
    public init(bits: Int, scaled: Bool = false, granularity: ScaleGranularity = .perTensor) {
        precondition((1...16).contains(bits), "DoReFaQuantizer: bits \(bits) outside 1...16")
        self.bits = bits
        self.scaled = scaled
        self.granularity = granularity
    }

    /// L = 2^k − 1, the largest code.
    public var levels: Int { (1 << bits) - 1 }

    /// M = max_i |tanh(W_i)|, computed as tanh(max_i |W_i|) (equal, tanh being odd and increasing;
    /// one tanh instead of N). 0 for an all-zero or empty tensor; NaNs are ignored as in
    /// ``RoundClampQuantizer/scale(of:)``.
    public static func tanhScale(of weight: Tensor) -> Float {
        tanhf(RoundClampQuantizer.scale(of: weight))
    }

    /// Calls `body(start, count, M_g, s_g)` for each scale group of `weight` (the whole tensor, or
    /// each output channel): M_g = tanh(max|W_g|) and s_g = max|W_g| when ``scaled``, else 1.
    private func forEachGroup(of weight: Tensor, _ body: (Int, Int, Float, Float) -> Void) {
        let (_, size) = granularity.groups(shape: weight.shape)
        for (g, absMax) in granularity.scales(of: weight).enumerated() {
            body(g * size, size, tanhf(absMax), scaled ? absMax : 1)
        }
    }

    /// The codes q ∈ [0, 2^k − 1] of `weight` (row-major), with w_q = 2q/L − 1.
    public func codes(of weight: Tensor) -> [Int32] {
        let l = Float(levels)
        var out = [Int32](repeating: 0, count: weight.count)
        weight.withUnsafePointer { w in
            forEachGroup(of: weight) { start, count, m, _ in
                guard m > 0 else { return }
                for i in start..<(start + count) {
                    let wt = tanhf(w[i]) / (2 * m) + 0.5
                    out[i] = Int32((l * wt).rounded(.toNearestOrEven))
                }
            }
        }
        return out
    }

    /// w_q = 2 round(L·w_t)/L − 1 (shape of `weight`), times max|W| when ``scaled``.
    public func forward(_ weight: Tensor) -> Tensor {
        var out = Tensor(shape: weight.shape)
        let l = Float(levels)
        weight.withUnsafePointer { w in
            out.withUnsafeMutablePointer { q in
                forEachGroup(of: weight) { start, count, m, s in
                    guard m > 0 else { return }
                    for i in start..<(start + count) {
                        let wt = tanhf(w[i]) / (2 * m) + 0.5
                        let code = (l * wt).rounded(.toNearestOrEven)
                        q[i] = (2 * code / l - 1) * s
                    }
                }
            }
        }
        return out
    }

    /// dL/dW = dL/dw_q · (1 − tanh²(W)) / M, times max|W| when ``scaled`` (straight-through rounding,
    /// M and max|W| constant); identity where M = 0.
    public func backward(gradEffective: Tensor, weight: Tensor) -> Tensor {
        precondition(gradEffective.count == weight.count,
                     "DoReFaQuantizer: gradient has \(gradEffective.count) elements, weight \(weight.count)")
        var dw = Tensor(shape: weight.shape)
        gradEffective.withUnsafePointer { g in
            weight.withUnsafePointer { w in
                dw.withUnsafeMutablePointer { d in
                    forEachGroup(of: weight) { start, count, m, s in
                        for i in start..<(start + count) {
                            guard m > 0 else { d[i] = g[i]; continue }
                            let t = tanhf(w[i])
                            d[i] = g[i] * (1 - t * t) / m * s
                        }
                    }
                }
            }
        }
        return dw
    }
}
