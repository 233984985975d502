import CKernels
import Foundation
import Testing

// Swin's kernels (swin_layout.c, window_attention.c) against their references at odd sizes
// (padding, odd merges, head widths and token counts not multiples of 8), at 1 and 2 threads,
// and the same bits at either thread count; the layouts are also checked as adjoints, and the
// mask and relative-position bias against torchvision's own construction (slice assignment,
// meshgrid index), written out here independently of the C.

private typealias Kit = KernelTestKit

/// max |fast − ref| / max |ref| of the attention (single-precision GEMMs against double).
private let windowForwardRelTolerance: Float = 5e-6
private let windowBackwardRelTolerance: Float = 5e-5

/// (batch, height, width, channels, window, shift_h, shift_w)
private let partitionCases: [[Int]] = [[1, 1, 1, 1, 1, 0, 0], [2, 5, 7, 3, 3, 1, 1], [1, 9, 4, 5, 7, 3, 0],
                                       [3, 14, 14, 9, 7, 3, 3], [2, 6, 13, 2, 4, 0, 2]]
/// (windows, window, heads, head_dim, pad_h, pad_w, shift_h, shift_w)
private let windowAttentionCases: [[Int]] = [[1, 1, 1, 1, 1, 1, 0, 0], [12, 2, 1, 3, 4, 6, 1, 1], [6, 3, 2, 5, 6, 9, 1, 0],
                                             [8, 7, 3, 5, 14, 14, 3, 3], [3, 7, 2, 8, 7, 7, 0, 0], [17, 3, 1, 9, 9, 3, 0, 1]]

private func c(_ v: Int) -> Int32 { Int32(v) }

/// torchvision's shifted-window mask regions of one image, built as it builds them: slice
/// assignment of counts over the padded image, then cut into windows. ids[window][token].
private func torchvisionRegions(padH: Int, padW: Int, ws: Int, sh: Int, sw: Int) -> [[Int]] {
    var img = [[Int]](repeating: [Int](repeating: 0, count: padW), count: padH)
    // Python slices (0, -ws), (-ws, -s), (-s, None) with -0 == 0.
    func slices(_ n: Int, _ s: Int) -> [Range<Int>] {
        func at(_ i: Int) -> Int { i < 0 ? max(n + i, 0) : min(i, n) }
        let a = 0..<max(at(-ws), 0), b = at(-ws)..<max(at(-s), at(-ws)), c = at(-s)..<n
        return [a, b, c]
    }
    var count = 0
    for hs in slices(padH, sh) {
        for wsl in slices(padW, sw) {
            for r in hs { for col in wsl { img[r][col] = count } }
            count += 1
        }
    }
    var out: [[Int]] = []
    for wr in 0..<(padH / ws) {
        for wc in 0..<(padW / ws) {
            out.append((0..<(ws * ws)).map { img[wr * ws + $0 / ws][wc * ws + $0 % ws] })
        }
    }
    return out
}

/// torchvision's relative_position_index: meshgrid coordinates, differences, shifted and combined.
private func torchvisionIndex(ws: Int) -> [Int] {
    let coords = (0..<(ws * ws)).map { ($0 / ws, $0 % ws) }
    var index: [Int] = []
    for i in coords { for j in coords { index.append((i.0 - j.0 + ws - 1) * (2 * ws - 1) + (i.1 - j.1 + ws - 1)) } }
    return index
}

