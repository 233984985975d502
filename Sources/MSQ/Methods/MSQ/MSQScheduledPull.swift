import Foundation

/// The scheduled pull (``MSQOptions/scheduledPull``): the regulariser's L1 term, made strong and
/// proximal on the layers the pace is about to force, so they reach r_l ≤ τ by themselves.
///
/// Why: with the paper's λ the pull per weight is too weak to zero a layer's LSBs within an
/// interval, so nearly every drop is forced by the pace (163 of 163 on the 10k recipe), and a
/// forced drop requantizes a layer in one step. Planning one interval ahead lets the drop the
/// estimated-loss order has chosen happen as MSQ intends: the weights move onto the coarser grid
/// while training goes on, and the drop then changes nothing.
///
/// After every optimizer step each scheduled layer takes a proximal step of its |lsb| term with
///
///     t = ρ · 2^(k−1) / T  +  2 · mean_i |ΔW_i| · 2^n / (2s)      (n-bit levels)
///
/// the first part closing the farthest distance to the coarser grid, 2^(k−1) levels, in T/ρ
/// steps; the second at least undoing what this step's update moved an average weight, which at
/// 7–8 bits is several levels (with the first part alone, 8-bit layers kept r ≈ 0.1–0.5).
extension MSQTraining {
    /// At step 0 of a fresh run: the first interval's layers, ranked by quantization error alone
    /// (no traces yet), each with the bits planned for it as its k (1 at step 0 unless the first
    /// interval is the deadline).
    func planFirstPull(model: Module) throws {
        schedulePull(stepsDone: 0, traces: nil)
    }

    /// Schedules the layers the scheduler would force at the next interval, from the precisions,
    /// k and weights as they are now (no layer counted as under τ): the pace's budget at the next
    /// interval, or the target if that interval is the deadline.
    func schedulePull(stepsDone: Int, traces: [Double]?) {
        guard options.scheduledPull > 0 else { return }
        let next = min(stepsDone + pace.intervalSteps, pace.deadlineStep)
        let counts = layers.map(\.count)
        let status = layers.indices.map { i in
            PruningLayerStatus(path: layers[i].path, count: counts[i], bits: layers[i].bits, nonzeroRate: nil,
                               k: regularizer.effectiveK(i), dropLoss: dropLoss(layer: i, traces: traces))
        }
        let budget = pace.budget(stepsDone: next, initialBits: state.initialBits,
                                 targetBits: scheduler.targetBits(counts: counts))
        var planned: [String: Int] = [:]
        for d in scheduler.decide(status, budgetBits: budget, deadline: pace.isDeadline(next)) {
            planned[d.path, default: 0] += d.fromBits - d.toBits
        }
        let scheduled = layers.map(\.path).filter { planned[$0] != nil }
        // A scheduled layer is pulled toward, measured on and dropped by the bits planned for it
        // (k ∈ {1, 2}): the drop that reaches the target, and the deadline's allocation, may plan
        // fewer than k, and an unforced k-bit drop would then overshoot the target.
        regularizer.setK(planned.mapValues { min(2, max(1, $0)) })
        state.k = regularizer.k
        state.scheduled = scheduled
        plan.log("  scheduled pull until step \(next): " + (scheduled.isEmpty ? "none" : scheduled.joined(separator: " ")))
    }

    /// The scheduled layers' indices (empty when the pull is off or nothing is scheduled).
    var scheduledIndices: [Int] {
        guard options.scheduledPull > 0, let scheduled = state.scheduled, !scheduled.isEmpty else { return [] }
        return layers.indices.filter { scheduled.contains(layers[$0].path) && regularizer.effectiveK($0) > 0 }
    }

    /// Keeps the scheduled layers' weights before the optimizer step.
    func snapshotScheduledLayers() {
        pullSnapshots = Dictionary(uniqueKeysWithValues: scheduledIndices.map { ($0, layers[$0].parameter.value.scalars) })
    }

    /// One proximal step on every scheduled layer (see the type's documentation), after the
    /// optimizer step; a layer without a snapshot (the method driven without afterBackward) gets
    /// the first part of t only.
    func pullScheduledLayers() {
        defer { pullSnapshots = [:] }
        for i in scheduledIndices {
            let k = regularizer.effectiveK(i)
            let levels = options.scheduledPull * Foundation.pow(2, Double(k - 1)) / Double(pace.intervalSteps)
            var motion = 0.0
            if let before = pullSnapshots[i] {
                let now = layers[i].parameter.value.scalars
                var sum = 0.0
                for j in now.indices { sum += Double(abs(now[j] - before[j])) }
                motion = now.isEmpty ? 0 : sum / Double(now.count)
            }
            regularizer.proximalStep(layer: i, levels: levels, extra: 2 * motion)
        }
    }
}
