import CKernels
import Testing

// SGD step: fast vs reference for every option combination, and hand-computed steps for plain,
// weight decay, momentum and Nesterov updates.

private typealias Kit = KernelTestKit

/// Both kernels evaluate the same per-element float expression, so they agree bit for bit.
private let sgdFastVsRefTol: Float = 0
/// Hand values are decimal fractions rounded to float.
private let sgdHandTol: Float = 1e-6

/// Hyper-parameters of one SGD step.
struct SGDTestConfig: Sendable, CustomStringConvertible {
    let lr, momentum, weightDecay: Float
    let nesterov: Bool
    var description: String { "lr=\(lr) m=\(momentum) wd=\(weightDecay) nesterov=\(nesterov)" }
}

private let sgdConfigs: [SGDTestConfig] = [Float(0), 0.9].flatMap { m in
    [Float(0), 5e-4].flatMap { wd in
        (m == 0 ? [false] : [false, true]).map { SGDTestConfig(lr: 0.05, momentum: m, weightDecay: wd, nesterov: $0) }
    }
}

/// Odd lengths; the last is large enough to run in parallel.
private let sgdCounts = [1, 3, 7, 17 * 33, 33 * 33 * 17 * 7]

private struct SGDState: Equatable {
    var w, buf: [Float]
}

private func step(_ s: SGDState, _ grad: [Float], _ c: SGDTestConfig, fast: Bool) -> SGDState {
    var r = s
    (fast ? msq_sgd_step : msq_sgd_step_ref)(&r.w, &r.buf, grad, grad.count, c.lr, c.momentum, c.weightDecay,
                                            c.nesterov ? 1 : 0)
    return r
}

@Suite("SGD kernel")
struct SGDTests {
    @Test("fast step matches the reference", arguments: sgdConfigs, sgdCounts)
    func fastMatchesReference(config: SGDTestConfig, count: Int) {
        var rng = Kit.SplitMix64(seed: UInt64(count))
        let start = SGDState(w: rng.floats(count, -1, 1), buf: rng.floats(count, -0.5, 0.5))
        let grads = (0..<3).map { _ in rng.floats(count, -1, 1) }
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            var ref = start, fast = start
            // Several steps, so momentum-buffer state carries from one into the next.
            for (i, g) in grads.enumerated() {
                ref = step(ref, g, config, fast: false)
                fast = step(fast, g, config, fast: true)
                let tag = "\(config) count=\(count) step=\(i) threads=\(threads)"
                Kit.expectClose(fast.w, ref.w, atol: sgdFastVsRefTol, rtol: 0, "w \(tag)")
                Kit.expectClose(fast.buf, ref.buf, atol: sgdFastVsRefTol, rtol: 0, "buf \(tag)")
            }
        }
    }

    @Test("plain SGD and weight decay", arguments: [false, true])
    func plainAndWeightDecay(fast: Bool) {
        // Momentum 0 leaves the buffer alone.
        let sentinel: [Float] = [7, -7]
        let plain = step(.init(w: [1, -2], buf: sentinel), [0.5, 0.25],
                         .init(lr: 0.1, momentum: 0, weightDecay: 0, nesterov: false), fast: fast)
        Kit.expectClose(plain.w, [0.95, -2.025], atol: sgdHandTol, rtol: 0, "plain w")
        #expect(plain.buf == sentinel)
        // g = 0.5 + 0.01 * 1 = 0.51 and 0.25 + 0.01 * -2 = 0.23.
        let wd = step(.init(w: [1, -2], buf: sentinel), [0.5, 0.25],
                      .init(lr: 0.1, momentum: 0, weightDecay: 0.01, nesterov: false), fast: fast)
        Kit.expectClose(wd.w, [0.949, -2.023], atol: sgdHandTol, rtol: 0, "weight-decay w")
        #expect(wd.buf == sentinel)
    }

    @Test("momentum: buf = m * buf + g, w -= lr * buf", arguments: [false, true])
    func momentum(fast: Bool) {
        let c = SGDTestConfig(lr: 0.1, momentum: 0.9, weightDecay: 0, nesterov: false)
        // From a zero buffer the first step is plain SGD (PyTorch starts buf at g).
        let s1 = step(.init(w: [1], buf: [0]), [0.5], c, fast: fast)
        Kit.expectClose(s1.buf, [0.5], atol: sgdHandTol, rtol: 0, "buf 1")
        Kit.expectClose(s1.w, [0.95], atol: sgdHandTol, rtol: 0, "w 1")
        let s2 = step(s1, [0.5], c, fast: fast)
        Kit.expectClose(s2.buf, [0.95], atol: sgdHandTol, rtol: 0, "buf 2")
        Kit.expectClose(s2.w, [0.855], atol: sgdHandTol, rtol: 0, "w 2")
    }

    @Test("Nesterov: w -= lr * (g + m * buf)", arguments: [false, true])
    func nesterov(fast: Bool) {
        let c = SGDTestConfig(lr: 0.1, momentum: 0.9, weightDecay: 0, nesterov: true)
        let s1 = step(.init(w: [1], buf: [0]), [0.5], c, fast: fast)
        Kit.expectClose(s1.buf, [0.5], atol: sgdHandTol, rtol: 0, "buf 1")
        Kit.expectClose(s1.w, [0.905], atol: sgdHandTol, rtol: 0, "w 1")   // 1 - 0.1 * (0.5 + 0.45)
        let s2 = step(s1, [0.5], c, fast: fast)
        Kit.expectClose(s2.buf, [0.95], atol: sgdHandTol, rtol: 0, "buf 2")
        Kit.expectClose(s2.w, [0.7695], atol: sgdHandTol, rtol: 0, "w 2") // 0.905 - 0.1 * (0.5 + 0.855)
    }

    @Test("weight decay enters the momentum buffer", arguments: [false, true])
    func everythingTogether(fast: Bool) {
        // g = 1 + 0.1 * 2 = 1.2; buf = 0.5 * 0.2 + 1.2 = 1.3.
        let start = SGDState(w: [2], buf: [0.2])
        let heavy = step(start, [1], .init(lr: 0.1, momentum: 0.5, weightDecay: 0.1, nesterov: false), fast: fast)
        Kit.expectClose(heavy.buf, [1.3], atol: sgdHandTol, rtol: 0, "buf")
        Kit.expectClose(heavy.w, [1.87], atol: sgdHandTol, rtol: 0, "w")     // 2 - 0.1 * 1.3
        let nest = step(start, [1], .init(lr: 0.1, momentum: 0.5, weightDecay: 0.1, nesterov: true), fast: fast)
        Kit.expectClose(nest.buf, [1.3], atol: sgdHandTol, rtol: 0, "Nesterov buf")
        Kit.expectClose(nest.w, [1.815], atol: sgdHandTol, rtol: 0, "Nesterov w") // 2 - 0.1 * (1.2 + 0.65)
    }
}
