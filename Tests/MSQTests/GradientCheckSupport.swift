import CKernels
import MSQ
import Testing

/// How one gradient check perturbs and compares.
struct GradCheckSettings {
    /// Central-difference step h (applied in Float; the realised step is used in the quotient).
    var step: Float
    /// Relative tolerance: |analytic − numeric| ≤ tolerance·max(|analytic|, |numeric|) + floor.
    var tolerance: Double
    /// The floor, as a fraction of the largest |analytic| entry of the same tensor (rounding noise
    /// makes tiny gradients meaningless in relative terms).
    var floorFraction: Double
    /// An absolute floor under the tolerance (Float rounding noise of the difference quotient).
    var absoluteFloor: Double
    /// At most this many elements of each tensor are checked (a random subset beyond that).
    var maxChecked: Int = 64
    /// Composite networks have ReLU kinks everywhere: when on, an element whose difference
    /// quotients over [−h, −h/2, 0, h/2, h] disagree (a kink lies within ±h) is skipped.
    var skipKinks: Bool = false
    /// Relative tolerance between the segment slopes of the kink test.
    var kinkTolerance: Double = 5e-3
    /// The largest fraction of checked elements that may be skipped as kinks.
    var maxKinkFraction: Double = 0.15
    /// The fraction of compared elements that must agree (1 = all).
    var minAgreeFraction: Double = 1
    /// Richardson extrapolation `(4·D(h/2) − D(h)) / 3` instead of `D(h)`: cancels the h² term of
    /// the central difference, for smooth but strongly curved functions (deep nets with BN).
    var richardson: Bool = false
    /// When > 0, the floor is at least this many standard deviations of the difference quotient's
    /// Float rounding noise, measured per tensor (``roundingNoise``): in a deep Float network the
    /// objective jitters by ~1e-7 of its size from one point to the next, the quotient by that
    /// over h (Richardson: 1.9·σ/h), which can exceed ``gradAbsoluteFloor`` for a small gradient.
    var noiseSigmas: Double = 0
}

/// The standard deviation of the Float rounding jitter of `evaluate` along element `i`: L at 33
/// points 1e-4 apart (realised positions), less its least-squares quadratic (the smooth part, whose
/// cubic term is ~1e-10 over ±1.6e-3): the residuals' sum of squares over n − 3. Restores the element.
func roundingNoise(at i: Int, value: (Int) -> Float, set: (Int, Float) -> Void, evaluate: () -> Double) -> Double {
    let x0 = value(i)
    var xs: [Double] = [], ls: [Double] = []
    for k in -16...16 {
        let v = x0 + Float(k) * 1e-4
        set(i, v)
        xs.append(Double(v) - Double(x0))
        ls.append(evaluate())
    }
    set(i, x0)
    // Normal equations of l ≈ c0 + c1·x + c2·x² (x scaled to about ±1 for conditioning).
    let scale = 1.6e-3
    var m = [[Double]](repeating: [0, 0, 0], count: 3), b = [0.0, 0, 0]
    for (x, l) in zip(xs, ls) {
        let u = x / scale, f = [1, u, u * u]
        for r in 0..<3 {
            b[r] += f[r] * l
            for c in 0..<3 { m[r][c] += f[r] * f[c] }
        }
    }
    for col in 0..<3 {  // Gaussian elimination (m is symmetric positive definite)
        for r in (col + 1)..<3 {
            let q = m[r][col] / m[col][col]
            for c in col..<3 { m[r][c] -= q * m[col][c] }
            b[r] -= q * b[col]
        }
    }
    var c = [0.0, 0, 0]
    for r in stride(from: 2, through: 0, by: -1) {
        var t = b[r]
        for k in (r + 1)..<3 { t -= m[r][k] * c[k] }
        c[r] = t / m[r][r]
    }
    var ss = 0.0
    for (x, l) in zip(xs, ls) {
        let u = x / scale, e = l - (c[0] + c[1] * u + c[2] * u * u)
        ss += e * e
    }
    return (ss / Double(xs.count - 3)).squareRoot()
}

