import CKernels
import Testing

// The proximal LSB step (`msq_lsb_prox`, MSQ-SPEC §2's |lsb| term under a proximal step):
//   - fast against `_ref` bit for bit at odd sizes, 1 and 2 threads, n = 2...8, k = 1, 2;
//   - against a double-precision transcription: lsb' = sign(lsb)·max(0, |lsb| − t) for every
//     weight not clamped at the top, the clamped ones unchanged;
//   - a threshold of 2^(k−1) levels (the farthest a weight can sit from its coarse level) leaves
//     only top-clamped weights with a nonzero LSB, and s = max|W| is kept;
//   - t <= 0 and s == 0 change nothing.

/// Odd sizes; 40_003 is above the kernel's parallel threshold.
private let proxCounts = [1, 3, 17, 1001, 40_003]
private let proxThreads: [Int32] = [1, 2]
/// |lsb'| against the double transcription, in n-bit levels: the weight update is one float
/// product and sum (relative 2^-24 of a weight ≤ s, i.e. ≤ 2^(n-23) levels at n ≤ 8).
private let proxLevelTol = 1e-4

/// Deterministic weights in [−0.6, 0.6] with s = 0.6 reached by a positive and a negative weight.
private func proxWeights(_ count: Int, seed: UInt64) -> [Float] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    var w = (0..<count).map { _ -> Float in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return 1.2 * (Float(state >> 40) / Float(1 << 24)) - 0.6
    }
    if count > 1 { w[0] = 0.6 }
    if count > 2 { w[1] = -0.6 }
    return w
}

/// lsb and the top clamp of the coarse code, in double, as MSQ-SPEC §2 writes them.
private func proxLSB(_ w: Float, s: Float, n: Int, k: Int) -> (lsb: Double, clampedTop: Bool) {
    let wt = 0.5 + Double(w) / (2 * Double(s))
    let coarse = (Double(1 << (n - k)) * wt).rounded(.toNearestOrEven)
    let qm = min(max(coarse, 0), Double((1 << (n - k)) - 1))
    return (Double(1 << n) * wt - Double(1 << k) * qm, coarse > Double((1 << (n - k)) - 1))
}

private func proxNonzero(_ w: [Float], s: Float, n: Int, k: Int) -> Int64 {
    var nonzero: Int64 = -1
    msq_lsb_forward_backward_ref(nil, nil, &nonzero, nil, w, w.count, s, Int32(n), Int32(k), 0)
    return nonzero
}

@Suite("Proximal LSB step (msq_lsb_prox)")
struct LSBProxTests {
    @Test("fast = ref bit for bit, 1 and 2 threads", arguments: proxCounts)
    func fastMatchesRef(count: Int) {
        for n in 2...8 {
            for k in [1, 2] where k < n {
                let w0 = proxWeights(count, seed: UInt64(count * 17 + n * 3 + k))
                let s = msq_absmax(w0, w0.count)
                var ref = w0
                msq_lsb_prox_ref(&ref, ref.count, s, Int32(n), Int32(k), 0.3)
                for threads in proxThreads {
                    msq_set_num_threads(threads)
                    var fast = w0
                    msq_lsb_prox(&fast, fast.count, s, Int32(n), Int32(k), 0.3)
                    #expect(fast.map(\.bitPattern) == ref.map(\.bitPattern), "count=\(count) n=\(n) k=\(k) threads=\(threads)")
                }
            }
        }
    }

    @Test("soft threshold of lsb toward the coarse level; top-clamped weights untouched")
    func softThreshold() {
        let count = 4099
        for n in 2...8 {
            for k in [1, 2] where k < n {
                let w0 = proxWeights(count, seed: UInt64(n * 10 + k))
                let s = msq_absmax(w0, w0.count)
                let t = 0.37
                var w = w0
                msq_lsb_prox(&w, w.count, s, Int32(n), Int32(k), Float(t))
                var worst = 0.0, clampedMoved = 0
                for i in 0..<count {
                    let before = proxLSB(w0[i], s: s, n: n, k: k)
                    if before.clampedTop {
                        if w[i] != w0[i] { clampedMoved += 1 }
                        continue
                    }
                    let expect = before.lsb > 0 ? max(0, before.lsb - t) : -max(0, -before.lsb - t)
                    worst = max(worst, abs(proxLSB(w[i], s: s, n: n, k: k).lsb - expect))
                }
                #expect(clampedMoved == 0, "n=\(n) k=\(k)")
                #expect(worst <= proxLevelTol, "n=\(n) k=\(k): worst |lsb' − expected| \(worst) levels")
                #expect(msq_absmax(w, w.count) == s, "s changed at n=\(n) k=\(k)")
            }
        }
    }

    @Test("a threshold of 2^(k−1) levels zeroes every LSB but the top-clamped ones")
    func fullPullZeroesLSBs() {
        let count = 1001
        for n in 3...8 {
            for k in [1, 2] where k < n {
                var w = proxWeights(count, seed: UInt64(n + 100 * k))
                let s = msq_absmax(w, w.count)
                let clamped = w.filter { proxLSB($0, s: s, n: n, k: k).clampedTop }
                #expect(proxNonzero(w, s: s, n: n, k: k) > Int64(clamped.count))
                msq_lsb_prox(&w, w.count, s, Int32(n), Int32(k), Float(1 << (k - 1)))
                let remaining = proxNonzero(w, s: s, n: n, k: k)
                #expect(remaining <= Int64(clamped.count), "n=\(n) k=\(k): \(remaining) nonzero, \(clamped.count) clamped")
            }
        }
    }

    @Test("t <= 0 and s == 0 leave the weights unchanged")
    func noOp() {
        let w0 = proxWeights(257, seed: 9)
        for t: Float in [0, -1, .nan] {
            var w = w0
            msq_lsb_prox(&w, w.count, 0.6, 4, 1, t)
            #expect(w == w0, "t=\(t)")
            msq_lsb_prox_ref(&w, w.count, 0.6, 4, 1, t)
            #expect(w == w0, "ref t=\(t)")
        }
        var zeros = [Float](repeating: 0, count: 33)
        msq_lsb_prox(&zeros, zeros.count, 0, 4, 1, 1)
        #expect(zeros == [Float](repeating: 0, count: 33))
    }
}
