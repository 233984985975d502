import CKernels
import Testing

// msq_gemm against msq_gemm_ref: every transpose combination, odd shapes, alpha/beta
// variants, and shapes large enough that msq_gemm splits C across threads (by rows and by
// columns), at 1 and 2 threads.

/// Max |fast − ref| relative to max |ref|. The reference accumulates in double, so this is the
/// float rounding of OpenBLAS's k-term dot products (k ≤ 300 here, inputs in [−1, 1)).
private let gemmRelTolerance: Float = 1e-5

private typealias Kit = KernelTestKit

struct GemmTestCase: Sendable, CustomStringConvertible {
    let m, n, k: Int
    var description: String { "m=\(m) n=\(n) k=\(k)" }
}

private let gemmCases: [GemmTestCase] = {
    var cases: [GemmTestCase] = []
    let sizes = [1, 3, 7, 17, 33]
    for m in sizes { for n in sizes { for k in sizes where (m + n + k) % 2 == 1 || m == n {
        cases.append(.init(m: m, n: n, k: k))
    } } }
    // Above the parallel threshold: tall (split by rows), wide (split by columns), and a
    // row count that does not divide into the 16-row alignment.
    cases.append(.init(m: 300, n: 33, k: 65))
    cases.append(.init(m: 17, n: 301, k: 97))
    cases.append(.init(m: 71, n: 70, k: 69))
    return cases
}()

/// Runs fast or reference GEMM on a copy of c.
private func runGemm(fast: Bool, c: [Float], a: [Float], b: [Float], transA: Bool, transB: Bool,
                     _ t: GemmTestCase, alpha: Float, beta: Float) -> [Float] {
    var out = c
    out.withUnsafeMutableBufferPointer { cp in
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                let f = fast ? msq_gemm : msq_gemm_ref
                f(cp.baseAddress, ap.baseAddress, bp.baseAddress, transA ? 1 : 0, transB ? 1 : 0,
                  Int32(t.m), Int32(t.n), Int32(t.k), alpha, beta)
            }
        }
    }
    return out
}

@Suite("GEMM kernels")
struct GemmTests {
    @Test("fast matches reference", arguments: gemmCases, Kit.threadCountArguments)
    func fastMatchesReference(_ t: GemmTestCase, threads: Int) {
        Kit.withThreads(threads) {
            var rng = Kit.Xorshift(seed: UInt64(t.m * 10_000 + t.n * 100 + t.k))
            let a = rng.floats(t.m * t.k), b = rng.floats(t.k * t.n), c0 = rng.floats(t.m * t.n)
            for transA in [false, true] {
                for transB in [false, true] {
                    for (alpha, beta) in [(Float(1), Float(0)), (1, 1), (-0.5, 0.75)] {
                        let ref = runGemm(fast: false, c: c0, a: a, b: b, transA: transA, transB: transB, t, alpha: alpha, beta: beta)
                        let got = runGemm(fast: true, c: c0, a: a, b: b, transA: transA, transB: transB, t, alpha: alpha, beta: beta)
                        let err = Kit.maxRelError(got, ref)
                        #expect(err <= gemmRelTolerance, "\(t) tA=\(transA) tB=\(transB) alpha=\(alpha) beta=\(beta): rel err \(err)")
                    }
                }
            }
        }
    }

    @Test("beta = 0 never reads C (NaN in C does not leak)", arguments: Kit.threadCountArguments)
    func betaZeroIgnoresC(threads: Int) {
        Kit.withThreads(threads) {
            let t = GemmTestCase(m: 71, n: 70, k: 69)
            var rng = Kit.Xorshift(seed: 7)
            let a = rng.floats(t.m * t.k), b = rng.floats(t.k * t.n)
            let c0 = [Float](repeating: .nan, count: t.m * t.n)
            for fast in [false, true] {
                let got = runGemm(fast: fast, c: c0, a: a, b: b, transA: false, transB: false, t, alpha: 1, beta: 0)
                #expect(got.allSatisfy { $0.isFinite }, "fast=\(fast)")
            }
        }
    }

    @Test("k = 0 scales C by beta")
    func emptyInnerDimension() {
        let t = GemmTestCase(m: 3, n: 7, k: 0)
        let c0: [Float] = (0..<21).map { Float($0) - 10 }
        for fast in [false, true] {
            let got = runGemm(fast: fast, c: c0, a: [0], b: [0], transA: false, transB: false, t, alpha: 1, beta: 0.5)
            #expect(got == c0.map { $0 * 0.5 }, "fast=\(fast)")
        }
    }

    @Test("hand-computed 2x3 * 3x2")
    func handComputed() {
        // [[1 2 3] [4 5 6]] * [[7 8] [9 10] [11 12]] = [[58 64] [139 154]]
        let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [7, 8, 9, 10, 11, 12]
        let t = GemmTestCase(m: 2, n: 2, k: 3)
        for fast in [false, true] {
            let got = runGemm(fast: fast, c: [0, 0, 0, 0], a: a, b: b, transA: false, transB: false, t, alpha: 1, beta: 0)
            #expect(got == [58, 64, 139, 154], "fast=\(fast)")
        }
    }

    @Test("fixed thread count gives bit-identical results", arguments: Kit.threadCountArguments)
    func deterministic(threads: Int) {
        Kit.withThreads(threads) {
            let t = GemmTestCase(m: 300, n: 33, k: 65)
            var rng = Kit.Xorshift(seed: 99)
            let a = rng.floats(t.m * t.k), b = rng.floats(t.k * t.n), c0 = rng.floats(t.m * t.n)
            let first = runGemm(fast: true, c: c0, a: a, b: b, transA: true, transB: false, t, alpha: 1, beta: 1)
            let second = runGemm(fast: true, c: c0, a: a, b: b, transA: true, transB: false, t, alpha: 1, beta: 1)
            #expect(first == second)
        }
    }
}
