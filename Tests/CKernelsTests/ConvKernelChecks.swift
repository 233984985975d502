import CKernels
import Testing

// The checks shared by the tests of the 3x3 convolution kernels that msq_conv2d_* dispatch to
// (Winograd by tile rows, Winograd on interleaved images, direct), each called directly against
// the double-precision reference with random data.

/// A 3x3 stride-1 forward kernel: (y, x, w, bias, shape, workspace, accumulate).
typealias ConvForwardKernel = (UnsafeMutablePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Float>?,
                               UnsafePointer<Float>?, UnsafePointer<msq_conv2d_shape>?, UnsafeMutableRawPointer?,
                               Int32) -> Void
/// A backward-weight kernel: (dw, dbias, dy, x, shape, workspace).
typealias ConvWeightKernel = (UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?, UnsafePointer<Float>?,
                              UnsafePointer<Float>?, UnsafePointer<msq_conv2d_shape>?, UnsafeMutableRawPointer?) -> Void

enum ConvKernelChecks {
    private typealias Kit = KernelTestKit

    /// The 3x3 stride-1 shape of (n, c_in, h, w, c_out, pad).
    static func shape(_ c: [Int]) -> msq_conv2d_shape {
        var s = msq_conv2d_shape()
        let rc = msq_conv2d_make_shape(&s, Int32(c[0]), Int32(c[1]), Int32(c[2]), Int32(c[3]), Int32(c[4]),
                                       3, 3, 1, Int32(c[5]), 1)
        precondition(rc == 0, "invalid test geometry \(c)")
        return s
    }

    /// Overwrite (with and without bias) and accumulate (bias passed, and unused) against the
    /// reference: max |kernel − ref| / max |ref| within `tolerance`.
    static func forwardMatchesReference(_ c: [Int], threads: Int, tolerance: Float, _ kernel: ConvForwardKernel) {
        var s = shape(c)
        let yCount = Int(s.n) * Int(s.c_out) * Int(s.h_out) * Int(s.w_out)
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(7) { $0 &* 31 &+ $1 }))
        let x = rng.floats(Int(s.n) * Int(s.c_in) * Int(s.h_in) * Int(s.w_in))
        let w = rng.floats(Int(s.c_out) * Int(s.c_in) * 9), bias = rng.floats(Int(s.c_out))
        let y0 = rng.floats(yCount)
        for withBias in [false, true] {
            var ref = [Float](repeating: 0, count: yCount)
            msq_conv2d_forward_ref(&ref, x, w, withBias ? bias : nil, &s, nil)
            var got = [Float](repeating: .nan, count: yCount)
            Kit.withThreads(threads) { kernel(&got, x, w, withBias ? bias : nil, &s, nil, 0) }
            let err = Kit.maxRelError(got, ref)
            #expect(err <= tolerance, "\(c) bias \(withBias): rel err \(err)")
        }
        var conv = [Float](repeating: 0, count: yCount)
        msq_conv2d_forward_ref(&conv, x, w, nil, &s, nil)
        let expected = zip(y0, conv).map { $0 + $1 }
        var acc = y0
        Kit.withThreads(threads) { kernel(&acc, x, w, bias, &s, nil, 1) }
        let err = Kit.maxRelError(acc, expected)
        #expect(err <= tolerance, "\(c) accumulate: rel err \(err)")
    }

    /// dw and dbias (and dbias NULL: left untouched) accumulated onto nonzero starting values,
    /// against the reference: max |kernel − ref| / max |ref| within `tolerance`.
    static func weightMatchesReference(_ c: [Int], threads: Int, tolerance: Float, _ kernel: ConvWeightKernel) {
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
                if withBias { kernel(&gotW, &gotB, dy, x, &s, nil) } else { kernel(&gotW, nil, dy, x, &s, nil) }
            }
            let errW = Kit.maxRelError(gotW, refW), errB = Kit.maxRelError(gotB, refB)
            #expect(errW <= tolerance, "\(c) bias \(withBias): dw rel err \(errW)")
            #expect(errB <= tolerance, "\(c) bias \(withBias): db rel err \(errB)")
            if !withBias { #expect(gotB == db0, "dbias touched although NULL was passed") }
        }
    }
}
