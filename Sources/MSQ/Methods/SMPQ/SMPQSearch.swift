import Foundation

extension SMPQTraining {
    /// One architecture step (SMPQ-SPEC §2): the task loss on validation batch `alphaSteps` plus the
    /// budget penalty, its gradient to α only, one Adam step. The W gradients of the training batch
    /// are set aside and put back, and the batch-norm running statistics the training-mode forward
    /// moves are restored, so the Trainer's W step sees exactly what it would without this step.
    /// Returns the penalty.
    func alphaStep(model: Module) throws -> Double {
        let alphas = supernets.map { ObjectIdentifier($0.alpha) }
        let named = model.namedParameters().map(\.parameter)
        let weights = named.filter { $0.trainable && !alphas.contains(ObjectIdentifier($0)) }
        let buffers = named.filter { !$0.trainable }
        let savedGrads = weights.map(\.grad)
        let savedBuffers = buffers.map(\.value)
        for p in weights { p.grad = Tensor(shape: p.grad.shape) }
        defer {
            for (p, g) in zip(weights, savedGrads) { p.grad = g }
            for (p, v) in zip(buffers, savedBuffers) { p.value = v }
            for net in supernets { net.alpha.grad.zero() }
        }

        let batch = validationBatch(state.alphaSteps)
        let logits = model.forward(batch.images, mode: .train)
        let loss = try lossFunction.forward(logits: logits, labels: batch.labels)
        guard loss.isFinite else {
            throw TrainingError.invalidMethodOption(options: SMPQOptions.optionsName, property: "alphaLearningRate",
                                                    problem: "the validation loss of α step \(state.alphaSteps + 1) is \(loss); lower it (or the weights' learning rate)")
        }
        model.backwardParameters(lossFunction.backward())
        let penalty = budget.apply(supernets, counts: counts)
        alphaOptimizer.step(learningRate: options.alphaLearningRate)
        state.alphaSteps += 1
        state.lastPenalty = penalty
        return penalty
    }

    /// Validation batch `k` of the α steps: epochs of seeded shuffles of the validation part, no
    /// augmentation, whole batches only (a resumed run recomputes it from `k`).
    func validationBatch(_ k: Int) -> Batch {
        let size = min(options.validationBatchSize, validation.count)
        let perEpoch = max(1, validation.count / size)
        // Throws only for a batch size < 1 or an empty set, both refused before the run.
        let loader = try! BatchLoader(dataset: validation, batchSize: size, shuffle: true, augmentation: .none,
                                      normalization: normalization, seed: seed ^ 0x534D_5051, epoch: k / perEpoch,
                                      dropLast: true)
        return loader.batch(at: k % perEpoch)
    }

    /// One truncated Monte Carlo Shapley estimate of every player on the fixed validation batch,
    /// smoothed into φ (SMPQ-SPEC §3). The permutations are split over the plan's ranks; every rank
    /// gets the same φ.
    func estimateShapley(model: Module, stepsDone: Int) throws {
        let start = Date()
        let game = SupernetGame(model: model, layers: supernets, images: shapleyBatch.images, labels: shapleyBatch.labels)
        let estimator = MonteCarloShapley(permutations: options.shapleyPermutations, truncation: options.shapleyTruncation,
                                          seed: seed &+ 0x5348_4150)
        let estimate = try game.shapley(estimator, estimate: state.shapleyEstimates, collective: plan.collective)
        let flat = MonteCarloShapley.smoothed(previous: state.phi.map { $0.flatMap { $0 } }, new: estimate.phi.flatMap { $0 },
                                              weight: options.shapleySmoothing)
        var at = 0
        state.phi = supernets.map { net in
            defer { at += net.candidates.count }
            return Array(flat[at..<(at + net.candidates.count)])
        }
        // JSON has no NaN: one permutation (M = 1) has no standard error.
        state.phiStandardErrors = estimate.standardErrors.joined().allSatisfy(\.isFinite) ? estimate.standardErrors : nil
        state.shapleyEstimates += 1
        state.shapleyEvaluations += estimate.evaluations
        let seconds = Date().timeIntervalSince(start)
        state.shapleySeconds += seconds
        plan.log(String(format: "smpq: Shapley estimate %d at step %d: %d evaluations in %.1f s", state.shapleyEstimates,
                        stepsDone, estimate.evaluations, seconds))
    }

    /// Picks the scheme by φ or α and switches the layers to RoundClamp at it (SMPQ-SPEC §4).
    func select(stepsDone: Int) throws {
        let alphas = supernets.map { $0.alpha.value.scalars.map(Double.init) }
        let scores: [[Double]]
        switch options.selection {
        case .shapley:
            guard let phi = state.phi else {
                throw TrainingError.invalidMethodOption(options: SMPQOptions.optionsName, property: "warmupFraction", problem: "leaves no search step for a Shapley estimate")
            }
            scores = phi
        case .alpha: scores = alphas
        }
        guard let bits = selectPrecisions(scores: scores, candidates: options.candidates, counts: counts,
                                          targetCompression: options.targetCompression) else {
            throw TrainingError.invalidMethodOption(options: SMPQOptions.optionsName, property: "targetCompression", problem: "\(options.targetCompression) cannot be met with the candidates \(options.candidates)")
        }
        for (layer, b) in zip(layers, bits) { layer.quantizer.bits = b }
        state.alphaAtSelection = alphas
        state.probabilitiesAtSelection = supernets.map(\.probabilities)
        state.scheme = QuantizationScheme(quantizedLayers: layers, activationBits: activationBits, activationExcluded: activationExcluded)
        state.phase = .qat
        state.selectionStep = stepsDone
        installPhaseTransforms()
        try plan.collective.checkSameBitScheme(paths: layers.map(\.path), bits: layers.map(\.bits), step: stepsDone)
        plan.log(String(format: "smpq: at step %d, selected by %@ (%d Shapley estimates, %d evaluations, %.1f s; search %.1f s): C %.2fx (paper %.2fx), %.3f bits average: %@",
                        stepsDone, options.selection.rawValue, state.shapleyEstimates, state.shapleyEvaluations,
                        state.shapleySeconds, state.searchSeconds, compressionRatio(layers), compressionRatioPaper(layers),
                        averageWeightBits(layers), layers.map { "\($0.path):\($0.bits)" }.joined(separator: " ")))
        let phi = state.phi ?? []
        for (i, layer) in layers.enumerated() {
            let cells = options.candidates.indices.map { j in
                String(format: "%d:%@/%.2f", options.candidates[j], i < phi.count ? String(format: "%+.4f", phi[i][j]) : "-", alphas[i][j])
            }
            plan.log(String(format: "  %@  N %d  → %d bits   φ/α %@", layer.path, layer.count, layer.bits, cells.joined(separator: " ")))
        }
    }

    /// Supernet weights before the selection, RoundClamp quantizers at the scheme's bits after it.
    func installPhaseTransforms() {
        for (i, module) in modules.enumerated() {
            setWeightTransform(state.phase == .qat ? layers[i].quantizer : supernets[i], of: module)
        }
    }
}
