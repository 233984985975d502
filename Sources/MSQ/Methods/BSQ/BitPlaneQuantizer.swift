/// BSQ's bit-level weight representation (Yang et al., "BSQ: Exploring bit-level sparsity for
/// mixed-precision neural network quantization", ICLR 2021; MSQ-SPEC §7) as a ``WeightTransform``
/// that owns its parameters: the layer's float weight is replaced by trainable bit planes.
///
/// **Representation (the project's choice, documented).** BSQ's code keeps a positive and a negative
/// bit plane per bit (W_p^(b), W_n^(b) ∈ [0, 2]) and computes with their difference only. Here each
/// bit is ONE signed variable x_b = W_p^(b) − W_n^(b) ∈ [−2, 2], so a weight has exactly
/// P0 = ``maxPlanes`` trainable variables (8 by default: the 8x parameter count of MSQ-SPEC §7 and
/// the paper's 2.16 M vs 0.27 M for ResNet-20). The forward pass is BSQ's exactly (it only sees
/// W_p − W_n); right after a requantization, when every weight has either positive or negative
/// bits, BSQ's group norms sqrt(Σ W_p² + W_n²) equal ‖x_b‖ too. MSQ-SPEC §7's box [−1, 1] is BSQ's
/// [0, 2] per part: we keep BSQ's carry range, [−2, 2].
///
/// Planes are stored by ABSOLUTE significance: row b of ``planes`` (shape `[P0, N]`) weighs 2^b on
/// the initial P0-bit grid. The layer uses the ``planeCount`` rows from ``lowestPlane`` up
/// (n = planeCount, lo = lowestPlane); the other rows are inactive: ignored by the forward pass,
/// the gradient and the regulariser, zeroed by ``projectToBox()`` and ``requantize()`` (the
/// optimizer's leftover momentum for a removed plane may move them again, harmlessly). They stay
/// allocated, so the trainable parameter count stays P0 per weight (BSQ's count, the paper's
/// 2.16 M for ResNet-20). Removing a plane never moves the others, so a plane's gradient scale,
/// and the optimizer's momentum for it, carry over unchanged (see below).
///
/// Forward (BSQ Eq. 2, rounding the sum as BSQ's code does, round half to even as everywhere here):
///
///     v_i = Σ_{b=0}^{n−1} 2^b · clamp(x_{lo+b, i}, −2, 2)          (summed from the LSB up, in Float)
///     c_i = round(clamp(v_i, −(2^n − 1), 2^n − 1))                integer code, |c_i| < 2^n
///     W_i = s · c_i / (2^n − 1)
///
/// A stored weight is its sign and the n-bit magnitude |c_i|: n + 1 bits, sign counted (``bits``),
/// the same counting as MSQ's precisions. s is the per-layer scale, initialised to max|W| of the
/// float weight and changed only by plane removals (below). **Not trained** (the project's choice;
/// BSQ's code trains it): trained from scratch, its gradient Σ_i dL/dW_i · c_i/(2^n − 1) sums over
/// the whole layer and destabilised training (ResNet-20, Fashion-MNIST 2k, λ = 0, first epoch: train
/// loss 2.79 with a trained s, 2.38 with a fixed one). It is a checkpointed buffer
/// (`trainable == false`), like batch-norm running statistics.
///
/// Backward: straight-through through the rounding and both clamps (BSQ's `bit_STE` passes the
/// gradient unchanged):
///
///     dL/dx_{lo+b, i} = dL/dW_i · s · 2^b / (2^n − 1)              (active planes only)
///
/// A consequence of the parameterisation (BSQ's, kept): one SGD step moves W_i by
/// lr · dL/dW_i · s² (4^n − 1) / (3 (2^n − 1)²) ≈ lr · dL/dW_i · s²/3, i.e. the bits learn like
/// float weights at an s²/3 times smaller learning rate (about 0.01–0.05 at a Kaiming
/// initialisation, larger for the bigger weights of a pretrained network, BSQ's starting point).
/// Short from-scratch runs therefore learn slowly under BSQ (measured: 2 planes, 3 epochs on
/// Fashion-MNIST 2k, train accuracy 0.25 at --lr 0.1, 0.59 at --lr 1; RoundClamp 3-bit QAT 0.73).
/// The box [−2, 2] is BSQ's projection after every optimizer step; the engine has no hook after the
/// step, so the forward clamps (identical outputs) and ``BSQTraining`` projects the stored values
/// before the next step (``projectToBox()``), which reproduces project-then-step exactly.
///
/// Requantization (BSQ's `quant()`): ``requantize()`` rewrites the active planes as the signed binary
/// digits of c_i (x_{lo+b,i} = sign(c_i) · bit_b(|c_i|)), which leaves every W_i unchanged. Dropping
/// an all-zero most significant plane (n → n − 1, s ← s · (2^(n−1) − 1)/(2^n − 1)) or an all-zero
/// least significant plane (lo → lo + 1, n → n − 1, c ← c/2, s ← 2 s · (2^(n−1) − 1)/(2^n − 1)) keeps
/// every W_i (up to the Float rounding of s); dropping a plane that is not all zero clamps
/// (MSB: |c| ≤ 2^(n−1) − 1) or rounds (LSB: c ← round(c/2), half to even) the codes. In all cases
/// s·2^b/(2^n − 1) of every remaining plane b is unchanged, hence the absolute indexing.
public final class BitPlaneQuantizer: WeightTransform {
    /// The weight shape the layer expects (conv `[O, I/g, k, k]`, linear `[out, in]`).
    public let shape: [Int]
    /// N, weights in the layer.
    public let count: Int
    /// P0, the number of bit planes allocated (the initial precision is P0 + 1 bits, sign counted).
    public let maxPlanes: Int
    /// The bit variables, `[P0, N]`, row b weighing 2^b on the initial grid. Trainable, decays (as
    /// BSQ's bits do, and as conv weights do here).
    public let planes: Parameter
    /// s, the per-layer scale, `[1]`: a buffer (not trained), checkpointed.
    public let scale: Parameter
    /// lo, the row of the least significant active plane.
    public private(set) var lowestPlane: Int
    /// n, the number of active planes (magnitude bits).
    public private(set) var planeCount: Int

