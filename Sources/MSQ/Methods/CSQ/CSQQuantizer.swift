import Foundation

/// CSQ's bi-level continuous sparsification of a layer's weight (Xiao et al., "CSQ: Growing
/// mixed-precision quantization scheme with bi-level continuous sparsification", DAC 2023;
/// MSQ-SPEC §7) as a ``WeightTransform`` that owns its parameters.
///
/// Parameters (as in CSQ's code, `bits/bitcs.py`): per weight and bit plane b ∈ 0..<P0 a positive
/// and a negative bit logit p_b, q_b (so 2·P0 trainable variables per weight), per layer and plane a
/// mask logit μ_b, and a per-layer scale s (CSQ trains it; here it is a fixed, checkpointed buffer
/// for the reason given at ``BitPlaneQuantizer``). With a temperature β (annealed by ``CSQTraining``),
/// σ the logistic function and K_b = 2^b / (2^P0 − 1):
///
///     m_b = σ(β μ_b)                                     soft per-layer bit mask   (scheme level)
///     u_i = Σ_b m_b · K_b · (σ(β p_{b,i}) − σ(β q_{b,i}))  soft signed bits       (bit level)
///     W_i = s · u_i
///
/// Backward is exact (no straight-through estimator in the search phase):
///
///     dL/dp_{b,i} =  dL/dW_i · s m_b K_b · β σ(βp)(1 − σ(βp))
///     dL/dq_{b,i} = −dL/dW_i · s m_b K_b · β σ(βq)(1 − σ(βq))
///     dL/dμ_b     =  Σ_i dL/dW_i · s K_b (σ(βp) − σ(βq)) · β m_b (1 − m_b)
///
/// **Hard phase** (``hardMask`` set, the project's formulation of CSQ's "hard masks at the end"):
/// the masks are 0/1 and fixed, and the bits are hard in the forward pass,
/// W_i = s · Σ_{b active} K_b (1[p_{b,i} > 0] − 1[q_{b,i} > 0]), with a straight-through backward
/// (dL/dp = dL/dW · s K_b, dL/dq = −dL/dW · s K_b on active planes; no mask gradient). The layer then
/// computes with weights of ``bits`` = 1 + #active planes bits (sign + one bit per active plane: CSQ's
/// own count, `ratio_one · Nbits`). Note: p and q may both be set on a plane (a signed digit); the
/// value Σ K_b d_b then needs the same magnitude bits only when the active planes are contiguous,
/// which CSQ's accounting (and ours, to match it) does not check.
public final class CSQQuantizer: WeightTransform {
    /// The weight shape the layer expects.
    public let shape: [Int]
    /// N, weights in the layer.
    public let count: Int
    /// P0, bit planes allocated.
    public let maxPlanes: Int
    /// Positive bit logits p, `[P0, N]`, row b weighing 2^b. Trainable, decays.
    public let positive: Parameter
    /// Negative bit logits q, `[P0, N]`. Trainable, decays.
    public let negative: Parameter
    /// Mask logits μ, `[P0]`. Trainable, does not decay.
    public let maskLogits: Parameter
    /// s, `[1]`, max|W| of the float weight: a buffer (not trained), checkpointed.
    public let scale: Parameter
    /// β, the temperature of every sigmoid (set by the method before each step).
    public var beta: Float = 1
    /// The fixed 0/1 masks of the hard phase (index b = plane); nil while searching.
    public var hardMask: [Bool]? {
        didSet { precondition(hardMask.map { $0.count == maxPlanes } ?? true, "CSQQuantizer: hardMask needs \(maxPlanes) entries") }
    }

    /// Bit planes for a layer whose float weight is `weight`, P0 = `planes` (1…15).
    ///
    /// Initialisation (CSQ's `ini2bit` and `mask_initial_value`): s = max|W| (1 if all zero),
    /// c_i = round(W_i (2^P0 − 1)/s); p_{b,i} = `bitLogit` (CSQ: 1) where c_i > 0 has bit b set, else 0;
    /// q likewise for c_i < 0; every μ_b = `maskLogit` (CSQ: 0). Logits at 0 sit where σ(β·) is
    /// steepest, so unset bits and the masks start out the most trainable.
    public init(weight: Tensor, planes p0: Int = 8, bitLogit: Float = 1, maskLogit: Float = 0) {
        precondition((1...15).contains(p0), "CSQQuantizer: \(p0) planes outside 1...15")
        shape = weight.shape
        count = weight.count
        maxPlanes = p0
        let absMax = RoundClampQuantizer.scale(of: weight)
        let s: Float = absMax > 0 ? absMax : 1
        let top = Float((1 << p0) - 1)
        var pos = Tensor(shape: [p0, weight.count])
        var neg = Tensor(shape: [p0, weight.count])
        let n = weight.count
        weight.withUnsafePointer { w in
            pos.withUnsafeMutablePointer { pp in
                neg.withUnsafeMutablePointer { np in
                    for i in 0..<n where absMax > 0 {
                        let c = Int32(min(max((w[i] * top / s).rounded(.toNearestOrEven), -top), top))
                        let target = c > 0 ? pp : np
                        var m = c.magnitude, b = 0
                        while m != 0 {
                            if m & 1 != 0 { target[b * n + i] = bitLogit }
                            m >>= 1
                            b += 1
                        }
                    }
                }
            }
        }
        positive = Parameter(pos, trainable: true, decays: true)
        negative = Parameter(neg, trainable: true, decays: true)
        maskLogits = Parameter(Tensor(shape: [p0], repeating: maskLogit), trainable: true, decays: false)
        scale = Parameter(Tensor(shape: [1], repeating: s), trainable: false, decays: false)
    }

