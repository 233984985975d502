import CKernels
import Testing

// Linear layer: fast (GEMM) vs reference for forward and backward at 1 and 2 threads, NULL
// gradient outputs, accumulation, adjointness, and a hand-computed example.

/// Max |fast − ref| relative to max |ref|; the reference accumulates in double.
private let linearRelTolerance: Float = 1e-5
/// Hand-computed values are small integers: exact in float.
private let linearHandTolerance: Float = 0
/// Adjoint identity in double, relative to Σ|terms|.
private let linearAdjointRelTolerance: Double = 1e-5
/// Two backward calls add twice the increment, up to float rounding of each addition.
private let linearAccumulateRelTolerance: Float = 1e-5

private typealias Kit = KernelTestKit

struct LinearTestCase: Sendable, CustomStringConvertible {
    let n, inF, outF: Int
    var description: String { "n=\(n) in=\(inF) out=\(outF)" }
}

private let linearCases: [LinearTestCase] = [
    .init(n: 1, inF: 1, outF: 1), .init(n: 3, inF: 7, outF: 17), .init(n: 17, inF: 33, outF: 3),
    .init(n: 33, inF: 1, outF: 7), .init(n: 7, inF: 17, outF: 33), .init(n: 1, inF: 33, outF: 10),
    // Large enough that msq_gemm splits the work across threads.
    .init(n: 128, inF: 65, outF: 100), .init(n: 33, inF: 300, outF: 64),
]

private struct LinearTestData {
    let t: LinearTestCase
    let x, w, b, dy, dx0, dw0, db0: [Float]
    init(_ t: LinearTestCase) {
        self.t = t
        var rng = Kit.Xorshift(seed: UInt64(t.n * 10_000 + t.inF * 100 + t.outF))
        x = rng.floats(t.n * t.inF); w = rng.floats(t.outF * t.inF); b = rng.floats(t.outF)
        dy = rng.floats(t.n * t.outF)
        dx0 = rng.floats(t.n * t.inF).map { $0 * 0.5 }
        dw0 = rng.floats(t.outF * t.inF).map { $0 * 0.5 }
        db0 = rng.floats(t.outF).map { $0 * 0.5 }
    }
}

private func linearForward(fast: Bool, _ d: LinearTestData, bias: Bool) -> [Float] {
    var y = [Float](repeating: .nan, count: d.t.n * d.t.outF)
    y.withUnsafeMutableBufferPointer { yp in
        d.b.withUnsafeBufferPointer { bp in
            (fast ? msq_linear_forward : msq_linear_forward_ref)(yp.baseAddress, d.x, d.w, bias ? bp.baseAddress : nil,
                                                                Int32(d.t.n), Int32(d.t.inF), Int32(d.t.outF))
        }
    }
    return y
}

/// Runs backward with the selected outputs (unselected ones are passed as NULL and returned unchanged).
private func linearBackward(fast: Bool, _ d: LinearTestData, dx: Bool, dw: Bool, db: Bool,
                            start: (dx: [Float], dw: [Float], db: [Float])? = nil, times: Int = 1)
    -> (dx: [Float], dw: [Float], db: [Float]) {
    var gx = start?.dx ?? d.dx0, gw = start?.dw ?? d.dw0, gb = start?.db ?? d.db0
    gx.withUnsafeMutableBufferPointer { xp in
        gw.withUnsafeMutableBufferPointer { wp in
            gb.withUnsafeMutableBufferPointer { bp in
                for _ in 0..<times {
                    (fast ? msq_linear_backward : msq_linear_backward_ref)(
                        dx ? xp.baseAddress : nil, dw ? wp.baseAddress : nil, db ? bp.baseAddress : nil,
                        d.dy, d.x, d.w, Int32(d.t.n), Int32(d.t.inF), Int32(d.t.outF))
                }
            }
        }
    }
    return (gx, gw, gb)
}

@Suite("linear kernels")
struct LinearTests {
    @Test("hand-computed forward and backward")
    func handComputed() {
        // x = [[1 2] [3 4]], w = [[1 0] [1 1] [0 -1]], b = [1 2 3]
        // y = x w^T + b = [[2 5 1] [4 9 -1]]
        // dy = ones: dx = dy w = [[2 0] [2 0]], dw = dy^T x = [[4 6] x3], db = [2 2 2]
        let t = LinearTestCase(n: 2, inF: 2, outF: 3)
        let x: [Float] = [1, 2, 3, 4], w: [Float] = [1, 0, 1, 1, 0, -1], b: [Float] = [1, 2, 3]
        for fast in [false, true] {
            var y = [Float](repeating: 0, count: 6)
            (fast ? msq_linear_forward : msq_linear_forward_ref)(&y, x, w, b, 2, 2, 3)
            #expect(zip(y, [2, 5, 1, 4, 9, -1]).allSatisfy { abs($0 - $1) <= linearHandTolerance }, "fast=\(fast) \(y)")
            var dx = [Float](repeating: 0, count: 4), dw = [Float](repeating: 0, count: 6), db = [Float](repeating: 0, count: 3)
            let dy = [Float](repeating: 1, count: 6)
            (fast ? msq_linear_backward : msq_linear_backward_ref)(&dx, &dw, &db, dy, x, w, Int32(t.n), Int32(t.inF), Int32(t.outF))
            #expect(dx == [2, 0, 2, 0], "fast=\(fast)")
            #expect(dw == [4, 6, 4, 6, 4, 6], "fast=\(fast)")
            #expect(db == [2, 2, 2], "fast=\(fast)")
        }
    }