    /// The box of a bit variable: x ∈ [−bitBound, bitBound] (BSQ's W_p, W_n ∈ [0, 2]).
    public static let bitBound: Float = 2

    /// Bit planes for a layer whose float weight is `weight`, P0 = `planes` (1…15).
    ///
    /// Initialisation (BSQ's `ini2bit`): s = max|W| (1 for an all-zero weight, so that the planes can
    /// still learn), c_i = round(W_i · (2^P0 − 1) / s), planes = the signed binary digits of c_i.
    public init(weight: Tensor, planes p0: Int = 8) {
        precondition((1...15).contains(p0), "BitPlaneQuantizer: \(p0) planes outside 1...15")
        shape = weight.shape
        count = weight.count
        maxPlanes = p0
        lowestPlane = 0
        planeCount = p0
        let absMax = RoundClampQuantizer.scale(of: weight)
        let s: Float = absMax > 0 ? absMax : 1
        let top = Float((1 << p0) - 1)
        var codes = [Int32](repeating: 0, count: weight.count)
        weight.withUnsafePointer { w in
            for i in 0..<weight.count {
                codes[i] = absMax > 0 ? Int32(min(max((w[i] * top / s).rounded(.toNearestOrEven), -top), top)) : 0
            }
        }
        self.planes = Parameter(Tensor(shape: [p0, weight.count]), trainable: true, decays: true)
        self.scale = Parameter(Tensor(shape: [1], repeating: s), trainable: false, decays: false)
        writeDigits(codes)
    }

    /// BSQ computes the effective weight from its bit planes alone: the layer's `weight` is no parameter.
    public var usesLayerWeight: Bool { false }

    /// n + 1, bits per stored weight with the sign (the precision MSQ's compression counts).
    public var bits: Int { planeCount + 1 }

