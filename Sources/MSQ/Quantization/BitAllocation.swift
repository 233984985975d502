/// One layer's choices for ``allocateBits(_:budgetBits:)``: its weight count and, for every
/// precision it may take, the estimated loss at that precision.
public struct BitAllocationLayer: Sendable, Equatable {
    /// N_l, the layer's weight count.
    public var count: Int
    /// Precision → estimated loss (any additive unit: Ω_l(n) for HAWQ, the loss increase over the
    /// current precision for MSQ's deadline). Every key is a candidate precision.
    public var losses: [Int: Double]

    /// Bundles a layer's count and its per-precision losses.
    public init(count: Int, losses: [Int: Double]) {
        self.count = count
        self.losses = losses
    }
}

/// The precisions that minimise the summed estimated loss under a storage budget, by an exact
/// dynamic programme (a multiple-choice knapsack):
///
///     minimise Σ_l losses_l(n_l)   subject to   Σ_l N_l · n_l ≤ budgetBits
///
/// Sizes are counted in units of g = gcd(N_l), exact, unless the budget would need more than
/// 2^20 states; then g grows and each layer's size is rounded UP to whole units, so the answer
/// always fits the real budget (it may then be slightly conservative). Among equal losses the
/// larger total (the least overshoot of a compression target) wins. Returns nil when even the smallest precisions do not fit, or a layer has no choice.
///
/// - Complexity: O(L · P · S) time and O(L · S) bytes for L layers, P precisions each, S ≤ 2^20 states.
public func allocateBits(_ layers: [BitAllocationLayer], budgetBits: Double) -> [Int]? {
    guard !layers.isEmpty else { return [] }
    guard layers.allSatisfy({ !$0.losses.isEmpty && $0.count > 0 }), budgetBits.isFinite else { return nil }
    let options = layers.map { $0.losses.keys.sorted() }
    let minimal = zip(layers, options).reduce(0.0) { $0 + Double($1.0.count) * Double($1.1[0]) }
    let slack = budgetBits - minimal
    guard slack >= -1e-9 else { return nil }
    // Everything is measured above each layer's smallest choice, which keeps the state space small.
    var unit = layers.reduce(0) { gcd($0, $1.count) }
    let maxStates = 1 << 20
    if slack / Double(unit) > Double(maxStates) {
        unit = Int((slack / Double(maxStates)).rounded(.up))
    }
    let capacity = Int((max(0, slack) / Double(unit)).rounded(.down) + 1e-9)
    let infinity = Double.infinity
    // cost[c]: least loss with exactly c units above the minimal sizes; total[c] breaks ties.
    var cost = [Double](repeating: infinity, count: capacity + 1)
    cost[0] = 0
    var choice = [[UInt8]](repeating: [], count: layers.count)
    for (l, layer) in layers.enumerated() {
        let base = options[l][0]
        let sizes = options[l].map { n -> Int in
            let extra = layer.count * (n - base)
            return (extra + unit - 1) / unit
        }
        var next = [Double](repeating: infinity, count: capacity + 1)
        var picked = [UInt8](repeating: 0, count: capacity + 1)
        for c in 0...capacity where cost[c] < infinity {
            for (j, n) in options[l].enumerated() {
                let to = c + sizes[j]
                if to > capacity { break }
                let value = cost[c] + (layer.losses[n] ?? infinity)
                // Later (more bits) choices win ties, so free bits are kept, not dropped.
                if value <= next[to] {
                    next[to] = value
                    picked[to] = UInt8(j)
                }
            }
        }
        cost = next
        choice[l] = picked
    }
    var best = -1
    for c in stride(from: capacity, through: 0, by: -1) where cost[c] < infinity {
        if best < 0 || cost[c] < cost[best] { best = c }
    }
    guard best >= 0 else { return nil }
    var bits = [Int](repeating: 0, count: layers.count)
    var c = best
    for l in stride(from: layers.count - 1, through: 0, by: -1) {
        let j = Int(choice[l][c])
        bits[l] = options[l][j]
        let base = options[l][0]
        c -= (layers[l].count * (bits[l] - base) + unit - 1) / unit
    }
    return bits
}

private func gcd(_ a: Int, _ b: Int) -> Int {
    var (x, y) = (a, b)
    while y != 0 { (x, y) = (y, x % y) }
    return x
}
