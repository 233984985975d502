import Foundation

/// The options of a CSQ run (MSQ-SPEC §7); CLI names in brackets, the rest library-only.
public struct CSQOptions: PruningScheduleOptions, Codable, Sendable, Equatable {
    /// Target compression C, sign counted (as MSQ's) [--target-compression].
    public var targetCompression: Double
    /// Starting (and largest) precision P0 + 1, sign included [--weight-bits]: 9 = 8 bit planes
    /// (2·8 bit logits per weight).
    public var initialBits: Int = 9
    /// λ, the weight of the budget-aware mask regulariser [--lambda]. Default 1 (not swept).
    public var lambda: Double = 1
    /// Status-line interval in epochs [--prune-interval].
    public var pruneIntervalEpochs: Double = 0.5
    /// Fraction of training after which the masks are hardened and the scheme fixed [--prune-deadline].
    public var deadlineFraction: Double = 0.6
    /// Lowest precision of a layer, sign included (2 = one plane) [--min-bits].
    public var minBits: Int = 2
    /// β at the end of the search phase (CSQ's `--final-temp` 200); β(t) = β_final^(t / t_deadline).
    public var finalTemperature: Double = 200
    /// Initial logit of a set bit (unset bits start at 0; CSQ's `ini2bit` writes 1 and 0).
    public var bitLogitInit: Double = 1
    /// Initial mask logit μ (CSQ's `mask_initial_value` 0: m = 1/2, every plane counted active).
    public var maskLogitInit: Double = 0

    /// Options with the given target and the defaults above.
    public init(targetCompression: Double) {
        self.targetCompression = targetCompression
    }

    /// The options as name → value, for the run fingerprint.
    public var identity: [String: String] {
        scheduleIdentity(prefix: "csq").merging([
            "csq.weight_bits": String(initialBits), "csq.final_temperature": String(finalTemperature),
            "csq.bit_logit_init": String(bitLogitInit), "csq.mask_logit_init": String(maskLogitInit),
        ]) { shared, _ in shared }
    }

    /// Checks ranges a user can get wrong; `maxCompression` is the model's C with every layer at `minBits`.
    public func validate(maxCompression: Double) throws(TrainingError) {
        try validateBitPlanes(initialBits: initialBits)
        try validateSchedule(maxCompression: maxCompression, pruneThreshold: nil)
        if !(finalTemperature >= 1) || !finalTemperature.isFinite { throw .invalidMethodOption(options: "CSQOptions", property: "finalTemperature", problem: "must be ≥ 1 (got \(finalTemperature))") }
        if !(bitLogitInit > 0) || !bitLogitInit.isFinite {
            throw .invalidMethodOption(options: "CSQOptions", property: "bitLogitInit", problem: "must be positive and finite (got \(bitLogitInit))")
        }
        if !maskLogitInit.isFinite {
            throw .invalidMethodOption(options: "CSQOptions", property: "maskLogitInit", problem: "must be finite (got \(maskLogitInit))")
        }
    }
}

/// CSQ (MSQ-SPEC §7) as a ``TrainingMethod``, the project's formulation after Xiao et al. (DAC 2023)
/// and their code: every conv/linear weight becomes relaxed signed bits with per-layer bit masks
/// (``CSQQuantizer``), all sigmoids sharing a temperature β annealed exponentially,
/// β(t) = β_final^(t / t_s) from 1 to β_final (200) over the search phase t < t_s = deadline ·
/// total steps, and a budget-aware regulariser on the soft masks:
///
///     ρ  = Σ_l N_l k_l / Σ_l N_l P0          k_l = #{b : μ_{l,b} ≥ 0}, the layer's active planes
///     ρ* = (32 / C_target − 1) / P0          the target's magnitude bits per weight, as a fraction
///     R  = (ρ − ρ*) · Σ_l (N_l / N_total) Σ_b σ(β μ_{l,b})        (ρ − ρ* held constant)
///
/// so the masks shrink while the model is over budget and grow back while it is under (CSQ's
/// "growing"; CSQ's code weighs every mask equally and counts mask entries, we weigh by N_l so that
/// the budget is the memory budget C counts). L = L_task + λ R.
///
/// At t_s the masks are hardened (plane active iff μ ≥ 0, at least --min-bits − 1 per layer); if
/// C is still below the target the active planes with the smallest μ are switched off, logged as
/// `forced`, until it is met. The rest of the run finetunes at the fixed scheme with hard bits
/// (``CSQQuantizer/hardMask``). Precisions count the sign: n_l = 1 + k_l.
///
/// The checkpoint carries the logits and scales as parameters (`<layer>.csq.*`) and, in the method
/// state, the step count (β is a function of it), phase, hard masks, precisions (`precisions`, not
/// `scheme`: `msq export` refuses CSQ checkpoints) and events.
///
/// **Several processes** (``TrainingPlan/collective``): CSQ estimates nothing from data beyond the
/// gradients the Trainer already sums. The budget regulariser and the hardening at t_s are functions
/// of the mask logits alone, so every rank computes them itself from its replica (identical
/// replicas, identical masks, no communication; a broadcast from rank 0 would hide a drifted replica
/// instead of reporting it). The hardening ends with ``Collective/checkSameBitScheme(paths:bits:step:)``,
/// which throws ``CollectiveError/replicasDiffer(_:)`` if the ranks' precisions differ. (Equal
/// precisions with different active planes would pass: the check compares bit-widths, as for the
/// other methods.)
public final class CSQTraining: TrainingMethod, BitPlaneMethod {
    /// The run's options.
    public let options: CSQOptions
    /// The quantized layers' paths, in walk order.
    public let paths: [String]
    /// N_l per layer.
    public let counts: [Int]
    /// The relaxed bits and masks of every layer, in ``paths`` order.
    public let quantizers: [CSQQuantizer]
    let activationBits: Int?
    let activationExcluded: [String]

