/// The options of an SMPQ (or DMPQ) run, SMPQ-SPEC's defaults; CLI names in brackets. The values the
/// spec marks as this project's choice (it fixes only what the paper's abstract says) are options so
/// that a run can test them.
public struct SMPQOptions: Codable, Sendable, Equatable {
    /// Target compression C, sign counted [--target-compression].
    public var targetCompression: Double
    /// How the final precisions are chosen: by Shapley value φ (SMPQ) or by α (DMPQ) [--selection].
    public var selection: SMPQSelection = .shapley
    /// The candidate precisions B every layer searches over, sign included.
    public var candidates: [Int] = [2, 3, 4, 5, 6, 8]
    /// Per-tensor or per-output-channel RoundClamp scales, in the search and after it [--scale].
    public var scaleGranularity: ScaleGranularity = .perTensor
    /// Fraction of the training set held out for α and the Shapley values (seeded) [--validation-fraction].
    public var validationFraction: Double = 0.1
    /// Fraction of the run's steps spent searching; QAT at the chosen scheme takes the rest [--search-fraction].
    public var searchFraction: Double = 0.4
    /// Fraction of the search in which only W trains (α frozen at uniform, no Shapley estimate).
    public var warmupFraction: Double = 0.2
    /// Adam's learning rate on α.
    public var alphaLearningRate: Double = 3e-3
    /// Adam's β1 on α.
    public var alphaBeta1: Double = 0.5
    /// Adam's β2 on α.
    public var alphaBeta2: Double = 0.999
    /// γ, the weight of the budget penalty γ · relu(E[bits] − 32/C)² (this project's choice: with
    /// uniform p over the default candidates E[bits] = 4.67, 1.67 bits over a 10.67x target, so the
    /// penalty starts near the task loss) [--budget-weight].
    public var budgetWeight: Double = 1
    /// Images per α step, drawn from the validation part without augmentation (the CLI passes --batch-size).
    public var validationBatchSize: Int = 128
    /// Images of the fixed validation batch the Shapley value function scores [--shapley-batch].
    public var shapleyBatch: Int = 512
    /// M, permutations per Shapley estimate [--shapley-permutations]. 0 takes no estimate at all,
    /// which only DMPQ (selection by α) can do: its search is unchanged (the estimates measure the
    /// supernet, they never train it), only φ goes unreported.
    public var shapleyPermutations: Int = 4
    /// A walk stops once accuracy falls below this fraction of the full supernet's.
    public var shapleyTruncation: Double = 0.5
    /// w in φ ← (1 − w) · φ_previous + w · φ_new.
    public var shapleySmoothing: Double = 0.2
    /// Epochs between Shapley estimates during the search (one more at its end).
    public var shapleyEveryEpochs: Double = 1

    /// Options with the given target and the defaults above.
    public init(targetCompression: Double) {
        self.targetCompression = targetCompression
    }

    static let optionsName = "SMPQOptions"

    /// The options as name → value, for the run fingerprint (`smpq.*`).
    public var identity: [String: String] {
        var out = ["smpq.target_compression": String(targetCompression), "smpq.selection": selection.rawValue,
                   "smpq.candidates": candidates.map(String.init).joined(separator: ","),
                   "smpq.validation_fraction": String(validationFraction), "smpq.search_fraction": String(searchFraction),
                   "smpq.warmup_fraction": String(warmupFraction), "smpq.alpha_lr": String(alphaLearningRate),
                   "smpq.alpha_betas": "\(alphaBeta1),\(alphaBeta2)", "smpq.budget_weight": String(budgetWeight),
                   "smpq.validation_batch": String(validationBatchSize), "smpq.shapley_batch": String(shapleyBatch),
                   "smpq.shapley_permutations": String(shapleyPermutations),
                   "smpq.shapley_truncation": String(shapleyTruncation), "smpq.shapley_smoothing": String(shapleySmoothing),
                   "smpq.shapley_every": String(shapleyEveryEpochs)]
        out.merge(scaleGranularity.identity(method: "smpq")) { a, _ in a }
        return out
    }

    /// Checks every range a user can get wrong for a model of `counts` weights per layer.
    public func validate(counts: [Int]) throws(TrainingError) {
        func bad(_ property: String, _ problem: String) -> TrainingError {
            .invalidMethodOption(options: Self.optionsName, property: property, problem: problem)
        }
        guard !candidates.isEmpty, Set(candidates).count == candidates.count, candidates.allSatisfy(msqBitRange.contains) else {
            throw bad("candidates", "must be distinct precisions in 2...16 (got \(candidates))")
        }
        let lowest = candidates.min() ?? 2
        let most = LSBPruningScheduler.compression(counts: counts, bits: counts.map { _ in lowest })
        if !(targetCompression > 1) || !targetCompression.isFinite || targetCompression > most + 1e-9 {
            throw bad("targetCompression", String(format: "must be above 1 and at most %.2f (every layer at the lowest candidate, %d bits) (got %g)", most, lowest, targetCompression))
        }
        for (name, value) in [("validationFraction", validationFraction), ("searchFraction", searchFraction)]
            where !(value > 0 && value < 1) {
            throw bad(name, "must be in (0, 1) (got \(value))")
        }
        if !(warmupFraction >= 0 && warmupFraction < 1) { throw bad("warmupFraction", "must be in [0, 1) (got \(warmupFraction))") }
        if !(alphaLearningRate > 0) || !alphaLearningRate.isFinite { throw bad("alphaLearningRate", "must be a finite number > 0 (got \(alphaLearningRate))") }
        for (name, value) in [("alphaBeta1", alphaBeta1), ("alphaBeta2", alphaBeta2)] where !(value >= 0 && value < 1) {
            throw bad(name, "must be in [0, 1) (got \(value))")
        }
        if !(budgetWeight >= 0) || !budgetWeight.isFinite { throw bad("budgetWeight", "must be a finite number ≥ 0 (got \(budgetWeight))") }
        if validationBatchSize < 1 { throw bad("validationBatchSize", "must be at least 1 (got \(validationBatchSize))") }
        if shapleyBatch < 1 { throw bad("shapleyBatch", "must be at least 1 image (got \(shapleyBatch))") }
        if !(0...1024).contains(shapleyPermutations) { throw bad("shapleyPermutations", "must be in 0...1024 (got \(shapleyPermutations))") }
        if shapleyPermutations == 0 && selection == .shapley {
            throw bad("shapleyPermutations", "is 0 (no Shapley estimate), but the selection is by Shapley value; use 0 only with selection by α")
        }
        if !(shapleyTruncation >= 0 && shapleyTruncation <= 1) { throw bad("shapleyTruncation", "must be in [0, 1] (got \(shapleyTruncation))") }
        if !(shapleySmoothing > 0 && shapleySmoothing <= 1) { throw bad("shapleySmoothing", "must be in (0, 1] (got \(shapleySmoothing))") }
        if !(shapleyEveryEpochs > 0) || !shapleyEveryEpochs.isFinite { throw bad("shapleyEveryEpochs", "must be a finite number of epochs > 0 (got \(shapleyEveryEpochs))") }
    }
}
