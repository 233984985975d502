import Foundation

extension SMPQTraining {
    /// Everything a resumed run needs besides the tensors (α is one while it is in the model).
    struct State: Codable {
        var phase: Phase = .warmup
        /// The selected scheme, from the selection on (export and eval read it under this key).
        var scheme: QuantizationScheme?
        var selectionStep: Int?
        /// The validation part: its size and, for a ``DatasetSubset``, its indices into the training set.
        var validationCount: Int
        var validationIndices: [Int]?
        var alphaSteps = 0
        var alphaAdamSteps = 0
        var alphaFirstMoments: [[Float]] = []
        var alphaSecondMoments: [[Float]] = []
        var lastPenalty = 0.0
        /// Smoothed φ and the last estimate's standard errors, per layer and candidate.
        var phi: [[Double]]?
        var phiStandardErrors: [[Double]]?
        var shapleyEstimates = 0
        var shapleyEvaluations = 0
        var shapleySeconds = 0.0
        var searchSeconds = 0.0
        /// α and p at the selection (α leaves the model then).
        var alphaAtSelection: [[Double]]?
        var probabilitiesAtSelection: [[Double]]?
    }

    public func encodeState() throws -> String {
        var s = state
        let adam = alphaOptimizer.state
        let n = supernets.count
        s.alphaFirstMoments = adam.tensors[..<n].map(\.tensor.scalars)
        s.alphaSecondMoments = adam.tensors[n...].map(\.tensor.scalars)
        s.alphaAdamSteps = adam.steps ?? 0
        return try encodeMethodState(s)
    }

    public func restoreState(_ json: String) throws {
        let restored = try decodeMethodState(State.self, from: json, method: "SMPQ")
        guard restored.validationCount == validation.count,
              restored.validationIndices == (validation as? DatasetSubset)?.indices else {
            throw CheckpointError.mismatch(path: "method state", reason: "its validation split (\(restored.validationCount) images) is not this run's (\(validation.count)); give MethodContext.validationData the same split (seed and SMPQOptions.validationFraction)")
        }
        try MethodStateChecks.counters([("alphaSteps", restored.alphaSteps), ("alphaAdamSteps", restored.alphaAdamSteps),
                                        ("shapleyEstimates", restored.shapleyEstimates), ("shapleyEvaluations", restored.shapleyEvaluations),
                                        ("selectionStep", restored.selectionStep)])
        try MethodStateChecks.nonNegative("shapleySeconds", restored.shapleySeconds)
        try MethodStateChecks.nonNegative("searchSeconds", restored.searchSeconds)
        let shape = supernets.map(\.candidates.count)
        for (field, table) in [("phi", restored.phi), ("phiStandardErrors", restored.phiStandardErrors),
                               ("alphaAtSelection", restored.alphaAtSelection)] {
            if let table, table.map(\.count) != shape || table.joined().contains(where: { !$0.isFinite }) {
                throw MethodStateChecks.invalid(field, "does not hold one finite value per layer and candidate")
            }
        }
        if restored.phase == .qat {
            guard let scheme = restored.scheme, scheme.layers.map(\.path) == layers.map(\.path) else {
                throw MethodStateChecks.invalid("scheme", "is missing or names other layers than this model's, in the QAT phase")
            }
            try checkScaleGranularity(scheme, layers: layers)
            let allowed = Set(options.candidates)
            for (i, layer) in scheme.layers.enumerated() where !allowed.contains(layer.bits) {
                throw MethodStateChecks.invalid("scheme.layers[\(i)].bits", "is \(layer.bits) for \(layer.path), not a candidate \(options.candidates)")
            }
            for (layer, bits) in zip(layers, scheme.layers) { layer.quantizer.bits = bits.bits }
        }
        let adamShape = supernets.map { [$0.candidates.count] }
        guard restored.alphaFirstMoments.map({ [$0.count] }) == adamShape || restored.alphaFirstMoments.isEmpty,
              restored.alphaSecondMoments.count == restored.alphaFirstMoments.count,
              zip(restored.alphaFirstMoments, restored.alphaSecondMoments).allSatisfy({ $0.count == $1.count }) else {
            throw MethodStateChecks.invalid("alphaFirstMoments", "does not hold Adam's moments for every layer's α")
        }
        if !restored.alphaFirstMoments.isEmpty {
            let names = alphaOptimizer.state.tensors.map(\.name)
            let tensors = (restored.alphaFirstMoments + restored.alphaSecondMoments).map { Tensor(shape: [$0.count], scalars: $0) }
            try alphaOptimizer.restore(OptimizerState(tensors: Array(zip(names, tensors)), steps: restored.alphaAdamSteps))
        }
        state = restored
        // The model takes the shape the checkpoint was written from: α leaves it after the selection.
        installPhaseTransforms()
    }

    public func summaryFields() -> [String: Any] {
        var fields = precisionSummary(paths: layers.map(\.path), counts: counts, bits: layers.map(\.bits))
        fields["target_compression"] = options.targetCompression
        fields.merge(overshootSummary(reached: compressionRatio(layers), target: options.targetCompression)) { _, new in new }
        // The allocation table's columns (no pruning, no Hessian in this method).
        fields["pruning_events"] = [Any]()
        fields["forced_prunings"] = 0
        fields["pruning_intervals"] = 0
        fields["hessian"] = false
        fields["activation_bits"] = activationBits ?? 32
        fields["smpq_selection"] = options.selection.rawValue
        fields["smpq_candidates"] = options.candidates
        fields["smpq_players"] = layers.enumerated().flatMap { i, layer in options.candidates.map { "\(layer.path):\($0)" } }
        let alpha = state.alphaAtSelection ?? supernets.map { $0.alpha.value.scalars.map(Double.init) }
        fields["smpq_alpha"] = alpha
        fields["smpq_probabilities"] = state.probabilitiesAtSelection ?? supernets.map(\.probabilities)
        fields["smpq_phi"] = (state.phi ?? []).map { $0.map(jsonNumber) }
        fields["smpq_phi_standard_errors"] = (state.phiStandardErrors ?? []).map { $0.map(jsonNumber) }
        fields["smpq_spearman_phi_alpha"] = zip(state.phi ?? [], alpha).map { jsonNumber(spearmanCorrelation($0, $1)) }
        fields["smpq_search_seconds"] = state.searchSeconds
        fields["smpq_shapley_seconds"] = state.shapleySeconds
        fields["smpq_shapley_estimates"] = state.shapleyEstimates
        fields["smpq_shapley_evaluations"] = state.shapleyEvaluations
        fields["smpq_alpha_steps"] = state.alphaSteps
        fields["smpq_validation_images"] = validation.count
        // W, BN, PACT and α: what the search trains (α leaves the model at the selection).
        fields["smpq_alpha_params"] = supernets.reduce(0) { $0 + $1.candidates.count }
        fields["smpq_search_trainable_params"] = searchTrainableParameters
        if let s = state.selectionStep {
            fields["final_phase_start_step"] = s
            fields["final_phase_start_epoch"] = Double(s) / Double(plan.stepsPerEpoch)
        } else {
            fields["final_phase_start_epoch"] = NSNull()
        }
        return fields
    }
}

/// A Double as JSON: NaN and infinities (a standard error of one permutation, an undefined
/// correlation) become null.
func jsonNumber(_ x: Double) -> Any { x.isFinite ? x : NSNull() }