@Suite("Swin kernels")
struct SwinKernelTests {
    @Test("window partition and reverse equal their references bit for bit, are adjoint, and roll as torch.roll",
          arguments: partitionCases)
    func partition(_ a: [Int]) {
        let (b, h, w, ch, ws, sh, sw) = (a[0], a[1], a[2], a[3], a[4], a[5], a[6])
        let hp = (h + ws - 1) / ws * ws, wp = (w + ws - 1) / ws * ws
        let n = b * h * w * ch, m = b * hp * wp * ch
        var rng = Kit.SplitMix64(seed: UInt64(h * 100 + w))
        let x = rng.floats(n), dy = rng.floats(m)
        var refY = [Float](repeating: .nan, count: m), refDx = [Float](repeating: .nan, count: n)
        msq_window_partition_forward_ref(&refY, x, c(b), c(h), c(w), c(ch), c(ws), c(sh), c(sw))
        msq_window_partition_backward_ref(&refDx, dy, c(b), c(h), c(w), c(ch), c(ws), c(sh), c(sw))
        for threads in Kit.threadCountArguments {
            var y = [Float](repeating: .nan, count: m), dx = [Float](repeating: .nan, count: n)
            Kit.withThreads(threads) {
                msq_window_partition_forward(&y, x, c(b), c(h), c(w), c(ch), c(ws), c(sh), c(sw))
                msq_window_partition_backward(&dx, dy, c(b), c(h), c(w), c(ch), c(ws), c(sh), c(sw))
            }
            #expect(Kit.bits(y) == Kit.bits(refY), "\(a) partition, \(threads) threads")
            #expect(Kit.bits(dx) == Kit.bits(refDx), "\(a) reverse, \(threads) threads")
        }
        // <P x, dy> = <x, Pᵀ dy>: every pixel goes to one token, padded tokens are zero.
        let lhs = Kit.dotWithScale(refY, dy), rhs = Kit.dotWithScale(x, refDx)
        #expect(abs(lhs.value - rhs.value) <= 1e-12 * max(lhs.scale, 1), "\(a): not adjoint")
        // torch.roll(padded, (−sh, −sw)): token 0 of window 0 is padded[sh, sw].
        if sh < h && sw < w {
            #expect(Array(refY[0..<ch]) == Array(x[((sh * w) + sw) * ch..<((sh * w) + sw + 1) * ch]), "\(a): roll")
        }
    }

    @Test("patch merging equals its reference, is adjoint, and orders x0, x1, x2, x3 as torchvision",
          arguments: [[1, 1, 1, 1], [2, 4, 6, 3], [1, 7, 5, 9], [3, 3, 8, 2]])
    func patchMerge(_ a: [Int]) {
        let (b, h, w, ch) = (a[0], a[1], a[2], a[3])
        let ho = (h + 1) / 2, wo = (w + 1) / 2
        let n = b * h * w * ch, m = b * ho * wo * 4 * ch
        var rng = Kit.SplitMix64(seed: UInt64(h * 31 + w))
        let x = rng.floats(n), dy = rng.floats(m)
        var refY = [Float](repeating: .nan, count: m), refDx = [Float](repeating: .nan, count: n)
        msq_patch_merge_forward_ref(&refY, x, c(b), c(h), c(w), c(ch))
        msq_patch_merge_backward_ref(&refDx, dy, c(b), c(h), c(w), c(ch))
        for threads in Kit.threadCountArguments {
            var y = [Float](repeating: .nan, count: m), dx = [Float](repeating: .nan, count: n)
            Kit.withThreads(threads) {
                msq_patch_merge_forward(&y, x, c(b), c(h), c(w), c(ch))
                msq_patch_merge_backward(&dx, dy, c(b), c(h), c(w), c(ch))
            }
            #expect(Kit.bits(y) == Kit.bits(refY), "\(a) merge, \(threads) threads")
            #expect(Kit.bits(dx) == Kit.bits(refDx), "\(a) merge backward, \(threads) threads")
        }
        let lhs = Kit.dotWithScale(refY, dy), rhs = Kit.dotWithScale(x, refDx)
        #expect(abs(lhs.value - rhs.value) <= 1e-12 * max(lhs.scale, 1), "\(a): not adjoint")
        // Output (0, 0): x[0,0], x[1,0], x[0,1], x[1,1] (zero where padded).
        for (q, (r, col)) in [(0, 0), (1, 0), (0, 1), (1, 1)].enumerated() {
            let got = Array(refY[(q * ch)..<((q + 1) * ch)])
            let want = r < h && col < w ? Array(x[((r * w + col) * ch)..<((r * w + col + 1) * ch)]) : [Float](repeating: 0, count: ch)
            #expect(got == want, "\(a): slot \(q)")
        }
    }

