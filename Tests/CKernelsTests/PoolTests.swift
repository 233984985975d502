import CKernels
import Testing

// Pooling kernels: shape validation, fast vs reference, hand-computed windows (ties, padding,
// count_include_pad), accumulation, and central differences.

private typealias Kit = KernelTestKit

/// Max and average pooling do the same per-window float arithmetic in the fast and reference
/// kernels, so they must agree bit for bit.
private let poolFastVsRefTol: Float = 0
/// Global average pooling sums in double in a different order (simd lanes), then rounds to float.
private let globalPoolFastVsRefRelTol: Float = 1e-6
private let poolHandTol: Float = 1e-6
/// Pooling is piecewise linear; for max pooling the inputs are spaced further apart than 2h so
/// no perturbation moves an argmax.
private let poolGradStep: Float = 1e-2
private let poolGradAbsTol = 1e-3
private let poolGradRelTol = 1e-3

/// Input shape plus square window, stride and padding.
struct PoolTestConfig: Sendable, CustomStringConvertible {
    let n, c, h, w, k, stride, pad: Int
    var description: String { "[\(n), \(c), \(h), \(w)] k=\(k) s=\(stride) p=\(pad)" }
    var count: Int { n * c * h * w }

    func shape() -> msq_pool2d_shape {
        var s = msq_pool2d_shape()
        let rc = msq_pool2d_make_shape(&s, Int32(n), Int32(c), Int32(h), Int32(w), Int32(k), Int32(stride), Int32(pad))
        precondition(rc == 0, "invalid test geometry \(self)")
        return s
    }
}

private let poolConfigs: [PoolTestConfig] = [
    .init(n: 1, c: 1, h: 1, w: 1, k: 1, stride: 1, pad: 0),
    .init(n: 3, c: 7, h: 7, w: 7, k: 3, stride: 2, pad: 1),
    .init(n: 7, c: 3, h: 17, w: 17, k: 2, stride: 2, pad: 0),
    .init(n: 1, c: 3, h: 17, w: 7, k: 3, stride: 1, pad: 1),
    .init(n: 3, c: 17, h: 33, w: 33, k: 3, stride: 2, pad: 1),
    .init(n: 7, c: 3, h: 7, w: 17, k: 3, stride: 3, pad: 0),
    .init(n: 17, c: 3, h: 1, w: 7, k: 1, stride: 1, pad: 0),
    .init(n: 33, c: 7, h: 7, w: 1, k: 1, stride: 2, pad: 0),
    .init(n: 3, c: 3, h: 3, w: 3, k: 3, stride: 1, pad: 1),
    .init(n: 1, c: 1, h: 7, w: 7, k: 5, stride: 1, pad: 2),
    // Rows wide enough for the 8-output vector path of stride-2 pooling (ResNet-18's stem).
    .init(n: 2, c: 3, h: 9, w: 112, k: 3, stride: 2, pad: 1),
    .init(n: 1, c: 2, h: 5, w: 41, k: 2, stride: 2, pad: 0),
]

private func outCount(_ s: msq_pool2d_shape) -> Int { Int(s.n * s.c * s.h_out * s.w_out) }
private func inCount(_ s: msq_pool2d_shape) -> Int { Int(s.n * s.c * s.h_in * s.w_in) }

private func maxForward(_ x: [Float], _ shape: msq_pool2d_shape, fast: Bool) -> ([Float], [Int32]) {
    var s = shape
    var y = [Float](repeating: .nan, count: outCount(s))
    var am = [Int32](repeating: -1, count: outCount(s))
    (fast ? msq_maxpool2d_forward : msq_maxpool2d_forward_ref)(&y, &am, x, &s)
    return (y, am)
}

private func maxBackward(_ dx0: [Float], _ dy: [Float], _ am: [Int32], _ shape: msq_pool2d_shape, fast: Bool) -> [Float] {
    var s = shape, dx = dx0
    (fast ? msq_maxpool2d_backward : msq_maxpool2d_backward_ref)(&dx, dy, am, &s)
    return dx
}

private func avgForward(_ x: [Float], _ shape: msq_pool2d_shape, fast: Bool) -> [Float] {
    var s = shape
    var y = [Float](repeating: .nan, count: outCount(s))
    (fast ? msq_avgpool2d_forward : msq_avgpool2d_forward_ref)(&y, x, &s)
    return y
}

