import CKernels
import Testing

// Fast batch-norm kernels against their scalar twins, hand-computed statistics, accumulation,
// and central differences of the float forward for both backward kernels.

private typealias Kit = KernelTestKit

/// Fast vs reference: the kernels differ only in the order of the per-channel double sums.
private let bnFastVsRefAbsTol: Float = 1e-5
private let bnFastVsRefRelTol: Float = 1e-5
/// Hand-computed cases are exact up to float rounding of O(1) values.
private let bnHandTol: Float = 1e-5
/// Central differences: h is small next to the per-channel spread (~0.6) so the truncation
/// error (~h^2) stays below the float noise of the forward divided by 2h.
private let bnGradStep: Float = 4e-3
private let bnGradAbsTol = 2e-3
private let bnGradRelTol = 2e-3

private let bnShapes: [Kit.Shape4] = [
    .init(1, 1, 1, 1), .init(1, 3, 1, 1), .init(3, 7, 1, 1), .init(1, 3, 7, 7), .init(7, 3, 17, 1),
    .init(3, 17, 7, 7), .init(33, 17, 7, 7), .init(7, 33, 17, 17), .init(3, 3, 33, 33),
]

/// Every buffer one batch-norm call needs, filled with reproducible random values.
private struct BNCase {
    let shape: Kit.Shape4
    var x, dy, dx0: [Float]
    var gamma, beta, runningMean, runningVar, dgamma0, dbeta0: [Float]

    init(_ s: Kit.Shape4, seed: UInt64) {
        var rng = Kit.SplitMix64(seed: seed)
        shape = s
        // A different offset per channel, so a channel mix-up would show.
        let offsets = rng.floats(s.c, -3, 3)
        x = (0..<s.count).map { i in rng.uniform(-1, 1) * 1.7 + offsets[(i / s.hw) % s.c] }
        dy = rng.floats(s.count, -1, 1)
        dx0 = rng.floats(s.count, -1, 1)
        gamma = rng.floats(s.c, 0.5, 1.5)
        beta = rng.floats(s.c, -1, 1)
        runningMean = rng.floats(s.c, -1, 1)
        runningVar = rng.floats(s.c, 0.5, 2)
        dgamma0 = rng.floats(s.c, -1, 1)
        dbeta0 = rng.floats(s.c, -1, 1)
    }
}

private let bnMomentum: Float = 0.1
private let bnEps: Float = 1e-5

/// The outputs of one training forward.
private struct TrainOut {
    var y, mean, invstd, runningMean, runningVar: [Float]
}

/// BN(x), or relu(BN(x)) by the fused kernel.
private func trainForward(_ t: BNCase, fast: Bool, relu: Bool = false) -> TrainOut {
    let s = t.shape
    var o = TrainOut(y: [Float](repeating: 0, count: s.count), mean: [Float](repeating: 0, count: s.c),
                     invstd: [Float](repeating: 0, count: s.c), runningMean: t.runningMean, runningVar: t.runningVar)
    let f = switch (fast, relu) {
    case (true, false): msq_batchnorm_forward_train
    case (false, false): msq_batchnorm_forward_train_ref
    case (true, true): msq_batchnorm_relu_forward_train
    case (false, true): msq_batchnorm_relu_forward_train_ref
    }
    f(&o.y, &o.mean, &o.invstd, &o.runningMean, &o.runningVar, t.x, t.gamma, t.beta,
      Int32(s.n), Int32(s.c), Int32(s.hw), bnMomentum, bnEps)
    return o
}

private func trainBackward(_ t: BNCase, _ fwd: TrainOut, fast: Bool) -> (dx: [Float], dgamma: [Float], dbeta: [Float]) {
    let s = t.shape
    var (dx, dg, db) = (t.dx0, t.dgamma0, t.dbeta0)
    let f = fast ? msq_batchnorm_backward : msq_batchnorm_backward_ref
    f(&dx, &dg, &db, t.dy, t.x, t.gamma, fwd.mean, fwd.invstd, Int32(s.n), Int32(s.c), Int32(s.hw))
    return (dx, dg, db)
}

/// BN's backward of `dy` (the case's own by default) after the forward `fwd`.
private func trainBackward(_ t: BNCase, _ fwd: TrainOut, dy: [Float], fast: Bool) -> (dx: [Float], dgamma: [Float], dbeta: [Float]) {
    let s = t.shape
    var (dx, dg, db) = (t.dx0, t.dgamma0, t.dbeta0)
    let f = fast ? msq_batchnorm_backward : msq_batchnorm_backward_ref
    f(&dx, &dg, &db, dy, t.x, t.gamma, fwd.mean, fwd.invstd, Int32(s.n), Int32(s.c), Int32(s.hw))
    return (dx, dg, db)
}

