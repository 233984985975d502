/// Which estimator gives MSQ's and HAWQ's per-layer Hessian traces (MSQ-SPEC §4).
public enum TraceEstimator: String, CaseIterable, Codable, Sendable {
    /// Hutchinson: v_lᵀ(Hv)_l with Rademacher v over all layers at once (``HutchinsonTrace``).
    /// Unbiased for every layer, but each layer's term carries the other layers' cross terms as
    /// noise, and can come out negative.
    case hutchinson
    /// The Gauss-Newton trace by labels sampled from the model's own prediction
    /// (``SampledGaussNewtonTrace``): one gradient per probe, never negative, no cross-layer noise.
    case sampledGaussNewton = "sampled-gauss-newton"

    /// Per-layer traces of `model`'s loss on `calibration` by this estimator (Hutchinson's HVPs in
    /// `mode`, nil = ``HessianMode/automatic(for:)``), probing as ``HutchinsonTrace`` describes
    /// (at least min(4, `maxProbes`) probes), the probes split over `collective`'s ranks (every rank
    /// gets the one-process estimate); also a name for logs. The model is used as it is: the caller
    /// bypasses or bakes in the quantizers first.
    func estimate(model: any Module, layers: [QuantizedLayer], calibration: (images: Tensor, labels: [Int32]),
                  seed: UInt64, maxProbes: Int, relativeTolerance: Double, mode: HessianMode? = nil,
                  collective: any Collective = SingleProcess()) throws -> (estimate: HessianTraceEstimate, name: String) {
        switch self {
        case .hutchinson:
            let estimator = HutchinsonTrace(model: model, layers: layers, images: calibration.images,
                                            labels: calibration.labels, seed: seed, maxProbes: maxProbes,
                                            minProbes: min(4, maxProbes), relativeTolerance: relativeTolerance, mode: mode)
            return (try estimator.estimate(collective: collective), "Hutchinson, " + estimator.hvp.mode.rawValue)
        case .sampledGaussNewton:
            let estimator = SampledGaussNewtonTrace(model: model, layers: layers, images: calibration.images,
                                                    seed: seed, maxProbes: maxProbes, minProbes: min(4, maxProbes),
                                                    relativeTolerance: relativeTolerance)
            return (try estimator.estimate(collective: collective), "sampled Gauss-Newton")
        }
    }
}

/// The checks of a trace estimate's options that MSQ and HAWQ share: `--hessian-batch` in
/// 1...``RunLimits/maxCalibrationImages`` and `--hessian-probes` in 1...``RunLimits/maxProbes``.
func validateHessianSampling(batch: Int, probes: Int, options: String) throws(TrainingError) {
    if !(1...RunLimits.maxCalibrationImages).contains(batch) {
        throw .invalidMethodOption(options: options, property: "hessianBatch", problem: "must be in 1...\(RunLimits.maxCalibrationImages) (got \(batch))")
    }
    if !(1...RunLimits.maxProbes).contains(probes) {
        throw .invalidMethodOption(options: options, property: "hessianProbes", problem: "must be in 1...\(RunLimits.maxProbes) (got \(probes))")
    }
}

