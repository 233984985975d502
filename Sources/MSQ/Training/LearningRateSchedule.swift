/// A learning rate for every optimizer step: what the ``Trainer`` asks before each update.
///
/// ``LearningRateSchedule`` (warm-up + cosine) is the default; give the ``Trainer`` any other to
/// replace it. Steps are 0-based and global (they continue across epochs and resumes).
public protocol LearningRateScheduling {
    /// The learning rate for zero-based global step `step`.
    func learningRate(at step: Int) -> Double
}

/// Linear warm-up followed by cosine annealing, evaluated per optimizer step.
///
/// lr(t) = base · (t + 1) / W                              for t < W (warm-up steps)
/// lr(t) = final + (base − final) · (1 + cos(π · (t − W) / (T − W))) / 2   for W ≤ t < T
/// where T is the total number of steps. Per-step (not per-epoch) so a short run still anneals smoothly.
public struct LearningRateSchedule: LearningRateScheduling, Codable, Sendable, Equatable {
    /// Peak learning rate, reached at the end of warm-up.
    public var base: Double
    /// Learning rate at the last step.
    public var final: Double
    /// Number of linear warm-up steps.
    public var warmupSteps: Int
    /// Total number of optimizer steps in the run.
    public var totalSteps: Int

    /// A schedule over `totalSteps` steps; `warmupSteps` is clamped to [0, totalSteps].
    public init(base: Double, final: Double = 0, warmupSteps: Int, totalSteps: Int) {
        self.base = base
        self.final = final
        self.totalSteps = max(totalSteps, 1)
        self.warmupSteps = min(max(warmupSteps, 0), self.totalSteps)
    }

    /// The learning rate for zero-based step `step`.
    public func learningRate(at step: Int) -> Double {
        if step < warmupSteps { return base * Double(step + 1) / Double(warmupSteps) }
        let span = max(totalSteps - warmupSteps, 1)
        let progress = min(Double(step - warmupSteps) / Double(span), 1)
        return final + (base - final) * (1 + _cos(Double.pi * progress)) / 2
    }
}