    /// `<layer>.bsq.planes` (trainable) and `<layer>.bsq.scale` (a buffer).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        body(joinPath(prefix, "bsq.planes"), planes)
        body(joinPath(prefix, "bsq.scale"), scale)
    }

    /// Sets the active planes (a checkpoint's state): rows `lowestPlane ..< lowestPlane + planeCount`.
    public func configure(lowestPlane lo: Int, planeCount n: Int) {
        precondition(n >= 1 && lo >= 0 && lo + n <= maxPlanes,
                     "BitPlaneQuantizer: planes \(lo)..<\(lo + n) outside 0..<\(maxPlanes)")
        lowestPlane = lo
        planeCount = n
    }

    /// 2^n − 1, the largest code magnitude.
    var top: Float { Float((1 << planeCount) - 1) }

    /// v_i = Σ_b 2^b · clamp(x_{lo+b,i}) (LSB first), into `v` (count N).
    private func accumulate(into v: UnsafeMutablePointer<Float>) {
        let n = count, bound = Self.bitBound
        v.update(repeating: 0, count: n)
        planes.value.withUnsafePointer { x in
            for b in 0..<planeCount {
                let row = x + (lowestPlane + b) * n
                let weight = Float(1 << b)
                for i in 0..<n { v[i] += weight * min(max(row[i], -bound), bound) }
            }
        }
    }

    /// c_i = round(clamp(v_i, ±(2^n − 1))), written over v.
    private func roundCodes(_ v: UnsafeMutablePointer<Float>) {
        let t = top
        for i in 0..<count { v[i] = min(max(v[i], -t), t).rounded(.toNearestOrEven) }
    }

    /// The integer codes c_i ∈ [−(2^n − 1), 2^n − 1] the forward uses (row-major), W_i = s·c_i/(2^n − 1).
    public func codes() -> [Int32] {
        var v = [Float](repeating: 0, count: count)
        v.withUnsafeMutableBufferPointer { p in
            guard let base = p.baseAddress else { return }
            accumulate(into: base)
            roundCodes(base)
        }
        return v.map { Int32($0) }
    }

    /// W = s · c / (2^n − 1), shape ``shape`` (the stored layer weight is ignored).
    public func forward(_ weight: Tensor) -> Tensor {
        var out = Tensor(shape: shape)
        let s = scale.value[flat: 0], t = top, n = count
        out.withUnsafeMutablePointer { w in
            accumulate(into: w)
            roundCodes(w)
            for i in 0..<n { w[i] = s * w[i] / t }
        }
        return out
    }

    /// Accumulates dL/dx into the active planes' gradient; returns an empty tensor (``usesLayerWeight`` is false).
    public func backward(gradEffective: Tensor, weight: Tensor) -> Tensor {
        precondition(gradEffective.count == count,
                     "BitPlaneQuantizer: gradient has \(gradEffective.count) elements, the layer \(count)")
        let n = count, s = scale.value[flat: 0], t = top
        gradEffective.withUnsafePointer { g in
            planes.grad.withUnsafeMutablePointer { dx in
                for b in 0..<planeCount {
                    let row = dx + (lowestPlane + b) * n
                    let k = s * Float(1 << b) / t
                    for i in 0..<n { row[i] += g[i] * k }
                }
            }
        }
        return Tensor(shape: [0])
    }

    /// Clamps the active planes to [−2, 2] and zeroes the inactive rows (BSQ's projection after a step).
    public func projectToBox() {
        let n = count, bound = Self.bitBound, lo = lowestPlane, hi = lowestPlane + planeCount
        planes.value.withUnsafeMutablePointer { x in
            for b in 0..<maxPlanes {
                let row = x + b * n
                if b >= lo && b < hi {
                    for i in 0..<n { row[i] = min(max(row[i], -bound), bound) }
                } else {
                    row.update(repeating: 0, count: n)
                }
            }
        }
    }

    /// Rewrites the planes as the signed binary digits of `codes` (|c| < 2^n), inactive rows zero.
    private func writeDigits(_ codes: [Int32]) {
        let n = count, lo = lowestPlane
        planes.value.withUnsafeMutablePointer { x in
            x.update(repeating: 0, count: maxPlanes * n)
            for i in 0..<n {
                let c = codes[i]
                let sign: Float = c < 0 ? -1 : 1
                var m = c.magnitude
                var b = 0
                while m != 0 {
                    if m & 1 != 0 { x[(lo + b) * n + i] = sign }
                    m >>= 1
                    b += 1
                }
            }
        }
    }

    /// BSQ's requantization: the active planes become the signed binary digits of the current codes
    /// c_i (every W_i unchanged, the fractional parts of the bit variables dropped). Returns the
    /// nonzero rate of each active plane, least significant first (``planeNonzeroRates()``).
    @discardableResult
    public func requantize() -> [Double] {
        writeDigits(codes())
        return planeNonzeroRates()
    }

    /// For each active plane, least significant first: the fraction of weights whose bit variable
    /// is nonzero (after ``requantize()``, whose binary digit is 1).
    public func planeNonzeroRates() -> [Double] {
        let n = count
        return planes.value.withUnsafePointer { x in
            (0..<planeCount).map { b in
                let row = x + (lowestPlane + b) * n
                var nonzero = 0
                for i in 0..<n where row[i] != 0 { nonzero += 1 }
                return n > 0 ? Double(nonzero) / Double(n) : 0
            }
        }
    }

    /// Removes the most significant active plane: codes clamped to ±(2^(n−1) − 1), s scaled by
    /// (2^(n−1) − 1)/(2^n − 1), digits rewritten. Exact (every W_i kept) when the plane is all zero
    /// after ``requantize()``. Precondition: n ≥ 2.
    public func dropMostSignificantPlane() {
        precondition(planeCount >= 2, "BitPlaneQuantizer: cannot drop the last plane")
        let oldTop = top
        let newTop = Int32((1 << (planeCount - 1)) - 1)
        let c = codes().map { min(max($0, -newTop), newTop) }
        planeCount -= 1
        scale.value[flat: 0] = scale.value[flat: 0] * Float(newTop) / oldTop
        writeDigits(c)
    }

    /// Removes the least significant active plane: c ← round(c/2) (half to even), clamped to
    /// ±(2^(n−1) − 1), s scaled by 2·(2^(n−1) − 1)/(2^n − 1), lo + 1, digits rewritten. Exact when the
    /// plane is all zero after ``requantize()`` (every code even). Precondition: n ≥ 2.
    public func dropLeastSignificantPlane() {
        precondition(planeCount >= 2, "BitPlaneQuantizer: cannot drop the last plane")
        let oldTop = top
        let newTop = Float((1 << (planeCount - 1)) - 1)
        let c = codes().map { Int32(min(max((Float($0) / 2).rounded(.toNearestOrEven), -newTop), newTop)) }
        planeCount -= 1
        lowestPlane += 1
        scale.value[flat: 0] = scale.value[flat: 0] * (2 * newTop) / oldTop
        writeDigits(c)
    }

    /// ‖x_b‖₂ of every active plane, least significant first (accumulated in Double).
    public func planeNorms() -> [Double] {
        let n = count
        return planes.value.withUnsafePointer { x in
            (0..<planeCount).map { b in
                let row = x + (lowestPlane + b) * n
                var s = 0.0
                for i in 0..<n { s += Double(row[i]) * Double(row[i]) }
                return s.squareRoot()
            }
        }
    }
}

