import CKernels
import Testing

// The float64 convolution (conv_f64.c, the float64 Hessian-vector product's kernels): im2col +
// dgemm against the direct-loop twins over odd geometries at 1 and 2 threads, accumulation, the
// adjoint identities, and the same bits at any thread count.

/// Fast vs reference: max |fast − ref| / max |ref|. Both sum in double, in different orders, over
/// at most a few thousand terms.
private let convFloat64RelTolerance = 1e-13
/// ⟨conv(x, w), dy⟩ = ⟨x, convᵀ(dy, w)⟩ = ⟨w, corr(dy, x)⟩, relative to Σ|terms|.
private let convFloat64AdjointRelTolerance = 1e-13

private let float64ConvCases: [ConvTestCase] = [
    .init(n: 1, cIn: 1, h: 1, w: 1, cOut: 1, k: 1, stride: 1, pad: 0, groups: 1),
    .init(n: 3, cIn: 3, h: 7, w: 5, cOut: 17, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 1, cIn: 4, h: 17, w: 9, cOut: 6, k: 3, stride: 2, pad: 1, groups: 2),
    .init(n: 3, cIn: 6, h: 9, w: 7, cOut: 12, k: 3, stride: 2, pad: 2, groups: 6),
    .init(n: 2, cIn: 1, h: 29, w: 27, cOut: 7, k: 7, stride: 2, pad: 3, groups: 1),  // a 7x7 stem
    .init(n: 5, cIn: 9, h: 7, w: 5, cOut: 6, k: 1, stride: 2, pad: 0, groups: 3),
    .init(n: 3, cIn: 5, h: 6, w: 11, cOut: 3, k: 3, stride: 1, pad: 1, groups: 1, kw: 5, strideW: 2, padW: 2),
    .init(n: 1, cIn: 2, h: 3, w: 3, cOut: 1, k: 3, stride: 1, pad: 3, groups: 1),   // pad = k: all-padding rows
]

private extension msq_conv2d_shape {
    var xCount: Int { Int(n) * Int(c_in) * Int(h_in) * Int(w_in) }
    var yCount: Int { Int(n) * Int(c_out) * Int(h_out) * Int(w_out) }
    var wCount: Int { Int(c_out) * Int(c_in / groups) * Int(kh) * Int(kw) }
}

private func doubles(_ rng: inout KernelTestKit.Xorshift, _ count: Int) -> [Double] {
    (0..<count).map { _ in Double(rng.uniform(-1, 1)) + Double(rng.uniform(-1, 1)) * 1e-7 }
}

private func maxRelError(_ got: [Double], _ ref: [Double]) -> Double {
    let scale = ref.map(abs).max() ?? 0
    let err = zip(got, ref).map { abs($0 - $1) }.max() ?? 0
    return scale > 0 ? err / scale : err
}

private func zip3<A, B, C>(_ a: [A], _ b: [B], _ c: [C]) -> [(A, B, C)] {
    zip(a, zip(b, c)).map { ($0, $1.0, $1.1) }
}