private func avgBackward(_ dx0: [Float], _ dy: [Float], _ shape: msq_pool2d_shape, fast: Bool) -> [Float] {
    var s = shape, dx = dx0
    (fast ? msq_avgpool2d_backward : msq_avgpool2d_backward_ref)(&dx, dy, &s)
    return dx
}

private func globalForward(_ x: [Float], n: Int, c: Int, hw: Int, fast: Bool) -> [Float] {
    var y = [Float](repeating: .nan, count: n * c)
    (fast ? msq_global_avgpool_forward : msq_global_avgpool_forward_ref)(&y, x, Int32(n), Int32(c), Int32(hw))
    return y
}

private func globalBackward(_ dx0: [Float], _ dy: [Float], n: Int, c: Int, hw: Int, fast: Bool) -> [Float] {
    var dx = dx0
    (fast ? msq_global_avgpool_backward : msq_global_avgpool_backward_ref)(&dx, dy, Int32(n), Int32(c), Int32(hw))
    return dx
}

@Suite("Pooling kernels")
struct PoolTests {
    @Test("make_shape computes the output size and rejects invalid geometry")
    func makeShape() {
        var s = msq_pool2d_shape()
        #expect(msq_pool2d_make_shape(&s, 2, 3, 7, 5, 3, 2, 1) == 0)
        #expect((s.n, s.c, s.h_in, s.w_in, s.h_out, s.w_out) == (2, 3, 7, 5, 4, 3))
        #expect((s.kh, s.kw, s.stride_h, s.stride_w, s.pad_h, s.pad_w) == (3, 3, 2, 2, 1, 1))
        #expect(msq_pool2d_make_shape(&s, 1, 1, 1, 1, 3, 1, 1) == 0 && s.h_out == 1 && s.w_out == 1)
        #expect(msq_pool2d_make_shape(&s, 1, 1, 7, 7, 3, 2, 2) == -1, "pad > k/2")
        #expect(msq_pool2d_make_shape(&s, 1, 1, 7, 7, 2, 2, 2) == -1, "pad > k/2")
        #expect(msq_pool2d_make_shape(&s, 1, 1, 7, 7, 3, 1, -1) == -1, "negative pad")
        #expect(msq_pool2d_make_shape(&s, 1, 1, 1, 1, 3, 1, 0) == -1, "window larger than the input")
        #expect(msq_pool2d_make_shape(&s, 1, 1, 7, 7, 0, 1, 0) == -1, "empty window")
        #expect(msq_pool2d_make_shape(&s, 1, 1, 7, 7, 2, 0, 0) == -1, "zero stride")
        #expect(msq_pool2d_make_shape(&s, 0, 1, 7, 7, 2, 1, 0) == -1, "empty batch")
        #expect(msq_pool2d_make_shape(&s, 1, 0, 7, 7, 2, 1, 0) == -1, "no channels")
    }