/// The fused kernel's backward of the case's dy, given the fused forward `fwd`.
private func fusedBackward(_ t: BNCase, _ fwd: TrainOut, fast: Bool) -> (dx: [Float], dgamma: [Float], dbeta: [Float]) {
    let s = t.shape
    var (dx, dg, db) = (t.dx0, t.dgamma0, t.dbeta0)
    let f = fast ? msq_batchnorm_relu_backward : msq_batchnorm_relu_backward_ref
    f(&dx, &dg, &db, t.dy, fwd.y, t.x, t.gamma, fwd.mean, fwd.invstd, Int32(s.n), Int32(s.c), Int32(s.hw))
    return (dx, dg, db)
}

private func evalForward(_ t: BNCase, x: [Float]? = nil, gamma: [Float]? = nil, beta: [Float]? = nil,
                         fast: Bool) -> [Float] {
    let s = t.shape
    var y = [Float](repeating: 0, count: s.count)
    let f = fast ? msq_batchnorm_forward_eval : msq_batchnorm_forward_eval_ref
    f(&y, x ?? t.x, gamma ?? t.gamma, beta ?? t.beta, t.runningMean, t.runningVar,
      Int32(s.n), Int32(s.c), Int32(s.hw), bnEps)
    return y
}

private func evalBackward(_ t: BNCase, fast: Bool) -> (dx: [Float], dgamma: [Float], dbeta: [Float]) {
    let s = t.shape
    var (dx, dg, db) = (t.dx0, t.dgamma0, t.dbeta0)
    let f = fast ? msq_batchnorm_backward_eval : msq_batchnorm_backward_eval_ref
    f(&dx, &dg, &db, t.dy, t.x, t.gamma, t.runningMean, t.runningVar, Int32(s.n), Int32(s.c), Int32(s.hw), bnEps)
    return (dx, dg, db)
}

@Suite("BatchNorm kernels")
struct BatchNormTests {
    @Test("fast training forward and backward match the reference", arguments: bnShapes)
    func trainFastMatchesReference(shape: KernelTestKit.Shape4) {
        let t = BNCase(shape, seed: 11)
        let ref = trainForward(t, fast: false)
        let refB = trainBackward(t, ref, fast: false)
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            let fast = trainForward(t, fast: true)
            let tag = "\(shape) threads=\(threads)"
            Kit.expectClose(fast.y, ref.y, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "y \(tag)")
            Kit.expectClose(fast.mean, ref.mean, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "mean \(tag)")
            Kit.expectClose(fast.invstd, ref.invstd, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "invstd \(tag)")
            Kit.expectClose(fast.runningMean, ref.runningMean, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol,
                            "running_mean \(tag)")
            Kit.expectClose(fast.runningVar, ref.runningVar, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol,
                            "running_var \(tag)")
            let b = trainBackward(t, ref, fast: true)
            Kit.expectClose(b.dx, refB.dx, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dx \(tag)")
            Kit.expectClose(b.dgamma, refB.dgamma, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dgamma \(tag)")
            Kit.expectClose(b.dbeta, refB.dbeta, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dbeta \(tag)")
            // Same thread count, same bits.
            let again = trainForward(t, fast: true)
            #expect(Kit.bits(again.y) == Kit.bits(fast.y) && Kit.bits(again.runningVar) == Kit.bits(fast.runningVar),
                    "training forward not deterministic: \(tag)")
            let againB = trainBackward(t, ref, fast: true)
            #expect(Kit.bits(againB.dx) == Kit.bits(b.dx) && Kit.bits(againB.dgamma) == Kit.bits(b.dgamma),
                    "backward not deterministic: \(tag)")
        }
    }

    @Test("BN + ReLU fused: relu(BN forward) bit for bit; backward = BN backward of the ReLU-masked gradient",
          arguments: bnShapes)
    func fusedReLUMatchesComposition(shape: KernelTestKit.Shape4) {
        var t = BNCase(shape, seed: 13)
        // Some exact zeros in dy, which the mask must pass through unchanged.
        for i in stride(from: 0, to: t.dy.count, by: 7) { t.dy[i] = 0 }
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            for fast in [false, true] {
                let tag = "\(shape) threads=\(threads) fast=\(fast)"
                let plain = trainForward(t, fast: fast), fused = trainForward(t, fast: fast, relu: true)
                #expect(Kit.bits(fused.y) == Kit.bits(plain.y.map { $0 < 0 ? 0 : $0 }), "y \(tag)")
                #expect(Kit.bits(fused.mean) == Kit.bits(plain.mean) && Kit.bits(fused.invstd) == Kit.bits(plain.invstd)
                        && Kit.bits(fused.runningVar) == Kit.bits(plain.runningVar), "statistics \(tag)")
                let masked = zip(fused.y, t.dy).map { y, g in y <= 0 ? 0 : g }
                if shape.count >= 16 {
                    #expect(zip(masked, t.dy).contains { $0 != $1 } && masked.contains { $0 != 0 },
                            "the ReLU must cut some entries and keep others \(tag)")
                }
                let want = trainBackward(t, plain, dy: masked, fast: fast), got = fusedBackward(t, fused, fast: fast)
                Kit.expectClose(got.dx, want.dx, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dx \(tag)")
                Kit.expectClose(got.dgamma, want.dgamma, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dgamma \(tag)")
                Kit.expectClose(got.dbeta, want.dbeta, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dbeta \(tag)")
            }
        }
    }

