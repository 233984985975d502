import CKernels
import Testing

// Winograd F(2x2, 3x3) (winograd.c) called directly: overwrite with and without bias, accumulate,
// against the double-precision reference conv at odd sizes, paddings 0-2 and 1 and 2 threads;
// and which shapes msq_conv2d_forward sends there.

private typealias Kit = KernelTestKit

/// max |winograd − ref| / max |ref|. The transforms add a few float roundings per element on top
/// of the GEMM's (observed ~4e-7 on these shapes).
private let winogradRelTolerance: Float = 1e-5

/// Shapes as (n, c_in, h, w, c_out, pad).
private let winogradCases: [[Int]] = [
    [1, 64, 3, 16, 64, 1], [2, 64, 5, 17, 65, 1], [1, 65, 6, 19, 64, 0], [3, 64, 4, 16, 67, 2],
]

@Suite("Winograd conv")
struct WinogradTests {
    @Test("overwrite (with and without bias) and accumulate match the reference",
          arguments: winogradCases, Kit.threadCountArguments)
    func matchesReference(_ c: [Int], threads: Int) {
        var s = ConvKernelChecks.shape(c)
        #expect(msq_conv2d_winograd_eligible(&s) == 1)
        ConvKernelChecks.forwardMatchesReference(c, threads: threads, tolerance: winogradRelTolerance,
                                                 msq_conv2d_winograd_forward)
    }

    @Test("eligible: 3x3, stride 1, one group, >= 64 channels each way, outputs >= 16 wide")
    func eligibility() {
        func eligible(_ cIn: Int, _ w: Int, _ cOut: Int, k: Int = 3, stride: Int = 1, groups: Int = 1) -> Bool {
            var s = msq_conv2d_shape()
            _ = msq_conv2d_make_shape(&s, 1, Int32(cIn), 8, Int32(w), Int32(cOut), Int32(k), Int32(k),
                                      Int32(stride), Int32(k / 2), Int32(groups))
            return msq_conv2d_winograd_eligible(&s) == 1
        }
        #expect(eligible(64, 56, 64))
        #expect(eligible(128, 28, 128))
        #expect(!eligible(32, 56, 64))
        #expect(!eligible(64, 56, 32))
        #expect(!eligible(256, 14, 256))
        #expect(!eligible(64, 56, 64, stride: 2))
        #expect(!eligible(64, 56, 64, k: 5))
        #expect(!eligible(64, 56, 64, groups: 2))
    }
}