    struct State: Codable, BitPlaneProgress {
        var precisions: QuantizationScheme
        var phase: String = "search"
        var stepsDone: Int = 0
        var hardMasks: [[Bool]]?
        var events: [BitPlaneEvent] = []
        var finalPhaseStartStep: Int?
        var intervals: Int = 0
    }
    var state: State
    var plan = TrainingPlan(stepsPerEpoch: 1, epochs: 1, log: { _ in })
    var lastRegularizer = 0.0

    /// Replaces every Conv2d/Linear weight of `model` by CSQ's relaxed bits and masks initialised from
    /// it (and quantizes the layer inputs, except the network input, to `activationBits` with PACT).
    /// Build the method before the ``Trainer``. Nothing changes on a throw.
    public init(model: any Module, options: CSQOptions, activationBits: Int? = nil) throws {
        let (layers, excluded) = try attachBitLevelBaseline(to: model, method: "csq", options: options,
                                                            activationBits: activationBits)
        self.options = options
        self.paths = layers.map(\.path)
        self.counts = layers.map(\.count)
        self.activationBits = activationBits
        self.activationExcluded = excluded
        self.quantizers = layers.map { layer in
            CSQQuantizer(weight: layerWeight(of: layer.module)!.value, planes: options.initialBits - 1,
                         bitLogit: Float(options.bitLogitInit), maskLogit: Float(options.maskLogitInit))
        }
        for (layer, q) in zip(layers, quantizers) { attachWeightTransform(q, to: layer.module) }
        let bits = quantizers.map(\.bits)
        self.state = State(precisions: precisionScheme(paths: paths, bits: bits, activationBits: activationBits,
                                                       activationExcluded: activationExcluded))
    }

    public var name: String { "csq" }

    /// Current precisions (1 + active planes), in ``paths`` order.
    public var bits: [Int] { quantizers.map(\.bits) }
    /// C, sign counted.
    public var compression: Double { LSBPruningScheduler.compression(counts: counts, bits: bits) }
    /// Whether the masks are hard and the scheme fixed.
    public var isFinetuning: Bool { state.phase == "finetuning" }
    /// Every precision change (at the hardening).
    public var events: [BitPlaneEvent] { state.events }
    /// `conv1:9 layer1.0.conv1:4 …`.
    public var bitScheme: String { bitSchemeLine(paths: paths, bits: bits) }
    /// N_total.
    public var totalCount: Int { counts.reduce(0, +) }
    /// P0.
    var planes: Int { options.initialBits - 1 }

    var intervalSteps: Int { PruningPace.intervalSteps(epochs: options.pruneIntervalEpochs, plan: plan) }
    /// Not aligned to an interval as MSQ's and BSQ's: CSQ's intervals only print status, the
    /// deadline ends β's annealing.
    var deadlineStep: Int { max(1, RunLimits.steps(epochs: options.deadlineFraction, stepsPerEpoch: plan.totalSteps)) }

