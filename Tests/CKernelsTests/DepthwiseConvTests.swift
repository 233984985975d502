import CKernels
import Testing

// Direct depthwise convolution (depthwise.c) called directly and through the msq_conv2d_*
// dispatchers: forward (with and without bias), backward input and backward weight (with and
// without bias, accumulated onto nonzero values) against the double-precision reference, at
// MobileNetV3's kernels and strides (3x3 and 5x5, stride 1 and 2), odd sizes, planes smaller than
// the kernel, and 1 and 2 threads; and which shapes take the path.

private typealias Kit = KernelTestKit

/// max |depthwise − ref| / max |ref|: float sums of at most k·k products (forward, input) or
/// n·h_out·w_out products (weight), against double.
private let depthwiseForwardRelTolerance: Float = 1e-6
private let depthwiseInputRelTolerance: Float = 1e-6
private let depthwiseWeightRelTolerance: Float = 2e-5

/// (n, channels, h, w, k, stride, pad): MobileNetV3's kernels and strides at odd sizes, planes
/// narrower than a vector (8 floats) and wider than several, more than 8 vectors per plane (so the
/// last group of 8 is partial), planes smaller than the kernel, stride 3 and 1×1 filters.
private let depthwiseCases: [[Int]] = [
    [1, 2, 1, 1, 3, 1, 1], [2, 3, 7, 9, 3, 1, 1], [3, 5, 11, 8, 3, 2, 1], [2, 7, 9, 13, 5, 1, 2],
    [1, 4, 14, 15, 5, 2, 2], [2, 3, 2, 3, 5, 2, 2], [1, 6, 6, 5, 3, 2, 0], [2, 16, 28, 28, 3, 1, 1],
    [1, 3, 23, 37, 5, 2, 2], [2, 5, 19, 41, 5, 1, 2], [1, 3, 17, 35, 3, 2, 1], [2, 4, 1, 1, 5, 2, 2],
    [1, 2, 9, 10, 3, 3, 1], [1, 2, 5, 6, 1, 2, 0], [1, 3, 7, 7, 5, 1, 2],
    // more than 8 channels (depthwise_channels.c takes 8 per vector; 20 and 17 leave a partial
    // group), odd and even output heights (row pairs), widths that are not a multiple of 7 (its
    // block), and padding beyond k − 1 (no stride-1 input gradient there)
    [2, 20, 9, 15, 5, 1, 2], [3, 12, 14, 14, 3, 1, 1], [1, 9, 8, 16, 3, 2, 1], [2, 17, 7, 7, 5, 1, 2],
    [1, 16, 12, 10, 5, 2, 2], [1, 4, 5, 5, 3, 1, 3],
]

private func shape(_ c: [Int]) -> msq_conv2d_shape {
    var s = msq_conv2d_shape()
    let rc = msq_conv2d_make_shape(&s, Int32(c[0]), Int32(c[1]), Int32(c[2]), Int32(c[3]), Int32(c[1]),
                                   Int32(c[4]), Int32(c[4]), Int32(c[5]), Int32(c[6]), Int32(c[1]))
    precondition(rc == 0, "invalid test geometry \(c)")
    return s
}

