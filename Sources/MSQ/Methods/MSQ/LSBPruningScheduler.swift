/// What the scheduler knows about one quantized layer at a pruning interval.
public struct PruningLayerStatus: Sendable, Equatable {
    /// Module path.
    public var path: String
    /// N_l, the layer's weight count.
    public var count: Int
    /// n_l, its current precision (sign included).
    public var bits: Int
    /// r_l = #{i : lsb_int ≠ 0} / N_l on the grid of ``k`` the layer was regularised toward
    /// during the interval (MSQ-SPEC §3); nil for a layer at n_min, which is not measured.
    public var nonzeroRate: Double?
    /// k_l ∈ {1, 2}: how many LSBs the layer drops when pruned (MSQ-SPEC §4), already bounded by
    /// n_l − n_min.
    public var k: Int
    /// The estimated loss increase of dropping 1, 2, … bits (index j: to n_l − j − 1), down to
    /// n_min (MSQ-SPEC §3: Tr(H_l)/N_l · (‖Q_{n−j−1}(W) − W‖² − ‖Q_n(W) − W‖²), without the trace
    /// factor when the Hessian is off). Empty when unknown: forced drops then follow r_l.
    public var dropLoss: [Double]

    /// Bundles one layer's state.
    public init(path: String, count: Int, bits: Int, nonzeroRate: Double?, k: Int, dropLoss: [Double] = []) {
        self.path = path
        self.count = count
        self.bits = bits
        self.nonzeroRate = nonzeroRate
        self.k = k
        self.dropLoss = dropLoss
    }

    /// The estimated loss increase of dropping `k` bits (nil if unknown or below n_min).
    func loss(dropping k: Int) -> Double? {
        k >= 1 && k <= dropLoss.count ? dropLoss[k - 1] : nil
    }
}

/// The order in which layers above τ are forced down when the target needs it (MSQ-SPEC §3).
public enum ForcedPruningOrder: String, Codable, Sendable, CaseIterable {
    /// Least estimated loss increase per stored bit saved first; a drop that would reach the
    /// target is the one that reaches it at the least estimated loss (possibly fewer than k bits,
    /// which keeps the overshoot small); at the deadline the whole remaining gap is closed by the
    /// exact least-loss allocation (``allocateBits(_:budgetBits:)``). The project's default.
    case estimatedLoss = "estimated-loss"
    /// The paper's wording: lowest r_l first, whole k-bit drops, rounds repeated at the deadline.
    case nonzeroRate = "nonzero-rate"
}

/// One precision change decided at a pruning interval.
public struct PruningDecision: Codable, Sendable, Equatable {
    /// Module path of the layer.
    public var path: String
    /// n_l before.
    public var fromBits: Int
    /// n_l after.
    public var toBits: Int
    /// r_l when the decision was taken (nil if the layer was not measured).
    public var nonzeroRate: Double?
    /// True when the layer was above τ and pruned only to keep pace with the target (see
    /// ``LSBPruningScheduler``).
    public var forced: Bool
    /// The estimated loss increase of this drop, when the scheduler knew it.
    public var estimatedLoss: Double?

    /// Bundles one decision.
    public init(path: String, fromBits: Int, toBits: Int, nonzeroRate: Double?, forced: Bool,
                estimatedLoss: Double? = nil) {
        self.path = path
        self.fromBits = fromBits
        self.toBits = toBits
        self.nonzeroRate = nonzeroRate
        self.forced = forced
        self.estimatedLoss = estimatedLoss
    }
}

