import CKernels
import Testing

// Layer norm, softmax, attention and the token transpose (layernorm.c, attention.c, tokens.c)
// against their double-precision references at odd sizes (rows not a multiple of the chunk,
// widths not a multiple of the 8 lanes, token counts that are not), at 1 and 2 threads, and the
// same bits at either thread count.

private typealias Kit = KernelTestKit

/// max |fast − ref| / max |ref|. Float sums of `dim` terms (layer norm), `tokens` and `head_dim`
/// terms through single-precision GEMMs (attention), against double; the exponential is
/// exp_math.h's polynomial (relative error ~2e-7).
private let layerNormForwardRelTolerance: Float = 2e-6
private let layerNormBackwardRelTolerance: Float = 2e-5
private let softmaxRelTolerance: Float = 2e-6
private let attentionForwardRelTolerance: Float = 5e-6
private let attentionBackwardRelTolerance: Float = 5e-5

/// (rows, dim)
private let layerNormCases: [[Int]] = [[1, 1], [3, 5], [70, 13], [33, 24], [65, 192], [7, 768]]
/// (batch, tokens, heads, head_dim)
private let attentionCases: [[Int]] = [[1, 1, 1, 1], [2, 5, 1, 3], [2, 17, 3, 8], [3, 9, 2, 5], [1, 50, 3, 64]]

@Suite("Transformer kernels")
struct TransformerKernelTests {
    @Test("layer norm forward and backward match the reference; the same bits at 1 and 2 threads",
          arguments: layerNormCases)
    func layerNorm(_ c: [Int]) {
        let (rows, dim) = (c[0], c[1])
        var rng = Kit.SplitMix64(seed: UInt64(rows * 131 + dim))
        let x = rng.floats(rows * dim, -3, 5), gamma = rng.floats(dim, 0.5, 1.5), beta = rng.floats(dim)
        let dy = rng.floats(rows * dim), dx0 = rng.floats(rows * dim), dg0 = rng.floats(dim), db0 = rng.floats(dim)
        var refY = [Float](repeating: 0, count: rows * dim), refM = [Float](repeating: 0, count: rows)
        var refR = refM
        msq_layernorm_forward_ref(&refY, &refM, &refR, x, gamma, beta, Int32(rows), Int32(dim), 1e-5)
        var refDx = dx0, refDg = dg0, refDb = db0
        msq_layernorm_backward_ref(&refDx, &refDg, &refDb, dy, x, refM, refR, gamma, Int32(rows), Int32(dim))
        var results: [[UInt32]] = []
        for threads in Kit.threadCountArguments {
            var y = [Float](repeating: .nan, count: rows * dim), m = [Float](repeating: .nan, count: rows), r = m
            var dx = dx0, dg = dg0, db = db0, dxOnly = dx0
            Kit.withThreads(threads) {
                msq_layernorm_forward(&y, &m, &r, x, gamma, beta, Int32(rows), Int32(dim), 1e-5)
                msq_layernorm_backward(&dx, &dg, &db, dy, x, m, r, gamma, Int32(rows), Int32(dim))
                msq_layernorm_backward(&dxOnly, nil, nil, dy, x, m, r, gamma, Int32(rows), Int32(dim))
            }
            #expect(Kit.maxRelError(y, refY) <= layerNormForwardRelTolerance, "\(c) y")
            #expect(Kit.maxRelError(r, refR) <= layerNormForwardRelTolerance, "\(c) rstd")
            #expect(Kit.maxRelError(dx, refDx) <= layerNormBackwardRelTolerance, "\(c) dx")
            #expect(Kit.maxRelError(dg, refDg) <= layerNormBackwardRelTolerance, "\(c) dgamma")
            #expect(Kit.maxRelError(db, refDb) <= layerNormBackwardRelTolerance, "\(c) dbeta")
            #expect(Kit.bits(dxOnly) == Kit.bits(dx), "\(c): dx does not depend on whether dγ, dβ are asked for")
            results.append(Kit.bits(y) + Kit.bits(dx) + Kit.bits(dg) + Kit.bits(db))
        }
        #expect(Set(results).count == 1, "\(c): layer norm depends on the thread count")
    }