    /// CSQ computes the effective weight from its own parameters: the layer's `weight` is no parameter.
    public var usesLayerWeight: Bool { false }

    /// `<layer>.csq.positive`, `.csq.negative`, `.csq.mask` (trainable) and `.csq.scale` (a buffer).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        body(joinPath(prefix, "csq.positive"), positive)
        body(joinPath(prefix, "csq.negative"), negative)
        body(joinPath(prefix, "csq.mask"), maskLogits)
        body(joinPath(prefix, "csq.scale"), scale)
    }

    /// Whether plane b is active: the hard mask, or μ_b ≥ 0 (m_b ≥ 1/2, CSQ's rounding) while searching.
    public var activePlanes: [Bool] {
        hardMask ?? (0..<maxPlanes).map { maskLogits.value[flat: $0] >= 0 }
    }

    /// 1 + #active planes: bits per stored weight, sign counted.
    public var bits: Int { 1 + activePlanes.filter { $0 }.count }

    /// m_b = σ(β μ_b) (1/0 in the hard phase), plane b = index.
    public var masks: [Float] {
        if let hard = hardMask { return hard.map { $0 ? 1 : 0 } }
        return (0..<maxPlanes).map { Self.sigmoid(beta * maskLogits.value[flat: $0]) }
    }

    /// The fraction of weights whose hard digit 1[p_b > 0] − 1[q_b > 0] on plane b is nonzero.
    public func digitNonzeroRate(plane b: Int) -> Double {
        let n = count
        guard n > 0 else { return 0 }
        return positive.value.withUnsafePointer { p in
            negative.value.withUnsafePointer { q in
                var nonzero = 0
                for i in 0..<n where (p[b * n + i] > 0) != (q[b * n + i] > 0) { nonzero += 1 }
                return Double(nonzero) / Double(n)
            }
        }
    }

    /// σ(x) = 1 / (1 + e^(−x)).
    @inline(__always) static func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }

    /// K_b = 2^b / (2^P0 − 1).
    func planeWeight(_ b: Int) -> Float { Float(1 << b) / Float((1 << maxPlanes) - 1) }

    /// u (the weight divided by s), into `u` (count N).
    private func unscaled(into u: UnsafeMutablePointer<Float>) {
        let n = count, m = masks, hard = hardMask != nil, beta = self.beta
        u.update(repeating: 0, count: n)
        positive.value.withUnsafePointer { p in
            negative.value.withUnsafePointer { q in
                for b in 0..<maxPlanes where m[b] != 0 {
                    let k = m[b] * planeWeight(b)
                    let pr = p + b * n, qr = q + b * n
                    if hard {
                        for i in 0..<n { u[i] += k * ((pr[i] > 0 ? 1 : 0) - (qr[i] > 0 ? 1 : 0)) }
                    } else {
                        for i in 0..<n { u[i] += k * (Self.sigmoid(beta * pr[i]) - Self.sigmoid(beta * qr[i])) }
                    }
                }
            }
        }
    }

    /// W = s · u, shape ``shape`` (the stored layer weight is ignored).
    public func forward(_ weight: Tensor) -> Tensor {
        var out = Tensor(shape: shape)
        let s = scale.value[flat: 0], n = count
        out.withUnsafeMutablePointer { w in
            unscaled(into: w)
            for i in 0..<n { w[i] *= s }
        }
        return out
    }

    /// Accumulates dL/dp, dL/dq and (search phase only) dL/dμ; returns an empty tensor.
    public func backward(gradEffective: Tensor, weight: Tensor) -> Tensor {
        precondition(gradEffective.count == count,
                     "CSQQuantizer: gradient has \(gradEffective.count) elements, the layer \(count)")
        let n = count, s = scale.value[flat: 0], m = masks, hard = hardMask != nil, beta = self.beta
        var dmu = [Double](repeating: 0, count: maxPlanes)
        gradEffective.withUnsafePointer { g in
            positive.value.withUnsafePointer { p in
                negative.value.withUnsafePointer { q in
                    positive.grad.withUnsafeMutablePointer { dp in
                        negative.grad.withUnsafeMutablePointer { dq in
                            for b in 0..<maxPlanes where m[b] != 0 || !hard {
                                let kb = s * planeWeight(b)
                                let pr = p + b * n, qr = q + b * n, dpr = dp + b * n, dqr = dq + b * n
                                if hard {
                                    for i in 0..<n {
                                        dpr[i] += g[i] * kb
                                        dqr[i] -= g[i] * kb
                                    }
                                } else {
                                    let km = kb * m[b] * beta
                                    var sum = 0.0
                                    for i in 0..<n {
                                        let sp = Self.sigmoid(beta * pr[i]), sq = Self.sigmoid(beta * qr[i])
                                        dpr[i] += g[i] * km * sp * (1 - sp)
                                        dqr[i] -= g[i] * km * sq * (1 - sq)
                                        sum += Double(g[i]) * Double(sp - sq)
                                    }
                                    dmu[b] = sum * Double(kb) * Double(beta * m[b] * (1 - m[b]))
                                }
                            }
                        }
                    }
                }
            }
        }
        if !hard {
            for b in 0..<maxPlanes { maskLogits.grad[flat: b] += Float(dmu[b]) }
        }
        return Tensor(shape: [0])
    }
}