@Suite("float64 convolution") struct ConvFloat64Tests {
    @Test("forward, input and weight gradients match the direct loops; accumulation adds", arguments: float64ConvCases, [1, 2])
    func matchesReference(_ c: ConvTestCase, threads: Int) {
        var s = c.shape()
        var rng = KernelTestKit.Xorshift(seed: UInt64(c.n * 1000 + c.cOut * 10 + c.kh))
        let x = doubles(&rng, s.xCount), w = doubles(&rng, s.wCount), bias = doubles(&rng, Int(s.c_out))
        let dy = doubles(&rng, s.yCount), y0 = doubles(&rng, s.yCount)
        let dx0 = doubles(&rng, s.xCount), dw0 = doubles(&rng, s.wCount)
        KernelTestKit.withThreads(threads) {
            for (accumulate, b) in [(Int32(0), nil), (0, bias), (1, bias)] as [(Int32, [Double]?)] {
                var ref = y0, got = y0
                msq_conv2d_forward_f64_ref(&ref, x, w, b, &s, accumulate)
                msq_conv2d_forward_f64(&got, x, w, b, &s, accumulate)
                #expect(maxRelError(got, ref) <= convFloat64RelTolerance, "\(c) forward accumulate \(accumulate)")
            }
            var refX = dx0, gotX = dx0
            msq_conv2d_backward_input_f64_ref(&refX, dy, w, &s)
            msq_conv2d_backward_input_f64(&gotX, dy, w, &s)
            #expect(maxRelError(gotX, refX) <= convFloat64RelTolerance, "\(c) backward input")
            var refW = dw0, gotW = dw0
            msq_conv2d_backward_weight_f64_ref(&refW, dy, x, &s)
            msq_conv2d_backward_weight_f64(&gotW, dy, x, &s)
            #expect(maxRelError(gotW, refW) <= convFloat64RelTolerance, "\(c) backward weight")
        }
    }

    @Test("the backward kernels are the adjoints of the forward", arguments: float64ConvCases)
    func adjoints(_ c: ConvTestCase) {
        var s = c.shape()
        var rng = KernelTestKit.Xorshift(seed: UInt64(c.h * 77 + c.w))
        let x = doubles(&rng, s.xCount), w = doubles(&rng, s.wCount), dy = doubles(&rng, s.yCount)
        var y = [Double](repeating: 0, count: s.yCount)
        msq_conv2d_forward_f64(&y, x, w, nil, &s, 0)
        var dx = [Double](repeating: 0, count: s.xCount), dw = [Double](repeating: 0, count: s.wCount)
        msq_conv2d_backward_input_f64(&dx, dy, w, &s)
        msq_conv2d_backward_weight_f64(&dw, dy, x, &s)
        func dot(_ a: [Double], _ b: [Double]) -> (Double, Double) {
            zip(a, b).reduce((0.0, 0.0)) { ($0.0 + $1.0 * $1.1, $0.1 + abs($1.0 * $1.1)) }
        }
        let (lhs, scale) = dot(y, dy), (viaX, _) = dot(x, dx), (viaW, _) = dot(w, dw)
        #expect(abs(lhs - viaX) <= convFloat64AdjointRelTolerance * max(scale, 1e-300), "\(c): ⟨y, dy⟩ \(lhs) vs ⟨x, dx⟩ \(viaX)")
        #expect(abs(lhs - viaW) <= convFloat64AdjointRelTolerance * max(scale, 1e-300), "\(c): ⟨y, dy⟩ \(lhs) vs ⟨w, dw⟩ \(viaW)")
    }

    @Test("the same bits at 1 and 2 threads", arguments: float64ConvCases)
    func threadCountInvariant(_ c: ConvTestCase) {
        var s = c.shape()
        var rng = KernelTestKit.Xorshift(seed: UInt64(c.cIn * 31 + c.kw))
        let x = doubles(&rng, s.xCount), w = doubles(&rng, s.wCount), dy = doubles(&rng, s.yCount)
        func run() -> [[UInt64]] {
            var y = [Double](repeating: 0, count: s.yCount)
            var dx = [Double](repeating: 0, count: s.xCount), dw = [Double](repeating: 0, count: s.wCount)
            msq_conv2d_forward_f64(&y, x, w, nil, &s, 0)
            msq_conv2d_backward_input_f64(&dx, dy, w, &s)
            msq_conv2d_backward_weight_f64(&dw, dy, x, &s)
            return [y, dx, dw].map { $0.map(\.bitPattern) }
        }
        let one = KernelTestKit.withThreads(1, run), two = KernelTestKit.withThreads(2, run)
        for (name, a, b) in zip3(["forward", "input gradient", "weight gradient"], one, two) {
            #expect(a == b, "\(c): \(name) differs between 1 and 2 threads")
        }
    }
}