    @Test("BN + hard-swish fused: hardswish(BN forward) bit for bit; backward = BN backward of hardswish'(v)·dy",
          arguments: bnShapes)
    func fusedHardswishMatchesComposition(shape: KernelTestKit.Shape4) {
        let t = BNCase(shape, seed: 17)
        let s = t.shape
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            for fast in [false, true] {
                let tag = "\(shape) threads=\(threads) fast=\(fast)"
                let plain = trainForward(t, fast: fast)
                var fused = TrainOut(y: [Float](repeating: 0, count: s.count), mean: [Float](repeating: 0, count: s.c),
                                     invstd: [Float](repeating: 0, count: s.c), runningMean: t.runningMean, runningVar: t.runningVar)
                (fast ? msq_batchnorm_hardswish_forward_train : msq_batchnorm_hardswish_forward_train_ref)(
                    &fused.y, &fused.mean, &fused.invstd, &fused.runningMean, &fused.runningVar, t.x, t.gamma, t.beta,
                    Int32(s.n), Int32(s.c), Int32(s.hw), bnMomentum, bnEps)
                var activated = [Float](repeating: 0, count: s.count)
                msq_activation_forward(&activated, plain.y, plain.y.count, MSQ_ACT_HARDSWISH)
                #expect(Kit.bits(fused.y) == Kit.bits(activated), "y \(tag)")
                #expect(Kit.bits(fused.mean) == Kit.bits(plain.mean) && Kit.bits(fused.runningVar) == Kit.bits(plain.runningVar),
                        "statistics \(tag)")
                var scaled = [Float](repeating: 0, count: s.count)
                msq_activation_backward(&scaled, t.dy, plain.y, plain.y.count, MSQ_ACT_HARDSWISH)
                let want = trainBackward(t, plain, dy: scaled, fast: fast)
                var (dx, dg, db) = (t.dx0, t.dgamma0, t.dbeta0)
                (fast ? msq_batchnorm_hardswish_backward : msq_batchnorm_hardswish_backward_ref)(
                    &dx, &dg, &db, t.dy, t.x, t.gamma, t.beta, fused.mean, fused.invstd, Int32(s.n), Int32(s.c), Int32(s.hw))
                // The same float sums in the same order as the two kernels: bit for bit.
                #expect(Kit.bits(dx) == Kit.bits(want.dx) && Kit.bits(dg) == Kit.bits(want.dgamma)
                        && Kit.bits(db) == Kit.bits(want.dbeta), "gradients \(tag)")
            }
        }
    }

    @Test("fast eval forward and backward match the reference", arguments: bnShapes)
    func evalFastMatchesReference(shape: KernelTestKit.Shape4) {
        let t = BNCase(shape, seed: 12)
        let ref = evalForward(t, fast: false)
        let refB = evalBackward(t, fast: false)
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            let tag = "\(shape) threads=\(threads)"
            Kit.expectClose(evalForward(t, fast: true), ref, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "y \(tag)")
            let b = evalBackward(t, fast: true)
            Kit.expectClose(b.dx, refB.dx, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dx \(tag)")
            Kit.expectClose(b.dgamma, refB.dgamma, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dgamma \(tag)")
            Kit.expectClose(b.dbeta, refB.dbeta, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dbeta \(tag)")
        }
    }

    @Test("training forward normalises each channel and updates the running stats PyTorch's way",
          arguments: [false, true])
    func handComputedTraining(fast: Bool) {
        // x[n=2, c=2, hw=2]: channel 0 holds 1, 2, 3, 4; channel 1 holds 10, 10, 10, 14.
        let x: [Float] = [1, 2, 10, 10, 3, 4, 10, 14]
        var y = [Float](repeating: 0, count: 8)
        var mean: [Float] = [0, 0], invstd: [Float] = [0, 0]
        var rm: [Float] = [0, 1], rv: [Float] = [1, 2]
        let f = fast ? msq_batchnorm_forward_train : msq_batchnorm_forward_train_ref
        f(&y, &mean, &invstd, &rm, &rv, x, [1, 1], [0, 0], 2, 2, 2, 0.1, 0)
        // Channel 0: mean 2.5, biased var 1.25, unbiased 5/3. Channel 1: mean 11, var 3, unbiased 4.
        Kit.expectClose(mean, [2.5, 11], atol: bnHandTol, rtol: 0, "save_mean")
        Kit.expectClose(invstd, [Float(1 / 1.25.squareRoot()), Float(1 / 3.0.squareRoot())], atol: bnHandTol, rtol: 0,
                        "save_invstd")
        Kit.expectClose(rm, [0.25, 0.9 + 1.1], atol: bnHandTol, rtol: 0, "running_mean")
        Kit.expectClose(rv, [Float(0.9 + 0.1 * 5.0 / 3.0), 1.8 + 0.4], atol: bnHandTol, rtol: 0, "running_var")
        let a = Float(1 / 1.25.squareRoot()), b = Float(1 / 3.0.squareRoot())
        Kit.expectClose(y, [-1.5 * a, -0.5 * a, -b, -b, 0.5 * a, 1.5 * a, -b, 3 * b], atol: bnHandTol, rtol: 0, "y")
        // gamma = 1, beta = 0: every channel of y has mean 0 and biased variance 1.
        for ch in 0..<2 {
            let v = [0, 1, 4, 5].map { Double(y[$0 + 2 * ch]) }
            let m = v.reduce(0, +) / 4
            let variance = v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / 4
            #expect(abs(m) < Double(bnHandTol) && abs(variance - 1) < Double(bnHandTol), "channel \(ch): \(m), \(variance)")
        }
    }

    @Test("random batch normalises to mean 0, variance 1 (eps accounted for)", arguments: [false, true])
    func normalisesRandomBatch(fast: Bool) {
        var t = BNCase(.init(7, 3, 17, 1), seed: 5)
        t.gamma = [1, 1, 1]
        t.beta = [0, 0, 0]
        let o = trainForward(t, fast: fast)
        let s = t.shape
        for ch in 0..<s.c {
            var xs: [Double] = [], ys: [Double] = []
            for i in 0..<s.n {
                for j in 0..<s.hw {
                    xs.append(Double(t.x[(i * s.c + ch) * s.hw + j]))
                    ys.append(Double(o.y[(i * s.c + ch) * s.hw + j]))
                }
            }
            let mx = xs.reduce(0, +) / Double(xs.count)
            let vx = xs.map { ($0 - mx) * ($0 - mx) }.reduce(0, +) / Double(xs.count)
            let my = ys.reduce(0, +) / Double(ys.count)
            let vy = ys.map { ($0 - my) * ($0 - my) }.reduce(0, +) / Double(ys.count)
            #expect(abs(my) < Double(bnHandTol), "channel \(ch) mean \(my)")
            #expect(abs(vy - vx / (vx + Double(bnEps))) < Double(bnHandTol), "channel \(ch) variance \(vy)")
            #expect(abs(Double(o.mean[ch]) - mx) < Double(bnHandTol))
            let unbiased = vx * Double(xs.count) / Double(xs.count - 1)
            let expectedRV = 0.9 * Double(t.runningVar[ch]) + 0.1 * unbiased
            #expect(abs(Double(o.runningVar[ch]) - expectedRV) < Double(bnHandTol) * max(1, expectedRV))
        }
    }

    @Test("eval forward uses the running statistics", arguments: [false, true])
    func handComputedEval(fast: Bool) {
        // gamma 2, beta 0.5, running mean 1, running var 4, eps 0: y = (x - 1) + 0.5.
        var y: [Float] = [0, 0, 0]
        let f = fast ? msq_batchnorm_forward_eval : msq_batchnorm_forward_eval_ref
        f(&y, [3, -1, 1], [2], [0.5], [1], [4], 1, 1, 3, 0)
        Kit.expectClose(y, [2.5, -1.5, 0.5], atol: bnHandTol, rtol: 0, "eval y")
    }

    @Test("backward accumulates into nonzero buffers", arguments: [false, true])
    func backwardAccumulates(fast: Bool) {
        // Constant dy: the batch mean absorbs it, so dx gets nothing; dbeta gets sum(dy) = 4,
        // dgamma gets sum(xhat) = 0.
        let x: [Float] = [1, 2, 3, 4]
        let mean: [Float] = [2.5], invstd: [Float] = [Float(1 / 1.25.squareRoot())]
        var dx: [Float] = [1, -2, 3, -4], dg: [Float] = [2], db: [Float] = [1]
        let f = fast ? msq_batchnorm_backward : msq_batchnorm_backward_ref
        f(&dx, &dg, &db, [1, 1, 1, 1], x, [3], mean, invstd, 2, 1, 2)
        Kit.expectClose(dx, [1, -2, 3, -4], atol: bnHandTol, rtol: 0, "dx")
        Kit.expectClose(dg, [2], atol: bnHandTol, rtol: 0, "dgamma")
        Kit.expectClose(db, [5], atol: bnHandTol, rtol: 0, "dbeta")

        // Eval backward: dx += dy * gamma / sqrt(var + eps) = 1 * 3 / 2.
        var dxe: [Float] = [1, -2, 3, -4], dge: [Float] = [2], dbe: [Float] = [1]
        let fe = fast ? msq_batchnorm_backward_eval : msq_batchnorm_backward_eval_ref
        fe(&dxe, &dge, &dbe, [1, 1, 1, 1], x, [3], [2.5], [4], 2, 1, 2, 0)
        Kit.expectClose(dxe, [2.5, -0.5, 4.5, -2.5], atol: bnHandTol, rtol: 0, "eval dx")
        Kit.expectClose(dge, [2], atol: bnHandTol, rtol: 0, "eval dgamma") // sum((x - 2.5) / 2) = 0
        Kit.expectClose(dbe, [5], atol: bnHandTol, rtol: 0, "eval dbeta")
    }

    @Test("training backward matches central differences of the forward", arguments: [false, true])
    func trainBackwardMatchesFiniteDifferences(fast: Bool) {
        let t = BNCase(.init(3, 3, 1, 7), seed: 21)
        let s = t.shape
        var zero = t
        zero.dx0 = [Float](repeating: 0, count: s.count)
        zero.dgamma0 = [Float](repeating: 0, count: s.c)
        zero.dbeta0 = [Float](repeating: 0, count: s.c)
        let g = trainBackward(zero, trainForward(t, fast: fast), fast: fast)
        func loss(_ c: BNCase) -> Double { Kit.project(trainForward(c, fast: fast).y, t.dy) }
        Kit.checkGradient(at: t.x, analytic: g.dx, indices: Array(0..<s.count), h: bnGradStep,
                          atol: bnGradAbsTol, rtol: bnGradRelTol, "train dx") { v in
            var c = t; c.x = v; return loss(c)
        }
        Kit.checkGradient(at: t.gamma, analytic: g.dgamma, indices: Array(0..<s.c), h: bnGradStep,
                          atol: bnGradAbsTol, rtol: bnGradRelTol, "train dgamma") { v in
            var c = t; c.gamma = v; return loss(c)
        }
        Kit.checkGradient(at: t.beta, analytic: g.dbeta, indices: Array(0..<s.c), h: bnGradStep,
                          atol: bnGradAbsTol, rtol: bnGradRelTol, "train dbeta") { v in
            var c = t; c.beta = v; return loss(c)
        }
    }

    @Test("eval backward matches central differences of the forward", arguments: [false, true])
    func evalBackwardMatchesFiniteDifferences(fast: Bool) {
        var t = BNCase(.init(3, 3, 1, 7), seed: 22)
        let s = t.shape
        t.dx0 = [Float](repeating: 0, count: s.count)
        t.dgamma0 = [Float](repeating: 0, count: s.c)
        t.dbeta0 = [Float](repeating: 0, count: s.c)
        let g = evalBackward(t, fast: fast)
        Kit.checkGradient(at: t.x, analytic: g.dx, indices: Array(0..<s.count), h: bnGradStep,
                          atol: bnGradAbsTol, rtol: bnGradRelTol, "eval dx") { v in
            Kit.project(evalForward(t, x: v, fast: fast), t.dy)
        }
        Kit.checkGradient(at: t.gamma, analytic: g.dgamma, indices: Array(0..<s.c), h: bnGradStep,
                          atol: bnGradAbsTol, rtol: bnGradRelTol, "eval dgamma") { v in
            Kit.project(evalForward(t, gamma: v, fast: fast), t.dy)
        }
        Kit.checkGradient(at: t.beta, analytic: g.dbeta, indices: Array(0..<s.c), h: bnGradStep,
                          atol: bnGradAbsTol, rtol: bnGradRelTol, "eval dbeta") { v in
            Kit.project(evalForward(t, beta: v, fast: fast), t.dy)
        }
    }
}

// MARK: - split kernels (synchronised batch norm)

/// Partial sums in double: fast and reference differ only in the order of the additions.
private let bnSplitSumRelTol = 1e-10

private let bnFusions: [msq_batchnorm_fusion] = [MSQ_BN_FUSE_NONE, MSQ_BN_FUSE_RELU, MSQ_BN_FUSE_HARDSWISH]

/// msq_batchnorm_stats(_ref) of `x`.
private func splitStats(_ x: [Float], _ s: Kit.Shape4, fast: Bool) -> (sum: [Double], m2: [Double]) {
    var sum = [Double](repeating: .nan, count: s.c), m2 = [Double](repeating: .nan, count: s.c)
    (fast ? msq_batchnorm_stats : msq_batchnorm_stats_ref)(&sum, &m2, x, Int32(s.n), Int32(s.c), Int32(s.hw))
    return (sum, m2)
}

/// msq_batchnorm_apply_train(_ref) of the case with the given statistics over `count` values.
private func splitApply(_ t: BNCase, mean: [Double], m2: [Double], count: Int, fusion: msq_batchnorm_fusion,
                        fast: Bool) -> TrainOut {
    let s = t.shape
    var o = TrainOut(y: [Float](repeating: 0, count: s.count), mean: [Float](repeating: 0, count: s.c),
                     invstd: [Float](repeating: 0, count: s.c), runningMean: t.runningMean, runningVar: t.runningVar)
    (fast ? msq_batchnorm_apply_train : msq_batchnorm_apply_train_ref)(
        &o.y, &o.mean, &o.invstd, &o.runningMean, &o.runningVar, t.x, t.gamma, t.beta, mean, m2, count,
        Int32(s.n), Int32(s.c), Int32(s.hw), bnMomentum, bnEps, fusion)
    return o
}

/// The one-process training forward of the case fused with `fusion`.
private func fusedTrainForward(_ t: BNCase, fusion: msq_batchnorm_fusion, fast: Bool) -> TrainOut {
    let s = t.shape
    var o = TrainOut(y: [Float](repeating: 0, count: s.count), mean: [Float](repeating: 0, count: s.c),
                     invstd: [Float](repeating: 0, count: s.c), runningMean: t.runningMean, runningVar: t.runningVar)
    let f = switch (fusion, fast) {
    case (MSQ_BN_FUSE_RELU, true): msq_batchnorm_relu_forward_train
    case (MSQ_BN_FUSE_RELU, false): msq_batchnorm_relu_forward_train_ref
    case (MSQ_BN_FUSE_HARDSWISH, true): msq_batchnorm_hardswish_forward_train
    case (MSQ_BN_FUSE_HARDSWISH, false): msq_batchnorm_hardswish_forward_train_ref
    case (_, true): msq_batchnorm_forward_train
    case (_, false): msq_batchnorm_forward_train_ref
    }
    f(&o.y, &o.mean, &o.invstd, &o.runningMean, &o.runningVar, t.x, t.gamma, t.beta,
      Int32(s.n), Int32(s.c), Int32(s.hw), bnMomentum, bnEps)
    return o
}

/// The one-process training backward of the case's dy after `fwd`, fused with `fusion`.
private func fusedTrainBackward(_ t: BNCase, _ fwd: TrainOut, fusion: msq_batchnorm_fusion,
                                fast: Bool) -> (dx: [Float], dgamma: [Float], dbeta: [Float]) {
    let s = t.shape
    var (dx, dg, db) = (t.dx0, t.dgamma0, t.dbeta0)
    let (n, c, hw) = (Int32(s.n), Int32(s.c), Int32(s.hw))
    switch fusion {
    case MSQ_BN_FUSE_RELU:
        (fast ? msq_batchnorm_relu_backward : msq_batchnorm_relu_backward_ref)(
            &dx, &dg, &db, t.dy, fwd.y, t.x, t.gamma, fwd.mean, fwd.invstd, n, c, hw)
    case MSQ_BN_FUSE_HARDSWISH:
        (fast ? msq_batchnorm_hardswish_backward : msq_batchnorm_hardswish_backward_ref)(
            &dx, &dg, &db, t.dy, t.x, t.gamma, t.beta, fwd.mean, fwd.invstd, n, c, hw)
    default:
        (fast ? msq_batchnorm_backward : msq_batchnorm_backward_ref)(
            &dx, &dg, &db, t.dy, t.x, t.gamma, fwd.mean, fwd.invstd, n, c, hw)
    }
    return (dx, dg, db)
}

/// msq_batchnorm_backward_reduce(_ref) of the case's dy after `fwd`; the fused ReLU's output or
/// hard-swish's β by `fusion`. dgamma, dbeta accumulate into the case's.
private func splitReduce(_ t: BNCase, _ fwd: TrainOut, fusion: msq_batchnorm_fusion, fast: Bool)
    -> (sumDy: [Double], sumDyXhat: [Double], dgamma: [Float], dbeta: [Float]) {
    let s = t.shape
    var sdy = [Double](repeating: .nan, count: s.c), sdx = [Double](repeating: .nan, count: s.c)
    var (dg, db) = (t.dgamma0, t.dbeta0)
    let y: [Float]? = fusion == MSQ_BN_FUSE_RELU ? fwd.y : nil
    let beta: [Float]? = fusion == MSQ_BN_FUSE_HARDSWISH ? t.beta : nil
    (fast ? msq_batchnorm_backward_reduce : msq_batchnorm_backward_reduce_ref)(
        &sdy, &sdx, &dg, &db, t.dy, y, t.x, t.gamma, beta, fwd.mean, fwd.invstd, Int32(s.n), Int32(s.c), Int32(s.hw))
    return (sdy, sdx, dg, db)
}

/// msq_batchnorm_backward_apply(_ref) into the case's dx0.
private func splitApplyBackward(_ t: BNCase, _ fwd: TrainOut, fusion: msq_batchnorm_fusion, sumDy: [Double],
                                sumDyXhat: [Double], count: Int, fast: Bool) -> [Float] {
    let s = t.shape
    var dx = t.dx0
    let y: [Float]? = fusion == MSQ_BN_FUSE_RELU ? fwd.y : nil
    let beta: [Float]? = fusion == MSQ_BN_FUSE_HARDSWISH ? t.beta : nil
    (fast ? msq_batchnorm_backward_apply : msq_batchnorm_backward_apply_ref)(
        &dx, t.dy, y, t.x, t.gamma, beta, fwd.mean, fwd.invstd, sumDy, sumDyXhat, count,
        Int32(s.n), Int32(s.c), Int32(s.hw))
    return dx
}

/// |a − b| <= tol·max(1, |b|) everywhere, reporting the worst element.
private func expectSumsClose(_ a: [Double], _ b: [Double], tol: Double, _ what: String,
                             sourceLocation: SourceLocation = #_sourceLocation) {
    let worst = zip(a, b).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
    #expect(a.count == b.count && worst <= tol, "\(what): worst relative difference \(worst)",
            sourceLocation: sourceLocation)
}

