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

/// Shapes as (n, c_in, h, w, c_out, pad = 1). The last two are large enough per image (x plus y
/// over 320 KiB) that a thread holds only two images per group, so the last group is short and
/// reuses buffers a full group wrote.
private let directCases: [[Int]] = [
    [1, 1, 1, 1, 1, 1], [3, 5, 9, 11, 7, 1], [2, 3, 2, 3, 4, 1], [7, 32, 13, 5, 3, 1], [9, 17, 7, 16, 31, 1],
    [5, 32, 32, 32, 31, 1], [3, 16, 33, 30, 16, 1],
]

@Suite("Direct 3x3 conv")
struct DirectConvTests {
    @Test("forward: overwrite (with and without bias) and accumulate match the reference",
          arguments: directCases, Kit.threadCountArguments)
    func forwardMatchesReference(_ c: [Int], threads: Int) {
        var s = ConvKernelChecks.shape(c)
        #expect(msq_conv2d_direct_eligible(&s) == 1)
        ConvKernelChecks.forwardMatchesReference(c, threads: threads, tolerance: directForwardRelTolerance,
                                                 msq_conv2d_direct_forward)
    }

    @Test("backward weight (with and without bias) accumulates the reference's gradient",
          arguments: directCases, Kit.threadCountArguments)
    func weightMatchesReference(_ c: [Int], threads: Int) {
        ConvKernelChecks.weightMatchesReference(c, threads: threads, tolerance: directWeightRelTolerance,
                                                msq_conv2d_direct_backward_weight)
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