    @Test("forward: fast matches reference", arguments: linearCases, Kit.threadCountArguments)
    func forwardMatchesReference(_ t: LinearTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = LinearTestData(t)
            for bias in [false, true] {
                let err = Kit.maxRelError(linearForward(fast: true, d, bias: bias), linearForward(fast: false, d, bias: bias))
                #expect(err <= linearRelTolerance, "bias=\(bias): rel err \(err)")
            }
        }
    }

    @Test("backward: fast matches reference for every NULL pattern", arguments: linearCases, Kit.threadCountArguments)
    func backwardMatchesReference(_ t: LinearTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = LinearTestData(t)
            for mask in 0..<8 {
                let (ux, uw, ub) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0)
                let ref = linearBackward(fast: false, d, dx: ux, dw: uw, db: ub)
                let got = linearBackward(fast: true, d, dx: ux, dw: uw, db: ub)
                if ux { #expect(Kit.maxRelError(got.dx, ref.dx) <= linearRelTolerance, "dx mask=\(mask)") } else { #expect(got.dx == d.dx0) }
                if uw { #expect(Kit.maxRelError(got.dw, ref.dw) <= linearRelTolerance, "dw mask=\(mask)") } else { #expect(got.dw == d.dw0) }
                if ub { #expect(Kit.maxRelError(got.db, ref.db) <= linearRelTolerance, "db mask=\(mask)") } else { #expect(got.db == d.db0) }
            }
        }
    }

    @Test("backward accumulates: two calls add twice the increment", arguments: [linearCases[2], linearCases[6]], Kit.threadCountArguments)
    func backwardAccumulates(_ t: LinearTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = LinearTestData(t)
            for fast in [false, true] {
                let once = linearBackward(fast: fast, d, dx: true, dw: true, db: true)
                let twice = linearBackward(fast: fast, d, dx: true, dw: true, db: true, times: 2)
                for (start, one, two, what) in [(d.dx0, once.dx, twice.dx, "dx"), (d.dw0, once.dw, twice.dw, "dw"), (d.db0, once.db, twice.db, "db")] {
                    Kit.expectDoubledIncrement(start: start, once: one, twice: two, relTol: linearAccumulateRelTolerance,
                                               "\(what) fast=\(fast)")
                }
            }
        }
    }

    @Test("backward is adjoint to forward", arguments: linearCases, Kit.threadCountArguments)
    func adjoint(_ t: LinearTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = LinearTestData(t)
            let zeros = (dx: [Float](repeating: 0, count: d.dx0.count), dw: [Float](repeating: 0, count: d.dw0.count),
                         db: [Float](repeating: 0, count: d.db0.count))
            for fast in [false, true] {
                // <dy, x w^T> == <dy w, x> == <dy^T x, w>;  <dy, 1 b^T> == <Σ_n dy, b>
                let y = linearForward(fast: fast, d, bias: false), yb = linearForward(fast: fast, d, bias: true)
                let (lhs, scale) = Kit.dotWithScale(d.dy, y)
                let (lhsB, scaleB) = Kit.dotWithScale(d.dy, yb)
                let g = linearBackward(fast: fast, d, dx: true, dw: true, db: true, start: zeros)
                let tol = linearAdjointRelTolerance * max(scale, scaleB, 1e-30)
                #expect(abs(lhs - Kit.dotWithScale(g.dx, d.x).0) <= tol, "fast=\(fast) dx")
                #expect(abs(lhs - Kit.dotWithScale(g.dw, d.w).0) <= tol, "fast=\(fast) dw")
                #expect(abs((lhsB - lhs) - Kit.dotWithScale(g.db, d.b).0) <= tol, "fast=\(fast) db")
            }
        }
    }

    @Test("fast backward is bit-identical run to run at a fixed thread count", arguments: Kit.threadCountArguments)
    func deterministic(threads: Int) {
        Kit.withThreads(threads) {
            let d = LinearTestData(linearCases[6])
            let a = linearBackward(fast: true, d, dx: true, dw: true, db: true)
            let b = linearBackward(fast: true, d, dx: true, dw: true, db: true)
            #expect(a.dx == b.dx && a.dw == b.dw && a.db == b.db)
        }
    }
}
