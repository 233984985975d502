import CKernels
import Foundation
import Testing

// R-operator kernels (curvature.c, activation.c): every fast kernel against its _ref twin at odd
// shapes and 1 and 2 threads, and each against the derivative it claims to be, by central
// differences of the first-order kernels in double-checked arithmetic.

private typealias Kit = KernelTestKit

/// Convolution R-kernels run the same dispatcher as the plain conv kernels: the conv tests' tolerances.
private let rConvRelTolerance: Float = 2e-5
/// Linear R-kernels: OpenBLAS (fast) vs a scalar loop (ref).
private let rLinearRelTolerance: Float = 1e-5
/// Elementwise R-kernels evaluate the same float expression in fast and ref: bit for bit.
private let rElementwiseTolerance: Float = 0
/// Central differences of bilinear or piecewise-polynomial maps in float: round-off only.
private let rDerivativeRelTolerance: Float = 2e-3
/// GELU's second derivative by central differences of its first (step 1e-2, truncation ~h²).
private let geluSecondAbsTolerance: Float = 2e-3
/// msq_dot's chunked double sum vs the sequential one.
private let dotRelTolerance = 1e-12

struct RConvCase: Sendable, CustomStringConvertible {
    let n, cin, h, w, cout, k, stride, pad: Int
    var description: String { "n\(n) \(cin)→\(cout) \(h)x\(w) k\(k) s\(stride) p\(pad)" }
}

let rConvCases: [RConvCase] = [
    RConvCase(n: 3, cin: 5, h: 9, w: 7, cout: 6, k: 3, stride: 1, pad: 1),   // direct / im2col
    RConvCase(n: 8, cin: 8, h: 10, w: 10, cout: 8, k: 3, stride: 1, pad: 1), // interleaved Winograd
    RConvCase(n: 2, cin: 3, h: 11, w: 9, cout: 4, k: 3, stride: 2, pad: 1),  // stride-2 phase columns
    RConvCase(n: 3, cin: 4, h: 7, w: 5, cout: 5, k: 1, stride: 2, pad: 0),   // 1x1 stride-2 shortcut
    RConvCase(n: 5, cin: 1, h: 28, w: 28, cout: 16, k: 7, stride: 2, pad: 3), // ResNet-18's stem on 28x28
]

private func convShape(_ c: RConvCase) -> msq_conv2d_shape {
    var s = msq_conv2d_shape()
    _ = msq_conv2d_make_shape(&s, Int32(c.n), Int32(c.cin), Int32(c.h), Int32(c.w), Int32(c.cout),
                              Int32(c.k), Int32(c.k), Int32(c.stride), Int32(c.pad), 1)
    return s
}

