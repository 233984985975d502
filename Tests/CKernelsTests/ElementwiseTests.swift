import CKernels
import Testing

// Elementwise helpers (elementwise.c): fills, sums and accumulation at odd sizes, on both sides of
// the size above which they run in parallel, at one and two threads.

private typealias Kit = KernelTestKit

/// Element counts: odd sizes, then one past the parallel threshold (65,536) so the OpenMP path runs.
private let elementwiseCounts = [1, 3, 7, 17 * 33, 65_537 * 3]

@Suite("Elementwise kernels")
struct ElementwiseTests {
    @Test("msq_fill writes exactly `value` to every element and nothing past the end",
          arguments: elementwiseCounts, Kit.threadCountArguments)
    func fill(count: Int, threads: Int) {
        for value: Float in [0, -0.0, 1.5, .infinity] {
            var fast = [Float](repeating: .nan, count: count + 1)
            var ref = fast
            Kit.withThreads(threads) { msq_fill(&fast, value, count) }
            msq_fill_ref(&ref, value, count)
            #expect(Kit.bits(fast) == Kit.bits(ref), "fill \(value), count \(count)")
            #expect(fast[..<count].allSatisfy { $0.bitPattern == value.bitPattern })
            #expect(fast[count].isNaN, "fill wrote past the end")
        }
    }

    @Test("msq_add_forward and msq_accumulate match plain loops bit for bit",
          arguments: elementwiseCounts, Kit.threadCountArguments)
    func addAndAccumulate(count: Int, threads: Int) {
        var rng = Kit.SplitMix64(seed: UInt64(count))
        let a = rng.floats(count), b = rng.floats(count)
        var y = [Float](repeating: .nan, count: count)
        var acc = a
        Kit.withThreads(threads) {
            msq_add_forward(&y, a, b, count)
            msq_accumulate(&acc, b, count)
        }
        let expected = zip(a, b).map { $0 + $1 }
        #expect(Kit.bits(y) == Kit.bits(expected))
        #expect(Kit.bits(acc) == Kit.bits(expected))
    }
}
