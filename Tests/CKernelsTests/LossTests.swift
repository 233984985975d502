import CKernels
import Foundation
import Testing

// Softmax cross-entropy: fast vs reference, hand-computed losses (equal logits, label smoothing,
// huge logits), label validation, accumulation, and central differences of the loss.

private typealias Kit = KernelTestKit

/// The fast kernels run the reference's per-row arithmetic and sum row losses in the same order.
private let lossFastVsRefTol: Float = 0
private let lossHandTol: Float = 1e-6
/// The loss is smooth; with h = 1e-2 the truncation error (~h^2/6 * |lse'''|) is ~1e-5 and the
/// float rounding of the loss divided by 2h is ~1e-5.
private let lossGradStep: Float = 1e-2
private let lossGradAbsTol = 1e-3
private let lossGradRelTol = 1e-3

/// Batch size, class count and label smoothing.
struct LossTestConfig: Sendable, CustomStringConvertible {
    let n, k: Int
    let smoothing: Float
    var description: String { "n=\(n) k=\(k) eps=\(smoothing)" }
}

private let lossConfigs: [LossTestConfig] = [(1, 1), (1, 3), (3, 7), (7, 17), (17, 33), (33, 3), (561, 33), (561, 7)]
    .flatMap { n, k in [Float(0), 0.1].map { LossTestConfig(n: n, k: k, smoothing: $0) } }

private func forward(_ logits: [Float], _ labels: [Int32], k: Int, smoothing: Float,
                     fast: Bool) -> (rc: Int32, loss: Float, probs: [Float]) {
    var loss: Float = 0
    var probs = [Float](repeating: .nan, count: logits.count)
    let n = Int32(labels.count)
    let rc = (fast ? msq_softmax_cross_entropy_forward : msq_softmax_cross_entropy_forward_ref)(
        &loss, &probs, logits, labels, n, Int32(k), smoothing)
    return (rc, loss, probs)
}

private func backward(_ d0: [Float], _ probs: [Float], _ labels: [Int32], k: Int, smoothing: Float, scale: Float,
                      fast: Bool) -> [Float] {
    var d = d0
    (fast ? msq_softmax_cross_entropy_backward : msq_softmax_cross_entropy_backward_ref)(
        &d, probs, labels, Int32(labels.count), Int32(k), smoothing, scale)
    return d
}

