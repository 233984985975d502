/// SMPQ's budget term on the architecture logits (SMPQ-SPEC §2):
///
///     E[bits] = Σ_l N_l Σ_b p_l,b · b / Σ_l N_l,   penalty = γ · relu(E[bits] − b_target)²,
///
/// b_target = 32 / C_target (sign counted). Its gradient, accumulated into each layer's α:
/// ∂E/∂α_l,b = (N_l / Σ N) · p_l,b · (b − Σ_b' p_l,b' · b'), times 2γ · relu(E[bits] − b_target).
/// Masked candidates have p = 0 and get none.
public struct BitBudgetPenalty: Sendable {
    /// γ, the penalty's weight.
    public var gamma: Double
    /// b_target = 32 / C_target, average bits per weight.
    public var targetBits: Double

    /// The penalty for reaching `targetCompression` (sign counted) with weight `gamma`.
    public init(targetCompression: Double, gamma: Double) {
        self.gamma = gamma
        self.targetBits = 32 / targetCompression
    }

    /// E[bits] of `layers` with weight counts `counts` (N_l).
    public func expectedBits(_ layers: [SupernetWeight], counts: [Int]) -> Double {
        expectedBits(means: layers.map(Self.meanBits), counts: counts)
    }

    /// Σ_l N_l · mean_l / Σ_l N_l.
    private func expectedBits(means: [Double], counts: [Int]) -> Double {
        zip(means, counts).reduce(0.0) { $0 + Double($1.1) * $1.0 } / Double(counts.reduce(0, +))
    }

    /// Σ_b p_b · b of one layer.
    private static func meanBits(_ layer: SupernetWeight) -> Double {
        zip(layer.probabilities, layer.candidates).reduce(0.0) { $0 + $1.0 * Double($1.1) }
    }

    /// The penalty's value; with `accumulate`, adds its gradient to every layer's `alpha.grad`.
    @discardableResult
    public func apply(_ layers: [SupernetWeight], counts: [Int], accumulate: Bool = true) -> Double {
        precondition(layers.count == counts.count, "BitBudgetPenalty: \(layers.count) layers, \(counts.count) counts")
        let means = layers.map(Self.meanBits)
        let excess = max(0, expectedBits(means: means, counts: counts) - targetBits)
        guard accumulate, excess > 0 else { return gamma * excess * excess }
        let total = Double(counts.reduce(0, +))
        for ((layer, count), mean) in zip(zip(layers, counts), means) {
            let p = layer.probabilities
            layer.alpha.grad.withUnsafeMutablePointer { g in
                for (b, bits) in layer.candidates.enumerated() where p[b] > 0 {
                    g[b] += Float(2 * gamma * excess * Double(count) / total * p[b] * (Double(bits) - mean))
                }
            }
        }
        return gamma * excess * excess
    }
}