    @Test("softmax rows match the reference (rows far from 0, and entries too small for exp)")
    func softmax() {
        var rng = Kit.SplitMix64(seed: 3)
        for (rows, n) in [(1, 1), (4, 7), (9, 33), (2, 197)] {
            var x = rng.floats(rows * n, -20, 20)
            x[0] = -200 // e^(x − max) underflows to 0
            var ref = [Float](repeating: 0, count: rows * n), got = ref
            msq_softmax_forward_ref(&ref, x, Int32(rows), Int32(n))
            msq_softmax_forward(&got, x, Int32(rows), Int32(n))
            #expect(Kit.maxRelError(got, ref) <= softmaxRelTolerance, "\(rows)×\(n)")
            for r in 0..<rows {
                let sum = got[(r * n)..<(r * n + n)].reduce(0, +)
                #expect(abs(sum - 1) < 1e-5, "row \(r) of \(rows)×\(n) sums to \(sum)")
            }
        }
    }

    @Test("attention forward and backward match the reference; the same bits at 1 and 2 threads",
          arguments: attentionCases)
    func attention(_ c: [Int]) {
        let (b, t, h, d) = (c[0], c[1], c[2], c[3])
        let dim = h * d, scale = 1 / Float(d).squareRoot()
        var rng = Kit.SplitMix64(seed: UInt64(b * 1000 + t * 100 + h * 10 + d))
        let qkv = rng.floats(b * t * 3 * dim, -2, 2), dout = rng.floats(b * t * dim), dq0 = rng.floats(b * t * 3 * dim)
        var refOut = [Float](repeating: 0, count: b * t * dim), refP = [Float](repeating: 0, count: b * h * t * t)
        msq_attention_forward_ref(&refOut, &refP, qkv, Int32(b), Int32(t), Int32(h), Int32(d), scale)
        var refDq = dq0
        msq_attention_backward_ref(&refDq, dout, qkv, refP, Int32(b), Int32(t), Int32(h), Int32(d), scale)
        var results: [[UInt32]] = []
        for threads in Kit.threadCountArguments {
            var out = [Float](repeating: .nan, count: b * t * dim), p = [Float](repeating: .nan, count: b * h * t * t)
            var dq = dq0
            Kit.withThreads(threads) {
                msq_attention_forward(&out, &p, qkv, Int32(b), Int32(t), Int32(h), Int32(d), scale)
                msq_attention_backward(&dq, dout, qkv, p, Int32(b), Int32(t), Int32(h), Int32(d), scale)
            }
            #expect(Kit.maxRelError(out, refOut) <= attentionForwardRelTolerance, "\(c) out")
            #expect(Kit.maxRelError(p, refP) <= attentionForwardRelTolerance, "\(c) probs")
            #expect(Kit.maxRelError(dq, refDq) <= attentionBackwardRelTolerance, "\(c) dqkv")
            results.append(Kit.bits(out) + Kit.bits(dq))
        }
        #expect(Set(results).count == 1, "\(c): attention depends on the thread count")
    }

    @Test("the batched transpose maps planes to tokens, and its accumulating form is the adjoint")
    func transpose() {
        var rng = Kit.SplitMix64(seed: 11)
        let (n, rows, cols) = (3, 37, 45)
        let x = rng.floats(n * rows * cols), y0 = rng.floats(n * rows * cols)
        var y = [Float](repeating: .nan, count: n * rows * cols)
        msq_transpose_batched(&y, x, Int32(n), Int32(rows), Int32(cols), 0)
        for b in 0..<n {
            for i in 0..<rows { for j in 0..<cols { #expect(y[b * rows * cols + j * rows + i] == x[b * rows * cols + i * cols + j]) } }
        }
        var acc = y0
        msq_transpose_batched(&acc, x, Int32(n), Int32(rows), Int32(cols), 1)
        #expect(acc == zip(y0, y).map { $0 + $1 })
    }
}