@Suite("R-operator kernels") struct CurvatureKernelTests {
    @Test("conv2d R-forward and R-backward: fast equals _ref, with and without each tangent, 1 and 2 threads",
          arguments: rConvCases, Kit.threadCountArguments)
    func convFastMatchesRef(_ c: RConvCase, threads: Int) {
        var s = convShape(c)
        var rng = Kit.Xorshift(seed: UInt64(c.cin * 131 + c.k * 7 + c.stride))
        let xCount = c.n * c.cin * c.h * c.w
        let yCount = Int(s.n * s.c_out * s.h_out * s.w_out)
        let wCount = c.cout * c.cin * c.k * c.k
        let x = rng.floats(xCount), rx = rng.floats(xCount)
        let w = rng.floats(wCount), v = rng.floats(wCount)
        let dy = rng.floats(yCount), rdy = rng.floats(yCount)
        Kit.withThreads(threads) {
            for (useRx, useV) in [(true, true), (true, false), (false, true)] {
                var fast = [Float](repeating: .nan, count: yCount), ref = fast
                var scratch = [Float](repeating: 0, count: yCount)
                let rxp: [Float]? = useRx ? rx : nil, vp: [Float]? = useV ? v : nil
                withOpt(rxp) { r in withOpt(vp) { vv in
                    msq_conv2d_rforward(&fast, &scratch, x, r, w, vv, &s, nil)
                    msq_conv2d_rforward_ref(&ref, &scratch, x, r, w, vv, &s, nil)
                } }
                #expect(Kit.maxRelError(fast, ref) <= rConvRelTolerance, "\(c) rforward rx \(useRx) v \(useV)")
            }
            for useDy in [true, false] {
                let dyp: [Float]? = useDy ? dy : nil
                var fx = [Float](repeating: 0.25, count: xCount), rxOut = fx
                var fw = [Float](repeating: -0.5, count: wCount), rw = fw
                withOpt(dyp) { d in
                    msq_conv2d_rbackward_input(&fx, rdy, d, w, v, &s, nil)
                    msq_conv2d_rbackward_input_ref(&rxOut, rdy, d, w, v, &s, nil)
                    msq_conv2d_rbackward_weight(&fw, rdy, d, x, rx, &s, nil)
                    msq_conv2d_rbackward_weight_ref(&rw, rdy, d, x, rx, &s, nil)
                }
                #expect(Kit.maxRelError(fx, rxOut) <= rConvRelTolerance, "\(c) rbackward_input dy \(useDy)")
                #expect(Kit.maxRelError(fw, rw) <= rConvRelTolerance, "\(c) rbackward_weight dy \(useDy)")
            }
        }
    }

    @Test("conv2d R-forward is the directional derivative of the forward in (x, w)", arguments: rConvCases)
    func convRForwardIsDerivative(_ c: RConvCase) {
        var s = convShape(c)
        var rng = Kit.Xorshift(seed: 4242)
        let xCount = c.n * c.cin * c.h * c.w, wCount = c.cout * c.cin * c.k * c.k
        let yCount = Int(s.n * s.c_out * s.h_out * s.w_out)
        let x = rng.floats(xCount), rx = rng.floats(xCount), w = rng.floats(wCount), v = rng.floats(wCount)
        // The forward is bilinear: (f(x + t·rx, w + t·v) − f(x − t·rx, w − t·v)) / 2t is exact up to round-off.
        let t: Float = 0.5
        func f(_ sign: Float) -> [Float] {
            var y = [Float](repeating: 0, count: yCount)
            msq_conv2d_forward_ref(&y, zip(x, rx).map { $0 + sign * t * $1 }, zip(w, v).map { $0 + sign * t * $1 }, nil, &s, nil)
            return y
        }
        let (plus, minus) = (f(1), f(-1))
        let fd = zip(plus, minus).map { ($0 - $1) / (2 * t) }
        var ry = [Float](repeating: .nan, count: yCount), scratch = ry
        msq_conv2d_rforward(&ry, &scratch, x, rx, w, v, &s, nil)
        #expect(Kit.maxRelError(ry, fd) <= rDerivativeRelTolerance, "\(c)")
    }