/// `L = Σ r_i · y_i`, accumulated in Double.
func objective(_ y: Tensor, _ r: Tensor) -> Double {
    precondition(y.shape == r.shape, "objective: \(y.shape) vs \(r.shape)")
    return y.withUnsafePointer { yp in
        r.withUnsafePointer { rp in
            var s = 0.0
            for i in 0..<y.count { s += Double(rp[i]) * Double(yp[i]) }
            return s
        }
    }
}

/// Uniform(−scale, scale) elements, each at least `margin` away from every value in `kinks`.
func randomTensor(_ shape: [Int], rng: inout RandomSource, scale: Float = 1,
                  avoiding kinks: [Float] = [], margin: Float = 0) -> Tensor {
    var t = Tensor(shape: shape)
    for i in 0..<t.count {
        var v: Float
        repeat { v = (rng.nextUnitFloat() * 2 - 1) * scale } while kinks.contains { abs(v - $0) < margin }
        t[flat: i] = v
    }
    return t
}

/// Distinct values spaced `spacing` apart, shuffled: no ties for max pooling.
func distinctTensor(_ shape: [Int], rng: inout RandomSource, spacing: Float = 0.05) -> Tensor {
    let n = shape.reduce(1, *)
    var values = (0..<n).map { (Float($0) - Float(n) / 2) * spacing }
    values.shuffle(using: &rng)
    return Tensor(shape: shape, scalars: values)
}

/// Up to `limit` distinct indices in `0..<count`, sorted (all of them if count ≤ limit).
func sampleIndices(count: Int, limit: Int, rng: inout RandomSource) -> [Int] {
    if count <= limit { return Array(0..<count) }
    var all = Array(0..<count)
    all.shuffle(using: &rng)
    return all.prefix(limit).sorted()
}

/// Outcome of checking one tensor's gradient.
struct TensorCheck {
    var name: String
    var checked = 0
    var skipped = 0
    var failures: [String] = []
}

/// Compares `analytic[i]` with central differences of `evaluate` (or their Richardson
/// extrapolation) for sampled i of one tensor.
/// `set(i, v)` writes element i; `value(i)` reads it.
func checkTensor(name: String, analytic: Tensor, settings: GradCheckSettings, rng: inout RandomSource,
                 value: (Int) -> Float, set: (Int, Float) -> Void, evaluate: () -> Double) -> TensorCheck {
    var result = TensorCheck(name: name)
    var maxAbs = 0.0
    for i in 0..<analytic.count { maxAbs = max(maxAbs, Double(abs(analytic[flat: i]))) }
    var floor = max(settings.floorFraction * maxAbs, settings.absoluteFloor)
    let indices = sampleIndices(count: analytic.count, limit: settings.maxChecked, rng: &rng)
    if settings.noiseSigmas > 0, let first = indices.first {
        // σ of (L(x+h) − L(x−h))/2h is √2·σ_L/2h; Richardson's (4·D(h/2) − D(h))/3 is
        // √2·σ_L·√((4/3)²/h² + (1/3)²/(2h)²) ≈ 1.9·σ_L/h.
        let h = Double(settings.step), sigmaL = roundingNoise(at: first, value: value, set: set, evaluate: evaluate)
        let sigmaD = settings.richardson ? 2.0.squareRoot() * sigmaL * ((16.0 / 9) / (h * h) + (1.0 / 9) / (4 * h * h)).squareRoot()
                                         : 2.0.squareRoot() * sigmaL / (2 * h)
        floor = max(floor, settings.noiseSigmas * sigmaD)
    }
    func close(_ a: Double, _ b: Double, scale: Double? = nil) -> Bool {
        abs(a - b) <= (scale ?? settings.tolerance) * max(abs(a), abs(b)) + floor
    }
    let h = settings.step
    let l0 = settings.skipKinks ? evaluate() : 0
    for i in indices {
        let x0 = value(i)
        let xp = x0 + h, xm = x0 - h
        set(i, xp); let lp = evaluate()
        set(i, xm); let lm = evaluate()
        set(i, x0)
        var numeric = (lp - lm) / (Double(xp) - Double(xm))
        if settings.richardson {
            let xph = x0 + h / 2, xmh = x0 - h / 2
            set(i, xph); let lph = evaluate()
            set(i, xmh); let lmh = evaluate()
            set(i, x0)
            numeric = (4 * (lph - lmh) / (Double(xph) - Double(xmh)) - numeric) / 3
        }
        if settings.skipKinks {
            // A ReLU network in eval mode is piecewise linear along any one coordinate: L at
            // −h, −h/2, 0, h/2, h lies on one line unless a kink lies within ±h. Four segment
            // slopes that disagree mark a kink; the element is skipped.
            let xph = x0 + h / 2, xmh = x0 - h / 2
            set(i, xph); let lph = evaluate()
            set(i, xmh); let lmh = evaluate()
            set(i, x0)
            let points = [(xm, lm), (xmh, lmh), (x0, l0), (xph, lph), (xp, lp)]
            let slopes = (0..<4).map { k in
                (points[k + 1].1 - points[k].1) / (Double(points[k + 1].0) - Double(points[k].0))
            }
            if slopes.contains(where: { !close($0, numeric, scale: settings.kinkTolerance) }) {
                result.skipped += 1
                continue
            }
        }
        result.checked += 1
        let a = Double(analytic[flat: i])
        if !close(a, numeric) {
            result.failures.append("\(name)[\(i)]: analytic \(a), numeric \(numeric)")
        }
    }
    return result
}

