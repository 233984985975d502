import MSQ
import Testing

// SMPQ-SPEC §3: the truncated Monte Carlo Shapley estimator on games whose Shapley values are known.

/// An additive game with one pairwise synergy: v(S) = Σ_{i∈S} w_i + c·[0∈S ∧ 1∈S].
/// Shapley: φ_i = w_i, plus c/2 for players 0 and 1.
private struct SynergyGame {
    var weights: [Double]
    var synergy: Double
    func value(_ active: [Bool]) -> Double {
        zip(weights, active).reduce(0) { $0 + ($1.1 ? $1.0 : 0) } + (active[0] && active[1] ? synergy : 0)
    }
    var shapley: [Double] { weights.enumerated().map { $0.offset < 2 ? $0.element + synergy / 2 : $0.element } }
}

/// Every permutation of 0..<n (Heap's algorithm).
private func allPermutations(_ n: Int) -> [[Int]] {
    var a = Array(0..<n), out: [[Int]] = []
    func generate(_ k: Int) {
        if k == 1 { out.append(a); return }
        for i in 0..<k {
            generate(k - 1)
            a.swapAt(k % 2 == 0 ? i : 0, k - 1)
        }
    }
    generate(n)
    return out
}

/// A glove game (players 0, 1 hold left gloves, 2 a right glove; a pair is worth 1) with a dummy
/// player 3: Shapley (1/6, 1/6, 2/3, 0), not additive, so the order of removal matters.
private func gloves(_ active: [Bool]) -> Double { (active[0] || active[1]) && active[2] ? 1 : 0 }

@Suite("Monte Carlo Shapley (SMPQ)")
struct ShapleyTests {
    @Test("over all 24 permutations of 4 players the estimate is the exact Shapley value (additive game with synergy; glove game)")
    func exactOverAllPermutations() {
        let orders = allPermutations(4)
        #expect(orders.count == 24 && Set(orders.map { $0.map(String.init).joined() }).count == 24)
        let estimator = MonteCarloShapley(truncation: 0)
        let game = SynergyGame(weights: [0.5, 1.0, 0.25, 2.0], synergy: 0.75)
        let synergy = estimator.walk(orders: orders, playerCount: 4, value: game.value)
        for (phi, truth) in zip(synergy.values, game.shapley) { #expect(abs(phi - truth) < 1e-12) }
        let glove = estimator.walk(orders: orders, playerCount: 4, value: gloves)
        for (phi, truth) in zip(glove.values, [1.0 / 6, 1.0 / 6, 2.0 / 3, 0]) { #expect(abs(phi - truth) < 1e-12) }
        #expect(glove.evaluations == 1 + 24 * 4)
        #expect(glove.standardErrors[3] == 0)  // the dummy's marginal is always 0
    }

    @Test("random permutations: within 4 standard errors of the truth, each walk's marginals summing to v(full) − v(∅)")
    func monteCarlo() {
        let players = 7
        let game = SynergyGame(weights: (0..<players).map { Double($0 % 3) + 0.1 * Double($0) }, synergy: 1.5)
        let estimate = MonteCarloShapley(permutations: 400, truncation: 0, seed: 3).estimate(playerCount: players, value: game.value)
        #expect(estimate.permutations == 400 && estimate.evaluations == 1 + 400 * players)
        for p in 0..<players {
            let tolerance = 4 * estimate.standardErrors[p] + 1e-12
            #expect(abs(estimate.values[p] - game.shapley[p]) <= tolerance, "player \(p): \(estimate.values[p]) vs \(game.shapley[p])")
        }
        // Efficiency holds exactly for every untruncated walk, hence for the mean.
        let full = game.value([Bool](repeating: true, count: players))
        #expect(abs(estimate.values.reduce(0, +) - full) < 1e-9)
        // Players 0 and 1 share the synergy: their estimates vary, an additive player's only by round-off.
        #expect(estimate.standardErrors[0] > 0.01 && estimate.standardErrors[4] < 1e-12)
    }

    @Test("truncation: a walk stops once v < 0.5·v(full); the rest of its players get 0 and are not evaluated")
    func truncation() {
        // v(S) = Σ w_i, w = (4, 3, 2, 1): v(full) = 10. Removal order 0, 1, 2, 3: after removing 0,
        // v = 6 ≥ 5, remove 1: v = 3 < 5, stop. Marginals 4, 3, 0, 0 with 3 evaluations.
        let weights = [4.0, 3, 2, 1]
        let value: ([Bool]) -> Double = { active in zip(weights, active).reduce(0) { $0 + ($1.1 ? $1.0 : 0) } }
        let truncated = MonteCarloShapley(truncation: 0.5).walk(orders: [[0, 1, 2, 3]], playerCount: 4, value: value)
        #expect(truncated.values == [4, 3, 0, 0])
        #expect(truncated.evaluations == 3)
        #expect(truncated.standardErrors.allSatisfy { $0.isNaN })  // one permutation: no spread to measure
        let whole = MonteCarloShapley(truncation: 0).walk(orders: [[0, 1, 2, 3]], playerCount: 4, value: value)
        #expect(whole.values == weights && whole.evaluations == 5)
    }

    @Test("the same seed and estimate number draw the same permutations; another estimate number draws others")
    func reproducible() {
        var seen: [[Bool]] = []
        let record: ([Bool]) -> Double = { seen.append($0); return Double($0.filter { $0 }.count) }
        let estimator = MonteCarloShapley(permutations: 3, truncation: 0, seed: 9)
        _ = estimator.estimate(playerCount: 6, estimate: 2, value: record)
        let first = seen
        seen = []
        _ = estimator.estimate(playerCount: 6, estimate: 2, value: record)
        #expect(seen == first)
        seen = []
        _ = estimator.estimate(playerCount: 6, estimate: 3, value: record)
        #expect(seen != first)
    }

    @Test("smoothing: φ ← 0.8·φ_previous + 0.2·φ_new, the new values when there is nothing before")
    func smoothing() {
        #expect(MonteCarloShapley.smoothed(previous: nil, new: [1, 2]) == [1, 2])
        let s = MonteCarloShapley.smoothed(previous: [1, 0], new: [0, 1])
        #expect(abs(s[0] - 0.8) < 1e-15 && abs(s[1] - 0.2) < 1e-15)
    }
}
