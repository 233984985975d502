import CKernels
import Testing

// AdamW step: the fast kernel against its scalar reference at odd sizes and 1 and 2 threads,
// over several steps so both moment buffers carry state. (The update's values against
// PyTorch's are checked on the Swift optimizer, MSQTests/OptimizerTests.)

private typealias Kit = KernelTestKit

/// Odd lengths; the last is large enough to run in parallel.
private let adamwCounts = [1, 3, 7, 17 * 33, 33 * 33 * 17 * 7]

private struct AdamWState: Equatable {
    var w, m, v: [Float]
}

/// Step t's scalars as the Swift optimizer computes them (double, then rounded to float).
private func scalars(t: Int, lr: Double, wd: Double, beta1: Double, beta2: Double) -> (decay: Float, stepSize: Float, bc2Sqrt: Float) {
    var p1 = 1.0, p2 = 1.0
    for _ in 0..<t { p1 *= beta1; p2 *= beta2 }
    return (Float(1 - lr * wd), Float(lr / (1 - p1)), Float((1 - p2).squareRoot()))
}

@Suite("AdamW kernel")
struct AdamWTests {
    @Test("fast step matches the reference bit for bit", arguments: adamwCounts, [0.0, 0.05])
    func fastMatchesReference(count: Int, weightDecay: Double) {
        var rng = Kit.SplitMix64(seed: UInt64(count) &+ 11)
        // m and v start nonzero (a resumed run), v ≥ 0 as the optimizer keeps it.
        let start = AdamWState(w: rng.floats(count, -1, 1), m: rng.floats(count, -0.1, 0.1), v: rng.floats(count, 0, 0.01))
        let grads = (0..<3).map { _ in rng.floats(count, -1, 1) }
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            var ref = start, fast = start
            for (i, g) in grads.enumerated() {
                let s = scalars(t: i + 1, lr: 2e-3, wd: weightDecay, beta1: 0.9, beta2: 0.999)
                msq_adamw_step_ref(&ref.w, &ref.m, &ref.v, g, count, s.decay, Float(1 - 0.9 as Double), 0.999, Float(1 - 0.999 as Double), s.stepSize, s.bc2Sqrt, 1e-8)
                msq_adamw_step(&fast.w, &fast.m, &fast.v, g, count, s.decay, Float(1 - 0.9 as Double), 0.999, Float(1 - 0.999 as Double), s.stepSize, s.bc2Sqrt, 1e-8)
                let tag = "count=\(count) wd=\(weightDecay) step=\(i) threads=\(threads)"
                #expect(fast == ref, "\(tag)")
            }
            // The steps moved the weights (a kernel that did nothing would pass the comparison); a
            // rare one whose change is below half an ulp may stay.
            let moved = zip(fast.w, start.w).filter { $0 != $1 }.count
            #expect(moved * 100 >= count * 99, "count=\(count) threads=\(threads): only \(moved) weights moved")
        }
    }

    @Test("first step from zero moments moves each weight by lr·sign(g) (bias correction)")
    func firstStepIsSignStep() {
        // t = 1: m̂ = g, v̂ = g², so w ← w − lr·g/(|g| + ε) ≈ w − lr·sign(g).
        var w: [Float] = [1, -1, 0.5], m: [Float] = [0, 0, 0], v: [Float] = [0, 0, 0]
        let s = scalars(t: 1, lr: 0.01, wd: 0, beta1: 0.9, beta2: 0.999)
        msq_adamw_step_ref(&w, &m, &v, [0.3, -2, 1e-3], 3, s.decay, Float(1 - 0.9 as Double), 0.999, Float(1 - 0.999 as Double), s.stepSize, s.bc2Sqrt, 1e-8)
        Kit.expectClose(w, [0.99, -0.99, 0.49], atol: 1e-6, rtol: 0, "w")
    }
}
