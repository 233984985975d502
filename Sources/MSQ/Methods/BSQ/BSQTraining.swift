import Foundation

/// The options of a BSQ run (MSQ-SPEC §7); CLI names in brackets.
public struct BSQOptions: PruningScheduleOptions, Codable, Sendable, Equatable {
    /// Target compression C, sign counted (as MSQ's) [--target-compression].
    public var targetCompression: Double
    /// Starting precision n_0 + 1, sign included [--weight-bits]: 9 = BSQ's 8 bit planes, i.e. 8
    /// trainable variables per weight.
    public var initialBits: Int = 9
    /// λ, BSQ's `--decay`: L = L_task + λ·R_group-lasso [--lambda]. Default 0.01, BSQ's own default
    /// (not swept here).
    public var lambda: Double = 0.01
    /// A most or least significant plane whose nonzero rate after requantization is at most this is
    /// removed [--prune-threshold]. 0 (BSQ's default `--thre 0`): only all-zero planes, which is exact.
    public var pruneThreshold: Double = 0
    /// Requantization interval in epochs, fractional allowed, at least one step [--prune-interval].
    public var pruneIntervalEpochs: Double = 0.5
    /// Fraction of training by which the target must be met [--prune-deadline]; the bit budget is
    /// paced linearly to it as for MSQ.
    public var deadlineFraction: Double = 0.6
    /// Lowest precision of a layer, sign included (2 = one plane) [--min-bits].
    public var minBits: Int = 2

    /// Options with the given target and the defaults above.
    public init(targetCompression: Double) {
        self.targetCompression = targetCompression
    }

    /// The options as name → value, for the run fingerprint.
    public var identity: [String: String] {
        scheduleIdentity(prefix: "bsq").merging([
            "bsq.weight_bits": String(initialBits), "bsq.prune_threshold": String(pruneThreshold),
        ]) { shared, _ in shared }
    }

    /// Checks ranges a user can get wrong; `maxCompression` is the model's C with every layer at --min-bits.
    public func validate(maxCompression: Double) throws(TrainingError) {
        try validateBitPlanes(initialBits: initialBits)
        try validateSchedule(maxCompression: maxCompression, pruneThreshold: pruneThreshold)
    }
}

/// BSQ (MSQ-SPEC §7) as a ``TrainingMethod``: every conv/linear weight becomes n_0 trainable bit
/// planes (``BitPlaneQuantizer``), the group-lasso regulariser (``BitPlaneRegularizer``) is added
/// at every step of the search phase, and at every interval the planes are requantized and planes
/// that are all zero at the top (MSB) or bottom (LSB) of a layer are removed, lowering n_l.
///
/// **Reaching the target** (the project's addition; BSQ itself has no target, its compression follows
/// from λ): after BSQ's own removals, if Σ N_l n_l is above the linearly paced budget of MSQ
/// (``LSBPruningScheduler``; B_0 → B_target at the deadline), the layers with the lowest LSB-plane
/// nonzero rate lose their LSB plane (c ← round(c/2)), logged as `forced`; at the deadline until the
/// target is met. Once C ≥ target (sign counted, as ``compressionRatio(_:)``), regularisation and
/// plane removal stop for good and the bit planes train on at the fixed precisions (finetuning).
///
/// Order within a step: forward and backward, then (here, in ``afterBackward(model:epoch:step:)``)
/// box projection, the regulariser's gradient and, at an interval, requantization and removal; then
/// the optimizer step with the gradients computed before the requantization (BSQ requantizes between
/// steps; with absolute plane indexing a plane's gradient means the same before and after).
///
/// The checkpoint carries the planes and scales (as parameters `<layer>.bsq.planes`,
/// `<layer>.bsq.scale`) and, in the method state, the precisions (key `precisions`), each layer's
/// lowest active plane, phase, events and interval count, so `--resume` continues bit-identically.
/// Not `scheme`: `msq export` would read that as RoundClamp codes; it refuses BSQ checkpoints.
///
/// **Several processes** (``TrainingPlan/collective``): BSQ estimates nothing from data beyond the
/// gradients the Trainer already sums. Its requantization, plane removals and forced removals are
/// functions of the bit planes alone, so every rank computes them itself from its replica (identical
/// replicas, identical decisions, no communication; a broadcast from rank 0 would hide a drifted
/// replica instead of reporting it). Each interval ends with
/// ``Collective/checkSameBitScheme(paths:bits:step:)``, which throws
/// ``CollectiveError/replicasDiffer(_:)`` if the ranks' precisions differ.
public final class BSQTraining: TrainingMethod, BitPlaneMethod {
    /// The run's options.
    public let options: BSQOptions
    /// The quantized layers' paths, in walk order.
    public let paths: [String]
    /// N_l per layer.
    public let counts: [Int]
    /// The bit planes of every layer, in ``paths`` order.
    public let quantizers: [BitPlaneQuantizer]
    /// The group lasso over ``quantizers``.
    public let regularizer: BitPlaneRegularizer
    /// The pacing rule (forced LSB removals only: BSQ's own removals come first).
    public let scheduler: LSBPruningScheduler
    let activationBits: Int?
    let activationExcluded: [String]

