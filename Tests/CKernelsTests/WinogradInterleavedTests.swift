import CKernels
import Testing

// Winograd F(2x2, 3x3) on eight interleaved images (winograd_interleaved.c) called directly:
// forward (overwrite with and without bias, accumulate) and backward weight, against the
// double-precision reference at odd sizes, batches that leave lanes empty, paddings 0-2, planes
// narrower and wider than a vector, channel counts off the 4-channel block, both kinds of forward
// products (register-blocked up to 16x16 weights per ξ, cblas_sgemm above), several tile chunks
// per group, and 1 and 2 threads; and which shapes qualify.

private typealias Kit = KernelTestKit

/// max |winograd − ref| / max |ref|: a few float roundings per element in the transforms on top
/// of the products' (observed below 1e-6 on these shapes).
private let interleavedRelTolerance: Float = 1e-5

/// Shapes as (n, c_in, h, w, c_out, pad).
private let interleavedCases: [[Int]] = [
    [8, 8, 3, 3, 4, 1], [3, 9, 7, 13, 10, 1], [11, 16, 5, 9, 17, 2], [16, 8, 9, 6, 8, 0],
    [9, 65, 6, 7, 64, 1],   // ragged last group
    [8, 64, 12, 12, 64, 1], // 36 tiles in chunks of 16
]

@Suite("Winograd conv, interleaved images")
struct WinogradInterleavedTests {
    @Test("overwrite (with and without bias) and accumulate match the reference",
          arguments: interleavedCases, Kit.threadCountArguments)
    func matchesReference(_ c: [Int], threads: Int) {
        ConvKernelChecks.forwardMatchesReference(c, threads: threads, tolerance: interleavedRelTolerance,
                                                 msq_conv2d_winograd_interleaved_forward)
    }

    @Test("backward weight (with and without bias) accumulates the reference's gradient",
          arguments: interleavedCases, Kit.threadCountArguments)
    func weightMatchesReference(_ c: [Int], threads: Int) {
        ConvKernelChecks.weightMatchesReference(c, threads: threads, tolerance: interleavedRelTolerance,
                                                msq_conv2d_winograd_interleaved_backward_weight)
    }

    @Test("eligible: 3x3, stride 1, one group, >= 8 input channels, batch fills 3/4 of its lanes, grids under the cap")
    func eligibility() {
        func eligible(n: Int = 16, _ cIn: Int, _ cOut: Int, k: Int = 3, stride: Int = 1, groups: Int = 1) -> Bool {
            var s = msq_conv2d_shape()
            _ = msq_conv2d_make_shape(&s, Int32(n), Int32(cIn), 8, 8, Int32(cOut), Int32(k), Int32(k),
                                      Int32(stride), Int32(k / 2), Int32(groups))
            return msq_conv2d_winograd_interleaved_eligible(&s) == 1
        }
        #expect(eligible(16, 16))
        #expect(eligible(8, 3))
        #expect(eligible(n: 128, 64, 64))
        #expect(eligible(n: 6, 16, 16))
        #expect(eligible(n: 12, 16, 16))
        #expect(!eligible(n: 5, 16, 16))
        #expect(!eligible(n: 9, 16, 16))
        #expect(!eligible(3, 16))
        #expect(!eligible(16, 16, stride: 2))
        #expect(!eligible(16, 16, k: 5))
        #expect(!eligible(16, 16, groups: 2))
        // Grids over the size cap: eight 224x224 images at 64 channels in and out.
        var big = msq_conv2d_shape()
        _ = msq_conv2d_make_shape(&big, 16, 64, 224, 224, 64, 3, 3, 1, 1, 1)
        #expect(msq_conv2d_winograd_interleaved_eligible(&big) == 0)
        _ = msq_conv2d_make_shape(&big, 16, 64, 56, 56, 64, 3, 3, 1, 1, 1) // ResNet-18's layer1
        #expect(msq_conv2d_winograd_interleaved_eligible(&big) == 1)
    }
}
