import Foundation

extension Trainer {
    /// Loads the directory's checkpoint into the model, `optimizer` and `rng` after checking it
    /// belongs to this run: fingerprint, tensors and shapes, and progress consistent with `plan`
    /// (every completed epoch is `plan.stepsPerEpoch` steps over every training image). A
    /// `globalStep` of 4.6e18 once resumed, skipped the schedule and ended at accuracy 0.10; an
    /// `epochsCompleted` beyond the run's epochs exited 0 without training.
    func restore(_ ckpt: Checkpoint, path checkpointPath: String, into optimizer: any Optimizer, rng: inout RandomSource,
                 plan: RunPlan) throws -> Progress {
        let h = ckpt.header
        if h.runFingerprint != config.fingerprint {
            // Keys on either side: an option given only now, or only then (--init-from, or
            // `msq.scale`, recorded only when not at its default), is a difference.
            let keys = Set(config.identity.keys).union(h.runDescription.keys).sorted()
            let diffs = keys.compactMap { key -> String? in
                let old = h.runDescription[key] ?? "(not set)"
                let new = config.identity[key] ?? "(not set)"
                return old == new ? nil : "\(key): checkpoint \(old), now \(new)"
            }
            // A data-parallel run resumed at another process count runs another thread count per
            // process: the same run, its last bits summed in another order.
            if diffs.count == 1, let old = h.runDescription["threads"], old != config.identity["threads"] {
                log("warning: the checkpoint was written at \(old) kernel threads per process, this run uses \(config.threads); resuming (the last bits of the sums may differ from an uninterrupted run)")
            } else {
                throw CheckpointError.mismatch(path: checkpointPath, reason: diffs.joined(separator: "; "))
            }
        }
        try checkProgress(h, plan: plan, path: checkpointPath)
        // The method state first: a method whose model changes shape between phases (SMPQ swaps its
        // supernet layers for fixed RoundClamp ones, and α leaves the model) rebuilds that shape
        // here, so the tensors below are checked against the model the checkpoint was written from.
        do {
            try method.restoreState(h.methodState)
        } catch let error as CheckpointError {
            // The methods name their state "method state"; the user needs the file.
            throw error.naming(checkpointPath)
        }
        let params = model.namedParameters()
        for (name, p) in params {
            guard let t = ckpt.tensor(named: name) else {
                throw CheckpointError.mismatch(path: checkpointPath, reason: "it has no tensor \(name)")
            }
            guard t.shape == p.value.shape else {
                throw CheckpointError.mismatch(path: checkpointPath,
                                               reason: "\(name) has shape \(t.shape), the model expects \(p.value.shape)")
            }
            p.value = t
        }
        var saved: [(name: String, tensor: Tensor)] = []
        for (name, current) in optimizer.state.tensors {
            guard let t = ckpt.tensor(named: name), t.shape == current.shape else {
                throw CheckpointError.mismatch(path: checkpointPath, reason: "optimizer state \(name) is missing or misshapen")
            }
            saved.append((name, t))
        }
        do {
            try optimizer.restore(OptimizerState(tensors: saved, steps: h.optimizerSteps))
        } catch {
            throw error.naming(checkpointPath)
        }
        rng = RandomSource(state: (h.rngState[0], h.rngState[1], h.rngState[2], h.rngState[3]))
        return Progress(epochsCompleted: h.epochsCompleted, globalStep: h.globalStep,
                        trainSeconds: h.trainSeconds, trainImagesSeen: h.trainImagesSeen)
    }

    /// The header's counters against this run's plan.
    func checkProgress(_ h: Checkpoint.Header, plan: RunPlan, path checkpointPath: String) throws(CheckpointError) {
        func bad(_ field: String, _ problem: String) -> CheckpointError {
            .invalidField(path: checkpointPath, field: field, problem: problem)
        }
        guard h.epochsCompleted <= config.epochs else {
            throw bad("epochsCompleted", "is \(h.epochsCompleted), more than the run's \(config.epochs) epochs")
        }
        // Both products are at most maxTotalSteps × the training set (epochsCompleted ≤ epochs).
        let steps = h.epochsCompleted * plan.stepsPerEpoch
        guard h.globalStep == steps else {
            throw bad("globalStep", "is \(h.globalStep), but \(h.epochsCompleted) completed epochs of \(plan.stepsPerEpoch) steps are \(steps) steps")
        }
        // An optimizer that counts its updates has made one per step.
        if let count = h.optimizerSteps, count != h.globalStep {
            throw bad("optimizerSteps", "is \(count), but the run has taken \(h.globalStep) steps")
        }
        let (images, overflow) = h.epochsCompleted.multipliedReportingOverflow(by: train.count)
        guard !overflow, h.trainImagesSeen == images else {
            throw bad("trainImagesSeen", "is \(h.trainImagesSeen), but \(h.epochsCompleted) completed epochs of \(train.count) images are \(overflow ? "more" : String(images))")
        }
    }
}

extension CheckpointError {
    /// The same error with `path` in place of a placeholder such as "method state" or "optimizer state".
    func naming(_ path: String) -> CheckpointError {
        switch self {
        case let .corrupt(placeholder, reason): return .corrupt(path: path, reason: placeholder + ": " + reason)
        case let .mismatch(placeholder, reason): return .mismatch(path: path, reason: placeholder + ": " + reason)
        case let .invalidField(_, field, problem): return .invalidField(path: path, field: field, problem: problem)
        default: return self
        }
    }
}
