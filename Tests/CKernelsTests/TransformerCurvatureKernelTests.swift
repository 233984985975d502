import CKernels
import Testing

// The R-operator of layer norm and attention (layernorm.c, attention.c): the fast kernels against
// their double-precision _ref twins at odd sizes and 1 and 2 threads (the same bits at either), and
// both against the directional derivatives they stand for — the R-forward against central
// differences of the forward, the R-backward against central differences of the backward along
// (x + h·rx, dy + h·rdy), Richardson-extrapolated.

private typealias Kit = KernelTestKit

/// max |fast − ref| / max |ref| for the R-passes (float sums of dim or T terms against double).
private let rLayerNormRelTolerance: Float = 2e-5
private let rAttentionRelTolerance: Float = 5e-5
/// ‖R-pass − difference quotient‖ / ‖difference quotient‖ (step `rStep`, Richardson): the quotient's
/// float round-off, ~1e-7·|y|/h, bounds it.
private let rDerivativeTolerance = 1e-3
private let rStep: Float = 1e-2

private let rLayerNormCases: [[Int]] = [[1, 1], [3, 5], [70, 13], [33, 24], [65, 192]]
private let rAttentionCases: [[Int]] = [[1, 1, 1, 1], [2, 5, 1, 3], [2, 17, 3, 8], [3, 9, 2, 5]]

/// ‖a − b‖ / ‖b‖ in double.
private func normRelError(_ a: [Float], _ b: [Double]) -> Double {
    var num = 0.0, den = 0.0
    for (x, y) in zip(a, b) {
        num += (Double(x) - y) * (Double(x) - y)
        den += y * y
    }
    return (num / max(den, 1e-300)).squareRoot()
}

/// Richardson-extrapolated central difference of `f` along h: (4·D(h/2) − D(h)) / 3.
private func directionalDerivative(_ f: (Float) -> [Float]) -> [Double] {
    func quotient(_ h: Float) -> [Double] { zip(f(h), f(-h)).map { (Double($0) - Double($1)) / (2 * Double(h)) } }
    return zip(quotient(rStep / 2), quotient(rStep)).map { (4 * $0 - $1) / 3 }
}

private func moved(_ a: [Float], _ da: [Float], _ h: Float) -> [Float] { zip(a, da).map { $0 + h * $1 } }

@Suite("Transformer R-operator kernels")
struct TransformerCurvatureKernelTests {
    @Test("layer norm R-forward and R-backward: fast equals _ref, the same bits at 1 and 2 threads; without dy the R-backward is the backward",
          arguments: rLayerNormCases)
    func layerNormFastMatchesRef(_ c: [Int]) {
        let (rows, dim) = (c[0], c[1])
        var rng = Kit.SplitMix64(seed: UInt64(rows * 17 + dim))
        let x = rng.floats(rows * dim, -3, 5), gamma = rng.floats(dim, 0.5, 1.5), beta = rng.floats(dim)
        let rx = rng.floats(rows * dim), dy = rng.floats(rows * dim), rdy = rng.floats(rows * dim)
        let rdx0 = rng.floats(rows * dim)
        var y = [Float](repeating: 0, count: rows * dim), mean = [Float](repeating: 0, count: rows), rstd = mean
        msq_layernorm_forward(&y, &mean, &rstd, x, gamma, beta, Int32(rows), Int32(dim), 1e-5)
        let (r, d) = (Int32(rows), Int32(dim))
        var refRy = y, refRdx = rdx0
        msq_layernorm_rforward_ref(&refRy, x, rx, mean, rstd, gamma, r, d)
        msq_layernorm_rbackward_ref(&refRdx, rdy, dy, x, rx, mean, rstd, gamma, r, d)
        var results: [[UInt32]] = []
        for threads in Kit.threadCountArguments {
            var ry = [Float](repeating: .nan, count: rows * dim), rdx = rdx0, gn = rdx0, plain = rdx0
            Kit.withThreads(threads) {
                msq_layernorm_rforward(&ry, x, rx, mean, rstd, gamma, r, d)
                msq_layernorm_rbackward(&rdx, rdy, dy, x, rx, mean, rstd, gamma, r, d)
                msq_layernorm_rbackward(&gn, rdy, nil, x, rx, mean, rstd, gamma, r, d)
                msq_layernorm_backward(&plain, nil, nil, rdy, x, mean, rstd, gamma, r, d)
            }
            #expect(Kit.maxRelError(ry, refRy) <= rLayerNormRelTolerance, "\(c) ry")
            #expect(Kit.maxRelError(rdx, refRdx) <= rLayerNormRelTolerance, "\(c) rdx")
            #expect(Kit.bits(gn) == Kit.bits(plain), "\(c): the Gauss-Newton R-backward is not the backward of rdy")
            results.append(Kit.bits(ry) + Kit.bits(rdx))
        }
        #expect(Set(results).count == 1, "\(c): layer norm's R-passes depend on the thread count")
    }