@Suite("Depthwise conv")
struct DepthwiseConvTests {
    @Test("forward with and without bias matches the reference, directly and through msq_conv2d_forward",
          arguments: depthwiseCases, Kit.threadCountArguments)
    func forward(_ c: [Int], threads: Int) {
        var s = shape(c)
        #expect(msq_conv2d_depthwise_eligible(&s) == 1)
        #expect(msq_conv2d_workspace_size(&s) == 0)
        let yCount = Int(s.n) * Int(s.c_out) * Int(s.h_out) * Int(s.w_out)
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(5) { $0 &* 31 &+ $1 }))
        let x = rng.floats(Int(s.n) * Int(s.c_in) * Int(s.h_in) * Int(s.w_in))
        let w = rng.floats(Int(s.c_out) * Int(s.kh) * Int(s.kw)), bias = rng.floats(Int(s.c_out))
        for withBias in [false, true] {
            var ref = [Float](repeating: 0, count: yCount)
            msq_conv2d_forward_ref(&ref, x, w, withBias ? bias : nil, &s, nil)
            var direct = [Float](repeating: .nan, count: yCount), dispatched = direct
            Kit.withThreads(threads) {
                msq_conv2d_depthwise_forward(&direct, x, w, withBias ? bias : nil, &s)
                msq_conv2d_forward(&dispatched, x, w, withBias ? bias : nil, &s, nil)
            }
            #expect(Kit.maxRelError(direct, ref) <= depthwiseForwardRelTolerance, "\(c) bias \(withBias)")
            #expect(Kit.bits(dispatched) == Kit.bits(direct), "\(c): msq_conv2d_forward takes the depthwise path")
        }
    }

    @Test("backward input accumulates the reference's gradient", arguments: depthwiseCases, Kit.threadCountArguments)
    func backwardInput(_ c: [Int], threads: Int) {
        var s = shape(c)
        let xCount = Int(s.n) * Int(s.c_in) * Int(s.h_in) * Int(s.w_in)
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(9) { $0 &* 31 &+ $1 }))
        let dy = rng.floats(Int(s.n) * Int(s.c_out) * Int(s.h_out) * Int(s.w_out))
        let w = rng.floats(Int(s.c_out) * Int(s.kh) * Int(s.kw)), dx0 = rng.floats(xCount)
        var ref = dx0
        msq_conv2d_backward_input_ref(&ref, dy, w, &s, nil)
        var direct = dx0, dispatched = dx0
        Kit.withThreads(threads) {
            msq_conv2d_depthwise_backward_input(&direct, dy, w, &s)
            msq_conv2d_backward_input(&dispatched, dy, w, &s, nil)
        }
        #expect(Kit.maxRelError(direct, ref) <= depthwiseInputRelTolerance, "\(c)")
        #expect(Kit.bits(dispatched) == Kit.bits(direct), "\(c): msq_conv2d_backward_input takes the depthwise path")
    }

    @Test("backward weight (with and without bias) accumulates the reference's gradient, the same at any thread count",
          arguments: depthwiseCases)
    func backwardWeight(_ c: [Int]) {
        var s = shape(c)
        let wCount = Int(s.c_out) * Int(s.kh) * Int(s.kw)
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(13) { $0 &* 31 &+ $1 }))
        let x = rng.floats(Int(s.n) * Int(s.c_in) * Int(s.h_in) * Int(s.w_in))
        let dy = rng.floats(Int(s.n) * Int(s.c_out) * Int(s.h_out) * Int(s.w_out))
        let dw0 = rng.floats(wCount), db0 = rng.floats(Int(s.c_out))
        for withBias in [false, true] {
            var refW = dw0, refB = db0
            if withBias { msq_conv2d_backward_weight_ref(&refW, &refB, dy, x, &s, nil) }
            else { msq_conv2d_backward_weight_ref(&refW, nil, dy, x, &s, nil) }
            var results: [[UInt32]] = []
            for threads in Kit.threadCountArguments {
                var gotW = dw0, gotB = db0, viaW = dw0, viaB = db0
                Kit.withThreads(threads) {
                    if withBias {
                        msq_conv2d_depthwise_backward_weight(&gotW, &gotB, dy, x, &s)
                        msq_conv2d_backward_weight(&viaW, &viaB, dy, x, &s, nil)
                    } else {
                        msq_conv2d_depthwise_backward_weight(&gotW, nil, dy, x, &s)
                        msq_conv2d_backward_weight(&viaW, nil, dy, x, &s, nil)
                    }
                }
                #expect(Kit.maxRelError(gotW, refW) <= depthwiseWeightRelTolerance, "\(c) bias \(withBias): dw")
                #expect(Kit.maxRelError(gotB, refB) <= depthwiseWeightRelTolerance, "\(c) bias \(withBias): dbias")
                if !withBias { #expect(gotB == db0, "dbias touched although NULL was passed") }
                #expect(Kit.bits(viaW) == Kit.bits(gotW), "\(c): msq_conv2d_backward_weight takes the depthwise path")
                results.append(Kit.bits(gotW) + Kit.bits(gotB))
            }
            #expect(Set(results).count == 1, "\(c): the weight gradient does not depend on the thread count")
        }
    }

    @Test("the AVX-512VL row pairs and the AVX2 rows give the same bits (forward, input gradient)",
          arguments: depthwiseCases, Kit.threadCountArguments)
    func instructionSets(_ c: [Int], threads: Int) {
        var s = shape(c)
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(17) { $0 &* 31 &+ $1 }))
        let xCount = Int(s.n) * Int(s.c_in) * Int(s.h_in) * Int(s.w_in)
        let yCount = Int(s.n) * Int(s.c_out) * Int(s.h_out) * Int(s.w_out)
        let x = rng.floats(xCount), dy = rng.floats(yCount), dx0 = rng.floats(xCount)
        let w = rng.floats(Int(s.c_out) * Int(s.kh) * Int(s.kw)), bias = rng.floats(Int(s.c_out))
        var results: [[UInt32]] = []
        for isa in [Int32(MSQ_ISA_AVX2), Int32(MSQ_ISA_AVX512)] {
            var y = [Float](repeating: .nan, count: yCount), dx = dx0
            let previous = msq_set_max_isa(isa)
            Kit.withThreads(threads) {
                msq_conv2d_depthwise_forward(&y, x, w, bias, &s)
                msq_conv2d_depthwise_backward_input(&dx, dy, w, &s)
            }
            _ = msq_set_max_isa(previous)
            results.append(Kit.bits(y) + Kit.bits(dx))
        }
        #expect(results[0] == results[1], "\(c)")
    }

    @Test("only depthwise shapes take the path: groups == c_in == c_out > 1")
    func eligibility() {
        var s = msq_conv2d_shape()
        for (c, expected) in [([2, 8, 8, 8, 8, 3, 3, 1, 1, 8], Int32(1)), ([2, 8, 8, 8, 16, 3, 3, 1, 1, 8], 0),
                              ([2, 8, 8, 8, 8, 3, 3, 1, 1, 4], 0), ([2, 1, 8, 8, 1, 3, 3, 1, 1, 1], 0)] {
            #expect(msq_conv2d_make_shape(&s, Int32(c[0]), Int32(c[1]), Int32(c[2]), Int32(c[3]), Int32(c[4]),
                                          Int32(c[5]), Int32(c[6]), Int32(c[7]), Int32(c[8]), Int32(c[9])) == 0)
            #expect(msq_conv2d_depthwise_eligible(&s) == expected, "\(c)")
        }
    }
}
