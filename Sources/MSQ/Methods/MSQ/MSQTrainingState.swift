extension MSQTraining {
    /// Refuses a restored state whose values this run could not have written: precisions outside
    /// [--min-bits, 16] (or 1...16 for a fixed scheme), k outside {1, 2} (MSQ-SPEC §4; k = −2^31
    /// once reached a precondition in ``LSBRegularizer``), λ negative or not finite, an unknown
    /// phase, negative or absurd counters. Each error names the field as the state's JSON does.
    func validateRestored(_ s: State) throws(CheckpointError) {
        let bitRange = fixedScheme ? 1...16 : options.minBits...16
        try MethodStateChecks.bits(s.scheme, in: bitRange, field: "scheme")
        for (i, k) in s.k.enumerated() where !(1...2).contains(k) {
            throw MethodStateChecks.invalid("k[\(i)]", "is \(k), outside 1...2")
        }
        try MethodStateChecks.nonNegative("lambda", s.lambda)
        if !(s.initialBits > 0) || !s.initialBits.isFinite {
            throw MethodStateChecks.invalid("initialBits", "is \(s.initialBits), not a finite positive number")
        }
        try MethodStateChecks.phase(s.phase, ["pruning", "finetuning"])
        // Probes are bounded by intervals × --hessian-probes; the same generous cap as steps keeps
        // every later `+=` far from overflow.
        try MethodStateChecks.counters([("intervals", s.intervals), ("hessianEstimates", s.hessianEstimates),
                                        ("hessianProbesUsed", s.hessianProbesUsed), ("finalPhaseStartStep", s.finalPhaseStartStep)])
        try MethodStateChecks.nonNegative("hessianSeconds", s.hessianSeconds)
        let limit = RunLimits.maxTotalSteps
        for (i, e) in s.events.enumerated() where !(0...limit).contains(e.step) || !bitRange.contains(e.decision.toBits) {
            throw MethodStateChecks.invalid("events[\(i)]", "has step \(e.step) and precision \(e.decision.toBits), outside 0...\(limit) and \(bitRange)")
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
