import Foundation

/// Shapley values of a cooperative game with their standard errors and what they cost.
public struct ShapleyEstimate: Sendable, Equatable {
    /// φ_p per player, in player order.
    public var values: [Double]
    /// The standard error of each φ_p over the permutations (sample sd / √M; NaN for M < 2).
    public var standardErrors: [Double]
    /// Permutations walked, M.
    public var permutations: Int
    /// Calls of the value function, v(full set) included.
    public var evaluations: Int
}

/// Truncated Monte Carlo Shapley values (SMPQ-SPEC §3, after Shapley-NAS).
///
/// For each of M permutations of the players, start from the full set and remove the players in the
/// permutation's order; the player removed gets the marginal v(before) − v(after). Once v has fallen
/// below `truncation · v(full set)`, the walk stops and the players not yet removed get marginal 0
/// for that permutation. φ_p = mean marginal over the permutations. Without truncation and over all
/// n! permutations this is the exact Shapley value (removal order is the reverse of an arrival order,
/// and reversal is a bijection of the permutations); each untruncated permutation's marginals sum to
/// v(full) − v(∅).
public struct MonteCarloShapley: Sendable {
    /// M, permutations per estimate (SMPQ-SPEC default 4).
    public var permutations: Int
    /// The walk stops once v < truncation · v(full); 0 never stops early (SMPQ-SPEC default 0.5).
    public var truncation: Double
    /// Seeds the permutations.
    public var seed: UInt64

    /// An estimator of `permutations` random permutations per estimate.
    public init(permutations: Int = 4, truncation: Double = 0.5, seed: UInt64 = 0) {
        self.permutations = permutations
        self.truncation = truncation
        self.seed = seed
    }

    /// φ over `permutations` random permutations of `playerCount` players. `value` gets the active
    /// set as a mask of `playerCount` flags. `estimate` numbers the draws (one stream per estimate,
    /// so a resumed run redraws the same permutations).
    public func estimate(playerCount: Int, estimate: Int = 0, value: ([Bool]) throws -> Double) rethrows -> ShapleyEstimate {
        var rng = RandomSource(seed: seed, stream: [0x5348_4150, UInt64(estimate)])
        let orders: [[Int]] = (0..<max(permutations, 0)).map { _ in
            var order = Array(0..<playerCount)
            // Fisher–Yates, drawn from the seeded stream so the order does not depend on the platform.
            for i in stride(from: playerCount - 1, to: 0, by: -1) {
                order.swapAt(i, rng.nextInt(below: i + 1))
            }
            return order
        }
        return try walk(orders: orders, playerCount: playerCount, value: value)
    }

    /// φ over the given removal orders (each a permutation of 0..<playerCount), e.g. all of them.
    public func walk(orders: [[Int]], playerCount: Int, value: ([Bool]) throws -> Double) rethrows -> ShapleyEstimate {
        var active = [Bool](repeating: true, count: playerCount)
        let full = try value(active)
        var evaluations = 1
        // Welford's running mean and squared deviations: a player whose marginal never changes gets
        // a standard error of exactly 0, not the round-off of Σx² − (Σx)²/M.
        var mean = [Double](repeating: 0, count: playerCount)
        var squares = [Double](repeating: 0, count: playerCount)
        for (walked, order) in orders.enumerated() {
            precondition(order.count == playerCount && Set(order).count == playerCount,
                         "MonteCarloShapley: an order must be a permutation of the \(playerCount) players")
            active = [Bool](repeating: true, count: playerCount)
            var marginals = [Double](repeating: 0, count: playerCount)
            var current = full
            for player in order {
                if current < truncation * full { break }  // the rest of this walk contributes 0
                active[player] = false
                let next = try value(active)
                evaluations += 1
                marginals[player] = current - next
                current = next
            }
            let n = Double(walked + 1)
            for p in 0..<playerCount {
                let delta = marginals[p] - mean[p]
                mean[p] += delta / n
                squares[p] += delta * (marginals[p] - mean[p])
            }
        }
        let m = Double(orders.count)
        let values = mean
        let errors = squares.map { ss -> Double in
            guard orders.count >= 2 else { return .nan }
            return (max(0, ss / (m - 1)) / m).squareRoot()
        }
        return ShapleyEstimate(values: values, standardErrors: errors, permutations: orders.count, evaluations: evaluations)
    }

    /// φ ← (1 − w) · φ_previous + w · φ_new (SMPQ-SPEC §3: w = 0.2); the new values when there are none before.
    public static func smoothed(previous: [Double]?, new: [Double], weight: Double = 0.2) -> [Double] {
        guard let previous, previous.count == new.count else { return new }
        return zip(previous, new).map { (1 - weight) * $0 + weight * $1 }
    }
}
