import CKernels
import Testing

// MSQ's quantizer kernels (MSQ-SPEC §1 RoundClamp, §2 LSB regulariser, §5 PACT):
//   - fast and `_ref` kernels against a plain Swift transcription of the spec, bit for bit on codes
//     and nonzero counts, at 1 and 2 threads, odd sizes, n = 2...8, k = 1, 2;
//   - fast against `_ref` bit for bit on every output but the double sums, on hard weights
//     (random bit patterns, inf, NaN, boundaries) and scales inside and outside the fast range;
//   - the grid properties the spec asks for (nesting, bin alignment, clamp, lsb_int range);
//   - gradients (STE, regulariser vs central differences, PACT), accumulation, s == 0, determinism.
// Every helper here is private and prefixed `Quant` so it cannot collide with shared test support.

// MARK: - Constants

/// Odd sizes; 40_003 is above the kernels' parallel threshold and spans many reduction chunks.
private let quantCounts = [1, 3, 7, 17, 33, 1001, 4099, 40_003]
private let quantThreadCounts: [Int32] = [1, 2]
private let quantBits = Array(2...8)
private let quantKs = [1, 2]
/// Relative tolerance on float outputs (the kernels in fact match the spec transcription exactly).
private let quantFloatRTol: Float = 1e-6
/// Relative tolerance on Σ|lsb| (double sums of the same float terms in different orders).
private let quantAbsSumRTol = 1e-12
/// Regulariser central differences: step in units of one n-bit level (2s/2^n in w), the minimum
/// distance of |lsb| from 0 and of 2^(n−k)·w~ from a rounding boundary (both in level units), and
/// the tolerance of kernel gradient vs difference quotient (the kernel's 2^n/(2s) is a float).
private let quantRegStepLevels = 1e-3
private let quantRegMargin = 0.05
private let quantRegRTol = 1e-5
/// Bin alignment: a move in w (s = 1) much smaller than an 8-bit bin (2/2^8), to step off a boundary.
private let quantNudge: Float = 1e-4
/// PACT central differences: step, minimum distance of x from the clip points 0 and α, tolerance.
private let quantPactStep = 1e-4
private let quantPactMargin = 1e-2
private let quantPactRTol = 1e-9
/// Central difference of the float PACT forward in α (two roundings per evaluation).
private let quantPactFloatStep: Float = 1e-2
private let quantPactFloatTol: Float = 1e-3

// MARK: - Helpers

/// SplitMix64: deterministic test data.
private struct QuantRng {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    mutating func float(_ lo: Float, _ hi: Float) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
    }
}

/// MSQ-SPEC §1–2 written directly from the spec text, in Float, same operation order as the spec:
/// w~ = 1/2 + W/(2s); q = clamp(round(2^n w~), 0, 2^n − 1); j = q − 2^(n−1); Q = s·j/2^(n−1);
/// lsb = 2^n w~ − 2^k q_{n−k}; lsb_int = q_n − 2^k q_{n−k}. Rounding: half to even (project choice).
private enum QuantSpec {
    static func pow2(_ e: Int) -> Float { Float(1 << e) }

    /// s == 0 (all-zero tensor) is defined as w~ = 1/2.
    static func wTilde(_ w: Float, _ s: Float) -> Float { s == 0 ? 0.5 : 0.5 + w / (2 * s) }

    static func roundClamp(_ v: Float, bits: Int) -> Float {
        min(max(v.rounded(.toNearestOrEven), 0), pow2(bits) - 1)
    }

    struct Quantized { var q: Int; var j: Int; var wq: Float }

    static func quantize(_ w: Float, s: Float, bits n: Int) -> Quantized {
        let q = roundClamp(pow2(n) * wTilde(w, s), bits: n)
        let half = pow2(n - 1)
        let j = q - half
        return Quantized(q: Int(q), j: Int(j), wq: s * j / half)
    }

    struct LSB { var qn: Int; var qm: Int; var lsb: Float; var lsbInt: Int }

    static func lsb(_ w: Float, s: Float, bits n: Int, k: Int) -> LSB {
        let wt = wTilde(w, s)
        let qn = roundClamp(pow2(n) * wt, bits: n)
        let qm = roundClamp(pow2(n - k) * wt, bits: n - k)
        let l = pow2(n) * wt - pow2(k) * qm
        return LSB(qn: Int(qn), qm: Int(qm), lsb: l, lsbInt: Int(qn) - (1 << k) * Int(qm))
    }

