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
///
/// Over several processes (``estimate(playerCount:estimate:collective:value:)``) the ranks share
/// the permutations and every rank gets the one-process estimate.
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
        try walk(orders: orders(playerCount: playerCount, estimate: estimate), playerCount: playerCount, value: value)
    }

    /// ``estimate(playerCount:estimate:value:)`` with the permutations split over `collective`'s
    /// ranks (see ``walk(orders:playerCount:collective:value:)``): every rank calls it with the same
    /// arguments and a `value` giving the same numbers, and every rank gets the one-process estimate.
    /// - Throws: what `value` throws; ``CollectiveError`` if the ranks' sum fails.
    public func estimate(playerCount: Int, estimate: Int = 0, collective: any Collective,
                         value: ([Bool]) throws -> Double) throws -> ShapleyEstimate {
        try walk(orders: orders(playerCount: playerCount, estimate: estimate), playerCount: playerCount,
                 collective: collective, value: value)
    }

    /// The removal orders of draw `estimate`: `permutations` Fisher–Yates shuffles of the players.
    func orders(playerCount: Int, estimate: Int) -> [[Int]] {
        var rng = RandomSource(seed: seed, stream: [0x5348_4150, UInt64(estimate)])
        return (0..<max(permutations, 0)).map { _ in
            var order = Array(0..<playerCount)
            // Fisher–Yates, drawn from the seeded stream so the order does not depend on the platform.
            for i in stride(from: playerCount - 1, to: 0, by: -1) {
                order.swapAt(i, rng.nextInt(below: i + 1))
            }
            return order
        }
    }

    /// φ over the given removal orders (each a permutation of 0..<playerCount), e.g. all of them.
    public func walk(orders: [[Int]], playerCount: Int, value: ([Bool]) throws -> Double) rethrows -> ShapleyEstimate {
        let full = try value([Bool](repeating: true, count: playerCount))
        var rows: [[Double]] = []
        var evaluations = 1
        for order in orders {
            let (marginals, calls) = try walk(order: order, playerCount: playerCount, full: full, value: value)
            rows.append(marginals)
            evaluations += calls
        }
        return summary(rows: rows, playerCount: playerCount, evaluations: evaluations)
    }

    /// ``walk(orders:playerCount:value:)`` split over `collective`'s ranks: every rank evaluates
    /// v(full set) (each walk's truncation needs it), and rank r walks orders r, r + P, r + 2P, ….
    ///
    /// Each rank writes its walks' marginals and value calls into their rows of an M × (players + 1)
    /// block of zeros; one all-reduce gives every rank every walk, each element the sum of one rank's
    /// value and zeros, so exactly that value. Every rank then takes the means and standard errors
    /// over the walks in order, as one process does, so the estimate is bit-identical on every rank
    /// and to the one-process estimate (for a `value` that gives every rank the same numbers).
    /// ``ShapleyEstimate/evaluations`` counts v(full set) once, as one process does, though every
    /// rank computes it. With M < P the ranks past M only evaluate v(full set).
    /// - Throws: what `value` throws (every rank must throw alike, or the others wait in the
    ///   all-reduce); ``CollectiveError`` if the ranks' sum fails.
    public func walk(orders: [[Int]], playerCount: Int, collective: any Collective,
                     value: ([Bool]) throws -> Double) throws -> ShapleyEstimate {
        let full = try value([Bool](repeating: true, count: playerCount))
        let width = playerCount + 1
        var block = [Double](repeating: 0, count: orders.count * width)
        for (m, order) in orders.enumerated() where m % collective.size == collective.rank {
            let (marginals, calls) = try walk(order: order, playerCount: playerCount, full: full, value: value)
            block.replaceSubrange((m * width)..<(m * width + playerCount), with: marginals)
            block[m * width + playerCount] = Double(calls)
        }
        block = try collective.allReduceSum(block)
        let rows = orders.indices.map { Array(block[($0 * width)..<($0 * width + playerCount)]) }
        let evaluations = orders.indices.reduce(1) { $0 + Int(block[$1 * width + playerCount]) }
        return summary(rows: rows, playerCount: playerCount, evaluations: evaluations)
    }

    /// One removal walk from the full set (value `full`): each player's marginal (0 past the
    /// truncation) and the calls of `value` it took.
    private func walk(order: [Int], playerCount: Int, full: Double,
                      value: ([Bool]) throws -> Double) rethrows -> (marginals: [Double], calls: Int) {
        precondition(order.count == playerCount && Set(order).count == playerCount,
                     "MonteCarloShapley: an order must be a permutation of the \(playerCount) players")
        var active = [Bool](repeating: true, count: playerCount)
        var marginals = [Double](repeating: 0, count: playerCount)
        var current = full
        var calls = 0
        for player in order {
            if current < truncation * full { break }  // the rest of this walk contributes 0
            active[player] = false
            let next = try value(active)
            calls += 1
            marginals[player] = current - next
            current = next
        }
        return (marginals, calls)
    }

    /// φ and its standard errors from the walks' marginals, taken in walk order.
    private func summary(rows: [[Double]], playerCount: Int, evaluations: Int) -> ShapleyEstimate {
        // Welford's running mean and squared deviations: a player whose marginal never changes gets
        // a standard error of exactly 0, not the round-off of Σx² − (Σx)²/M.
        var mean = [Double](repeating: 0, count: playerCount)
        var squares = [Double](repeating: 0, count: playerCount)
        for (walked, marginals) in rows.enumerated() {
            let n = Double(walked + 1)
            for p in 0..<playerCount {
                let delta = marginals[p] - mean[p]
                mean[p] += delta / n
                squares[p] += delta * (marginals[p] - mean[p])
            }
        }
        let m = Double(rows.count)
        let errors = squares.map { ss -> Double in
            guard rows.count >= 2 else { return .nan }
            return (max(0, ss / (m - 1)) / m).squareRoot()
        }
        return ShapleyEstimate(values: mean, standardErrors: errors, permutations: rows.count, evaluations: evaluations)
    }

    /// φ ← (1 − w) · φ_previous + w · φ_new (SMPQ-SPEC §3: w = 0.2); the new values when there are none before.
    public static func smoothed(previous: [Double]?, new: [Double], weight: Double = 0.2) -> [Double] {
        guard let previous, previous.count == new.count else { return new }
        return zip(previous, new).map { (1 - weight) * $0 + weight * $1 }
    }
}
