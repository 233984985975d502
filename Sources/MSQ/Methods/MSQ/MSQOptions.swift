import Foundation

/// The options of an MSQ run (MSQ-SPEC §2–4); CLI names in brackets.
public struct MSQOptions: PruningScheduleOptions, Codable, Sendable, Equatable {
    /// Target compression C, sign counted [--target-compression]. 10.67 = 3 bits average = the paper's "16x".
    public var targetCompression: Double
    /// λ, the weight of the LSB regulariser in L = L_task + λ·R [--lambda]. Default from a sweep
    /// (ResNet-20, Fashion-MNIST 10k, 6 epochs, 10.67x, seed 0: test accuracy 0.882 at λ = 1,
    /// 0.863 at 5, 0.84 at 20; README "MSQ defaults").
    public var lambda: Double = 1
    /// τ, the LSB nonzero rate at or under which a layer is pruned [--prune-threshold].
    public var pruneThreshold: Double = 0.05
    /// Pruning interval in epochs, fractional allowed, at least one step [--prune-interval].
    /// 0.2 so the early deadline below still spreads the drops over five intervals.
    public var pruneIntervalEpochs: Double = 0.2
    /// Fraction of training after which the target must be met [--prune-deadline]. 0.2, not the
    /// spec's 0.6 (``paper(targetCompression:)``): the scheme trained from step 0 beat the run that
    /// found it (10k recipe, 3 seeds), so the drops cost through the trajectory, and reaching the
    /// target early leaves most of the run to finetune at it (bench/README "Allocation").
    public var deadlineFraction: Double = 0.2
    /// n_min [--min-bits].
    public var minBits: Int = 2
    /// Hessian-aware k (MSQ-SPEC §4); off makes k = 1 everywhere [--hessian on|off].
    public var hessian: Bool = true
    /// How the HVPs are computed; nil = ``HessianMode/automatic(for:)`` (Gauss-Newton for the
    /// ResNets, which are piecewise linear in each layer's weights) [--hessian-mode].
    public var hessianMode: HessianMode? = nil
    /// Which estimator gives the per-layer traces [--hessian-trace]. Default sampled Gauss-Newton:
    /// on the 10k recipe (seed 0, 7 intervals × 20 layers) its per-layer standard error was a
    /// median 25 % of the trace with none ≤ 0, Hutchinson's 66 % with 20 of 140 ≤ 0, at the same
    /// probe count (bench/README "Allocation").
    public var hessianTrace: TraceEstimator = .sampledGaussNewton
    /// Calibration images for the Hessian (the first N training images, no augmentation) [--hessian-batch].
    public var hessianBatch: Int = 64
    /// m_max, the most Hutchinson probes per estimate [--hessian-probes].
    public var hessianProbes: Int = 8
    /// Relative change of the running trace mean under which probing stops early.
    public var hessianTolerance: Double = 0.05
    /// λ is multiplied by this after every interval that had to force pruning (1 = never raised)
    /// [--lambda-growth].
    public var lambdaGrowth: Double = 1
    /// How λ is weighted per layer as its precision falls [--lambda-scaling].
    public var lambdaScaling: LambdaScaling = .uniform
    /// ρ, the strength of the scheduled pull [--scheduled-pull]; 0 (the default) turns it off. At
    /// every pruning interval (and once at step 0) the layers the pace would force down at the next
    /// interval are scheduled, each with the bits planned for it as its k, and after every optimizer
    /// step until then each takes a proximal step of its LSB term of
    /// t = ρ · 2^(k−1) / T + 2 · (the step's mean |ΔW| in n-bit levels) levels (T = steps per
    /// interval; 2^(k−1) is the farthest a weight can be from its (n−k)-bit level), so the weights
    /// settle on the coarser grid and the drop is taken on r_l ≤ τ instead of forced
    /// (``MSQTraining``'s scheduled-pull extension). Off by default: on the 10k recipe ρ = 2 left no
    /// drop forced but cost 0.9 points (bench/README "Allocation").
    public var scheduledPull: Double = 0
    /// The order of forced drops and how the deadline closes the gap [--forced-order].
    public var forcedOrder: ForcedPruningOrder = .estimatedLoss
    /// n at step 0, every quantized layer's starting precision, sign included [--weight-bits].
    /// Used by ``MSQTraining/setUp(model:options:context:)``; fingerprinted as `msq.weight_bits`.
    public var initialBits: Int = 8
    /// Whether each RoundClamp scale covers the whole tensor or one output channel [--scale]. Used
    /// by ``MSQTraining/setUp(model:options:context:)``; fingerprinted as `msq.scale` when per channel.
    public var scaleGranularity: ScaleGranularity = .perTensor

    /// Options with the given target and the defaults above.
    public init(targetCompression: Double) {
        self.targetCompression = targetCompression
    }

    /// MSQ-SPEC read literally (`--preset paper`): intervals of 0.5 epochs and the deadline at 60 %
    /// of training, ascending-r forcing with whole k-bit drops, λ uniform over precisions,
    /// Hutchinson traces; per-tensor scales are the quantizer's default.
    public static func paper(targetCompression: Double) -> MSQOptions {
        var o = MSQOptions(targetCompression: targetCompression)
        o.pruneIntervalEpochs = 0.5
        o.deadlineFraction = 0.6
        o.forcedOrder = .nonzeroRate
        o.lambdaScaling = .uniform
        o.hessianTrace = .hutchinson
        o.scheduledPull = 0
        return o
    }

    /// The options as name → value, for the run fingerprint (a resumed run must match them).
    public var identity: [String: String] {
        scheduleIdentity(prefix: "msq").merging([
            "msq.prune_threshold": String(pruneThreshold), "msq.hessian": String(hessian),
            "msq.hessian_batch": String(hessianBatch), "msq.hessian_probes": String(hessianProbes),
            "msq.hessian_tolerance": String(hessianTolerance), "msq.lambda_growth": String(lambdaGrowth),
            // Always present: a checkpoint from before the 2026-12 allocation rules was trained
            // by other rules, and resuming it under these would splice two algorithms.
            "msq.lambda_scaling": lambdaScaling.rawValue, "msq.forced_order": forcedOrder.rawValue,
            "msq.hessian_trace": hessianTrace.rawValue,
        ]) { shared, _ in shared }
            // Only when chosen: checkpoints written before the option existed still resume.
            .merging(hessianMode.map { ["msq.hessian_mode": $0.rawValue] } ?? [:]) { shared, _ in shared }
            .merging(scheduledPull > 0 ? ["msq.scheduled_pull": String(scheduledPull)] : [:]) { shared, _ in shared }
    }

    /// Checks ranges a user can get wrong; `layerCount`/`maxCompression` come from the model.
    public func validate(maxCompression: Double) throws(TrainingError) {
        try validateSchedule(maxCompression: maxCompression, pruneThreshold: pruneThreshold)
        if !msqBitRange.contains(minBits) { throw .invalidMethodOption(options: "MSQOptions", property: "minBits", problem: "must be in 2...16 (got \(minBits))") }
        try validateHessianSampling(batch: hessianBatch, probes: hessianProbes, options: Self.optionsName)
        if !(scheduledPull >= 0) || !scheduledPull.isFinite { throw .invalidMethodOption(options: "MSQOptions", property: "scheduledPull", problem: "must be a finite number ≥ 0 (got \(scheduledPull))") }
        if !(lambdaGrowth >= 1) || !lambdaGrowth.isFinite { throw .invalidMethodOption(options: "MSQOptions", property: "lambdaGrowth", problem: "must be ≥ 1 (got \(lambdaGrowth))") }
    }
}