@Suite("Softmax cross-entropy kernels")
struct LossTests {
    @Test("fast forward and backward match the reference", arguments: lossConfigs)
    func fastMatchesReference(config: LossTestConfig) {
        let (n, k) = (config.n, config.k)
        var rng = Kit.SplitMix64(seed: UInt64(n * 100 + k))
        let logits = rng.floats(n * k, -10, 10)
        let labels = (0..<n).map { _ in Int32(rng.int(below: k)) }
        let d0 = rng.floats(n * k, -1, 1)
        let ref = forward(logits, labels, k: k, smoothing: config.smoothing, fast: false)
        #expect(ref.rc == 0)
        let refB = backward(d0, ref.probs, labels, k: k, smoothing: config.smoothing, scale: 0.7, fast: false)
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            let tag = "\(config) threads=\(threads)"
            let f = forward(logits, labels, k: k, smoothing: config.smoothing, fast: true)
            #expect(f.rc == 0)
            Kit.expectClose([f.loss], [ref.loss], atol: lossFastVsRefTol, rtol: 0, "loss \(tag)")
            Kit.expectClose(f.probs, ref.probs, atol: lossFastVsRefTol, rtol: 0, "probs \(tag)")
            Kit.expectClose(backward(d0, ref.probs, labels, k: k, smoothing: config.smoothing, scale: 0.7, fast: true),
                            refB, atol: lossFastVsRefTol, rtol: 0, "dlogits \(tag)")
        }
    }

    @Test("equal logits give log k, with or without smoothing", arguments: [false, true])
    func equalLogits(fast: Bool) {
        for smoothing: Float in [0, 0.3] {
            let f = forward([Float](repeating: 1.5, count: 14), [3, 6], k: 7, smoothing: smoothing, fast: fast)
            #expect(f.rc == 0)
            Kit.expectClose([f.loss], [Float(log(7.0))], atol: lossHandTol, rtol: 0, "loss eps=\(smoothing)")
            Kit.expectClose(f.probs, [Float](repeating: 1.0 / 7, count: 14), atol: lossHandTol, rtol: 0, "probs")
        }
    }

    @Test("label smoothing: target (1 - eps) one-hot + eps/k", arguments: [false, true])
    func labelSmoothing(fast: Bool) {
        // p = [1/4, 3/4]; eps = 0.2 gives targets 0.9 on the label and 0.1 elsewhere.
        let logits: [Float] = [0, Float(log(3.0)), 0, Float(log(3.0))]
        let row1 = -(0.1 * log(0.25) + 0.9 * log(0.75))
        let row0 = -(0.9 * log(0.25) + 0.1 * log(0.75))
        let f = forward(logits, [1, 0], k: 2, smoothing: 0.2, fast: fast)
        #expect(f.rc == 0)
        Kit.expectClose([f.loss], [Float((row1 + row0) / 2)], atol: lossHandTol, rtol: 0, "loss")
        Kit.expectClose(f.probs, [0.25, 0.75, 0.25, 0.75], atol: lossHandTol, rtol: 0, "probs")
        let plain = forward(Array(logits[0..<2]), [1], k: 2, smoothing: 0, fast: fast)
        Kit.expectClose([plain.loss], [Float(-log(0.75))], atol: lossHandTol, rtol: 0, "unsmoothed loss")
    }

    @Test("huge logits stay finite (row max subtracted)", arguments: [false, true])
    func numericallyStable(fast: Bool) {
        let logits: [Float] = [1000, 0, -1000, -1e30, 1e30, 3e30]
        let f = forward(logits, [0, 1], k: 3, smoothing: 0, fast: fast)
        #expect(f.rc == 0)
        // Row 0 costs ~0, row 1 costs 3e30 - 1e30 = 2e30: the mean is 1e30.
        Kit.expectClose([f.loss], [1e30], atol: 0, rtol: 1e-6, "loss")
        Kit.expectClose(f.probs, [1, 0, 0, 0, 0, 1], atol: lossHandTol, rtol: 0, "probs")
        let g = forward([1000, 0, -1000], [1], k: 3, smoothing: 0, fast: fast)
        Kit.expectClose([g.loss], [1000], atol: 0, rtol: 1e-6, "loss")
    }

    @Test("a label outside [0, k) is rejected", arguments: [false, true])
    func rejectsBadLabel(fast: Bool) {
        for bad: Int32 in [-1, 3, 1000, .min] {
            let f = forward([Float](repeating: 0, count: 6), [0, bad], k: 3, smoothing: 0.1, fast: fast)
            #expect(f.rc == -1, "label \(bad)")
            #expect(f.loss.isNaN, "label \(bad)")
        }
    }

    @Test("backward is scale * (probs - target) / n and accumulates", arguments: [false, true])
    func backwardHandComputed(fast: Bool) {
        let d = backward([1, 1, 1, 1], [0.25, 0.75, 0.25, 0.75], [1, 0], k: 2, smoothing: 0.2, scale: 2, fast: fast)
        // Row 0 target [0.1, 0.9], row 1 target [0.9, 0.1]; scale / n = 1.
        Kit.expectClose(d, [1.15, 0.85, 0.35, 1.65], atol: lossHandTol, rtol: 0, "dlogits")
    }

    @Test("backward matches central differences of the loss", arguments: [Float(0), 0.1], [false, true])
    func finiteDifferences(smoothing: Float, fast: Bool) {
        let (n, k) = (3, 7)
        var rng = Kit.SplitMix64(seed: 91)
        let logits = rng.floats(n * k, -3, 3)
        let labels: [Int32] = [0, 6, 2]
        let f = forward(logits, labels, k: k, smoothing: smoothing, fast: fast)
        let d = backward([Float](repeating: 0, count: n * k), f.probs, labels, k: k, smoothing: smoothing, scale: 1,
                         fast: fast)
        Kit.checkGradient(at: logits, analytic: d, indices: Array(logits.indices), h: lossGradStep,
                          atol: lossGradAbsTol, rtol: lossGradRelTol, "dlogits eps=\(smoothing)") { v in
            Double(forward(v, labels, k: k, smoothing: smoothing, fast: fast).loss)
        }
    }
}