    struct State: Codable, BitPlaneProgress {
        var precisions: QuantizationScheme
        var lowestPlanes: [Int]
        var phase: String = "pruning"
        var initialStoredBits: Double
        var events: [BitPlaneEvent] = []
        var finalPhaseStartStep: Int?
        var intervals: Int = 0
    }
    var state: State
    var plan = TrainingPlan(stepsPerEpoch: 1, epochs: 1, log: { _ in })

    /// Replaces every Conv2d/Linear weight of `model` by `options.initialBits − 1` bit planes
    /// initialised from it (and quantizes the layer inputs, except the network input, to
    /// `activationBits` with PACT). Build the method before the ``Trainer``: its optimizer must see
    /// the planes. Nothing changes on a throw.
    public init(model: any Module, options: BSQOptions, activationBits: Int? = nil) throws {
        let (layers, excluded) = try attachBitLevelBaseline(to: model, method: "bsq", options: options,
                                                            activationBits: activationBits)
        let counts = layers.map(\.count)
        self.options = options
        self.paths = layers.map(\.path)
        self.counts = counts
        self.activationBits = activationBits
        self.activationExcluded = excluded
        self.quantizers = layers.map { layer in
            BitPlaneQuantizer(weight: layerWeight(of: layer.module)!.value, planes: options.initialBits - 1)
        }
        for (layer, q) in zip(layers, quantizers) { attachWeightTransform(q, to: layer.module) }
        self.regularizer = BitPlaneRegularizer(quantizers: quantizers, lambda: options.lambda)
        self.scheduler = LSBPruningScheduler(targetCompression: options.targetCompression, threshold: -1,
                                             minBits: options.minBits)
        let bits = quantizers.map(\.bits)
        self.state = State(precisions: precisionScheme(paths: paths, bits: bits, activationBits: activationBits,
                                                       activationExcluded: activationExcluded),
                           lowestPlanes: quantizers.map(\.lowestPlane),
                           initialStoredBits: storedBits(counts: counts, bits: bits))
    }

    public var name: String { "bsq" }

    /// Current precisions n_l + 1 (sign counted), in ``paths`` order.
    public var bits: [Int] { quantizers.map(\.bits) }
    /// C, sign counted.
    public var compression: Double { LSBPruningScheduler.compression(counts: counts, bits: bits) }
    /// Whether regularisation and plane removal have stopped for good.
    public var isFinetuning: Bool { state.phase == "finetuning" }
    /// Every precision change so far.
    public var events: [BitPlaneEvent] { state.events }
    /// `conv1:9 layer1.0.conv1:4 …`.
    public var bitScheme: String { bitSchemeLine(paths: paths, bits: bits) }

    /// Interval and deadline steps of the current plan, as for MSQ: the deadline is itself a
    /// requantization interval.
    var pace: PruningPace { PruningPace(options: options, plan: plan) }