/// The LSB-pruning decision rule (MSQ-SPEC §3, paper Sec. 3.3), free of any model or training state.
///
/// At a pruning interval, with C(n) = 32 · Σ N_l / Σ N_l · n_l:
///
/// 1. If C ≥ target, nothing is pruned (the finetuning phase has begun).
/// 2. Candidates are the measured layers with r_l ≤ τ and n_l > n_min. In ascending r_l order
///    (ties: layer order), each drops to n_l − k_l; pruning stops as soon as C ≥ target. With
///    ``ForcedPruningOrder/estimatedLoss`` a drop that reaches the target drops only as many
///    bits as it needs.
/// 3. Pacing (the project's answer to the deadline rule, MSQ-SPEC §3): the caller passes a bit
///    budget B_allowed(t) = B_0 − (B_0 − B_target) · min(1, t / t_deadline), linear from the start
///    to the deadline. While Σ N_l n_l > B_allowed and C < target, layers not pruned in this
///    interval are forced down in ``forcedOrder``, ignoring τ, each at most once; every such
///    event is marked `forced`. Spreading the forcing over intervals replaces the spec's single
///    forced round at the deadline, which in its reference run cost 44 points of accuracy for an
///    epoch. At the deadline (`deadline: true`) the budget is B_target and the target is always
///    met unless every layer is already at n_min: ``ForcedPruningOrder/estimatedLoss`` closes the
///    gap with the least-loss allocation, ``ForcedPruningOrder/nonzeroRate`` repeats rounds.
public struct LSBPruningScheduler: Sendable, Equatable {
    /// Target compression C (sign counted; 10.67 is the paper's "16x").
    public var targetCompression: Double
    /// τ: a layer whose LSB nonzero rate is at most this is pruned.
    public var threshold: Double
    /// n_min: no layer goes below this precision.
    public var minBits: Int
    /// Which layers are forced down first.
    public var forcedOrder: ForcedPruningOrder

    /// A scheduler for `targetCompression` with threshold τ, floor n_min and forced order.
    public init(targetCompression: Double, threshold: Double, minBits: Int = 2,
                forcedOrder: ForcedPruningOrder = .estimatedLoss) {
        self.targetCompression = targetCompression
        self.threshold = threshold
        self.minBits = minBits
        self.forcedOrder = forcedOrder
    }

    /// C = 32 · Σ N_l / Σ N_l · n_l for parallel arrays of counts and precisions (1 if empty).
    public static func compression(counts: [Int], bits: [Int]) -> Double {
        let total = counts.reduce(0.0) { $0 + Double($1) }
        let stored = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        return stored > 0 ? 32 * total / stored : 1
    }

    /// Σ N_l n_l at which C equals the target: 32 · Σ N_l / target.
    public func targetBits(counts: [Int]) -> Double {
        32 * counts.reduce(0.0) { $0 + Double($1) } / targetCompression
    }

    /// The precision changes for this interval (see the type's documentation), in the order taken.
    /// `budgetBits` nil disables pacing; `deadline` true uses the target itself as the budget.
    public func decide(_ layers: [PruningLayerStatus], budgetBits: Double?, deadline: Bool) -> [PruningDecision] {
        var plan = PruningPlan(layers: layers, minBits: minBits, targetBits: targetBits(counts: layers.map(\.count)))
        if plan.reached { return [] }
        // A layer above n_min without its loss estimates makes the estimated order meaningless.
        let byLoss = forcedOrder == .estimatedLoss
            && layers.allSatisfy { $0.bits <= minBits || $0.dropLoss.count >= $0.bits - minBits }
        let ascending = layers.indices.sorted {
            (layers[$0].nonzeroRate ?? .infinity, $0) < (layers[$1].nonzeroRate ?? .infinity, $1)
        }
        var pruned = Set<Int>()
        for i in ascending where (layers[i].nonzeroRate ?? .infinity) <= threshold && plan.dropsLeft(i) > 0 {
            let k = plan.k(i)
            plan.prune(i, by: byLoss ? plan.leastReaching(i, upTo: k) ?? k : k, forced: false)
            pruned.insert(i)
            if plan.reached { return plan.decisions }
        }
        let budget = deadline ? plan.targetBits : budgetBits
        guard let budget else { return plan.decisions }
        if byLoss {
            if deadline {
                plan.closeGapAtLeastLoss()
            } else {
                plan.forceByLoss(budget: budget, skipping: pruned)
            }
            return plan.decisions
        }
        // Paper order: before the deadline a layer is pruned at most once per interval; at the
        // deadline rounds repeat until the target is met or every layer sits at n_min.
        repeat {
            var progressed = false
            for i in ascending where !pruned.contains(i) && plan.dropsLeft(i) > 0 {
                if plan.stored <= budget + 1e-9 || plan.reached { return plan.decisions }
                plan.prune(i, by: plan.k(i), forced: true)
                pruned.insert(i)
                progressed = true
            }
            if !deadline || !progressed { break }
            pruned.removeAll()
        } while plan.stored > budget + 1e-9 && !plan.reached
        return plan.decisions
    }
}

