/// How SMPQ picks each layer's final precision after the search (SMPQ-SPEC §4).
public enum SMPQSelection: String, CaseIterable, Codable, Sendable {
    /// By each candidate's Shapley contribution φ (SMPQ).
    case shapley
    /// By its architecture logit α (DMPQ, the baseline SMPQ improves on; `--selection alpha`).
    case alpha
}

/// The per-layer precisions that maximise the summed score under the storage of a compression
/// target, sign counted (SMPQ-SPEC §4):
///
///     maximise Σ_l score_l(b_l)   subject to   Σ_l N_l · b_l ≤ 32 · Σ_l N_l / C_target
///
/// `scores[l][j]` is layer l's score for `candidates[j]` (φ for SMPQ, α for DMPQ); `counts[l]` is
/// N_l. Solved by the exact allocator MSQ's deadline and HAWQ use (``allocateBits(_:budgetBits:)``,
/// with loss = −score), so when every layer's best candidate fits, that is the answer (DMPQ's
/// per-layer argmax α). Nil when even the smallest candidates exceed the budget or the shapes differ.
public func selectPrecisions(scores: [[Double]], candidates: [Int], counts: [Int], targetCompression: Double) -> [Int]? {
    guard scores.count == counts.count, scores.allSatisfy({ $0.count == candidates.count }),
          targetCompression > 0, targetCompression.isFinite else { return nil }
    let layers = zip(scores, counts).map { score, count in
        BitAllocationLayer(count: count, losses: Dictionary(uniqueKeysWithValues: zip(candidates, score.map { -$0 })))
    }
    let budget = 32 * Double(counts.reduce(0, +)) / targetCompression
    return allocateBits(layers, budgetBits: budget)
}