    @Test("fast max and average pooling match the reference", arguments: poolConfigs)
    func fastMatchesReference(config: PoolTestConfig) {
        let s = config.shape()
        var rng = Kit.SplitMix64(seed: UInt64(config.count))
        // Quarter steps in [-2, 2]: many ties, so the first-maximum rule is exercised.
        let x = (0..<config.count).map { _ in Float(rng.int(below: 17)) / 4 - 2 }
        let dy = rng.floats(outCount(s), -1, 1)
        let dx0 = rng.floats(config.count, -1, 1)
        let (refY, refAm) = maxForward(x, s, fast: false)
        let refMaxB = maxBackward(dx0, dy, refAm, s, fast: false)
        let refAvg = avgForward(x, s, fast: false)
        let refAvgB = avgBackward(dx0, dy, s, fast: false)
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            let tag = "\(config) threads=\(threads)"
            let (y, am) = maxForward(x, s, fast: true)
            Kit.expectClose(y, refY, atol: poolFastVsRefTol, rtol: 0, "max y \(tag)")
            #expect(am == refAm, "argmax \(tag)")
            Kit.expectClose(maxBackward(dx0, dy, refAm, s, fast: true), refMaxB, atol: poolFastVsRefTol, rtol: 0,
                            "max dx \(tag)")
            Kit.expectClose(avgForward(x, s, fast: true), refAvg, atol: poolFastVsRefTol, rtol: 0, "avg y \(tag)")
            Kit.expectClose(avgBackward(dx0, dy, s, fast: true), refAvgB, atol: poolFastVsRefTol, rtol: 0,
                            "avg dx \(tag)")
        }
    }

    @Test("fast global average pooling matches the reference", arguments: poolConfigs)
    func globalFastMatchesReference(config: PoolTestConfig) {
        let (n, c, hw) = (config.n, config.c, config.h * config.w)
        var rng = Kit.SplitMix64(seed: UInt64(config.count) &+ 1)
        let x = rng.floats(config.count, -3, 5)
        let dy = rng.floats(n * c, -1, 1)
        let dx0 = rng.floats(config.count, -1, 1)
        let refY = globalForward(x, n: n, c: c, hw: hw, fast: false)
        let refB = globalBackward(dx0, dy, n: n, c: c, hw: hw, fast: false)
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            let tag = "\(config) threads=\(threads)"
            Kit.expectClose(globalForward(x, n: n, c: c, hw: hw, fast: true), refY, atol: 0,
                            rtol: globalPoolFastVsRefRelTol, "global y \(tag)")
            Kit.expectClose(globalBackward(dx0, dy, n: n, c: c, hw: hw, fast: true), refB, atol: poolFastVsRefTol,
                            rtol: 0, "global dx \(tag)")
        }
    }

    @Test("max pooling: hand-computed windows, first maximum on ties, padding never wins", arguments: [false, true])
    func maxHandComputed(fast: Bool) {
        var s = msq_pool2d_shape()
        let ramp = (0..<16).map(Float.init) // 4x4 plane holding 0...15
        _ = msq_pool2d_make_shape(&s, 1, 1, 4, 4, 2, 2, 0)
        let (y, am) = maxForward(ramp, s, fast: fast)
        #expect(y == [5, 7, 13, 15] && am == [5, 7, 13, 15])

        // All equal: every window reports its first (top-left) element.
        _ = msq_pool2d_make_shape(&s, 1, 1, 3, 3, 2, 1, 0)
        let (ty, tam) = maxForward([Float](repeating: 2, count: 9), s, fast: fast)
        #expect(ty == [2, 2, 2, 2] && tam == [0, 1, 3, 4])
        // Ties inside a padded window: the first real element, not the padding.
        _ = msq_pool2d_make_shape(&s, 1, 1, 2, 2, 3, 1, 1)
        let (py, pam) = maxForward([-1, -1, -1, -1], s, fast: fast)
        #expect(py == [-1, -1, -1, -1] && pam == [0, 0, 0, 0])

        // All negative with zero padding around: the maximum is still the largest real value.
        let (ny, nam) = maxForward([-5, -4, -3, -2], s, fast: fast)
        #expect(ny == [-2, -2, -2, -2] && nam == [3, 3, 3, 3])

        // Backward scatters to the argmax and accumulates; overlapping windows that share a
        // maximum add up. 4x4 plane, k=3, s=1: all four windows have their maximum at index 5.
        _ = msq_pool2d_make_shape(&s, 1, 1, 4, 4, 3, 1, 0)
        var peak = [Float](repeating: 0, count: 16)
        peak[5] = 9
        let (_, pk) = maxForward(peak, s, fast: fast)
        #expect(pk == [5, 5, 5, 5])
        var expected = [Float](repeating: 1, count: 16)
        expected[5] = 1 + 1 + 2 + 3 + 4
        Kit.expectClose(maxBackward([Float](repeating: 1, count: 16), [1, 2, 3, 4], pk, s, fast: fast), expected,
                        atol: poolHandTol, rtol: 0, "max dx")
    }

    @Test("average pooling counts padding in the divisor", arguments: [false, true])
    func avgHandComputed(fast: Bool) {
        var s = msq_pool2d_shape()
        _ = msq_pool2d_make_shape(&s, 1, 1, 4, 4, 2, 2, 0)
        Kit.expectClose(avgForward((0..<16).map(Float.init), s, fast: fast), [2.5, 4.5, 10.5, 12.5], atol: poolHandTol,
                        rtol: 0, "avg y")
        // 2x2 of ones, k=3, s=1, p=1: each window holds 4 ones and 5 padding zeros.
        _ = msq_pool2d_make_shape(&s, 1, 1, 2, 2, 3, 1, 1)
        Kit.expectClose(avgForward([1, 1, 1, 1], s, fast: fast), [Float](repeating: 4.0 / 9, count: 4),
                        atol: poolHandTol, rtol: 0, "avg y, padded")
        // Each input lies in all four windows, each passing dy/9 = 1: dx = 1 + 4.
        Kit.expectClose(avgBackward([1, 1, 1, 1], [9, 9, 9, 9], s, fast: fast), [5, 5, 5, 5], atol: poolHandTol,
                        rtol: 0, "avg dx")
    }

    @Test("global average pooling: plane means; backward spreads dy/hw and accumulates", arguments: [false, true])
    func globalHandComputed(fast: Bool) {
        let x: [Float] = [1, 2, 3, 4, 10, 20, 30, 40]
        Kit.expectClose(globalForward(x, n: 1, c: 2, hw: 4, fast: fast), [2.5, 25], atol: poolHandTol, rtol: 0, "y")
        Kit.expectClose(globalForward(x, n: 2, c: 1, hw: 4, fast: fast), [2.5, 25], atol: poolHandTol, rtol: 0, "y")
        Kit.expectClose(globalForward(x, n: 2, c: 4, hw: 1, fast: fast), x, atol: 0, rtol: 0, "hw = 1")
        Kit.expectClose(globalBackward([Float](repeating: 1, count: 8), [4, 8], n: 1, c: 2, hw: 4, fast: fast),
                        [2, 2, 2, 2, 3, 3, 3, 3], atol: poolHandTol, rtol: 0, "dx")
    }

    @Test("max pooling backward matches central differences", arguments: [false, true])
    func maxFiniteDifferences(fast: Bool) {
        let config = PoolTestConfig(n: 1, c: 3, h: 7, w: 7, k: 3, stride: 2, pad: 1)
        let s = config.shape()
        var rng = Kit.SplitMix64(seed: 77)
        // Distinct values 0.05 apart, shuffled: a step of h never changes an argmax.
        var x = (0..<config.count).map { Float($0) * 0.05 - 3 }
        for i in stride(from: x.count - 1, to: 0, by: -1) { x.swapAt(i, rng.int(below: i + 1)) }
        let r = rng.floats(outCount(s), -1, 1)
        let (_, am) = maxForward(x, s, fast: fast)
        let dx = maxBackward([Float](repeating: 0, count: x.count), r, am, s, fast: fast)
        Kit.checkGradient(at: x, analytic: dx, indices: Array(x.indices), h: poolGradStep, atol: poolGradAbsTol,
                          rtol: poolGradRelTol, "maxpool dx") { v in Kit.project(maxForward(v, s, fast: fast).0, r) }
    }

    @Test("average pooling backward matches central differences", arguments: [false, true])
    func avgFiniteDifferences(fast: Bool) {
        for config in [PoolTestConfig(n: 1, c: 3, h: 7, w: 7, k: 3, stride: 2, pad: 1),
                       PoolTestConfig(n: 3, c: 1, h: 7, w: 3, k: 2, stride: 1, pad: 1)] {
            let s = config.shape()
            var rng = Kit.SplitMix64(seed: 78)
            let x = rng.floats(config.count, -2, 2)
            let r = rng.floats(outCount(s), -1, 1)
            let dx = avgBackward([Float](repeating: 0, count: x.count), r, s, fast: fast)
            Kit.checkGradient(at: x, analytic: dx, indices: Array(x.indices), h: poolGradStep, atol: poolGradAbsTol,
                              rtol: poolGradRelTol, "avgpool dx \(config)") { v in
                Kit.project(avgForward(v, s, fast: fast), r)
            }
        }
    }

    @Test("global average pooling backward matches central differences", arguments: [false, true])
    func globalFiniteDifferences(fast: Bool) {
        let (n, c, hw) = (3, 3, 7)
        var rng = Kit.SplitMix64(seed: 79)
        let x = rng.floats(n * c * hw, -2, 2)
        let r = rng.floats(n * c, -1, 1)
        let dx = globalBackward([Float](repeating: 0, count: x.count), r, n: n, c: c, hw: hw, fast: fast)
        Kit.checkGradient(at: x, analytic: dx, indices: Array(x.indices), h: poolGradStep, atol: poolGradAbsTol,
                          rtol: poolGradRelTol, "global avgpool dx") { v in
            Kit.project(globalForward(v, n: n, c: c, hw: hw, fast: fast), r)
        }
    }
}