/// Per-layer traces of the generalized Gauss-Newton matrix of the mean softmax cross-entropy on a
/// fixed batch, estimated from gradients at labels drawn from the model's own softmax.
///
/// With p_i = softmax(f(x_i)) and J_i = ∂f(x_i)/∂W over the N calibration images (eval mode),
///
///     G     = (1/N) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i
///     g_j   = ∇_W (1/N) Σ_i CE(f(x_i), y_ij),     y_ij ~ Categorical(p_i) independently
///     Tr(G_l) = N · E ‖g_j,l‖²
///
/// since E[(p − e_y)(p − e_y)ᵀ] = diag p − ppᵀ and the cross-sample terms have mean zero. Each
/// probe costs one forward and one backward, its per-layer terms are never negative, and no layer's
/// estimate carries another layer's curvature as noise (Hutchinson's per-layer terms do). For
/// networks piecewise linear in each layer's weights (the ResNets) the diagonal blocks of G equal
/// the Hessian's almost everywhere (MSQ-SPEC §4), so these are the Hessian's per-layer traces.
///
/// Probing stops after `maxProbes`, or once at least `minProbes` were taken and the running mean of
/// the total trace moved by less than `relativeTolerance` of itself. The labels come from a
/// ``RandomSource`` seeded by (`seed`, probe): the result depends only on the model, batch and seed.
/// Weights and gradients are as they were afterwards.
///
/// Over several processes (``estimate(collective:)``) rank r evaluates probes r, r + P, … and every
/// rank gets the one-process estimate, as for ``HutchinsonTrace``.
public final class SampledGaussNewtonTrace {
    /// The model whose loss is differentiated.
    public let model: any Module
    /// The layers whose traces are estimated.
    public let layers: [QuantizedLayer]
    /// The calibration images.
    public let images: Tensor
    /// The label-sampling seed.
    public let seed: UInt64
    /// m_max.
    public let maxProbes: Int
    /// Minimum number of probes before the tolerance test may stop probing.
    public let minProbes: Int
    /// Relative change of the running total-trace mean under which probing stops.
    public let relativeTolerance: Double

    /// An estimator on a fixed calibration batch (its labels are not needed: they are sampled).
    public init(model: any Module, layers: [QuantizedLayer], images: Tensor, seed: UInt64,
                maxProbes: Int = 50, minProbes: Int = 4, relativeTolerance: Double = 0.05) {
        precondition(maxProbes >= 1 && minProbes >= 1, "SampledGaussNewtonTrace: probes must be at least 1")
        precondition(relativeTolerance >= 0, "SampledGaussNewtonTrace: relativeTolerance must be non-negative")
        self.model = model
        self.layers = layers
        self.images = images
        self.seed = seed
        self.maxProbes = maxProbes
        self.minProbes = minProbes
        self.relativeTolerance = relativeTolerance
    }

    /// Runs the probes, split over `collective`'s ranks (every rank calls it with the same model,
    /// batch and options, and gets the same estimate, the one-process one; see
    /// ``HutchinsonTrace/estimate(collective:)``). ``HessianTraceEstimate/variances`` are the
    /// squared standard errors.
    /// - Throws: ``CollectiveError`` if the ranks' sum fails.
    public func estimate(collective: any Collective = SingleProcess()) throws -> HessianTraceEstimate {
        let savedGrads = model.trainableParameters().map { ($0, $0.grad) }
        defer { for (p, g) in savedGrads { p.grad = g } }
        let n = images.shape[0]
        var probabilities: [Float] = []
        var classes = 0
        return try ProbeAccumulator.collect(layers: layers.count, maxProbes: maxProbes, minProbes: minProbes,
                                            relativeTolerance: relativeTolerance, collective: collective) { j in
            model.zeroGradients()
            let logits = model.forward(images, mode: .eval)
            let loss = SoftmaxCrossEntropy()
            if probabilities.isEmpty {
                _ = try loss.forward(logits: logits, labels: [Int32](repeating: 0, count: n))
                probabilities = loss.probabilities?.scalars ?? []
                classes = logits.shape[1]
            }
            // Seeded by the probe's index, not by how many this rank has taken: probe j draws the
            // same labels on whichever rank evaluates it.
            var rng = RandomSource(seed: seed &+ 0x5347_4E54 &* UInt64(j + 1))
            let sampled = (0..<n).map { i -> Int32 in
                let u = rng.nextUnitFloat()
                var acc: Float = 0
                for c in 0..<classes {
                    acc += probabilities[i * classes + c]
                    if u < acc { return Int32(c) }
                }
                return Int32(classes - 1)
            }
            _ = try loss.forward(logits: logits, labels: sampled)
            model.backwardParameters(loss.backward())
            return layers.map { Double(n) * $0.parameter.grad.squaredNorm() }
        }
    }
}
