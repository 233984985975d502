import Foundation

/// Bounds that keep a run's integer arithmetic in range whatever numbers the user gives.
///
/// Every count a run derives from its options (steps per epoch, total steps, warm-up steps,
/// interval steps) is computed with these helpers, so an option such as `--epochs
/// 9223372036854775807` ends in an error naming it rather than in an overflow trap.
public enum RunLimits {
    /// The most optimizer steps one run may plan: 2^32 (about 4.3 billion, some 50 days at
    /// 1 ms per step; the largest real schedules are around 10^6 steps). A bound well inside
    /// `Int` leaves room for every product and sum the schedule and the methods form.
    public static let maxTotalSteps = 1 << 32

    /// The smallest image height and width every model takes (README, "The `msq` command"): the
    /// CIFAR ResNets halve the resolution twice after the stem, so below 8 their last stage sees
    /// 1×1 or empty feature maps.
    public static let minimumImageSize = 8

    /// The most calibration images a Hessian estimate takes (`--hessian-batch`, `msq inspect
    /// --calibration`): they go through the network as one batch, and `--calibration` at `Int.max`
    /// once took all 60,000 Fashion-MNIST images into one pass and was killed for memory.
    public static let maxCalibrationImages = 4096

    /// The most probes a trace estimate may take (`--hessian-probes`, `msq inspect --probes`): each
    /// is a gradient or Hessian-vector product over the calibration batch, so `Int.max` would run
    /// for ever (an estimate stops early only when its running mean settles).
    public static let maxProbes = 4096

    /// The most power-iteration steps per layer (`msq inspect --power-iterations`), for the same
    /// reason: each step is a Hessian-vector product.
    public static let maxPowerIterations = 10_000

    /// Cores this process may run on (its CPU affinity), at least 1.
    public static var availableCores: Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

    /// `requested` kernel threads capped at ``availableCores`` (0 stays 0: all cores). More
    /// OpenMP threads than cores only oversubscribe them: 1000 threads on 2 cores made a 2 s run
    /// take more than 240 s.
    public static func cappedThreads(_ requested: Int) -> Int {
        requested <= 0 ? 0 : min(requested, availableCores)
    }

    /// ⌈a / b⌉ for a ≥ 0 and b ≥ 1, without forming `a + b − 1` (which overflows for b near `Int.max`).
    public static func ceilDiv(_ a: Int, _ b: Int) -> Int {
        a / b + (a % b == 0 ? 0 : 1)
    }

    /// `epochs` (fractional, ≥ 0) of `stepsPerEpoch` steps, rounded to the nearest step and
    /// clamped to `0...maxTotalSteps`, so that a huge (finite) option cannot trap the conversion
    /// to `Int`; callers compare the result with the plan's total.
    public static func steps(epochs: Double, stepsPerEpoch: Int) -> Int {
        let raw = (epochs * Double(stepsPerEpoch)).rounded()
        guard raw.isFinite else { return raw > 0 ? maxTotalSteps : 0 }
        return Int(min(max(raw, 0), Double(maxTotalSteps)))
    }
}