    /// Eq. 7: coeff · sign(lsb) · 2^n/(2s), with g = coeff·(2^n/(2s)) formed first (header order).
    static func regGrad(_ lsb: Float, s: Float, bits n: Int, coeff: Float) -> Float {
        if s == 0 { return 0 }
        let g = coeff * (pow2(n) / (2 * s))
        let sign: Float = lsb > 0 ? 1 : (lsb < 0 ? -1 : 0)
        return sign * g
    }

    /// 1 when the unclamped code round(2^n w~) is in [0, 2^n − 1].
    static func inside(_ w: Float, s: Float, bits n: Int) -> Bool {
        let r = (pow2(n) * wTilde(w, s)).rounded(.toNearestOrEven)
        return r >= 0 && r <= pow2(n) - 1
    }
}

private func quantClose(_ a: Float, _ b: Float, rtol: Float = quantFloatRTol, floor: Float = 1) -> Bool {
    a == b || abs(a - b) <= rtol * max(abs(a), abs(b), floor)
}

/// Random weights in [−1, 1] mixing uniform values, exact n-bit grid points and half-points
/// (rounding ties when s = 1), tiny values and ±1, so s = max|w| = 1 whenever count > 1.
private func quantWeights(_ count: Int, bits n: Int, seed: UInt64) -> [Float] {
    var rng = QuantRng(seed: seed)
    var w = (0..<count).map { i -> Float in
        switch i % 4 {
        case 0: return rng.float(-1, 1)
        case 1:
            // w~ = c / 2^(n+1): every n-bit level and every n-bit rounding boundary.
            let c = rng.int(0...(1 << (n + 1)))
            return 2 * (Float(c) / Float(1 << (n + 1))) - 1
        case 2: return rng.float(-1e-3, 1e-3)
        default: return rng.float(-1, 1)
        }
    }
    if count > 1 { w[count - 1] = count % 2 == 0 ? 1 : -1 }
    if count > 2 { w[count / 2] = -w[count - 1] }
    return w
}

private typealias QuantRCForward = @Sendable (UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Int32>?,
                                    UnsafePointer<Float>?, Int, Float, Int32) -> Void
private typealias QuantLSBPass = @Sendable (UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Double>?,
                                  UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Float>?,
                                  UnsafePointer<Float>?, Int, Float, Int32, Int32, Float) -> Void
private typealias QuantRCBackward = @Sendable (UnsafeMutablePointer<Float>?, UnsafePointer<Float>?,
                                     UnsafePointer<Float>?, Int, Float, Int32, Int32) -> Void

private let quantRCForwards: [(String, QuantRCForward)] = [("fast", msq_roundclamp_forward),
                                                           ("ref", msq_roundclamp_forward_ref)]
private let quantLSBPasses: [(String, QuantLSBPass)] = [("fast", msq_lsb_forward_backward),
                                                        ("ref", msq_lsb_forward_backward_ref)]
private let quantRCBackwards: [(String, QuantRCBackward)] = [("fast", msq_roundclamp_backward),
                                                             ("ref", msq_roundclamp_backward_ref)]

/// Codes (j) of `w` at `bits` from a RoundClamp kernel.
private func quantCodes(_ w: [Float], scale: Float, bits: Int, _ f: QuantRCForward = msq_roundclamp_forward)
    -> (codes: [Int32], wq: [Float])
{
    var wq = [Float](repeating: .nan, count: w.count)
    var codes = [Int32](repeating: .min, count: w.count)
    f(&wq, &codes, w, w.count, scale, Int32(bits))
    return (codes, wq)
}

private struct QuantLSBResult {
    var lsb: [Float]
    var absSum: Double
    var nonzero: Int64
    var grad: [Float]
}

private func quantRunLSB(_ f: QuantLSBPass, _ w: [Float], scale: Float, bits: Int, k: Int, coeff: Float,
                         grad0: [Float]) -> QuantLSBResult
{
    var r = QuantLSBResult(lsb: [Float](repeating: .nan, count: w.count), absSum: -1, nonzero: -1, grad: grad0)
    f(&r.lsb, &r.absSum, &r.nonzero, &r.grad, w, w.count, scale, Int32(bits), Int32(k), coeff)
    return r
}

// MARK: - Tests

@Suite("Quantizer kernels (MSQ-SPEC §1, §2, §5)")
struct QuantizerTests {
    @Test("absmax: fast and ref give max|w|, 0 when empty", arguments: [0] + quantCounts)
    func quantAbsmax(count: Int) {
        var w = quantWeights(count, bits: 4, seed: UInt64(count))
        for i in w.indices { w[i] *= 0.37 }
        let expect = w.map { abs($0) }.max() ?? 0
        for threads in quantThreadCounts {
            msq_set_num_threads(threads)
            #expect(msq_absmax(w, w.count) == expect, "count=\(count) threads=\(threads)")
            #expect(msq_absmax_ref(w, w.count) == expect, "count=\(count)")
        }
    }

