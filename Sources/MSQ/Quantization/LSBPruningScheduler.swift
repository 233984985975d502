/// What the scheduler knows about one quantized layer at a pruning interval.
public struct PruningLayerStatus: Sendable, Equatable {
    /// Module path.
    public var path: String
    /// N_l, the layer's weight count.
    public var count: Int
    /// n_l, its current precision (sign included).
    public var bits: Int
    /// r_l = #{i : lsb_int ≠ 0} / N_l, measured with the layer's k (MSQ-SPEC §3).
    public var nonzeroRate: Double
    /// k_l ∈ {1, 2}: how many LSBs the layer drops when pruned (MSQ-SPEC §4).
    public var k: Int

    /// Bundles one layer's state.
    public init(path: String, count: Int, bits: Int, nonzeroRate: Double, k: Int) {
        self.path = path
        self.count = count
        self.bits = bits
        self.nonzeroRate = nonzeroRate
        self.k = k
    }
}

/// One precision change decided at a pruning interval.
public struct PruningDecision: Codable, Sendable, Equatable {
    /// Module path of the layer.
    public var path: String
    /// n_l before.
    public var fromBits: Int
    /// n_l after.
    public var toBits: Int
    /// r_l when the decision was taken.
    public var nonzeroRate: Double
    /// True when the layer was above τ and pruned only to keep pace with the target (see
    /// ``LSBPruningScheduler``).
    public var forced: Bool

    /// Bundles one decision.
    public init(path: String, fromBits: Int, toBits: Int, nonzeroRate: Double, forced: Bool) {
        self.path = path
        self.fromBits = fromBits
        self.toBits = toBits
        self.nonzeroRate = nonzeroRate
        self.forced = forced
    }
}

/// The LSB-pruning decision rule (MSQ-SPEC §3, paper Sec. 3.3), free of any model or training state.
///
/// At a pruning interval, with C(n) = 32 · Σ N_l / Σ N_l · n_l:
///
/// 1. If C ≥ target, nothing is pruned (the finetuning phase has begun).
/// 2. Candidates are the layers with r_l ≤ τ and n_l > n_min. In ascending r_l order (ties: layer
///    order), each drops to max(n_min, n_l − k_l); pruning stops as soon as C ≥ target.
/// 3. Pacing (the project's answer to the deadline rule, MSQ-SPEC §3): the caller passes a bit
///    budget B_allowed(t) = B_0 − (B_0 − B_target) · min(1, t / t_deadline), linear from the start
///    to the deadline. While Σ N_l n_l > B_allowed and C < target, the layers not pruned in this
///    interval are pruned in ascending r_l order, ignoring τ, and each such event is marked
///    `forced`. Spreading the forcing over intervals replaces the spec's single forced round at the
///    deadline, which in its reference run cost 44 points of accuracy for an epoch.
///    At the deadline (``decide(_:budgetBits:deadline:)`` with `deadline: true`) the budget is
///    B_target and a layer may be pruned more than once, so the target is always met there
///    unless every layer is already at n_min.
public struct LSBPruningScheduler: Sendable, Equatable {
    /// Target compression C (sign counted; 10.67 is the paper's "16x").
    public var targetCompression: Double
    /// τ: a layer whose LSB nonzero rate is at most this is pruned.
    public var threshold: Double
    /// n_min: no layer goes below this precision.
    public var minBits: Int

    /// A scheduler for `targetCompression` with threshold τ and floor n_min.
    public init(targetCompression: Double, threshold: Double, minBits: Int = 2) {
        self.targetCompression = targetCompression
        self.threshold = threshold
        self.minBits = minBits
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
        let counts = layers.map(\.count)
        var bits = layers.map(\.bits)
        var decisions: [PruningDecision] = []
        func reached() -> Bool { Self.compression(counts: counts, bits: bits) >= targetCompression }
        func storedBits() -> Double { zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } }
        func prune(_ i: Int, forced: Bool) {
            let to = max(minBits, bits[i] - max(1, layers[i].k))
            decisions.append(PruningDecision(path: layers[i].path, fromBits: bits[i], toBits: to,
                                             nonzeroRate: layers[i].nonzeroRate, forced: forced))
            bits[i] = to
        }
        if reached() { return [] }
        let ascending = layers.indices.sorted {
            (layers[$0].nonzeroRate, $0) < (layers[$1].nonzeroRate, $1)
        }
        var pruned = Set<Int>()
        for i in ascending where layers[i].nonzeroRate <= threshold && bits[i] > minBits {
            prune(i, forced: false)
            pruned.insert(i)
            if reached() { return decisions }
        }
        let budget = deadline ? targetBits(counts: counts) : budgetBits
        guard let budget else { return decisions }
        // Before the deadline a layer is pruned at most once per interval; at the deadline rounds
        // repeat until the target is met or every layer sits at n_min.
        repeat {
            var progressed = false
            for i in ascending where !pruned.contains(i) && bits[i] > minBits {
                if storedBits() <= budget + 1e-9 || reached() { return decisions }
                prune(i, forced: true)
                pruned.insert(i)
                progressed = true
            }
            if !deadline || !progressed { break }
            pruned.removeAll()
        } while storedBits() > budget + 1e-9 && !reached()
        return decisions
    }
}
