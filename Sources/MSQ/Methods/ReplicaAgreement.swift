// How the training methods make their decisions in a data-parallel run (issue 19).
//
// Each rank holds a replica of the model, and the Trainer keeps the replicas bit-identical by
// summing the gradients. A method's decisions fall into two kinds:
//
// - Estimates from data that cost many forward and backward passes (MSQ's and HAWQ's Hessian
//   traces, SMPQ's Shapley values): the ranks split the probes or permutations and all-reduce what
//   each evaluated, and every rank then reduces the shared numbers in the one-process order, so all
//   ranks hold the same estimate, the one one process computes.
// - Decisions from the weights and those estimates (LSB nonzero rates, pruning, plane removal, mask
//   hardening, bit allocation): every rank computes them itself from identical inputs, with no
//   communication. Rank 0 deciding and broadcasting was the alternative; it is not used because the
//   decisions are cheap next to the estimates, need no serialisation, and a broadcast would paper
//   over replicas that have drifted apart (the other ranks would take rank 0's scheme and train on
//   with weights that differ). Computing everywhere and then checking the scheme
//   (`checkSameBitScheme`) turns such a drift into an error at the first decision it changes.

extension Collective {
    /// Throws unless every rank holds the same per-layer precisions: the cheap check a method runs
    /// after each of its decision points, where every rank has decided for itself from its replica.
    ///
    /// One all-reduce of 2L doubles, each layer's bits b and b² (small integers, so every sum is
    /// exact in any order). The ranks agree on layer l iff P · Σ b² = (Σ b)² (the ranks' variance is
    /// zero), a test every rank evaluates on the same reduced numbers: all ranks throw, or none does
    /// (comparing Σ b with P · b_local would let a rank that happens to sit at the mean carry on
    /// alone into its next collective call).
    ///
    /// Every rank must call it at the same point with the same number of layers. With one process it
    /// never throws.
    /// - Parameters:
    ///   - paths: the layers' module paths, for the message.
    ///   - bits: this rank's precision of each layer, in `paths` order.
    ///   - step: the global step of the decision, for the message.
    /// - Throws: ``CollectiveError/replicasDiffer(_:)`` (`bit scheme at step N: …`, naming the layers
    ///   that differ, this rank's bits and the ranks' mean); ``CollectiveError`` if the all-reduce fails.
    public func checkSameBitScheme(paths: [String], bits: [Int], step: Int) throws(CollectiveError) {
        precondition(paths.count == bits.count, "checkSameBitScheme: \(paths.count) paths for \(bits.count) layers")
        let n = bits.count
        let local = bits.map(Double.init)
        let sums = try allReduceSum(local + local.map { $0 * $0 })
        let ranks = Double(size)
        let differing = (0..<n).filter { ranks * sums[n + $0] != sums[$0] * sums[$0] }
        guard !differing.isEmpty else { return }
        let shown = differing.prefix(8).map { l in
            String(format: "%@ has %d bits on rank %d, %.3g on average over the %d ranks", paths[l], bits[l], rank,
                   sums[l] / ranks, size)
        }
        let more = differing.count > shown.count ? "; and \(differing.count - shown.count) more layers" : ""
        throw .replicasDiffer("bit scheme at step \(step): " + shown.joined(separator: "; ") + more)
    }
}
