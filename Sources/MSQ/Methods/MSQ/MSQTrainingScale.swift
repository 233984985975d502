// MSQ training with per-tensor or per-output-channel scales (MSQ-SPEC §1). The granularity lives in
// the quantizers attached to the layers (``QuantizationScheme/scaleGranularity``,
// ``quantizeForMSQ(_:initialBits:overrides:excluded:scaleGranularity:)``); the method state records
// it through its scheme, so a checkpoint resumes, and `msq export` packs, with the right scales.

extension MSQTraining {
    /// The scale granularity of the layers' RoundClamp quantizers.
    public var scaleGranularity: ScaleGranularity? {
        QuantizationScheme(quantizedLayers: layers).scaleGranularity
    }
}

/// Refuses a restored method state whose scheme was trained with other scales than `layers`'
/// quantizers use (the CLI's fingerprint catches it first, through `msq.scale` / `hawq.scale`).
func checkScaleGranularity(_ restored: QuantizationScheme, layers: [QuantizedLayer]) throws {
    let current = QuantizationScheme(quantizedLayers: layers).scaleGranularity
    guard restored.scaleGranularity == current else {
        throw CheckpointError.mismatch(
            path: "method state",
            reason: "its layers were trained with \(restored.scaleGranularity) scales, this run's quantizers are \(current) (--scale)")
    }
}
