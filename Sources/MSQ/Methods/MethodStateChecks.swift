/// Checks shared by the methods' `restoreState`: a checkpoint's method state is JSON another
/// program may have written, so counters and precisions are bounded before they are used.
enum MethodStateChecks {
    /// The error for `methodState.<field>` (the Trainer puts the checkpoint's path in).
    static func invalid(_ field: String, _ problem: String) -> CheckpointError {
        .invalidField(path: "method state", field: "methodState." + field, problem: problem)
    }

    /// Each counter in `0...RunLimits.maxTotalSteps` (so that later `+= 1` cannot overflow).
    static func counters(_ values: [(String, Int?)]) throws(CheckpointError) {
        for case let (name, value?) in values where !(0...RunLimits.maxTotalSteps).contains(value) {
            throw invalid(name, "is \(value), outside 0...\(RunLimits.maxTotalSteps)")
        }
    }

    /// Each layer's precision of `scheme` in `range` (a quantizer traps outside 1...16).
    static func bits(_ scheme: QuantizationScheme, in range: ClosedRange<Int>, field: String) throws(CheckpointError) {
        for (i, layer) in scheme.layers.enumerated() where !range.contains(layer.bits) {
            throw invalid("\(field).layers[\(i)].bits", "is \(layer.bits) for \(layer.path), outside \(range)")
        }
    }

    /// `value` finite and ≥ 0.
    static func nonNegative(_ name: String, _ value: Double) throws(CheckpointError) {
        if !(value >= 0) || !value.isFinite { throw invalid(name, "is \(value), not a finite number ≥ 0") }
    }

    /// `phase` one of `allowed`.
    static func phase(_ phase: String, _ allowed: [String]) throws(CheckpointError) {
        if !allowed.contains(phase) {
            throw invalid("phase", "is \"\(phase)\", not one of \(allowed.joined(separator: ", "))")
        }
    }
}