    @Test("layer norm R-passes are the directional derivatives of the forward and backward", arguments: [[7, 13], [4, 40]])
    func layerNormDerivatives(_ c: [Int]) {
        let (rows, dim) = (c[0], c[1])
        let (r, d) = (Int32(rows), Int32(dim))
        var rng = Kit.SplitMix64(seed: UInt64(rows * 29 + dim))
        let x = rng.floats(rows * dim, -2, 3), gamma = rng.floats(dim, 0.5, 1.5), beta = rng.floats(dim)
        let rx = rng.floats(rows * dim), dy = rng.floats(rows * dim), rdy = rng.floats(rows * dim)
        func forward(_ at: [Float]) -> (y: [Float], mean: [Float], rstd: [Float]) {
            var y = at, mean = [Float](repeating: 0, count: rows), rstd = mean
            msq_layernorm_forward_ref(&y, &mean, &rstd, at, gamma, beta, r, d, 1e-5)
            return (y, mean, rstd)
        }
        let f0 = forward(x)
        var ry = x, rdx = [Float](repeating: 0, count: rows * dim)
        msq_layernorm_rforward(&ry, x, rx, f0.mean, f0.rstd, gamma, r, d)
        msq_layernorm_rbackward(&rdx, rdy, dy, x, rx, f0.mean, f0.rstd, gamma, r, d)
        let numericRy = directionalDerivative { h in forward(moved(x, rx, h)).y }
        let numericRdx = directionalDerivative { h in
            let at = moved(x, rx, h), f = forward(at)
            var dx = [Float](repeating: 0, count: rows * dim)
            msq_layernorm_backward_ref(&dx, nil, nil, moved(dy, rdy, h), at, f.mean, f.rstd, gamma, r, d)
            return dx
        }
        #expect(normRelError(ry, numericRy) <= rDerivativeTolerance, "\(c) ry: \(normRelError(ry, numericRy))")
        #expect(normRelError(rdx, numericRdx) <= rDerivativeTolerance, "\(c) rdx: \(normRelError(rdx, numericRdx))")
    }

