import CBLASBench
import CKernels
import Foundation
import MSQ

extension KernelsCommand {
    /// Swin-T's first stage at 224² and batch `batch` (56 × 56 tokens of 96, windows of 7 × 7, 3
    /// heads of 32, shifted by 3): the window attention forward/backward in GFLOP/s against one
    /// `cblas_sgemm` of the same multiply-adds (the ceiling of its small per-window GEMMs), and the
    /// stage's linears (`msq_linear_forward`, qkv 96→288, fc1 96→384, fc2 384→96 over every token)
    /// against a 2048³ sgemm on the same threads: where a Swin step's time goes.
    func runSwin(batch: Int, threads: Int) throws {
        let (side, dim, heads, window, shift) = (56, 96, 3, 7, 3)
        let headDim = dim / heads, t = window * window, windows = batch * (side / window) * (side / window)
        let rows = windows * t, entries = (2 * window - 1) * (2 * window - 1)
        var rng = RandomSource(seed: 5)
        writeLine("Swin-T stage 1 kernels, batch \(batch) (\(side)² tokens of \(dim), \(windows) windows of \(t), \(heads) heads of \(headDim)), \(threads) threads")
        let qkv = Tensor.randomNormal([rows, 3 * dim], std: 1, using: &rng), dout = Tensor.randomNormal([rows, dim], std: 1, using: &rng)
        let table = Tensor.randomNormal([entries, heads], std: 0.02, using: &rng)
        var out = Tensor(shape: [rows, dim]), probs = Tensor(shape: [windows, heads, t, t])
        var dq = Tensor(shape: [rows, 3 * dim]), dt = Tensor(shape: [entries, heads])
        let scale = 1 / Float(headDim).squareRoot()
        let fwd = timePerCall {
            qkv.withUnsafePointer { q in table.withUnsafePointer { tb in out.withUnsafeMutablePointer { o in probs.withUnsafeMutablePointer { p in
                msq_window_attention_forward(o, p, q, tb, Int32(windows), Int32(window), Int32(heads), Int32(headDim),
                                             Int32(side), Int32(side), Int32(shift), Int32(shift), scale) } } } }
        }
        let bwd = timePerCall {
            dq.withUnsafeMutablePointer { d in dt.withUnsafeMutablePointer { dtp in dout.withUnsafePointer { g in
                qkv.withUnsafePointer { q in probs.withUnsafePointer { p in
                    msq_window_attention_backward(d, dtp, g, q, p, Int32(windows), Int32(window), Int32(heads), Int32(headDim), scale) } } } } }
        }
        let macs = Double(windows * heads * t * t * headDim)
        let (m, n, k) = (windows * heads * t, t, headDim)
        let gemmRate = sgemmRate(m: m, n: n, k: k, threads: threads, rng: &rng)
        writeLine(pad("kernel", 30) + pad("ms", 9) + pad("GFLOP/s", 8) + pad("sgemm GFLOP/s", 14) + pad("of sgemm", 9))
        for (name, time, flops) in [("window attention fwd", fwd, 4 * macs), ("window attention bwd", bwd, 8 * macs)] {
            writeLine(pad(name, 30) + pad(fmt(time * 1e3, 3), 9) + pad(fmt(flops / time / 1e9), 8) + pad(fmt(gemmRate / 1e9), 14)
                      + pad(fmt(flops / time / gemmRate, 2), 9))
        }
        let big = sgemmRate(m: 2048, n: 2048, k: 2048, threads: threads, rng: &rng)
        let tokens = batch * side * side
        for (name, inF, outF) in [("linear qkv 96→288", dim, 3 * dim), ("linear fc1 96→384", dim, 4 * dim), ("linear fc2 384→96", 4 * dim, dim)] {
            let x = Tensor.randomNormal([tokens, inF], std: 1, using: &rng), w = Tensor.randomNormal([outF, inF], std: 0.1, using: &rng)
            let b = Tensor(shape: [outF])
            var y = Tensor(shape: [tokens, outF])
            let time = timePerCall {
                x.withUnsafePointer { xp in w.withUnsafePointer { wp in b.withUnsafePointer { bp in y.withUnsafeMutablePointer { yp in
                    msq_linear_forward(yp, xp, wp, bp, Int32(tokens), Int32(inF), Int32(outF)) } } } }
            }
            let flops = 2 * Double(tokens * inF * outF)
            writeLine(pad(name, 30) + pad(fmt(time * 1e3, 3), 9) + pad(fmt(flops / time / 1e9), 8) + pad(fmt(big / 1e9), 14)
                      + pad(fmt(flops / time / big, 2), 9) + "(against a 2048³ sgemm)")
        }
    }

    /// GFLOP/s (as FLOP/s) of one `bench_sgemm` of `m × n × k` on `threads` threads.
    private func sgemmRate(m: Int, n: Int, k: Int, threads: Int, rng: inout RandomSource) -> Double {
        let a = Tensor.randomNormal([m, k], std: 1, using: &rng), b = Tensor.randomNormal([k, n], std: 1, using: &rng)
        var c = Tensor(shape: [m, n])
        let time = timePerCall {
            a.withUnsafePointer { ap in b.withUnsafePointer { bp in c.withUnsafeMutablePointer { cp in
                bench_sgemm(cp, ap, bp, Int32(m), Int32(n), Int32(k), Int32(threads)) } } }
        }
        return 2 * Double(m) * Double(n) * Double(k) / time
    }
}
