import Foundation

// What the target-driven methods (MSQ, BSQ, CSQ) share: the schedule options and their checks, the
// interval/deadline pacing of MSQ-SPEC §3 and the `summary.json` fields. Kept in one place so the
// three methods cannot drift apart in how they read, check, fingerprint or report the same option.

/// The options every target-driven method (``MSQOptions``, ``BSQOptions``, ``CSQOptions``) has,
/// with the same CLI names and meaning; each type keeps its own defaults (λ differs per method).
///
/// The fields stay stored properties of each options type, so their `Codable` form and
/// ``MSQOptions/identity``-style fingerprints are flat and unchanged.
public protocol PruningScheduleOptions: Sendable {
    /// Target compression C, sign counted [--target-compression].
    var targetCompression: Double { get set }
    /// λ, the regulariser weight [--lambda].
    var lambda: Double { get set }
    /// Interval in epochs, fractional allowed [--prune-interval].
    var pruneIntervalEpochs: Double { get set }
    /// Fraction of training by which the target must be met [--prune-deadline].
    var deadlineFraction: Double { get set }
    /// Lowest precision of a layer, sign included [--min-bits].
    var minBits: Int { get set }
    /// Checks ranges a user can get wrong; `maxCompression` is the model's C with every layer at
    /// ``minBits``.
    func validate(maxCompression: Double) throws(TrainingError)
}

extension PruningScheduleOptions {
    /// The options type's name, which errors give with the property (`MSQOptions.minBits`).
    static var optionsName: String { String(describing: Self.self) }

    /// C with every layer of `counts` weights at ``minBits``: the most the target can ask for.
    func maxCompression(counts: [Int]) -> Double {
        LSBPruningScheduler.compression(counts: counts, bits: counts.map { _ in minBits })
    }

    /// The fingerprint entries of the shared options, keyed `<prefix>.<CLI name>`; the method adds
    /// its own. Formatting is `String(_:)`, which old checkpoints' fingerprints were written with.
    func scheduleIdentity(prefix: String) -> [String: String] {
        [
            "\(prefix).target_compression": String(targetCompression), "\(prefix).lambda": String(lambda),
            "\(prefix).prune_interval": String(pruneIntervalEpochs),
            "\(prefix).prune_deadline": String(deadlineFraction), "\(prefix).min_bits": String(minBits),
        ]
    }

    /// Checks `minBits`' range, the target against `maxCompression`, then λ, `pruneThreshold` (nil for methods that
    /// have none), the interval and the deadline, in that order (the first bad option is named).
    func validateSchedule(maxCompression: Double, pruneThreshold: Double?) throws(TrainingError) {
        let optionsName = Self.optionsName
        // First: the reachable compression is computed from it (--min-bits 2^63−1 once read as
        // "--min-bits -1 … compresses 0.00x").
        if !msqBitRange.contains(minBits) { throw .invalidMethodOption(options: optionsName, property: "minBits", problem: "must be in 2...16 (got \(minBits))") }
        if !(targetCompression > 1) || !targetCompression.isFinite {
            throw .invalidMethodOption(options: optionsName, property: "targetCompression", problem: "must be a number above 1 (got \(targetCompression))")
        }
        if targetCompression > maxCompression + 1e-9 {
            throw .invalidMethodOption(options: optionsName, property: "targetCompression", problem: String(format: "%.2f is out of reach: with every layer at minBits \(minBits) the model compresses %.2fx at most", targetCompression, maxCompression))
        }
        if !(lambda >= 0) || !lambda.isFinite { throw .invalidMethodOption(options: optionsName, property: "lambda", problem: "must be ≥ 0 (got \(lambda))") }
        if let pruneThreshold, !(0...1).contains(pruneThreshold) {
            throw .invalidMethodOption(options: optionsName, property: "pruneThreshold", problem: "must be in [0, 1] (got \(pruneThreshold))")
        }
        if !(pruneIntervalEpochs > 0) || !pruneIntervalEpochs.isFinite {
            throw .invalidMethodOption(options: optionsName, property: "pruneIntervalEpochs", problem: "must be a positive number of epochs (got \(pruneIntervalEpochs))")
        }
        if !(deadlineFraction > 0 && deadlineFraction <= 1) { throw .invalidMethodOption(options: optionsName, property: "deadlineFraction", problem: "must be in (0, 1] (got \(deadlineFraction))") }
    }

    /// The checks of a bit-plane method's precisions (BSQ, CSQ): `initialBits` and `minBits` in
    /// 2...16 and `minBits` at most `initialBits`; run before ``validateSchedule``.
    func validateBitPlanes(initialBits: Int) throws(TrainingError) {
        let optionsName = Self.optionsName
        if !msqBitRange.contains(initialBits) {
            throw .invalidMethodOption(options: optionsName, property: "initialBits", problem: "must be in 2...16 (bit planes + sign; got \(initialBits))")
        }
        if !msqBitRange.contains(minBits) { throw .invalidMethodOption(options: optionsName, property: "minBits", problem: "must be in 2...16 (got \(minBits))") }
        if minBits > initialBits {
            throw .invalidMethodOption(options: optionsName, property: "minBits", problem: "\(minBits) is above the starting precision initialBits \(initialBits)")
        }
    }
}