    /// β after `stepsDone` steps: β_final^(min(1, stepsDone / t_s)).
    public func temperature(afterSteps stepsDone: Int) -> Float {
        Float(pow(options.finalTemperature, min(1, Double(stepsDone) / Double(deadlineStep))))
    }

    /// ρ = Σ N_l k_l / Σ N_l P0 (hard counts).
    public var bitRatio: Double {
        let active = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1 - 1) }
        return active / (Double(totalCount) * Double(planes))
    }

    /// ρ* = (32 / C_target − 1) / P0.
    public var targetBitRatio: Double { (32 / options.targetCompression - 1) / Double(planes) }

    public func prepare(model: Module, plan: TrainingPlan) throws {
        self.plan = plan
        for (i, q) in quantizers.enumerated() {
            q.hardMask = state.hardMasks?[i]
            q.beta = temperature(afterSteps: state.stepsDone)
        }
        if !isFinetuning {
            plan.log(String(format: "csq: %d layers, %d weights × %d planes × 2 bit logits; start %.2f bits (C %.2fx); target C %.2fx (paper %.2fx), ρ* %.3f; β 1 → %g by step %d of %d, masks hardened there; λ %g",
                            paths.count, totalCount, planes, meanBits(counts: counts, bits: bits), compression,
                            options.targetCompression, 32 / (32 / options.targetCompression - 1), targetBitRatio,
                            options.finalTemperature, deadlineStep, plan.totalSteps, options.lambda))
        }
    }

    /// The budget-aware regulariser: computes R at the current β (each layer's ``CSQQuantizer/beta``)
    /// and ADDS λ·dR/dμ_{l,b} = λ (ρ − ρ*) (N_l / N_total) β m (1 − m) into the mask logits'
    /// gradients; returns R (not times λ). Called by ``afterBackward(model:epoch:step:)`` in the search phase.
    @discardableResult
    public func applyBudgetRegularizer() -> Double {
        let gap = bitRatio - targetBitRatio
        var r = 0.0
        for (l, q) in quantizers.enumerated() {
            let w = Double(counts[l]) / Double(totalCount)
            let beta = q.beta
            for b in 0..<q.maxPlanes {
                let m = CSQQuantizer.sigmoid(beta * q.maskLogits.value[flat: b])
                r += gap * w * Double(m)
                q.maskLogits.grad[flat: b] += Float(options.lambda * gap * w * Double(beta * m * (1 - m)))
            }
        }
        return r
    }

    public func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
        let done = step + 1
        state.stepsDone = done
        var extra = 0.0
        if !isFinetuning {
            let r = applyBudgetRegularizer()
            lastRegularizer = r
            extra = options.lambda * r
            if done >= deadlineStep {
                harden(stepsDone: done)
                try plan.collective.checkSameBitScheme(paths: paths, bits: bits, step: done)
            } else if done % intervalSteps == 0 {
                state.intervals += 1
                printStatus(title: String(format: "csq interval %d (step %d, epoch %.2f)", state.intervals, done,
                                          Double(done) / Double(plan.stepsPerEpoch)))
            }
        }
        // β for the next step's forward.
        let beta = temperature(afterSteps: done)
        for q in quantizers { q.beta = beta }
        return extra
    }

    /// Ends the search: hard masks (μ ≥ 0, at least --min-bits − 1 planes), forced switch-offs while
    /// C < target, then the finetuning phase.
    func harden(stepsDone: Int) {
        let epochNow = Double(stepsDone) / Double(plan.stepsPerEpoch)
        let minPlanes = options.minBits - 1
        let before = bits
        var masks = quantizers.map { q -> [Bool] in
            var active = q.activePlanes
            // Keep the layer's strongest planes up to the floor.
            let order = (0..<q.maxPlanes).sorted { (q.maskLogits.value[flat: $0], $0) > (q.maskLogits.value[flat: $1], $1) }
            for b in order where active.filter({ $0 }).count < minPlanes { active[b] = true }
            return active
        }
        var events: [BitPlaneEvent] = []
        var current = quantizers.map { _ in planes + 1 }
        func record(_ l: Int, _ b: Int, forced: Bool) {
            let d = PruningDecision(path: paths[l], fromBits: current[l], toBits: current[l] - 1,
                                    nonzeroRate: quantizers[l].digitNonzeroRate(plane: b), forced: forced)
            current[l] -= 1
            events.append(BitPlaneEvent(step: stepsDone, epoch: epochNow, decision: d, plane: "plane \(b)"))
        }
        for l in quantizers.indices {
            for b in 0..<planes where !masks[l][b] { record(l, b, forced: false) }
        }
        func compressionOf(_ m: [[Bool]]) -> Double {
            LSBPruningScheduler.compression(counts: counts, bits: m.map { 1 + $0.filter { $0 }.count })
        }
        while compressionOf(masks) < options.targetCompression - 1e-9 {
            var best: (l: Int, b: Int, mu: Float)? = nil
            for l in quantizers.indices where masks[l].filter({ $0 }).count > minPlanes {
                for b in 0..<planes where masks[l][b] {
                    let mu = quantizers[l].maskLogits.value[flat: b]
                    if best == nil || mu < best!.mu { best = (l, b, mu) }
                }
            }
            guard let pick = best else { break }
            masks[pick.l][pick.b] = false
            record(pick.l, pick.b, forced: true)
        }
        for (q, m) in zip(quantizers, masks) { q.hardMask = m }
        state.hardMasks = masks
        state.events += events
        state.phase = "finetuning"
        state.finalPhaseStartStep = stepsDone
        state.precisions = currentScheme
        state.intervals += 1
        printStatus(title: String(format: "csq masks hardened (step %d, epoch %.2f, deadline): %d planes off (%d forced)",
                                  stepsDone, epochNow, events.count, events.filter(\.decision.forced).count),
                    before: before)
        plan.log(String(format: "csq: scheme fixed at step %d (epoch %.2f): C %.2fx (paper %.2fx), %.3f bits average; finetuning with hard bits at %@",
                        stepsDone, epochNow, compression, paperCompression(counts: counts, bits: bits),
                        meanBits(counts: counts, bits: bits), bitScheme))
    }

    func printStatus(title: String, before: [Int]? = nil) {
        plan.log(title + String(format: ": β %.3g, C %.2fx (paper %.2fx), %.3f bits avg, ρ %.3f (target %.3f), R %.4g",
                                quantizers.first?.beta ?? 1, compression, paperCompression(counts: counts, bits: bits),
                                meanBits(counts: counts, bits: bits), bitRatio, targetBitRatio, lastRegularizer))
        let width = max(5, paths.map(\.count).max() ?? 5)
        plan.log("  " + padRight("layer", width) + padLeft("params", 8) + padLeft("bits", 5)
                 + "  masks σ(βμ), plane \(planes - 1) … 0" + (before == nil ? "" : "  change"))
        for (i, q) in quantizers.enumerated() {
            let m = q.masks.reversed().map { String(format: "%.2f", $0) }.joined(separator: " ")
            let change = before.map { $0[i] == q.bits ? "" : "  \($0[i])→\(q.bits)" } ?? ""
            plan.log("  " + padRight(paths[i], width) + padLeft(String(counts[i]), 8) + padLeft(String(q.bits), 5)
                     + "  " + m + change)
        }
    }

    public func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
        log(String(format: "csq: after epoch %d: %@, β %.3g, C %.2fx (paper %.2fx), %.3f bits average; scheme %@",
                   epoch, isFinetuning ? "finetuning" : "search", quantizers.first?.beta ?? 1, compression,
                   paperCompression(counts: counts, bits: bits), meanBits(counts: counts, bits: bits), bitScheme))
    }

    public func encodeState() throws -> String {
        state.precisions = currentScheme
        return try encodeMethodState(state)
    }

    public func restoreState(_ json: String) throws {
        let restored = try decodeMethodState(State.self, from: json, method: "CSQ")
        guard restored.precisions.layers.map(\.path) == paths else {
            throw CheckpointError.mismatch(path: "method state", reason: "its CSQ layers differ from this model's")
        }
        if let masks = restored.hardMasks, masks.count != paths.count || masks.contains(where: { $0.count != planes }) {
            throw CheckpointError.corrupt(path: "method state", reason: "CSQ hard masks do not match the model's layers and planes")
        }
        try MethodStateChecks.bits(restored.precisions, in: 1...16, field: "precisions")
        try MethodStateChecks.phase(restored.phase, ["search", "finetuning"])
        try MethodStateChecks.counters([("stepsDone", restored.stepsDone), ("intervals", restored.intervals),
                                        ("finalPhaseStartStep", restored.finalPhaseStartStep)])
        state = restored
    }

    public func summaryFields() -> [String: Any] {
        var fields = bitPlaneSummary(weightQuantizer: "csq", planes: planes, finalLambda: options.lambda)
        fields["final_temperature"] = Double(quantizers.first?.beta ?? 1)
        return fields
    }
}