    @Test("RoundClamp and the LSB pass match the spec transcription", arguments: quantCounts)
    func quantMatchesSpec(count: Int) {
        for n in quantBits {
            let base = quantWeights(count, bits: n, seed: UInt64(count * 31 + n))
            let sMax = msq_absmax(base, base.count)
            // s = max|w| (the spec), and a smaller caller scale so weights fall outside and clamp.
            for scale in [sMax, 0.75 * sMax] {
                // Scale the weights too, so s is not 1 and the division is a real rounding.
                let factor: Float = 0.3125
                let w = base.map { $0 * factor }
                let s = scale * factor
                let spec = w.map { QuantSpec.quantize($0, s: s, bits: n) }
                for threads in quantThreadCounts {
                    msq_set_num_threads(threads)
                    for (name, f) in quantRCForwards {
                        let tag = "\(name) count=\(count) n=\(n) s=\(s) threads=\(threads)"
                        let (codes, wq) = quantCodes(w, scale: s, bits: n, f)
                        #expect(codes.map(Int.init) == spec.map(\.j), "codes \(tag)")
                        let bad = zip(wq, spec).filter { !quantClose($0, $1.wq, floor: s) }.count
                        #expect(bad == 0, "wq \(tag)")
                        // codes may be NULL.
                        var wq2 = [Float](repeating: .nan, count: w.count)
                        f(&wq2, nil, w, w.count, s, Int32(n))
                        #expect(wq2 == wq, "wq without codes \(tag)")
                    }
                    for k in quantKs where k < n {
                        let specL = w.map { QuantSpec.lsb($0, s: s, bits: n, k: k) }
                        let coeff: Float = 0.0123
                        var rng = QuantRng(seed: UInt64(count + n + k))
                        let grad0 = (0..<count).map { _ in rng.float(-1, 1) }
                        let expectNZ = Int64(specL.filter { $0.lsbInt != 0 }.count)
                        let expectSum = specL.reduce(0.0) { $0 + abs(Double($1.lsb)) }
                        let expectGrad = zip(grad0, specL).map {
                            $0 + QuantSpec.regGrad($1.lsb, s: s, bits: n, coeff: coeff)
                        }
                        for (name, f) in quantLSBPasses {
                            let tag = "\(name) count=\(count) n=\(n) k=\(k) s=\(s) threads=\(threads)"
                            let r = quantRunLSB(f, w, scale: s, bits: n, k: k, coeff: coeff, grad0: grad0)
                            #expect(r.nonzero == expectNZ, "nonzero \(tag)")
                            let badL = zip(r.lsb, specL).filter { !quantClose($0, $1.lsb) }.count
                            #expect(badL == 0, "lsb \(tag)")
                            #expect(abs(r.absSum - expectSum) <= quantAbsSumRTol * max(expectSum, 1),
                                    "abs_sum \(r.absSum) vs \(expectSum) \(tag)")
                            let badG = zip(r.grad, expectGrad).filter { !quantClose($0, $1) }.count
                            #expect(badG == 0, "grad \(tag)")
                            // Every output pointer may be NULL; the others are unaffected.
                            var sum2 = -1.0
                            var nz2: Int64 = -1
                            f(nil, &sum2, &nz2, nil, w, w.count, s, Int32(n), Int32(k), coeff)
                            #expect(sum2 == r.absSum && nz2 == r.nonzero, "NULL lsb/grad \(tag)")
                        }
                    }
                }
            }
        }
    }

    @Test("nesting: every (n−k)-bit level is an n-bit level with k zero LSBs")
    func quantNesting() {
        let s: Float = 1
        for n in quantBits {
            for k in quantKs where k < n {
                let m = n - k
                // w~ = l / 2^m for every coarse level l (l = 2^m is w = +s, the top clamp).
                let levels = Array(0...(1 << m))
                let w = levels.map { 2 * (Float($0) / Float(1 << m)) - 1 }
                let fine = quantCodes(w, scale: s, bits: n)
                let coarse = quantCodes(w, scale: s, bits: m)
                let r = quantRunLSB(msq_lsb_forward_backward, w, scale: s, bits: n, k: k, coeff: 0,
                                    grad0: [Float](repeating: 0, count: w.count))
                for (i, l) in levels.enumerated() {
                    let qn = Int(fine.codes[i]) + (1 << (n - 1))
                    let qm = Int(coarse.codes[i]) + (1 << (m - 1))
                    let tag = "n=\(n) k=\(k) level=\(l)"
                    if l < 1 << m {
                        #expect(qm == l, "coarse code \(tag)")
                        #expect(qn == l << k, "q_n = 2^k q_(n-k) \(tag)")
                        #expect(qn & ((1 << k) - 1) == 0, "k low bits zero \(tag)")
                        #expect(fine.wq[i] == coarse.wq[i], "Q_n = Q_(n-k) on a coarse level \(tag)")
                        #expect(r.lsb[i] == 0, "lsb = 0 on a coarse level \(tag)")
                    } else {
                        // w = +s: both grids clamp to their top code; lsb_int = 2^k − 1 (MSQ-SPEC §2).
                        #expect(qn == (1 << n) - 1 && qm == (1 << m) - 1, "top clamp \(tag)")
                        #expect(qn - (qm << k) == (1 << k) - 1, "top lsb_int \(tag)")
                    }
                }
                #expect(r.nonzero == 1, "only the top clamp has lsb_int != 0, n=\(n) k=\(k)")
            }
        }
    }

    @Test("bin alignment: (n−k)-bit rounding boundaries are centres of n-bit bins with nonzero LSBs")
    func quantBinAlignment() {
        let s: Float = 1
        for n in quantBits {
            for k in quantKs where k < n {
                let m = n - k
                for l in 0..<(1 << m) {
                    // Boundary of coarse rounding: w~ = (l + 1/2) / 2^m.
                    let wt = (Float(l) + 0.5) / Float(1 << m)
                    // It is the centre c / 2^n of an n-bit bin, exactly, with c = 2^k l + 2^(k−1).
                    let c = (l << k) + (1 << (k - 1))
                    let tag = "n=\(n) k=\(k) l=\(l)"
                    #expect(wt == Float(c) / Float(1 << n), "boundary is a bin centre \(tag)")
                    #expect(c & ((1 << k) - 1) != 0, "nonzero k-bit tail \(tag)")
                    let w = 2 * wt - 1
                    #expect(QuantSpec.wTilde(w, s) == wt, "w round-trips exactly \(tag)")
                    // The kernel's n-bit code there is c; the lsb is half a coarse step either way.
                    let q = quantCodes([w], scale: s, bits: n).codes[0] + Int32(1 << (n - 1))
                    #expect(Int(q) == c, "n-bit code \(tag)")
                    let r = quantRunLSB(msq_lsb_forward_backward_ref, [w], scale: s, bits: n, k: k, coeff: 0,
                                        grad0: [0])
                    #expect(r.nonzero == 1, "lsb_int != 0 \(tag)")
                    #expect(abs(r.lsb[0]) == Float(1 << (k - 1)), "|lsb| = 2^(k-1) \(tag)")
                    // Just above / below the boundary, the coarse code moves up / down (the top
                    // boundary l = 2^m − 1 clamps instead of moving up).
                    let up = quantCodes([w + quantNudge], scale: s, bits: m).codes[0] + Int32(1 << (m - 1))
                    let down = quantCodes([w - quantNudge], scale: s, bits: m).codes[0] + Int32(1 << (m - 1))
                    #expect(Int(down) == l, "below boundary \(tag)")
                    #expect(Int(up) == min(l + 1, (1 << m) - 1), "above boundary \(tag)")
                }
            }
        }
    }

    @Test("clamp: +s → 2^n − 1, −s → 0, j in range, wq·2^(n−1)/s integral")
    func quantClamp() {
        var rng = QuantRng(seed: 7)
        for n in quantBits {
            let s: Float = 0.37
            var w = (0..<5001).map { _ in rng.float(-s, s) }
            w += [s, -s, s.nextDown, -s.nextDown, 0, 2 * s, -2 * s]
            let half = 1 << (n - 1)
            for (name, f) in quantRCForwards {
                let (codes, wq) = quantCodes(w, scale: s, bits: n, f)
                let tag = "\(name) n=\(n)"
                #expect(Int(codes[5001]) + half == (1 << n) - 1, "w = +s \(tag)")
                #expect(Int(codes[5002]) + half == 0, "w = -s \(tag)")
                #expect(Int(codes[5005]) == 0, "w = 0 \(tag)")
                #expect(Int(codes[5006]) + half == (1 << n) - 1 && Int(codes[5007]) == -half, "outside \(tag)")
                #expect(codes.allSatisfy { Int($0) >= -half && Int($0) <= half - 1 }, "j range \(tag)")
                let bad = zip(codes, wq).filter { j, v in
                    let x = Double(v) * Double(half) / Double(s)
                    return abs(x - Double(j)) > 1e-5 * max(1, abs(Double(j)))
                }.count
                #expect(bad == 0, "wq = s j / 2^(n-1) \(tag)")
            }
        }
    }

    @Test("lsb_int in [−2^(k−1), 2^(k−1)], up to 2^k − 1 only at the top clamp")
    func quantLSBIntRange() {
        var rng = QuantRng(seed: 11)
        let s: Float = 1.7
        var w = (0..<50_001).map { _ in rng.float(-s, s) }
        w += [s, -s, s.nextDown, -s.nextDown, 0, s * 0.999, -s * 0.999]
        for n in quantBits {
            for k in quantKs where k < n {
                let m = n - k
                let qn = quantCodes(w, scale: s, bits: n).codes.map { Int($0) + (1 << (n - 1)) }
                let qm = quantCodes(w, scale: s, bits: m).codes.map { Int($0) + (1 << (m - 1)) }
                let tag = "n=\(n) k=\(k)"
                var nz = 0
                for i in w.indices {
                    let li = qn[i] - (qm[i] << k)
                    if li != 0 { nz += 1 }
                    if qn[i] == (1 << n) - 1 {
                        #expect(li >= -(1 << (k - 1)) && li <= (1 << k) - 1, "top \(tag) w=\(w[i])")
                    } else {
                        #expect(li >= -(1 << (k - 1)) && li <= 1 << (k - 1), "\(tag) w=\(w[i]) lsb_int=\(li)")
                    }
                }
                // The extreme w = +s reaches 2^k − 1.
                #expect(qn[50_001] - (qm[50_001] << k) == (1 << k) - 1, "w = +s \(tag)")
                let r = quantRunLSB(msq_lsb_forward_backward, w, scale: s, bits: n, k: k, coeff: 0,
                                    grad0: [Float](repeating: 0, count: w.count))
                #expect(r.nonzero == Int64(nz), "kernel nonzero count \(tag)")
            }
        }
    }

    @Test("STE backward adds dwq; zero_outside masks exactly the clamped codes")
    func quantSTE() {
        var rng = QuantRng(seed: 13)
        let count = 40_003
        let s: Float = 0.5
        // Weights beyond ±s (a caller scale below max|w|), plus the edges.
        var w = (0..<count).map { _ in rng.float(-0.7, 0.7) }
        w[0] = s
        w[1] = -s
        let dwq = (0..<count).map { _ in rng.float(-1, 1) }
        let dw0 = (0..<count).map { _ in rng.float(-1, 1) }
        for n in quantBits {
            for threads in quantThreadCounts {
                msq_set_num_threads(threads)
                for (name, f) in quantRCBackwards {
                    let tag = "\(name) n=\(n) threads=\(threads)"
                    var dw = dw0
                    f(&dw, dwq, w, count, s, Int32(n), 0)
                    #expect(dw == zip(dw0, dwq).map { $0 + $1 }, "plain STE \(tag)")
                    dw = dw0
                    f(&dw, dwq, w, count, s, Int32(n), 1)
                    let expect = w.indices.map { QuantSpec.inside(w[$0], s: s, bits: n) ? dw0[$0] + dwq[$0] : dw0[$0] }
                    #expect(dw == expect, "zero_outside \(tag)")
                    // w = +s rounds to 2^n before the clamp: outside. w = −s rounds to 0: inside.
                    #expect(dw[0] == dw0[0] && dw[1] == dw0[1] + dwq[1], "edges \(tag)")
                    let masked = w.indices.filter { dw[$0] == dw0[$0] && dwq[$0] != 0 }.count
                    #expect(masked > count / 10, "the mask is exercised \(tag)")
                }
            }
        }
    }

    @Test("regulariser gradient matches central differences of Σ|lsb| in double")
    func quantRegulariserGradient() {
        var rng = QuantRng(seed: 17)
        let s: Float = 0.83
        let coeff: Float = 0.25
        for n in quantBits {
            for k in quantKs where k < n {
                let m = n - k
                // Weights whose lsb is far from 0 and whose 2^(n−k)·w~ is far from a rounding boundary.
                var w: [Float] = []
                while w.count < 257 {
                    let x = rng.float(-0.95 * s, 0.95 * s)
                    let wt = 0.5 + Double(x) / (2 * Double(s))
                    let v = Double(1 << m) * wt
                    let lsb = Double(1 << n) * wt - Double(1 << k) * v.rounded(.toNearestOrEven)
                    if abs(v - v.rounded(.down) - 0.5) >= quantRegMargin && abs(lsb) >= quantRegMargin {
                        w.append(x)
                    }
                }
                let grad0 = (0..<w.count).map { _ in rng.float(-1, 1) }
                // Σ|lsb| in double with q_{n−k} from the same weights (no gradient through it); the
                // sum is separable, so its partial in w_i is the difference quotient of term i.
                func absLSB(_ x: Double) -> Double {
                    let wt = 0.5 + x / (2 * Double(s))
                    let qm = min(max((Double(1 << m) * wt).rounded(.toNearestOrEven), 0), Double((1 << m) - 1))
                    return abs(Double(1 << n) * wt - Double(1 << k) * qm)
                }
                let h = quantRegStepLevels * 2 * Double(s) / Double(1 << n)
                for (name, f) in quantLSBPasses {
                    let r = quantRunLSB(f, w, scale: s, bits: n, k: k, coeff: coeff, grad0: grad0)
                    let total = w.reduce(0.0) { $0 + absLSB(Double($1)) }
                    let tag = "\(name) n=\(n) k=\(k)"
                    #expect(abs(r.absSum - total) <= 1e-6 * total, "abs_sum vs double \(tag)")
                    for i in w.indices {
                        let x = Double(w[i])
                        let fd = Double(coeff) * (absLSB(x + h) - absLSB(x - h)) / (2 * h)
                        let g = Double(r.grad[i]) - Double(grad0[i])
                        #expect(abs(g - fd) <= quantRegRTol * abs(fd) + 1e-6, "\(tag) w=\(w[i]) grad \(g) fd \(fd)")
                    }
                }
            }
        }
    }

    @Test("PACT forward and backward: hand values")
    func quantPactHand() {
        // alpha = 1.5, A = 2: levels at 0, 0.5, 1, 1.5. 0.75 → 1.5 levels → 2 (half to even);
        // 1.25 → 2.5 → 2 (half to even); x ≥ alpha → alpha.
        let x: [Float] = [-1, 0, 0.2, 0.3, 0.75, 1.25, 1.5, 2]
        let expect: [Float] = [0, 0, 0, 0.5, 1.0, 1.0, 1.5, 1.5]
        for f in [msq_pact_forward, msq_pact_forward_ref] {
            var y = [Float](repeating: .nan, count: x.count)
            f(&y, x, x.count, 1.5, 2)
            #expect(y == expect)
        }
        let xb: [Float] = [-1, 0, 0.7, 1.5, 2]
        let dy: [Float] = [1, 2, 3, 4, 5]
        for f in [msq_pact_backward, msq_pact_backward_ref] {
            var dx: [Float] = [10, 10, 10, 10, 10]
            var dalpha: Float = 0.5
            f(&dx, &dalpha, dy, xb, xb.count, 1.5)
            #expect(dx == [10, 12, 13, 10, 10])
            #expect(dalpha == 9.5)
        }
    }

    @Test("PACT fast matches ref; gradients match central differences", arguments: quantCounts)
    func quantPact(count: Int) {
        var rng = QuantRng(seed: UInt64(count) &* 3)
        let alpha: Float = 1.7
        var x = (0..<count).map { _ in rng.float(-1, 3) }
        x[0] = alpha
        let dy = (0..<count).map { _ in rng.float(-1, 1) }
        let dx0 = (0..<count).map { _ in rng.float(-1, 1) }
        for bits in [2, 3, 4, 8] {
            var yr = [Float](repeating: .nan, count: count)
            msq_pact_forward_ref(&yr, x, count, alpha, Int32(bits))
            for threads in quantThreadCounts {
                msq_set_num_threads(threads)
                var y = [Float](repeating: .nan, count: count)
                msq_pact_forward(&y, x, count, alpha, Int32(bits))
                #expect(y == yr, "forward bits=\(bits) count=\(count) threads=\(threads)")
            }
            // Spec formula in Swift, left to right.
            let levels = Float((1 << bits) - 1)
            let spec = x.map { v -> Float in
                let c = min(max(v, 0), alpha)
                return (c * levels / alpha).rounded(.toNearestOrEven) * alpha / levels
            }
            #expect(yr == spec, "spec bits=\(bits)")
        }
        // Backward: PACT's STE differentiates y = clip(x, 0, α) (the rounding is invisible), so
        // compare with central differences of L = Σ dy·clip(x, 0, α) in double, away from 0 and α.
        func loss(_ xs: [Double], _ dys: [Float], _ a: Double) -> Double {
            zip(xs, dys).reduce(0.0) { $0 + Double($1.1) * min(max($1.0, 0), a) }
        }
        let h = quantPactStep
        let xd = x.map(Double.init)
        let keep = x.indices.filter { abs(x[$0]) > Float(quantPactMargin) && abs(x[$0] - alpha) > Float(quantPactMargin) }
        let xKeep = keep.map { x[$0] }, dyKeep = keep.map { dy[$0] }
        let xdKeep = xKeep.map(Double.init)
        let fdAlpha = (loss(xdKeep, dyKeep, Double(alpha) + h) - loss(xdKeep, dyKeep, Double(alpha) - h)) / (2 * h)
        for threads in quantThreadCounts {
            msq_set_num_threads(threads)
            for (name, f) in [("fast", msq_pact_backward), ("ref", msq_pact_backward_ref)] {
                let tag = "\(name) count=\(count) threads=\(threads)"
                var dx = dx0
                var dalpha: Float = 0.25
                f(&dx, &dalpha, dy, x, count, alpha)
                for i in keep {
                    let xp = xd[i] + h, xm = xd[i] - h
                    let fd = Double(dy[i]) * (min(max(xp, 0), Double(alpha)) - min(max(xm, 0), Double(alpha))) / (2 * h)
                    let g = Double(dx[i]) - Double(dx0[i])
                    #expect(abs(g - fd) <= quantPactRTol * abs(fd) + 1e-7, "dx \(tag) x=\(x[i])")
                }
                // x == α exactly counts for α (1[x ≥ α]), not for x.
                #expect(dx[0] == dx0[0], "x = alpha: no dx \(tag)")
                var dk = [Float](repeating: 0, count: keep.count)
                var da: Float = 0.25
                f(&dk, &da, dyKeep, xKeep, keep.count, alpha)
                #expect(abs(Double(da) - 0.25 - fdAlpha) <= 1e-5 * max(1, abs(fdAlpha)), "dalpha \(tag)")
                let expectAll = zip(x, dy).reduce(0.0) { $0 + ($1.0 >= alpha ? Double($1.1) : 0) }
                #expect(abs(Double(dalpha) - 0.25 - expectAll) <= 1e-5 * max(1, abs(expectAll)), "dalpha all \(tag)")
            }
        }
        // For clipped inputs the quantized forward itself is ≈ α, so its α-derivative is 1.
        let hf = quantPactFloatStep
        for bits in [2, 4, 8] {
            var yp: Float = 0, ym: Float = 0
            let xs: [Float] = [alpha + 0.5]
            msq_pact_forward(&yp, xs, 1, alpha + hf, Int32(bits))
            msq_pact_forward(&ym, xs, 1, alpha - hf, Int32(bits))
            #expect(abs((yp - ym) / (2 * hf) - 1) <= quantPactFloatTol, "d y_q / d alpha bits=\(bits)")
        }
    }

    @Test("s == 0: zero codes, zero lsb, gradient untouched")
    func quantZeroScale() {
        let count = 37
        let w = [Float](repeating: 0, count: count)
        #expect(msq_absmax(w, count) == 0 && msq_absmax_ref(w, count) == 0)
        for n in quantBits {
            for (name, f) in quantRCForwards {
                let (codes, wq) = quantCodes(w, scale: 0, bits: n, f)
                #expect(codes.allSatisfy { $0 == 0 } && wq.allSatisfy { $0 == 0 }, "\(name) n=\(n)")
            }
            for k in quantKs where k < n {
                for (name, f) in quantLSBPasses {
                    let grad0 = (0..<count).map { Float($0) * 0.5 - 3 }
                    let r = quantRunLSB(f, w, scale: 0, bits: n, k: k, coeff: 1, grad0: grad0)
                    #expect(r.lsb.allSatisfy { $0 == 0 } && r.absSum == 0 && r.nonzero == 0, "\(name) n=\(n) k=\(k)")
                    #expect(r.grad == grad0, "grad untouched \(name) n=\(n) k=\(k)")
                }
            }
            for (name, f) in quantRCBackwards {
                var dw = [Float](repeating: 1, count: count)
                f(&dw, [Float](repeating: 2, count: count), w, count, 0, Int32(n), 1)
                #expect(dw.allSatisfy { $0 == 3 }, "backward s=0 \(name) n=\(n)")
            }
        }
    }

    /// Weights that stress the fast kernels' division-free arithmetic (quant.c, code_real): random
    /// bit patterns (every exponent, subnormals, ±inf, NaN), ±0, the scale's neighbours, exact
    /// n-bit rounding boundaries, and weights whose quotient sits at the float range's edge.
    private static func hardWeights(scale s: Float, bits n: Int, seed: UInt64) -> [Float] {
        var rng = QuantRng(seed: seed)
        var w: [Float] = [0, -0, .infinity, -.infinity, .nan, s, -s, s.nextUp, s.nextDown, -s.nextUp,
                          .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .greatestFiniteMagnitude,
                          -.greatestFiniteMagnitude, 0x1.fffffcp+126, -0x1.fffffcp+126]
        for i in 0..<4099 {
            switch i % 3 {
            case 0: w.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())))
            case 1:
                // w~ = c / 2^(n+1): n-bit levels and rounding boundaries (ties), at this scale.
                let c = rng.int(0...(1 << (n + 1)))
                w.append(s * (2 * (Float(c) / Float(1 << (n + 1))) - 1))
            default: w.append(rng.float(-1.5, 1.5) * s)
            }
        }
        return w
    }

    @Test("fast kernels equal the _ref ones bit for bit on hard weights and scales")
    func quantFastEqualsRefBitwise() {
        // In the fast range [2^-60, 2^60] (mantissa all ones, powers of two, the ends) and outside it
        // (the fast kernels fall back to the reference arithmetic there).
        let scales: [Float] = [1, 0x1.fffffep-1, 0.3, 0x1p-60, 0x1p60, 7.3e-9, 4.1e5, 0x1p-70, 0x1p70]
        func same(_ a: [Float], _ b: [Float]) -> Bool {
            zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern || ($0.isNaN && $1.isNaN) }
        }
        for (si, s) in scales.enumerated() {
            for n in [1, 2, 5, 8, 16] {
                let w = Self.hardWeights(scale: s, bits: n, seed: UInt64(si * 100 + n))
                var rng = QuantRng(seed: UInt64(n))
                let grad0 = w.map { _ in rng.float(-1, 1) }
                for threads in quantThreadCounts {
                    msq_set_num_threads(threads)
                    let tag = "s=\(s) n=\(n) threads=\(threads)"
                    let fast = quantCodes(w, scale: s, bits: n, msq_roundclamp_forward)
                    let ref = quantCodes(w, scale: s, bits: n, msq_roundclamp_forward_ref)
                    #expect(fast.codes == ref.codes, "codes \(tag)")
                    #expect(same(fast.wq, ref.wq), "wq \(tag)")
                    var dwFast = grad0, dwRef = grad0
                    msq_roundclamp_backward(&dwFast, grad0, w, w.count, s, Int32(n), 1)
                    msq_roundclamp_backward_ref(&dwRef, grad0, w, w.count, s, Int32(n), 1)
                    #expect(same(dwFast, dwRef), "zero_outside backward \(tag)")
                    for k in [1, 2] where k < n {
                        let f = quantRunLSB(msq_lsb_forward_backward, w, scale: s, bits: n, k: k, coeff: 0.0123,
                                            grad0: grad0)
                        let r = quantRunLSB(msq_lsb_forward_backward_ref, w, scale: s, bits: n, k: k,
                                            coeff: 0.0123, grad0: grad0)
                        #expect(same(f.lsb, r.lsb), "lsb k=\(k) \(tag)")
                        #expect(f.nonzero == r.nonzero, "nonzero k=\(k) \(tag)")
                        #expect(same(f.grad, r.grad), "grad k=\(k) \(tag)")
                        // inf/NaN weights make the sum inf/NaN in both; otherwise the same terms.
                        #expect(f.absSum == r.absSum || (f.absSum.isNaN && r.absSum.isNaN)
                                    || abs(f.absSum - r.absSum) <= quantAbsSumRTol * r.absSum,
                                "abs_sum k=\(k) \(tag)")
                    }
                }
            }
        }
    }

    @Test("abs_sum, nonzero and dalpha are deterministic (and the same at 1 and 2 threads)")
    func quantDeterminism() {
        let count = 100_003
        var rng = QuantRng(seed: 23)
        let w = (0..<count).map { _ in rng.float(-1, 1) }
        let dy = (0..<count).map { _ in rng.float(-1, 1) }
        let s = msq_absmax(w, count)
        let zeros = [Float](repeating: 0, count: count)
        var sums: [Double] = [], nzs: [Int64] = [], grads: [[Float]] = [], dalphas: [Float] = []
        for threads in quantThreadCounts {
            msq_set_num_threads(threads)
            for _ in 0..<3 {
                let r = quantRunLSB(msq_lsb_forward_backward, w, scale: s, bits: 6, k: 1, coeff: 1e-3, grad0: zeros)
                sums.append(r.absSum)
                nzs.append(r.nonzero)
                grads.append(r.grad)
                var da: Float = 0
                msq_pact_backward(nil, &da, dy, w, count, 0.4)
                dalphas.append(da)
            }
        }
        #expect(Set(sums).count == 1, "abs_sum \(sums)")
        #expect(Set(nzs).count == 1, "nonzero \(nzs)")
        #expect(grads.allSatisfy { $0 == grads[0] }, "grad")
        #expect(Set(dalphas).count == 1, "dalpha \(dalphas)")
    }
}