    public func prepare(model: Module, plan: TrainingPlan) throws {
        self.plan = plan
        try pace.checkFits(plan, intervalEpochs: options.pruneIntervalEpochs, what: "requantization", options: BSQOptions.optionsName)
        // Active planes come from the state (restored from a checkpoint, or the initial one).
        for (i, q) in quantizers.enumerated() {
            q.configure(lowestPlane: state.lowestPlanes[i], planeCount: state.precisions.layers[i].bits - 1)
        }
        if !isFinetuning {
            plan.log(String(format: "bsq: %d layers, %d weights × %d bit planes = %d bit variables; start %.2f bits (C %.2fx); target C %.2fx (paper %.2fx); requantize every %d steps, deadline step %d of %d; λ %g, τ %g",
                            paths.count, regularizer.totalCount, options.initialBits - 1,
                            regularizer.totalCount * (options.initialBits - 1),
                            meanBits(counts: counts, bits: bits), compression, options.targetCompression,
                            32 / (32 / options.targetCompression - 1), pace.intervalSteps, pace.deadlineStep, plan.totalSteps,
                            regularizer.lambda, options.pruneThreshold))
        }
    }

    public func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
        for q in quantizers { q.projectToBox() }
        guard !isFinetuning else { return 0 }
        let r = regularizer.apply()
        let done = step + 1
        if done % pace.intervalSteps == 0 {
            interval(stepsDone: done)
            try plan.collective.checkSameBitScheme(paths: paths, bits: bits, step: done)
        }
        return regularizer.lambda * r
    }

    /// One requantization interval: BSQ's removals, then paced forcing, then the table.
    func interval(stepsDone: Int) {
        state.intervals += 1
        let before = bits
        var rates: [[Double]] = []
        var decisions: [(Int, PruningDecision, String)] = []
        let epochNow = Double(stepsDone) / Double(plan.stepsPerEpoch)
        let minPlanes = options.minBits - 1
        for (i, q) in quantizers.enumerated() {
            var r = q.requantize()
            rates.append(r)
            // BSQ's `pruning()`: all-zero (≤ τ) planes go from the top, then from the bottom.
            while q.planeCount > minPlanes, let top = r.last, top <= options.pruneThreshold {
                let from = q.bits
                q.dropMostSignificantPlane()
                decisions.append((i, PruningDecision(path: paths[i], fromBits: from, toBits: q.bits, nonzeroRate: top, forced: false), "msb"))
                r = q.planeNonzeroRates()
            }
            while q.planeCount > minPlanes, let low = r.first, low <= options.pruneThreshold {
                let from = q.bits
                q.dropLeastSignificantPlane()
                decisions.append((i, PruningDecision(path: paths[i], fromBits: from, toBits: q.bits, nonzeroRate: low, forced: false), "lsb"))
                r = q.planeNonzeroRates()
            }
        }
        // Pacing towards the target (forced LSB removals, lowest LSB nonzero rate first).
        let deadline = pace.isDeadline(stepsDone)
        let budget = pace.budget(stepsDone: stepsDone, initialBits: state.initialStoredBits,
                                 targetBits: scheduler.targetBits(counts: counts))
        let status = quantizers.indices.map { i in
            PruningLayerStatus(path: paths[i], count: counts[i], bits: quantizers[i].bits,
                               nonzeroRate: quantizers[i].planeNonzeroRates().first ?? 0, k: 1)
        }
        for d in scheduler.decide(status, budgetBits: budget, deadline: deadline) {
            guard let i = paths.firstIndex(of: d.path) else { continue }
            let q = quantizers[i]
            var lsbRate = d.nonzeroRate
            while q.bits > d.toBits && q.planeCount > minPlanes {
                let from = q.bits
                q.dropLeastSignificantPlane()
                decisions.append((i, PruningDecision(path: d.path, fromBits: from, toBits: q.bits, nonzeroRate: lsbRate, forced: true), "lsb"))
                lsbRate = q.planeNonzeroRates().first ?? 0
            }
        }
        for (_, d, plane) in decisions {
            state.events.append(BitPlaneEvent(step: stepsDone, epoch: epochNow, decision: d, plane: plane))
        }
        state.precisions = currentScheme
        state.lowestPlanes = quantizers.map(\.lowestPlane)
        printTable(stepsDone: stepsDone, rates: rates, before: before, decisions: decisions, deadline: deadline, budget: budget)
        if compression >= options.targetCompression - 1e-9 {
            state.phase = "finetuning"
            state.finalPhaseStartStep = stepsDone
            plan.log(String(format: "bsq: target reached at step %d (epoch %.2f): C %.2fx (paper %.2fx), %.3f bits average; finetuning the bit planes at the fixed scheme %@",
                            stepsDone, epochNow, compression, paperCompression(counts: counts, bits: bits),
                            meanBits(counts: counts, bits: bits), bitScheme))
        }
    }

    func printTable(stepsDone: Int, rates: [[Double]], before: [Int], decisions: [(Int, PruningDecision, String)],
                    deadline: Bool, budget: Double) {
        let forced = decisions.filter { $0.1.forced }.count
        plan.log(String(format: "bsq interval %d (step %d, epoch %.2f%@): C %.2fx (paper %.2fx), %.3f bits avg, budget %.3f bits avg, R %.4g, %d planes removed (%d forced)",
                        state.intervals, stepsDone, Double(stepsDone) / Double(plan.stepsPerEpoch), deadline ? ", deadline" : "",
                        compression, paperCompression(counts: counts, bits: bits), meanBits(counts: counts, bits: bits),
                        budget / Double(regularizer.totalCount), regularizer.value(), decisions.count, forced))
        let width = max(5, paths.map(\.count).max() ?? 5)
        plan.log("  " + padRight("layer", width) + padLeft("params", 8) + padLeft("bits", 5)
                 + "  plane nonzero rates after requantization (MSB … LSB)  change")
        for i in paths.indices {
            let mine = decisions.filter { $0.0 == i }
            let change = mine.isEmpty ? "" : "\(before[i])→\(quantizers[i].bits) ("
                + mine.map { $0.2 + ($0.1.forced ? " forced" : "") }.joined(separator: ", ") + ")"
            let r = rates[i].reversed().map { String(format: "%.3f", $0) }.joined(separator: " ")
            plan.log("  " + padRight(paths[i], width) + padLeft(String(counts[i]), 8) + padLeft(String(before[i]), 5)
                     + "  " + r + "  " + change)
        }
    }

    public func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
        log(String(format: "bsq: after epoch %d: %@, C %.2fx (paper %.2fx), %.3f bits average; scheme %@",
                   epoch, isFinetuning ? "finetuning" : "pruning", compression,
                   paperCompression(counts: counts, bits: bits), meanBits(counts: counts, bits: bits), bitScheme))
    }

    public func encodeState() throws -> String {
        state.precisions = currentScheme
        state.lowestPlanes = quantizers.map(\.lowestPlane)
        return try encodeMethodState(state)
    }

    public func restoreState(_ json: String) throws {
        let restored = try decodeMethodState(State.self, from: json, method: "BSQ")
        guard restored.precisions.layers.map(\.path) == paths, restored.lowestPlanes.count == paths.count else {
            throw CheckpointError.mismatch(path: "method state", reason: "its BSQ layers differ from this model's")
        }
        for (i, q) in quantizers.enumerated() {
            let n = restored.precisions.layers[i].bits - 1, lo = restored.lowestPlanes[i]
            // `lo <= maxPlanes − n`, not `lo + n <= maxPlanes`: a hostile lo near Int.max overflows the sum.
            guard n >= 1, n <= q.maxPlanes, lo >= 0, lo <= q.maxPlanes - n else {
                throw MethodStateChecks.invalid("lowestPlanes[\(i)]", "is \(lo) with \(n) planes for \(paths[i]), outside 0..<\(q.maxPlanes)")
            }
        }
        try MethodStateChecks.phase(restored.phase, ["pruning", "finetuning"])
        try MethodStateChecks.counters([("intervals", restored.intervals), ("finalPhaseStartStep", restored.finalPhaseStartStep)])
        state = restored
    }

    public func summaryFields() -> [String: Any] {
        bitPlaneSummary(weightQuantizer: "bsq", planes: options.initialBits - 1, finalLambda: regularizer.lambda)
    }
}
