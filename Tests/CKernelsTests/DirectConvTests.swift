import CKernels
import Testing

// Direct 3x3 convolution (direct.c) called directly: forward (overwrite with and without bias,
// accumulate) and backward weight (with and without bias), against the double-precision
// reference at odd sizes, channel counts that are not multiples of the 4-channel register block,
// short last image groups, and 1 and 2 threads; and which shapes take the direct path.

private typealias Kit = KernelTestKit

/// max |direct − ref| / max |ref|: float sums of up to c_in·9 products (forward) or
/// n·(h+1)·(w+2) products (weight), against double.
private let directForwardRelTolerance: Float = 1e-5
private let directWeightRelTolerance: Float = 2e-5

/// Shapes as (n, c_in, h, w, c_out). The last two are large enough per image (x plus y over
/// 320 KiB) that a thread holds only two images per group, so the last group is short and
/// reuses buffers a full group wrote.
private let directCases: [[Int]] = [
    [1, 1, 1, 1, 1], [3, 5, 9, 11, 7], [2, 3, 2, 3, 4], [7, 32, 13, 5, 3], [9, 17, 7, 16, 31],
    [5, 32, 32, 32, 31], [3, 16, 33, 30, 16],
]

private func shape(_ c: [Int]) -> msq_conv2d_shape {
    var s = msq_conv2d_shape()
    let rc = msq_conv2d_make_shape(&s, Int32(c[0]), Int32(c[1]), Int32(c[2]), Int32(c[3]), Int32(c[4]), 3, 3, 1, 1, 1)
    precondition(rc == 0, "invalid test geometry \(c)")
    return s
}

@Suite("Direct 3x3 conv")
struct DirectConvTests {
    @Test("forward: overwrite (with and without bias) and accumulate match the reference",
          arguments: directCases, Kit.threadCountArguments)
    func forwardMatchesReference(_ c: [Int], threads: Int) {
        var s = shape(c)
        #expect(msq_conv2d_direct_eligible(&s) == 1)
        let yCount = Int(s.n) * Int(s.c_out) * Int(s.h_out) * Int(s.w_out)
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(7) { $0 &* 31 &+ $1 }))
        let x = rng.floats(Int(s.n) * Int(s.c_in) * Int(s.h_in) * Int(s.w_in))
        let w = rng.floats(Int(s.c_out) * Int(s.c_in) * 9), bias = rng.floats(Int(s.c_out))
        let y0 = rng.floats(yCount)
        for withBias in [false, true] {
            var ref = [Float](repeating: 0, count: yCount)
            msq_conv2d_forward_ref(&ref, x, w, withBias ? bias : nil, &s, nil)
            var got = [Float](repeating: .nan, count: yCount)
            Kit.withThreads(threads) { msq_conv2d_direct_forward(&got, x, w, withBias ? bias : nil, &s, nil, 0) }
            let err = Kit.maxRelError(got, ref)
            #expect(err <= directForwardRelTolerance, "bias \(withBias): rel err \(err)")
        }
        var conv = [Float](repeating: 0, count: yCount)
        msq_conv2d_forward_ref(&conv, x, w, nil, &s, nil)
        let expected = zip(y0, conv).map { $0 + $1 }
        var acc = y0
        Kit.withThreads(threads) { msq_conv2d_direct_forward(&acc, x, w, bias, &s, nil, 1) } // bias unused
        let err = Kit.maxRelError(acc, expected)
        #expect(err <= directForwardRelTolerance, "accumulate: rel err \(err)")
    }

    @Test("backward weight (with and without bias) accumulates the reference's gradient",
          arguments: directCases, Kit.threadCountArguments)
    func weightMatchesReference(_ c: [Int], threads: Int) {
        var s = shape(c)
        let yCount = Int(s.n) * Int(s.c_out) * Int(s.h_out) * Int(s.w_out), wCount = Int(s.c_out) * Int(s.c_in) * 9
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(11) { $0 &* 31 &+ $1 }))
        let x = rng.floats(Int(s.n) * Int(s.c_in) * Int(s.h_in) * Int(s.w_in)), dy = rng.floats(yCount)
        let dw0 = rng.floats(wCount), db0 = rng.floats(Int(s.c_out))
        for withBias in [false, true] {
            var refW = dw0, refB = db0
            if withBias { msq_conv2d_backward_weight_ref(&refW, &refB, dy, x, &s, nil) }
            else { msq_conv2d_backward_weight_ref(&refW, nil, dy, x, &s, nil) }
            var gotW = dw0, gotB = db0
            Kit.withThreads(threads) {
                withBias ? msq_conv2d_direct_backward_weight(&gotW, &gotB, dy, x, &s, nil)
                         : msq_conv2d_direct_backward_weight(&gotW, nil, dy, x, &s, nil)
            }
            let errW = Kit.maxRelError(gotW, refW), errB = Kit.maxRelError(gotB, refB)
            #expect(errW <= directWeightRelTolerance, "bias \(withBias): dw rel err \(errW)")
            #expect(errB <= directWeightRelTolerance, "bias \(withBias): db rel err \(errB)")
            if !withBias { #expect(gotB == db0, "dbias touched although NULL was passed") }
        }
    }

    @Test("eligible: 3x3, stride 1, padding 1, one group, at most 32 channels each way")
    func eligibility() {
        func eligible(_ cIn: Int, _ cOut: Int, k: Int = 3, stride: Int = 1, pad: Int = 1, groups: Int = 1) -> Bool {
            var s = msq_conv2d_shape()
            _ = msq_conv2d_make_shape(&s, 1, Int32(cIn), 8, 8, Int32(cOut), Int32(k), Int32(k),
                                      Int32(stride), Int32(pad), Int32(groups))
            return msq_conv2d_direct_eligible(&s) == 1
        }
        #expect(eligible(16, 16))
        #expect(eligible(3, 16))
        #expect(eligible(32, 32))
        #expect(!eligible(32, 64))
        #expect(!eligible(64, 64))
        #expect(!eligible(16, 16, stride: 2))
        #expect(!eligible(16, 16, pad: 0))
        #expect(!eligible(16, 16, k: 5, pad: 2))
        #expect(!eligible(16, 16, groups: 2))
    }
}