    @Test("linear R-forward and R-backward: fast equals _ref, 1 and 2 threads", arguments: Kit.threadCountArguments)
    func linearFastMatchesRef(threads: Int) {
        let (n, fin, fout) = (7, 13, 5)
        var rng = Kit.Xorshift(seed: 77)
        let x = rng.floats(n * fin), rx = rng.floats(n * fin), w = rng.floats(fout * fin), v = rng.floats(fout * fin)
        let dy = rng.floats(n * fout), rdy = rng.floats(n * fout)
        Kit.withThreads(threads) {
            var fast = [Float](repeating: .nan, count: n * fout), ref = fast
            msq_linear_rforward(&fast, x, rx, w, v, Int32(n), Int32(fin), Int32(fout))
            msq_linear_rforward_ref(&ref, x, rx, w, v, Int32(n), Int32(fin), Int32(fout))
            #expect(Kit.maxRelError(fast, ref) <= rLinearRelTolerance)
            // Hand formula: ry = rx·wᵀ + x·vᵀ.
            var hand = [Float](repeating: 0, count: n * fout)
            for i in 0..<n { for o in 0..<fout { for k in 0..<fin {
                hand[i * fout + o] += rx[i * fin + k] * w[o * fin + k] + x[i * fin + k] * v[o * fin + k]
            } } }
            #expect(Kit.maxRelError(fast, hand) <= rLinearRelTolerance)
            var fx = [Float](repeating: 1, count: n * fin), rfx = fx
            var fw = [Float](repeating: 2, count: fout * fin), rfw = fw
            msq_linear_rbackward(&fx, &fw, rdy, dy, x, rx, w, v, Int32(n), Int32(fin), Int32(fout))
            msq_linear_rbackward_ref(&rfx, &rfw, rdy, dy, x, rx, w, v, Int32(n), Int32(fin), Int32(fout))
            #expect(Kit.maxRelError(fx, rfx) <= rLinearRelTolerance)
            #expect(Kit.maxRelError(fw, rfw) <= rLinearRelTolerance)
            var hx = [Float](repeating: 1, count: n * fin), hw = [Float](repeating: 2, count: fout * fin)
            for i in 0..<n { for o in 0..<fout { for k in 0..<fin {
                hx[i * fin + k] += rdy[i * fout + o] * w[o * fin + k] + dy[i * fout + o] * v[o * fin + k]
                hw[o * fin + k] += rdy[i * fout + o] * x[i * fin + k] + dy[i * fout + o] * rx[i * fin + k]
            } } }
            #expect(Kit.maxRelError(fx, hx) <= rLinearRelTolerance)
            #expect(Kit.maxRelError(fw, hw) <= rLinearRelTolerance)
        }
    }

    @Test("eval batch norm (+ReLU) R-passes: fast equals _ref bit for bit and scale by γ/sqrt(σ²+ε) under the mask",
          arguments: Kit.threadCountArguments)
    func batchNormR(threads: Int) {
        let (n, c, hw) = (3, 5, 37 * 41) // large enough to go parallel
        var rng = Kit.SplitMix64(seed: 5)
        let rx = rng.floats(n * c * hw), gamma = rng.floats(c, 0.5, 1.5), rv = rng.floats(c, 0.2, 2)
        let y = rng.floats(n * c * hw)
        let eps: Float = 1e-5
        Kit.withThreads(threads) {
            for mask in [nil, y] as [[Float]?] {
                var fast = [Float](repeating: .nan, count: rx.count), ref = fast
                var bf = [Float](repeating: 0.5, count: rx.count), br = bf
                withOpt(mask) { m in
                    msq_batchnorm_rforward_eval(&fast, rx, m, gamma, rv, Int32(n), Int32(c), Int32(hw), eps)
                    msq_batchnorm_rforward_eval_ref(&ref, rx, m, gamma, rv, Int32(n), Int32(c), Int32(hw), eps)
                    msq_batchnorm_rbackward_eval(&bf, rx, m, gamma, rv, Int32(n), Int32(c), Int32(hw), eps)
                    msq_batchnorm_rbackward_eval_ref(&br, rx, m, gamma, rv, Int32(n), Int32(c), Int32(hw), eps)
                }
                #expect(Kit.bits(fast) == Kit.bits(ref))
                #expect(Kit.bits(bf) == Kit.bits(br))
                for i in stride(from: 0, to: rx.count, by: 97) {
                    let ch = (i / hw) % c
                    let a = gamma[ch] / (rv[ch] + eps).squareRoot()
                    let expected: Float = (mask.map { $0[i] > 0 } ?? true) ? a * rx[i] : 0
                    #expect(abs(fast[i] - expected) <= 1e-6 * max(1, abs(expected)))
                    #expect(abs(bf[i] - (0.5 + expected)) <= 1e-6 * max(1, abs(expected)))
                }
            }
        }
    }