/// The interval arithmetic of MSQ-SPEC §3 for one run: intervals of `pruneIntervalEpochs` (at least
/// one step) and the linearly paced bit budget B_0 → B_target that MSQ and BSQ both force towards.
struct PruningPace {
    /// Steps between intervals.
    let intervalSteps: Int
    /// The last interval boundary at or before `deadlineFraction` of training (at least one
    /// interval): the deadline is itself an interval, so the target is met there in one decision
    /// rather than by an extra interval a few steps after the previous one.
    let deadlineStep: Int

    init(options: some PruningScheduleOptions, plan: TrainingPlan) {
        let interval = Self.intervalSteps(epochs: options.pruneIntervalEpochs, plan: plan)
        let raw = max(1, RunLimits.steps(epochs: options.deadlineFraction, stepsPerEpoch: plan.totalSteps))
        intervalSteps = interval
        deadlineStep = max(interval, raw / interval * interval)
    }

    /// `epochs` of `plan` in steps, rounded, at least one.
    static func intervalSteps(epochs: Double, plan: TrainingPlan) -> Int {
        // Clamped: an interval of 1e300 epochs is refused by checkFits, not trapped on here.
        max(1, RunLimits.steps(epochs: epochs, stepsPerEpoch: plan.stepsPerEpoch))
    }

    /// Refuses an interval so long that the deadline would fall after the run (no interval would
    /// happen); `what` names the interval in the message ("pruning", "requantization").
    func checkFits(_ plan: TrainingPlan, intervalEpochs: Double, what: String, options: String) throws {
        if deadlineStep > plan.totalSteps {
            throw TrainingError.invalidMethodOption(options: options, property: "pruneIntervalEpochs", problem: String(format: "%g epochs (%d steps) is longer than the whole run (%d steps): no %@ interval would happen; use a shorter interval", intervalEpochs, intervalSteps, plan.totalSteps, what))
        }
    }

    /// Whether `stepsDone` is at or past the deadline.
    func isDeadline(_ stepsDone: Int) -> Bool { stepsDone >= deadlineStep }

    /// Σ N_l n_l allowed after `stepsDone` steps: `initialBits` moved linearly to `targetBits`,
    /// reached at the deadline.
    func budget(stepsDone: Int, initialBits: Double, targetBits: Double) -> Double {
        let pace = min(1, Double(stepsDone) / Double(deadlineStep))
        return initialBits - (initialBits - targetBits) * pace
    }
}

/// What the Hessian part of the summary says (BSQ and CSQ: off, all zero).
struct HessianSummary {
    var enabled = false
    var estimates = 0
    var probes = 0
    var seconds = 0.0
}

/// The `summary.json` fields of a target-driven method, named as MSQ's: ``precisionSummary(paths:counts:bits:)``,
/// `target_compression`, `pruning_events`, `forced_prunings`, `pruning_intervals`, `final_lambda`, the
/// `hessian*` fields, `activation_bits` and `final_phase_start_step`/`_epoch` (null epoch while
/// the target is not yet met). The method adds its own fields to the result.
func pruningRunSummary(paths: [String], counts: [Int], bits: [Int], targetCompression: Double,
                       events: [[String: Any]], forcedPrunings: Int, intervals: Int, finalLambda: Double,
                       hessian: HessianSummary = HessianSummary(), activationBits: Int?,
                       finalPhaseStartStep: Int?, stepsPerEpoch: Int) -> [String: Any] {
    var fields = precisionSummary(paths: paths, counts: counts, bits: bits)
    fields["target_compression"] = targetCompression
    fields["pruning_events"] = events
    fields["forced_prunings"] = forcedPrunings
    fields["pruning_intervals"] = intervals
    fields["final_lambda"] = finalLambda
    fields["hessian"] = hessian.enabled
    fields["hessian_estimates"] = hessian.estimates
    fields["hessian_probes_total"] = hessian.probes
    fields["hessian_seconds"] = hessian.seconds
    fields["activation_bits"] = activationBits ?? 32
    if let s = finalPhaseStartStep {
        fields["final_phase_start_step"] = s
        fields["final_phase_start_epoch"] = Double(s) / Double(stepsPerEpoch)
    } else {
        fields["final_phase_start_epoch"] = NSNull()
    }
    return fields
}

/// `overshoot` = C reached − target and `overshoot_percent` = the same relative to the target, in
/// percent: the storage budget a run left unused (MSQ-SPEC §3).
func overshootSummary(reached: Double, target: Double) -> [String: Any] {
    ["overshoot": reached - target, "overshoot_percent": 100 * (reached / target - 1)]
}

/// One precision change as a `summary.json` object: MSQ's keys, which the bit-level methods extend.
func pruningEventObject(step: Int, epoch: Double, decision: PruningDecision) -> [String: Any] {
    ["step": step, "epoch": epoch, "layer": decision.path, "from_bits": decision.fromBits,
     "to_bits": decision.toBits, "nonzero_rate": decision.nonzeroRate ?? NSNull(), "forced": decision.forced,
     "estimated_loss": decision.estimatedLoss ?? NSNull()]
}
