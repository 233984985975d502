import ArgumentParser
import CBLASBench
import CKernels
import Foundation
import MSQ

extension KernelsCommand {
    /// DeiT-Tiny's non-GEMM kernels at 224² (197 tokens, dim 192, 3 heads of 64) and batch `batch`:
    /// layer norm forward/backward in GB/s on the bytes they must move (against the copy of the
    /// same bytes), and attention forward/backward in GFLOP/s (against one `cblas_sgemm` of the
    /// same total multiply-adds on the same threads, the ceiling of its GEMMs), with the memory
    /// its attention matrix takes.
    func runTransformer(batch: Int, threads: Int) throws {
        let (tokens, dim, heads) = (197, 192, 3)
        let headDim = dim / heads, rows = batch * tokens
        var rng = RandomSource(seed: 3)
        writeLine("DeiT-Tiny kernels, batch \(batch) (\(tokens) tokens, dim \(dim), \(heads) heads of \(headDim)), \(threads) threads")
        // layer norm: x, y (and mean, rstd) forward; dy, x, dx (read and written) backward
        let x = Tensor.randomNormal([rows, dim], std: 1, using: &rng), dy = Tensor.randomNormal([rows, dim], std: 1, using: &rng)
        let gamma = Tensor(shape: [dim], repeating: 1), beta = Tensor(shape: [dim])
        var y = Tensor(shape: [rows, dim]), mean = Tensor(shape: [rows]), rstd = Tensor(shape: [rows])
        var dx = Tensor(shape: [rows, dim]), dg = Tensor(shape: [dim]), db = Tensor(shape: [dim])
        let lnFwd = timePerCall {
            x.withUnsafePointer { xp in gamma.withUnsafePointer { g in beta.withUnsafePointer { b in
                y.withUnsafeMutablePointer { yp in mean.withUnsafeMutablePointer { m in rstd.withUnsafeMutablePointer { r in
                    msq_layernorm_forward(yp, m, r, xp, g, b, Int32(rows), Int32(dim), 1e-6) } } } } } }
        }
        let lnBwd = timePerCall {
            dy.withUnsafePointer { dyp in x.withUnsafePointer { xp in mean.withUnsafePointer { m in rstd.withUnsafePointer { r in
                gamma.withUnsafePointer { g in dx.withUnsafeMutablePointer { dxp in dg.withUnsafeMutablePointer { dgp in
                    db.withUnsafeMutablePointer { dbp in
                        msq_layernorm_backward(dxp, dgp, dbp, dyp, xp, m, r, g, Int32(rows), Int32(dim)) } } } } } } } }
        }
        let lnBytes = Double(4 * rows * dim)
        let same = copyBandwidth(bytes: Int(2 * lnBytes), threads: threads)
        writeLine(pad("kernel", 26) + pad("ms", 8) + pad("GB/s", 8) + pad("copy GB/s", 10) + pad("of copy", 8))
        for (name, t, bytes) in [("layernorm fwd", lnFwd, 2 * lnBytes), ("layernorm bwd", lnBwd, 4 * lnBytes)] {
            writeLine(pad(name, 26) + pad(fmt(t * 1e3, 3), 8) + pad(fmt(bytes / t / 1e9), 8) + pad(fmt(same / 1e9), 10)
                      + pad(fmt(bytes / t / same, 2), 8))
        }
        // attention: 2 GEMMs of T·T·d forward, 4 backward, per image and head
        let qkv = Tensor.randomNormal([rows, 3 * dim], std: 1, using: &rng), dout = Tensor.randomNormal([rows, dim], std: 1, using: &rng)
        var out = Tensor(shape: [rows, dim]), probs = Tensor(shape: [batch, heads, tokens, tokens]), dq = Tensor(shape: [rows, 3 * dim])
        let scale = 1 / Float(headDim).squareRoot()
        let attFwd = timePerCall {
            qkv.withUnsafePointer { q in out.withUnsafeMutablePointer { o in probs.withUnsafeMutablePointer { p in
                msq_attention_forward(o, p, q, Int32(batch), Int32(tokens), Int32(heads), Int32(headDim), scale) } } }
        }
        let attBwd = timePerCall {
            dq.withUnsafeMutablePointer { d in dout.withUnsafePointer { g in qkv.withUnsafePointer { q in probs.withUnsafePointer { p in
                msq_attention_backward(d, g, q, p, Int32(batch), Int32(tokens), Int32(heads), Int32(headDim), scale) } } } }
        }
        let macs = Double(batch * heads * tokens * tokens * headDim)
        // the same multiply-adds as one square-ish GEMM: M = batch·heads·tokens, N = tokens, K = d
        let (m, n, k) = (batch * heads * tokens, tokens, headDim)
        let a = Tensor.randomNormal([m, k], std: 1, using: &rng), b = Tensor.randomNormal([k, n], std: 1, using: &rng)
        var c = Tensor(shape: [m, n])
        let gemm = timePerCall {
            a.withUnsafePointer { ap in b.withUnsafePointer { bp in c.withUnsafeMutablePointer { cp in
                bench_sgemm(cp, ap, bp, Int32(m), Int32(n), Int32(k), Int32(threads)) } } }
        }
        let gemmRate = 2 * Double(m * n * k) / gemm
        writeLine(pad("kernel", 26) + pad("ms", 8) + pad("GFLOP/s", 8) + pad("sgemm GFLOP/s", 14) + pad("of sgemm", 9) + "attention matrix")
        for (name, t, flops) in [("attention fwd (2 GEMMs)", attFwd, 4 * macs), ("attention bwd (4 GEMMs)", attBwd, 8 * macs)] {
            writeLine(pad(name, 26) + pad(fmt(t * 1e3, 3), 8) + pad(fmt(flops / t / 1e9), 8) + pad(fmt(gemmRate / 1e9), 14)
                      + pad(fmt(flops / t / gemmRate, 2), 9) + "\(fmt(Double(probs.count * 4) / 1048576, 1)) MiB")
        }
    }
}