/// Records the outcome of a module's checks as test issues: every compared element must agree
/// (or the fraction `minAgreeFraction` of them, summed over all tensors), and at most
/// `maxKinkFraction` of the sampled elements may have been skipped as kinks.
func expectPassed(_ checks: [TensorCheck], label: String, settings: GradCheckSettings,
                  sourceLocation: SourceLocation = #_sourceLocation) {
    let checked = checks.reduce(0) { $0 + $1.checked }
    let skipped = checks.reduce(0) { $0 + $1.skipped }
    let failures = checks.flatMap(\.failures)
    #expect(checked > 0, "\(label): nothing was compared", sourceLocation: sourceLocation)
    #expect(Double(failures.count) <= (1 - settings.minAgreeFraction) * Double(checked),
            "\(label): \(failures.count) of \(checked) compared elements disagree: \(failures.prefix(6).joined(separator: "; "))",
            sourceLocation: sourceLocation)
    #expect(Double(skipped) <= settings.maxKinkFraction * Double(checked + skipped),
            "\(label): \(skipped) of \(checked + skipped) sampled elements skipped as kinks (\(checks.filter { $0.skipped > 0 }.map { "\($0.name): \($0.skipped)" }.joined(separator: ", ")))",
            sourceLocation: sourceLocation)
}

/// Gradient check of a module: input gradient (if `checkInput`) and every trainable parameter's
/// gradient against central differences of `L = Σ r·forward(x)` with a fixed random r.
func gradientCheck(_ module: any Module, input: Tensor, mode: ForwardMode, settings: GradCheckSettings,
                   seed: UInt64, label: String, checkInput: Bool = true,
                   sourceLocation: SourceLocation = #_sourceLocation) {
    var rng = RandomSource(seed: seed)
    let y0 = module.forward(input, mode: mode)
    let r = randomTensor(y0.shape, rng: &rng)
    module.zeroGradients()
    let dx = module.backward(r)
    #expect(dx.shape == input.shape, "\(label): input gradient shape \(dx.shape) vs input \(input.shape)",
            sourceLocation: sourceLocation)
    let params = module.namedParameters().filter { $0.parameter.trainable }
    let analytic = params.map { $0.parameter.grad }

    var checks: [TensorCheck] = []
    var x = input
    let evaluate = { objective(module.forward(x, mode: mode), r) }
    if checkInput {
        checks.append(checkTensor(name: "input", analytic: dx, settings: settings, rng: &rng,
                                  value: { x[flat: $0] }, set: { x[flat: $0] = $1 }, evaluate: evaluate))
    }
    for (k, entry) in params.enumerated() {
        let p = entry.parameter
        checks.append(checkTensor(name: entry.name, analytic: analytic[k], settings: settings, rng: &rng,
                                  value: { p.value[flat: $0] }, set: { p.value[flat: $0] = $1 },
                                  evaluate: evaluate))
    }
    expectPassed(checks, label: label, settings: settings, sourceLocation: sourceLocation)
}