    @Test("attention R-forward and R-backward: fast equals _ref with and without the input tangent, the same bits at 1 and 2 threads; without dout the R-backward is the backward",
          arguments: rAttentionCases)
    func attentionFastMatchesRef(_ c: [Int]) {
        let (b, t, h, hd) = (c[0], c[1], c[2], c[3])
        let dim = h * hd, scale = 1 / Float(hd).squareRoot()
        let dims = (Int32(b), Int32(t), Int32(h), Int32(hd))
        var rng = Kit.SplitMix64(seed: UInt64(b * 1000 + t * 100 + h * 10 + hd))
        let qkv = rng.floats(b * t * 3 * dim, -2, 2), rqkv = rng.floats(b * t * 3 * dim)
        let dout = rng.floats(b * t * dim), rdout = rng.floats(b * t * dim), rdq0 = rng.floats(b * t * 3 * dim)
        var out = [Float](repeating: 0, count: b * t * dim), p = [Float](repeating: 0, count: b * h * t * t)
        msq_attention_forward(&out, &p, qkv, dims.0, dims.1, dims.2, dims.3, scale)
        var refRo = out, refRp = p, refRdq = rdq0, refNoTangent = rdq0
        msq_attention_rforward_ref(&refRo, &refRp, qkv, rqkv, p, dims.0, dims.1, dims.2, dims.3, scale)
        msq_attention_rbackward_ref(&refRdq, rdout, dout, qkv, rqkv, p, refRp, dims.0, dims.1, dims.2, dims.3, scale)
        msq_attention_rbackward_ref(&refNoTangent, rdout, dout, qkv, nil, p, nil, dims.0, dims.1, dims.2, dims.3, scale)
        var results: [[UInt32]] = []
        for threads in Kit.threadCountArguments {
            var ro = [Float](repeating: .nan, count: b * t * dim), rp = [Float](repeating: .nan, count: b * h * t * t)
            var rdq = rdq0, noTangent = rdq0, gn = rdq0, plain = rdq0
            Kit.withThreads(threads) {
                msq_attention_rforward(&ro, &rp, qkv, rqkv, p, dims.0, dims.1, dims.2, dims.3, scale)
                msq_attention_rbackward(&rdq, rdout, dout, qkv, rqkv, p, rp, dims.0, dims.1, dims.2, dims.3, scale)
                msq_attention_rbackward(&noTangent, rdout, dout, qkv, nil, p, nil, dims.0, dims.1, dims.2, dims.3, scale)
                msq_attention_rbackward(&gn, rdout, nil, qkv, rqkv, p, rp, dims.0, dims.1, dims.2, dims.3, scale)
                msq_attention_backward(&plain, rdout, qkv, p, dims.0, dims.1, dims.2, dims.3, scale)
            }
            #expect(Kit.maxRelError(ro, refRo) <= rAttentionRelTolerance, "\(c) rout")
            #expect(Kit.maxRelError(rp, refRp) <= rAttentionRelTolerance, "\(c) rprobs")
            #expect(Kit.maxRelError(rdq, refRdq) <= rAttentionRelTolerance, "\(c) rdqkv")
            #expect(Kit.maxRelError(noTangent, refNoTangent) <= rAttentionRelTolerance, "\(c) rdqkv without tangent")
            #expect(Kit.bits(gn) == Kit.bits(plain), "\(c): the Gauss-Newton R-backward is not the backward of rdout")
            results.append(Kit.bits(ro) + Kit.bits(rp) + Kit.bits(rdq))
        }
        #expect(Set(results).count == 1, "\(c): attention's R-passes depend on the thread count")
    }

    @Test("attention R-passes are the directional derivatives of the forward and backward", arguments: [[2, 7, 2, 3], [1, 12, 1, 8]])
    func attentionDerivatives(_ c: [Int]) {
        let (b, t, h, hd) = (c[0], c[1], c[2], c[3])
        let dim = h * hd, scale = 1 / Float(hd).squareRoot()
        let dims = (Int32(b), Int32(t), Int32(h), Int32(hd))
        var rng = Kit.SplitMix64(seed: UInt64(b * 31 + t * 7 + h * 3 + hd))
        let qkv = rng.floats(b * t * 3 * dim, -1.5, 1.5), rqkv = rng.floats(b * t * 3 * dim)
        let dout = rng.floats(b * t * dim), rdout = rng.floats(b * t * dim)
        func forward(_ at: [Float]) -> (out: [Float], p: [Float]) {
            var out = [Float](repeating: 0, count: b * t * dim), p = [Float](repeating: 0, count: b * h * t * t)
            msq_attention_forward_ref(&out, &p, at, dims.0, dims.1, dims.2, dims.3, scale)
            return (out, p)
        }
        let f0 = forward(qkv)
        var ro = f0.out, rp = f0.p, rdq = [Float](repeating: 0, count: qkv.count)
        msq_attention_rforward(&ro, &rp, qkv, rqkv, f0.p, dims.0, dims.1, dims.2, dims.3, scale)
        msq_attention_rbackward(&rdq, rdout, dout, qkv, rqkv, f0.p, rp, dims.0, dims.1, dims.2, dims.3, scale)
        let numericRo = directionalDerivative { s in forward(moved(qkv, rqkv, s)).out }
        let numericRp = directionalDerivative { s in forward(moved(qkv, rqkv, s)).p }
        let numericRdq = directionalDerivative { s in
            let at = moved(qkv, rqkv, s)
            var dq = [Float](repeating: 0, count: qkv.count)
            msq_attention_backward_ref(&dq, moved(dout, rdout, s), at, forward(at).p, dims.0, dims.1, dims.2, dims.3, scale)
            return dq
        }
        #expect(normRelError(ro, numericRo) <= rDerivativeTolerance, "\(c) rout: \(normRelError(ro, numericRo))")
        #expect(normRelError(rp, numericRp) <= rDerivativeTolerance, "\(c) rprobs: \(normRelError(rp, numericRp))")
        #expect(normRelError(rdq, numericRdq) <= rDerivativeTolerance, "\(c) rdqkv: \(normRelError(rdq, numericRdq))")
    }
}