/// BSQ's memory-weighted group-lasso regulariser over bit planes (MSQ-SPEC §7; BSQ's `L1reg`):
///
///     R = Σ_l (N_l · n_l / N_total) · Σ_{b active} sqrt(ε + ‖x_{l,b}‖²),    ε = 1e-8, N_total = Σ_l N_l
///
/// with n_l the layer's active planes (magnitude bits, as in BSQ's code) and x the stored (box-
/// projected) bit variables. dR/dx_{l,b,i} = (N_l n_l / N_total) · x_{l,b,i} / sqrt(ε + ‖x_{l,b}‖²).
/// The objective is L_task + λ·R; BSQ's `--decay` is λ (its loss is `loss + decay · reg / TP`).
public final class BitPlaneRegularizer {
    /// The layers' bit planes.
    public let quantizers: [BitPlaneQuantizer]
    /// λ.
    public var lambda: Double
    /// N_total = Σ_l N_l (fixed at init).
    public let totalCount: Int
    /// ε under the square root (BSQ's 1e-8): keeps the gradient finite at an all-zero plane.
    public static let epsilon = 1e-8

    /// A regulariser over `quantizers` with weight `lambda`.
    public init(quantizers: [BitPlaneQuantizer], lambda: Double) {
        self.quantizers = quantizers
        self.lambda = lambda
        self.totalCount = quantizers.reduce(0) { $0 + $1.count }
    }

    /// R (not multiplied by λ).
    public func value() -> Double {
        quantizers.reduce(0.0) { sum, q in
            let w = Double(q.count * q.planeCount) / Double(totalCount)
            return sum + w * q.planeNorms().reduce(0.0) { $0 + ($1 * $1 + Self.epsilon).squareRoot() }
        }
    }

    /// Computes R and ADDS λ·dR/dx into every active plane's gradient; returns R (not times λ).
    @discardableResult
    public func apply() -> Double {
        var r = 0.0
        for q in quantizers {
            let w = Double(q.count * q.planeCount) / Double(totalCount)
            let norms = q.planeNorms()
            let n = q.count
            q.planes.value.withUnsafePointer { x in
                q.planes.grad.withUnsafeMutablePointer { g in
                    for (b, norm) in norms.enumerated() {
                        let root = (norm * norm + Self.epsilon).squareRoot()
                        r += w * root
                        let k = Float(lambda * w / root)
                        let offset = (q.lowestPlane + b) * n
                        for i in 0..<n { g[offset + i] += k * x[offset + i] }
                    }
                }
            }
        }
        return r
    }
}
