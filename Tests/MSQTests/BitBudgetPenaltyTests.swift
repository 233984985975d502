import MSQ
import Testing

/// Central differences of the penalty in α, relative to the largest gradient component (float32 α, step 1e-2).
private let penaltyGradientTolerance = 2e-3

@Suite("SMPQ budget penalty")
struct BitBudgetPenaltyTests {
    private func layers() -> [SupernetWeight] {
        let a = SupernetWeight(candidates: [2, 4, 8]), b = SupernetWeight(candidates: [2, 3, 4, 5, 6, 8])
        a.alpha.value = Tensor(shape: [3], scalars: [0.1, -0.3, 0.9])
        b.alpha.value = Tensor(shape: [6], scalars: [0.4, 0.0, -0.2, 0.3, 0.7, 1.1])
        return [a, b]
    }

    @Test("E[bits] is the count-weighted mean precision; the gradient matches central differences; under the target it is zero")
    func gradient() {
        let l = layers(), counts = [30, 70]
        let penalty = BitBudgetPenalty(targetCompression: 10.67, gamma: 2)
        let e = penalty.expectedBits(l, counts: counts)
        let manual = (30 * zip(l[0].probabilities, [2.0, 4, 8]).reduce(0) { $0 + $1.0 * $1.1 }
                      + 70 * zip(l[1].probabilities, [2.0, 3, 4, 5, 6, 8]).reduce(0) { $0 + $1.0 * $1.1 }) / 100
        #expect(abs(e - manual) < 1e-12 && e > penalty.targetBits)
        let value = penalty.apply(l, counts: counts)
        #expect(abs(value - 2 * (e - 32 / 10.67) * (e - 32 / 10.67)) < 1e-12)
        let step: Float = 1e-2
        var analytic: [Double] = [], numeric: [Double] = []
        for layer in l {
            for j in 0..<layer.candidates.count {
                analytic.append(Double(layer.alpha.grad[flat: j]))
                let base = layer.alpha.value
                layer.alpha.value[flat: j] = base[flat: j] + step
                let plus = penalty.apply(l, counts: counts, accumulate: false)
                layer.alpha.value[flat: j] = base[flat: j] - step
                let minus = penalty.apply(l, counts: counts, accumulate: false)
                layer.alpha.value = base
                numeric.append((plus - minus) / Double(2 * step))
            }
        }
        let scale = numeric.map(abs).max() ?? 1
        for (a, n) in zip(analytic, numeric) { #expect(abs(a - n) <= penaltyGradientTolerance * scale, "\(a) vs \(n)") }
        // Far under budget: no penalty, no gradient.
        let fresh = layers()
        #expect(BitBudgetPenalty(targetCompression: 2, gamma: 2).apply(fresh, counts: counts) == 0)
        #expect(fresh.allSatisfy { $0.alpha.grad.scalars.allSatisfy { $0 == 0 } })
    }
}