    @Test("activation R-passes: fast equals _ref bit for bit; act' and act'' against central differences",
          arguments: ActivationTestKind.allCases)
    func activationR(_ kind: ActivationTestKind) {
        var rng = Kit.SplitMix64(seed: 11 + UInt64(kind.rawValue))
        let count = 33 * 33 * 17 * 7
        // Keep clear of the kinks so central differences see one polynomial piece.
        let x = rng.floats(count, -5, 8).map { v in kind.kinks.contains { abs(v - $0) < 0.05 } ? v + 0.1 : v }
        let rx = rng.floats(count), dy = rng.floats(count), rdy = rng.floats(count)
        for threads in Kit.threadCounts {
            Kit.withThreads(Int(threads)) {
                var fast = [Float](repeating: .nan, count: count), ref = fast
                msq_activation_rforward(&fast, rx, x, count, kind.c)
                msq_activation_rforward_ref(&ref, rx, x, count, kind.c)
                #expect(Kit.maxRelError(fast, ref) <= rElementwiseTolerance)
                var bf = [Float](repeating: 0.125, count: count), br = bf
                msq_activation_rbackward(&bf, rdy, dy, x, rx, count, kind.c)
                msq_activation_rbackward_ref(&br, rdy, dy, x, rx, count, kind.c)
                #expect(Kit.bits(bf) == Kit.bits(br))
            }
        }
        // rdx − rdy·act'(x) = dy·act''(x)·rx, with act'' by central differences of act' (1 per element).
        let h: Float = 1e-2
        let idx = Array(stride(from: 0, to: count, by: 1013))
        let xs = idx.map { x[$0] }
        let ones = [Float](repeating: 1, count: xs.count)
        func derivative(_ at: [Float]) -> [Float] {
            var d = [Float](repeating: 0, count: at.count)
            msq_activation_backward_ref(&d, ones, at, at.count, kind.c)
            return d
        }
        let second = zip(derivative(xs.map { $0 + h }), derivative(xs.map { $0 - h })).map { ($0 - $1) / (2 * h) }
        var first = [Float](repeating: 0, count: xs.count)
        msq_activation_rforward_ref(&first, ones, xs, xs.count, kind.c)
        var got = [Float](repeating: 0, count: xs.count)
        msq_activation_rbackward_ref(&got, [Float](repeating: 0, count: xs.count), ones, xs, ones, xs.count, kind.c)
        Kit.expectClose(got, second, atol: geluSecondAbsTolerance, rtol: rDerivativeRelTolerance, "\(kind) act''")
        Kit.expectClose(first, derivative(xs), atol: 0, rtol: 0, "\(kind) act'")
    }