    @Test("window attention forward and backward match the reference; the same bits at 1 and 2 threads",
          arguments: windowAttentionCases)
    func windowAttention(_ a: [Int]) {
        let (nwin, ws, heads, d, ph, pw, sh, sw) = (a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])
        let t = ws * ws, dim = heads * d, entries = (2 * ws - 1) * (2 * ws - 1), scale = 1 / Float(d).squareRoot()
        var rng = Kit.SplitMix64(seed: UInt64(nwin * 1000 + ws * 10 + d))
        let qkv = rng.floats(nwin * t * 3 * dim, -2, 2), table = rng.floats(entries * heads)
        let dout = rng.floats(nwin * t * dim), dq0 = rng.floats(nwin * t * 3 * dim), dt0 = rng.floats(entries * heads)
        var refOut = [Float](repeating: 0, count: nwin * t * dim), refP = [Float](repeating: 0, count: nwin * heads * t * t)
        msq_window_attention_forward_ref(&refOut, &refP, qkv, table, c(nwin), c(ws), c(heads), c(d), c(ph), c(pw), c(sh), c(sw), scale)
        var refDq = dq0, refDt = dt0
        msq_window_attention_backward_ref(&refDq, &refDt, dout, qkv, refP, c(nwin), c(ws), c(heads), c(d), scale)
        var results: [[UInt32]] = []
        for threads in Kit.threadCountArguments {
            var out = [Float](repeating: .nan, count: nwin * t * dim), p = [Float](repeating: .nan, count: nwin * heads * t * t)
            var dq = dq0, dt = dt0, dqOnly = dq0
            Kit.withThreads(threads) {
                msq_window_attention_forward(&out, &p, qkv, table, c(nwin), c(ws), c(heads), c(d), c(ph), c(pw), c(sh), c(sw), scale)
                msq_window_attention_backward(&dq, &dt, dout, qkv, p, c(nwin), c(ws), c(heads), c(d), scale)
                msq_window_attention_backward(&dqOnly, nil, dout, qkv, p, c(nwin), c(ws), c(heads), c(d), scale)
            }
            #expect(Kit.maxRelError(out, refOut) <= windowForwardRelTolerance, "\(a) out")
            #expect(Kit.maxRelError(p, refP) <= windowForwardRelTolerance, "\(a) probs")
            #expect(Kit.maxRelError(dq, refDq) <= windowBackwardRelTolerance, "\(a) dqkv")
            #expect(Kit.maxRelError(zip(dt, dt0).map { $0 - $1 }, zip(refDt, dt0).map { $0 - $1 }) <= windowBackwardRelTolerance,
                    "\(a) dtable")
            #expect(Kit.bits(dqOnly) == Kit.bits(dq), "\(a): dqkv does not depend on whether dtable is asked for")
            results.append(Kit.bits(out) + Kit.bits(dq) + Kit.bits(dt))
        }
        #expect(Set(results).count == 1, "\(a): window attention depends on the thread count")
    }

    @Test("the mask and the bias are torchvision's: with Q = 0, P is softmax(table[index] + mask) row by row",
          arguments: [[2, 4, 6, 1, 1], [3, 6, 9, 1, 0], [7, 14, 14, 3, 3], [7, 7, 14, 0, 3], [3, 6, 6, 0, 0]])
    func maskAndBias(_ a: [Int]) {
        let (ws, ph, pw, sh, sw) = (a[0], a[1], a[2], a[3], a[4])
        let nw = (ph / ws) * (pw / ws), t = ws * ws, heads = 2, d = 3, dim = heads * d, entries = (2 * ws - 1) * (2 * ws - 1)
        var rng = Kit.SplitMix64(seed: UInt64(ws * 7 + ph))
        var qkv = rng.floats(nw * t * 3 * dim)
        for tok in 0..<(nw * t) { for j in 0..<dim { qkv[tok * 3 * dim + j] = 0 } } // Q = 0: S = bias + mask
        let table = rng.floats(entries * heads)
        var out = [Float](repeating: 0, count: nw * t * dim), p = [Float](repeating: 0, count: nw * heads * t * t)
        msq_window_attention_forward(&out, &p, qkv, table, c(nw), c(ws), c(heads), c(d), c(ph), c(pw), c(sh), c(sw), 0.5)
        let regions = torchvisionRegions(padH: ph, padW: pw, ws: ws, sh: sh, sw: sw), index = torchvisionIndex(ws: ws)
        var worst: Double = 0
        for w in 0..<nw {
            for h in 0..<heads {
                for i in 0..<t {
                    let s = (0..<t).map { j in
                        Double(table[index[i * t + j] * heads + h]) + (regions[w][i] == regions[w][j] ? 0 : -100)
                    }
                    let mx = s.max() ?? 0, z = s.reduce(0) { $0 + exp($1 - mx) }
                    for j in 0..<t {
                        let got = Double(p[((w * heads + h) * t + i) * t + j]), want: Double = exp(s[j] - mx) / z
                        worst = max(worst, abs(got - want))
                    }
                }
            }
        }
        #expect(worst < 1e-6, "\(a): max |P − torchvision's| = \(worst)")
    }
}