@Suite("BatchNorm split kernels (synchronised batch norm)")
struct BatchNormSplitTests {
    @Test("fast split kernels match the reference at 1 and 2 threads", arguments: bnShapes)
    func splitFastMatchesReference(shape: KernelTestKit.Shape4) {
        let t = BNCase(shape, seed: 31)
        let m = shape.n * shape.hw
        let refStats = splitStats(t.x, shape, fast: false)
        // Statistics of a larger batch than this shard: another mean, more spread, more values.
        let count = m + 7
        let mean = refStats.sum.map { $0 / Double(m) + 0.1 }
        let m2 = refStats.m2.map { $0 * 1.3 + 0.5 }
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            let tag = "\(shape) threads=\(threads)"
            let stats = splitStats(t.x, shape, fast: true)
            expectSumsClose(stats.sum, refStats.sum, tol: bnSplitSumRelTol, "sum \(tag)")
            expectSumsClose(stats.m2, refStats.m2, tol: bnSplitSumRelTol, "m2 \(tag)")
            let again = splitStats(t.x, shape, fast: true)
            #expect(again.sum == stats.sum && again.m2 == stats.m2, "statistics not deterministic: \(tag)")
            for fusion in bnFusions {
                let ftag = "\(tag) fusion=\(fusion.rawValue)"
                // Per-element float arithmetic identical in both: the same bits.
                let ref = splitApply(t, mean: mean, m2: m2, count: count, fusion: fusion, fast: false)
                let fast = splitApply(t, mean: mean, m2: m2, count: count, fusion: fusion, fast: true)
                #expect(Kit.bits(fast.y) == Kit.bits(ref.y), "apply y \(ftag)")
                #expect(Kit.bits(fast.mean) == Kit.bits(ref.mean) && Kit.bits(fast.invstd) == Kit.bits(ref.invstd)
                        && Kit.bits(fast.runningMean) == Kit.bits(ref.runningMean)
                        && Kit.bits(fast.runningVar) == Kit.bits(ref.runningVar), "apply statistics \(ftag)")
                let refR = splitReduce(t, ref, fusion: fusion, fast: false)
                let r = splitReduce(t, ref, fusion: fusion, fast: true)
                expectSumsClose(r.sumDy, refR.sumDy, tol: bnSplitSumRelTol, "sum_dy \(ftag)")
                expectSumsClose(r.sumDyXhat, refR.sumDyXhat, tol: bnSplitSumRelTol, "sum_dy_xhat \(ftag)")
                Kit.expectClose(r.dgamma, refR.dgamma, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dgamma \(ftag)")
                Kit.expectClose(r.dbeta, refR.dbeta, atol: bnFastVsRefAbsTol, rtol: bnFastVsRefRelTol, "dbeta \(ftag)")
                // Sums as if reduced over more ranks, and a larger local count than n·hw.
                let sdy = refR.sumDy.map { $0 * 0.7 - 0.2 }, sdx = refR.sumDyXhat.map { $0 * 0.7 + 0.3 }
                let dxRef = splitApplyBackward(t, ref, fusion: fusion, sumDy: sdy, sumDyXhat: sdx, count: count, fast: false)
                let dx = splitApplyBackward(t, ref, fusion: fusion, sumDy: sdy, sumDyXhat: sdx, count: count, fast: true)
                #expect(Kit.bits(dx) == Kit.bits(dxRef), "backward_apply dx \(ftag)")
                #expect(dx != t.dx0 || shape.count == 0, "backward_apply must accumulate something \(ftag)")
            }
        }
    }

    @Test("split kernels back to back on one whole batch are the one-process kernels, bit for bit",
          arguments: bnShapes)
    func splitComposesToOneProcessKernels(shape: KernelTestKit.Shape4) {
        var t = BNCase(shape, seed: 37)
        for i in stride(from: 0, to: t.dy.count, by: 5) { t.dy[i] = 0 }
        let m = shape.n * shape.hw
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            for fast in [false, true] {
                let stats = splitStats(t.x, shape, fast: fast)
                let mean = stats.sum.map { $0 / Double(m) }
                for fusion in bnFusions {
                    let tag = "\(shape) threads=\(threads) fast=\(fast) fusion=\(fusion.rawValue)"
                    let whole = fusedTrainForward(t, fusion: fusion, fast: fast)
                    let split = splitApply(t, mean: mean, m2: stats.m2, count: m, fusion: fusion, fast: fast)
                    #expect(Kit.bits(split.y) == Kit.bits(whole.y), "y \(tag)")
                    #expect(Kit.bits(split.mean) == Kit.bits(whole.mean) && Kit.bits(split.invstd) == Kit.bits(whole.invstd)
                            && Kit.bits(split.runningMean) == Kit.bits(whole.runningMean)
                            && Kit.bits(split.runningVar) == Kit.bits(whole.runningVar), "statistics \(tag)")
                    let want = fusedTrainBackward(t, whole, fusion: fusion, fast: fast)
                    let r = splitReduce(t, split, fusion: fusion, fast: fast)
                    let dx = splitApplyBackward(t, split, fusion: fusion, sumDy: r.sumDy, sumDyXhat: r.sumDyXhat,
                                                count: m, fast: fast)
                    #expect(Kit.bits(dx) == Kit.bits(want.dx), "dx \(tag)")
                    #expect(Kit.bits(r.dgamma) == Kit.bits(want.dgamma) && Kit.bits(r.dbeta) == Kit.bits(want.dbeta),
                            "dgamma, dbeta \(tag)")
                }
            }
        }
    }

    @Test("shard statistics combine into the whole batch's (Chan et al.), accurate with channel means 1000σ off zero",
          arguments: [[5, 3], [1, 7], [8, 0], [3, 3, 2]])
    func shardStatisticsCombine(split: [Int]) {
        let n = split.reduce(0, +)
        let shape = Kit.Shape4(n, 5, 7, 3)
        var rng = Kit.SplitMix64(seed: 41)
        let offsets = rng.floats(shape.c, 500, 1500)
        let x = (0..<shape.count).map { i in rng.uniform(-1, 1) * 1.7 + offsets[(i / shape.hw) % shape.c] }
        let whole = splitStats(x, shape, fast: true)
        // The whole batch's mean and squared deviations, two-pass in double over the exact float inputs.
        var exactMean = [Double](repeating: 0, count: shape.c), exactM2 = [Double](repeating: 0, count: shape.c)
        for ch in 0..<shape.c {
            var v: [Double] = []
            for i in 0..<n { for j in 0..<shape.hw { v.append(Double(x[(i * shape.c + ch) * shape.hw + j])) } }
            exactMean[ch] = v.reduce(0, +) / Double(v.count)
            exactM2[ch] = v.reduce(0) { $0 + ($1 - exactMean[ch]) * ($1 - exactMean[ch]) }
        }
        // The shards' partial statistics, summed as an all-reduce would, then combined as BatchNorm2d does.
        var s = [Double](repeating: 0, count: shape.c), m2 = s, q = s
        var total = 0.0, start = 0
        for nr in split {
            let sh = Kit.Shape4(nr, shape.c, shape.h, shape.w)
            let part = Array(x[(start * shape.c * shape.hw)..<((start + nr) * shape.c * shape.hw)])
            start += nr
            for fast in [false, true] {
                let st = splitStats(part, sh, fast: fast)
                if nr == 0 {
                    #expect(st.sum.allSatisfy { $0 == 0 } && st.m2.allSatisfy { $0 == 0 }, "an empty shard has zero sums")
                }
                guard fast else { continue }
                let mr = Double(nr * shape.hw)
                for ch in 0..<shape.c {
                    s[ch] += st.sum[ch]
                    m2[ch] += st.m2[ch]
                    if mr > 0 { q[ch] += st.sum[ch] * st.sum[ch] / mr }
                }
                total += mr
            }
        }
        for ch in 0..<shape.c {
            let mean = s[ch] / total, combined = m2[ch] + (q[ch] - s[ch] * s[ch] / total)
            #expect(abs(mean - exactMean[ch]) <= 1e-14 * abs(exactMean[ch]), "mean, channel \(ch)")
            // σ ≈ 1, |μ| ≈ 1000: the between-shard bracket cancels values ~10⁶ times M2, so expect
            // a few ε_double·(μ/σ)² ≈ 10⁻⁹ (measured ≤ 3.2·10⁻¹⁰), far below float resolution (6·10⁻⁸).
            #expect(abs(combined - exactM2[ch]) <= 1e-8 * exactM2[ch],
                    "M2, channel \(ch): \(combined) vs \(exactM2[ch]) (whole-batch kernel \(whole.m2[ch]))")
        }
    }
}