    @Test("max-pool R-forward gathers the tangent at the argmax; fast equals _ref", arguments: Kit.threadCountArguments)
    func maxPoolR(threads: Int) {
        var s = msq_pool2d_shape()
        _ = msq_pool2d_make_shape(&s, 3, 5, 13, 11, 3, 2, 1)
        var rng = Kit.SplitMix64(seed: 3)
        let x = rng.floats(3 * 5 * 13 * 11), rx = rng.floats(x.count)
        let outCount = Int(s.n * s.c * s.h_out * s.w_out)
        var y = [Float](repeating: 0, count: outCount), argmax = [Int32](repeating: 0, count: outCount)
        msq_maxpool2d_forward_ref(&y, &argmax, x, &s)
        Kit.withThreads(threads) {
            var fast = [Float](repeating: .nan, count: outCount), ref = fast
            msq_maxpool2d_rforward(&fast, rx, argmax, &s)
            msq_maxpool2d_rforward_ref(&ref, rx, argmax, &s)
            #expect(Kit.bits(fast) == Kit.bits(ref))
            let plane = 13 * 11, outPlane = Int(s.h_out * s.w_out)
            for o in 0..<outCount { #expect(fast[o] == rx[(o / outPlane) * plane + Int(argmax[o])]) }
        }
    }

    @Test("softmax cross-entropy Hessian product: fast equals _ref; equals central differences of the gradient")
    func crossEntropyHVP() {
        let (n, k) = (9, 7)
        var rng = Kit.SplitMix64(seed: 8)
        let z = rng.floats(n * k, -3, 3), rz = rng.floats(n * k)
        let labels = (0..<n).map { _ in Int32(rng.int(below: k)) }
        func grad(_ logits: [Float]) -> [Float] {
            var loss: Float = 0, p = [Float](repeating: 0, count: n * k), g = [Float](repeating: 0, count: n * k)
            _ = msq_softmax_cross_entropy_forward_ref(&loss, &p, logits, labels, Int32(n), Int32(k), 0.1)
            msq_softmax_cross_entropy_backward_ref(&g, p, labels, Int32(n), Int32(k), 0.1, 1)
            return g
        }
        var loss: Float = 0, p = [Float](repeating: 0, count: n * k)
        _ = msq_softmax_cross_entropy_forward_ref(&loss, &p, z, labels, Int32(n), Int32(k), 0)
        var fast = [Float](repeating: .nan, count: n * k), ref = fast
        for threads in Kit.threadCounts {
            Kit.withThreads(Int(threads)) { msq_softmax_cross_entropy_hvp(&fast, p, rz, Int32(n), Int32(k)) }
            msq_softmax_cross_entropy_hvp_ref(&ref, p, rz, Int32(n), Int32(k))
            #expect(Kit.bits(fast) == Kit.bits(ref))
        }
        let t: Float = 1e-2
        let fd = zip(grad(zip(z, rz).map { $0 + t * $1 }), grad(zip(z, rz).map { $0 - t * $1 })).map { ($0 - $1) / (2 * t) }
        #expect(Kit.maxRelError(fast, fd) <= rDerivativeRelTolerance, "label smoothing 0.1 in the gradient, none in the HVP")
    }

    @Test("Rademacher probes: ±1, the same for any thread count and any slicing, fast equals _ref, seeded")
    func rademacher() {
        let count = 200_003
        var whole = [Float](repeating: 0, count: count)
        for threads in Kit.threadCounts {
            var fast = [Float](repeating: 0, count: count), ref = fast
            Kit.withThreads(Int(threads)) { msq_rademacher(&fast, count, 17, 3, 0) }
            msq_rademacher_ref(&ref, count, 17, 3, 0)
            #expect(Kit.bits(fast) == Kit.bits(ref))
            whole = fast
        }
        #expect(whole.allSatisfy { $0 == 1 || $0 == -1 })
        let plus = whole.filter { $0 == 1 }.count
        #expect(abs(Double(plus) / Double(count) - 0.5) < 0.01)
        for (start, len) in [(0, 1), (63, 2), (64, 64), (1_000, 70_001), (count - 5, 5)] {
            var slice = [Float](repeating: 0, count: len)
            msq_rademacher(&slice, len, 17, 3, UInt64(start))
            #expect(slice == Array(whole[start..<(start + len)]), "slice at \(start)")
        }
        var other = [Float](repeating: 0, count: 256), otherSeed = other
        msq_rademacher(&other, 256, 17, 4, 0)
        msq_rademacher(&otherSeed, 256, 18, 3, 0)
        #expect(other != Array(whole[0..<256]) && otherSeed != Array(whole[0..<256]))
    }

    @Test("msq_dot: the same bits at 1 and 2 threads, within 1e-12 of the sequential sum")
    func dot() {
        var rng = Kit.SplitMix64(seed: 21)
        for count in [0, 1, 4095, 4097, 300_001] {
            let a = rng.floats(count), b = rng.floats(count)
            let r1 = Kit.withThreads(1) { msq_dot(a, b, count) }
            let r2 = Kit.withThreads(2) { msq_dot(a, b, count) }
            let ref = msq_dot_ref(a, b, count)
            #expect(r1.bitPattern == r2.bitPattern, "count \(count)")
            #expect(abs(r1 - ref) <= dotRelTolerance * max(1, abs(ref)), "count \(count)")
        }
    }
}

/// Calls `body` with a pointer to `a`'s elements, or nil.
private func withOpt<R>(_ a: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0.baseAddress) }
}