/// The precisions as ``LSBPruningScheduler/decide(_:budgetBits:deadline:)`` changes them.
private struct PruningPlan {
    let layers: [PruningLayerStatus]
    let minBits: Int
    let targetBits: Double
    var bits: [Int]
    var decisions: [PruningDecision] = []

    init(layers: [PruningLayerStatus], minBits: Int, targetBits: Double) {
        self.layers = layers
        self.minBits = minBits
        self.targetBits = targetBits
        self.bits = layers.map(\.bits)
    }

    var stored: Double { zip(layers, bits).reduce(0.0) { $0 + Double($1.0.count) * Double($1.1) } }
    var reached: Bool { stored <= targetBits + 1e-9 }

    /// Bits layer `i` may still drop.
    func dropsLeft(_ i: Int) -> Int { max(0, bits[i] - minBits) }
    /// The layer's k, bounded by what it may still drop (at least 1 while it may drop).
    func k(_ i: Int) -> Int { min(max(1, layers[i].k), dropsLeft(i)) }
    /// Estimated loss of taking layer `i` from its current planned precision down by `k` more bits.
    func loss(_ i: Int, by k: Int) -> Double {
        let already = layers[i].bits - bits[i]
        return (layers[i].loss(dropping: already + k) ?? .infinity) - (layers[i].loss(dropping: already) ?? 0)
    }
    /// The fewest bits (≤ `upTo`) layer `i` must drop for the target to be met, if any suffices.
    func leastReaching(_ i: Int, upTo: Int) -> Int? {
        let gap = stored - targetBits
        return (1...max(1, upTo)).first { Double(layers[i].count * $0) >= gap - 1e-9 }
    }

    mutating func prune(_ i: Int, by k: Int, forced: Bool) {
        let to = bits[i] - k
        let estimate = layers[i].loss(dropping: layers[i].bits - to)
        decisions.append(PruningDecision(path: layers[i].path, fromBits: bits[i], toBits: to,
                                         nonzeroRate: layers[i].nonzeroRate, forced: forced, estimatedLoss: estimate))
        bits[i] = to
    }

    /// Pacing by estimated loss: the least loss per stored bit saved first, each layer once; when
    /// that drop would reach the target, the drop (any layer, 1…k bits) that reaches it at the
    /// least loss instead.
    mutating func forceByLoss(budget: Double, skipping: Set<Int>) {
        var done = skipping
        while stored > budget + 1e-9 && !reached {
            let open = layers.indices.filter { !done.contains($0) && dropsLeft($0) > 0 }
            guard let cheapest = open.min(by: { perBit($0) < perBit($1) }) else { return }
            var pick = (layer: cheapest, k: k(cheapest))
            if leastReaching(cheapest, upTo: k(cheapest)) != nil {
                let reaching = open.flatMap { i in (1...k(i)).map { (layer: i, k: $0) } }
                    .filter { Double(layers[$0.layer].count * $0.k) >= stored - targetBits - 1e-9 }
                if let best = reaching.min(by: { (loss($0.layer, by: $0.k), $0.k) < (loss($1.layer, by: $1.k), $1.k) }) {
                    pick = best
                }
            }
            prune(pick.layer, by: pick.k, forced: true)
            done.insert(pick.layer)
        }
    }

    /// Estimated loss per stored bit saved of layer `i`'s k-bit drop (MSQ-SPEC §3 cost_l).
    private func perBit(_ i: Int) -> Double { loss(i, by: k(i)) / Double(layers[i].count * k(i)) }

    /// The deadline: every layer's final precision from the least-loss allocation that meets the
    /// target (``allocateBits(_:budgetBits:)``), as one forced decision per layer that moves.
    mutating func closeGapAtLeastLoss() {
        let choices = layers.indices.map { i -> BitAllocationLayer in
            var losses: [Int: Double] = [bits[i]: 0]
            for n in minBits..<bits[i] { losses[n] = loss(i, by: bits[i] - n) }
            return BitAllocationLayer(count: layers[i].count, losses: losses)
        }
        guard let final = allocateBits(choices, budgetBits: targetBits) else {
            for i in layers.indices where dropsLeft(i) > 0 { prune(i, by: dropsLeft(i), forced: true) }
            return
        }
        for i in layers.indices where final[i] < bits[i] { prune(i, by: bits[i] - final[i], forced: true) }
    }
}
