import CKernels
import Testing

// Helpers shared by every kernel test in this target: seeded random floats, thread-count
// control, tolerant comparisons and a central-difference gradient check. The tolerances
// themselves stay next to the tests that use them.

/// Two seeded generators, kept apart on purpose: the GEMM, linear and conv tests draw their data
/// from xorshift and the layer-kernel tests from SplitMix64, and each test's tolerances were set
/// against the data its own generator produces.
protocol KernelTestRandom {
    mutating func next() -> UInt64
}

extension KernelTestRandom {
    /// Uniform in [lo, hi), from the top 24 bits of `next()`.
    mutating func uniform(_ lo: Float, _ hi: Float) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }
    mutating func floats(_ count: Int, _ lo: Float, _ hi: Float) -> [Float] {
        (0..<count).map { _ in uniform(lo, hi) }
    }
    /// Uniform in [−1, 1); the same bits as `uniform(-1, 1)` (every step is exact in float).
    mutating func floats(_ count: Int) -> [Float] { floats(count, -1, 1) }
    mutating func int(below bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

enum KernelTestKit {
    /// Every fast kernel is compared with its reference at these thread counts.
    static let threadCounts: [Int32] = [1, 2]
    /// `threadCounts` as the `Int` arguments of the parameterised GEMM, linear and conv tests.
    static let threadCountArguments: [Int] = threadCounts.map(Int.init)

    /// Runs `body` with msq's thread count set to `n`, then restores the previous count.
    static func withThreads<T>(_ n: Int, _ body: () throws -> T) rethrows -> T {
        let previous = msq_get_num_threads()
        msq_set_num_threads(Int32(n))
        defer { msq_set_num_threads(previous) }
        return try body()
    }

    /// An NCHW shape; `hw` is the flattened plane.
    struct Shape4: Sendable, CustomStringConvertible {
        let n, c, h, w: Int
        init(_ n: Int, _ c: Int, _ h: Int, _ w: Int) { (self.n, self.c, self.h, self.w) = (n, c, h, w) }
        var hw: Int { h * w }
        var count: Int { n * c * h * w }
        var description: String { "[\(n), \(c), \(h), \(w)]" }
    }

    /// SplitMix64: small, seedable, the same on every platform. The layer-kernel tests' generator.
    struct SplitMix64: KernelTestRandom {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// Deterministic xorshift generator so failures reproduce. The GEMM, linear and conv tests' generator.
    struct Xorshift: KernelTestRandom {
        var state: UInt64
        init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
        mutating func next() -> UInt64 {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return state
        }
    }

    static func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }

    /// sum_i a_i * r_i in double: the scalar a central difference differentiates.
    static func project(_ a: [Float], _ r: [Float]) -> Double {
        zip(a, r).reduce(0) { $0 + Double($1.0) * Double($1.1) }
    }

    /// sum_i a_i * b_i in double, with sum_i |a_i * b_i| as the scale an adjoint identity is judged against.
    static func dotWithScale(_ a: [Float], _ b: [Float]) -> (value: Double, scale: Double) {
        var sum = 0.0, scale = 0.0
        for i in a.indices {
            let p = Double(a[i]) * Double(b[i])
            sum += p; scale += abs(p)
        }
        return (sum, scale)
    }

    /// Max |got − ref| relative to max |ref|.
    static func maxRelError(_ got: [Float], _ ref: [Float]) -> Float {
        var maxRef: Float = 0, maxDiff: Float = 0
        for i in ref.indices {
            maxRef = max(maxRef, abs(ref[i]))
            maxDiff = max(maxDiff, abs(got[i] - ref[i]))
        }
        return maxDiff / max(maxRef, Float.leastNormalMagnitude)
    }

    /// Expects |actual - expected| <= atol + rtol * |expected| everywhere (NaN matches NaN);
    /// reports the worst element once instead of one failure per element.
    static func expectClose(_ actual: [Float], _ expected: [Float], atol: Float, rtol: Float, _ what: String,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        guard actual.count == expected.count else {
            Issue.record("\(what): \(actual.count) values, expected \(expected.count)", sourceLocation: sourceLocation)
            return
        }
        var worst: (index: Int, excess: Float)?
        for i in actual.indices {
            let (a, e) = (actual[i], expected[i])
            if a.isNaN && e.isNaN { continue }
            let err = abs(a - e)
            let bound = atol + rtol * abs(e)
            if !(err <= bound), worst == nil || err - bound > worst!.excess || err.isNaN {
                worst = (i, err.isNaN ? .infinity : err - bound)
            }
        }
        if let w = worst {
            let message = "\(what): element \(w.index) is \(actual[w.index]), expected \(expected[w.index]) "
                + "(atol \(atol), rtol \(rtol))"
            Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation)
        }
    }

    /// Two calls of an accumulating backward kernel must add twice the single-call increment:
    /// expects a nonzero increment, and |inc2 − 2·inc1| <= relTol · max(max |inc1|, 1).
    static func expectDoubledIncrement(start: [Float], once: [Float], twice: [Float], relTol: Float, _ what: String,
                                       sourceLocation: SourceLocation = #_sourceLocation) {
        let inc1 = zip(once, start).map { $0 - $1 }
        let inc2 = zip(twice, start).map { $0 - $1 }
        let maxInc = inc1.map(abs).max() ?? 0
        #expect(maxInc > 0, "\(what): no increment", sourceLocation: sourceLocation)
        let err = zip(inc2, inc1).map { abs($0 - 2 * $1) }.max() ?? 0
        #expect(err <= relTol * max(maxInc, 1), "\(what): \(err)", sourceLocation: sourceLocation)
    }

    /// Central differences of `loss` (a float forward summed in double) at `x`, one coordinate per
    /// index, against `analytic`. The step actually taken is measured in double, since x ± h is rounded.
    static func checkGradient(at x: [Float], analytic: [Float], indices: [Int], h: Float, atol: Double,
                              rtol: Double, _ what: String, sourceLocation: SourceLocation = #_sourceLocation,
                              loss: ([Float]) -> Double) {
        for j in indices {
            var plus = x, minus = x
            plus[j] += h
            minus[j] -= h
            let numeric = (loss(plus) - loss(minus)) / (Double(plus[j]) - Double(minus[j]))
            let a = Double(analytic[j])
            if !(abs(numeric - a) <= atol + rtol * abs(numeric)) {
                Issue.record("\(what)[\(j)]: analytic \(a), central difference \(numeric)",
                             sourceLocation: sourceLocation)
                return
            }
        }
    }
}
