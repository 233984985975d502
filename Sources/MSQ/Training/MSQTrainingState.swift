extension MSQTraining {
    /// Refuses a restored state whose values this run could not have written: precisions outside
    /// [--min-bits, 16] (or 1...16 for a fixed scheme), k outside {1, 2} (MSQ-SPEC §4; k = −2^31
    /// once reached a precondition in ``LSBRegularizer``), λ negative or not finite, an unknown
    /// phase, negative or absurd counters. Each error names the field as the state's JSON does.
    func validateRestored(_ s: State) throws(CheckpointError) {
        func bad(_ field: String, _ problem: String) -> CheckpointError {
            .invalidField(path: "method state", field: "methodState." + field, problem: problem)
        }
        let bitRange = fixedScheme ? 1...16 : options.minBits...16
        for (i, layer) in s.scheme.layers.enumerated() where !bitRange.contains(layer.bits) {
            throw bad("scheme.layers[\(i)].bits", "is \(layer.bits) for \(layer.path), outside \(bitRange)")
        }
        for (i, k) in s.k.enumerated() where !(1...2).contains(k) {
            throw bad("k[\(i)]", "is \(k), outside 1...2")
        }
        if !(s.lambda >= 0) || !s.lambda.isFinite { throw bad("lambda", "is \(s.lambda), not a finite number ≥ 0") }
        if !(s.initialBits > 0) || !s.initialBits.isFinite { throw bad("initialBits", "is \(s.initialBits), not a finite positive number") }
        if s.phase != "pruning" && s.phase != "finetuning" { throw bad("phase", "is \"\(s.phase)\", neither pruning nor finetuning") }
        let limit = RunLimits.maxTotalSteps
        let counters = [("intervals", s.intervals), ("hessianEstimates", s.hessianEstimates),
                        ("hessianProbesUsed", s.hessianProbesUsed), ("finalPhaseStartStep", s.finalPhaseStartStep ?? 0)]
        // Probes are bounded by intervals × --hessian-probes; the same generous cap as steps keeps
        // every later `+=` far from overflow.
        for (name, value) in counters where !(0...limit).contains(value) {
            throw bad(name, "is \(value), outside 0...\(limit)")
        }
        if !(s.hessianSeconds >= 0) || !s.hessianSeconds.isFinite { throw bad("hessianSeconds", "is \(s.hessianSeconds), not a finite number ≥ 0") }
        for (i, e) in s.events.enumerated() where !(0...limit).contains(e.step) || !bitRange.contains(e.decision.toBits) {
            throw bad("events[\(i)]", "has step \(e.step) and precision \(e.decision.toBits), outside 0...\(limit) and \(bitRange)")
        }
    }

    /// The restored state's steps against the run's plan (known only in ``prepare(model:plan:)``).
    func checkStateAgainstPlan() throws(CheckpointError) {
        let total = plan.totalSteps
        if let step = state.finalPhaseStartStep, step > total {
            throw .invalidField(path: "method state", field: "methodState.finalPhaseStartStep",
                                problem: "is \(step), after the run's last step \(total)")
        }
        if let i = state.events.firstIndex(where: { $0.step > total }) {
            throw .invalidField(path: "method state", field: "methodState.events[\(i)].step",
                                problem: "is \(state.events[i].step), after the run's last step \(total)")
        }
    }
}
