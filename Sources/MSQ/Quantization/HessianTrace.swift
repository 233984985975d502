/// Hessian-vector products and Hutchinson trace estimates over the quantized layers' weights
/// (MSQ-SPEC §4, paper Sec. 3.2, Eq. 9).
///
/// H is the Hessian of the task loss (softmax cross-entropy, no label smoothing, batch mean) on a
/// fixed calibration batch, taken with the model in EVAL mode (batch norm uses running statistics),
/// w.r.t. the latent weights W_l of the given ``QuantizedLayer``s only (the other parameters are
/// held fixed). The model is used as it is: when the layers' ``RoundClampQuantizer``s are attached,
/// the gradient is the straight-through one, so H is the Hessian of L(Q(W)) w.r.t. W under the STE
/// (what MSQ's sensitivity uses); with no transform attached it is the Hessian of L(W).

/// H·v restricted to the quantized layers' weights, by central differences of the gradient:
///
///     Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / (2ε),    ε = relativeStep · ‖w‖ / ‖v‖
///
/// where ‖w‖ is the Euclidean norm of ALL the layers' weights concatenated and ‖v‖ that of the whole
/// probe, so the perturbation εv has norm `relativeStep · ‖w‖` whatever the scale of v (default
/// relativeStep = 1e-3: large enough that Float32 gradient round-off divided by 2ε stays ~1e-4
/// relative, small enough that the O(ε²) truncation error is negligible). If ‖w‖ = 0, ε = relativeStep / ‖v‖.
///
/// Vectors are per layer, `[[Double]]` in `layers` order, each of the layer's `count` elements in
/// the weight tensor's row-major order. Perturbed weights are formed in Double and rounded to Float.
///
/// Side effects: none that survive a call. Every layer's weight tensor is restored to the exact
/// original value (the saved tensor is put back, nothing is added or subtracted), and every
/// trainable parameter's gradient is restored too (the gradient passes zero and overwrite them).
public struct HessianVectorProduct {
    /// The model whose loss is differentiated.
    public let model: any Module
    /// The layers whose weights span the space H acts on.
    public let layers: [QuantizedLayer]
    /// The calibration images (the model's input batch).
    public let images: Tensor
    /// The calibration labels, one per image.
    public let labels: [Int32]
    /// eps0 in ε = eps0 · ‖w‖ / ‖v‖.
    public let relativeStep: Double

    /// An HVP on a fixed batch; `relativeStep` is eps0 (see the type's documentation).
    public init(model: any Module, layers: [QuantizedLayer], images: Tensor, labels: [Int32],
                relativeStep: Double = 1e-3) {
        precondition(relativeStep > 0 && relativeStep.isFinite, "HessianVectorProduct: relativeStep must be positive")
        self.model = model
        self.layers = layers
        self.images = images
        self.labels = labels
        self.relativeStep = relativeStep
    }

    /// Number of weights per layer (N_l), in `layers` order.
    public var layerCounts: [Int] { layers.map { $0.parameter.value.count } }

    /// ‖w‖ over all the layers' weights.
    public func weightNorm() -> Double {
        layers.reduce(0.0) { $0 + $1.parameter.value.squaredNorm() }.squareRoot()
    }

    /// The step ε this HVP uses for probe `v`.
    public func step(for v: [[Double]]) -> Double {
        let vn = v.reduce(0.0) { acc, row in row.reduce(acc) { $0 + $1 * $1 } }.squareRoot()
        precondition(vn > 0, "HessianVectorProduct: the zero vector has no direction")
        let wn = weightNorm()
        return relativeStep * (wn > 0 ? wn : 1) / vn
    }

    /// ∇L w.r.t. the layers' weights at the current weights (eval mode), per layer.
    /// Parameter gradients are restored afterwards.
    public func gradient() throws -> [[Double]] {
        let savedGrads = model.trainableParameters().map { ($0, $0.grad) }
        defer { for (p, g) in savedGrads { p.grad = g } }
        return try rawGradient()
    }

    /// H·v per layer (see the type's documentation). `v` must have one row of N_l elements per layer.
    /// - Throws: ``LossError`` if a label is outside the model's classes.
    public func apply(_ v: [[Double]]) throws -> [[Double]] {
        precondition(v.count == layers.count, "HessianVectorProduct: \(v.count) vector blocks for \(layers.count) layers")
        for (row, layer) in zip(v, layers) {
            precondition(row.count == layer.parameter.value.count,
                         "HessianVectorProduct: block of \(row.count) for layer '\(layer.path)' of \(layer.parameter.value.count) weights")
        }
        let eps = step(for: v)
        let savedWeights = layers.map { $0.parameter.value }
        let savedGrads = model.trainableParameters().map { ($0, $0.grad) }
        defer {
            for (layer, w) in zip(layers, savedWeights) { layer.parameter.value = w }
            for (p, g) in savedGrads { p.grad = g }
        }
        func perturb(_ sign: Double) {
            for (i, layer) in layers.enumerated() {
                let w = savedWeights[i]
                var t = Tensor(shape: w.shape)
                let n = w.count
                w.withUnsafePointer { src in
                    t.withUnsafeMutablePointer { dst in
                        for k in 0..<n { dst[k] = Float(Double(src[k]) + sign * eps * v[i][k]) }
                    }
                }
                layer.parameter.value = t
            }
        }
        perturb(1)
        let gPlus = try rawGradient()
        perturb(-1)
        let gMinus = try rawGradient()
        let inv = 1 / (2 * eps)
        return zip(gPlus, gMinus).map { p, m in zip(p, m).map { ($0 - $1) * inv } }
    }

    /// Zeroes the gradients, runs forward (eval) + loss + backward, and reads the layers' gradients.
    private func rawGradient() throws -> [[Double]] {
        model.zeroGradients()
        let logits = model.forward(images, mode: .eval)
        let loss = SoftmaxCrossEntropy()
        _ = try loss.forward(logits: logits, labels: labels)
        model.backwardParameters(loss.backward())
        return layers.map { layer in layer.parameter.grad.scalars.map(Double.init) }
    }
}

/// A Hutchinson estimate of the per-layer Hessian traces.
public struct HessianTraceEstimate: Sendable, Equatable {
    /// Tr(H_l) ≈ (1/m) Σ_j v_j,lᵀ (H v_j)_l, per layer in `layers` order.
    public var traces: [Double]
    /// Per layer: the sample variance (m − 1 denominator) of the per-probe estimates v_j,lᵀ(Hv_j)_l,
    /// divided by m, i.e. the squared standard error of ``traces`` (0 when m < 2).
    public var variances: [Double]
    /// m, the number of probes used.
    public var probes: Int

    /// Σ_l Tr(H_l).
    public var totalTrace: Double { traces.reduce(0, +) }

    /// Bundles an estimate.
    public init(traces: [Double], variances: [Double], probes: Int) {
        self.traces = traces
        self.variances = variances
        self.probes = probes
    }
}

/// Hutchinson's estimator of the per-layer Hessian traces (MSQ-SPEC §4).
///
/// Probe j draws a Rademacher vector v_j (±1 each) over ALL quantized weights at once from
/// `RandomSource(seed: seed, stream: [j])`, layers in order, each layer's weights in row-major
/// order, one random bit per weight (see ``rademacherProbe(seed:probe:counts:)``).
/// One HVP gives every layer's v_j,lᵀ(Hv_j)_l (block-diagonal estimate). Probing stops after
/// `maxProbes`, or earlier once at least `minProbes` probes were taken and the running mean of the
/// total trace changed by less than `relativeTolerance · |running mean|` with the last probe
/// (tolerance 0 never stops early). The result depends only on the model, batch and seed.
public final class HutchinsonTrace {
    /// The Hessian-vector product used for every probe.
    public let hvp: HessianVectorProduct
    /// The probe seed.
    public let seed: UInt64
    /// m_max.
    public let maxProbes: Int
    /// Minimum number of probes before the tolerance test may stop probing.
    public let minProbes: Int
    /// Relative change of the running total-trace mean under which probing stops.
    public let relativeTolerance: Double

    /// A trace estimator on a fixed calibration batch; `relativeStep` is the HVP's eps0.
    public init(model: any Module, layers: [QuantizedLayer], images: Tensor, labels: [Int32], seed: UInt64,
                maxProbes: Int = 50, minProbes: Int = 4, relativeTolerance: Double = 0.05,
                relativeStep: Double = 1e-3) {
        precondition(maxProbes >= 1, "HutchinsonTrace: maxProbes must be at least 1")
        precondition(minProbes >= 1, "HutchinsonTrace: minProbes must be at least 1")
        precondition(relativeTolerance >= 0, "HutchinsonTrace: relativeTolerance must be non-negative")
        self.hvp = HessianVectorProduct(model: model, layers: layers, images: images, labels: labels,
                                        relativeStep: relativeStep)
        self.seed = seed
        self.maxProbes = maxProbes
        self.minProbes = minProbes
        self.relativeTolerance = relativeTolerance
    }

    /// The Rademacher probe number `probe` for layers of `counts` weights: ±1 per weight, bit k of
    /// successive `next()` words of `RandomSource(seed: seed, stream: [probe])` (1 → +1, 0 → −1).
    public static func rademacherProbe(seed: UInt64, probe: Int, counts: [Int]) -> [[Double]] {
        var rng = RandomSource(seed: seed, stream: [UInt64(probe)])
        var word: UInt64 = 0
        var left = 0
        return counts.map { n in
            (0..<n).map { _ in
                if left == 0 { word = rng.next(); left = 64 }
                let bit = word & 1
                word >>= 1
                left -= 1
                return bit == 1 ? 1.0 : -1.0
            }
        }
    }

    /// Runs the probes (see the type's documentation). Weights and gradients are unchanged afterwards.
    /// - Throws: ``LossError`` if a label is outside the model's classes.
    public func estimate() throws -> HessianTraceEstimate {
        let counts = hvp.layerCounts
        let L = counts.count
        var sum = [Double](repeating: 0, count: L)
        var sumSq = [Double](repeating: 0, count: L)
        var m = 0
        var previousMean: Double? = nil
        while m < maxProbes {
            let v = Self.rademacherProbe(seed: seed, probe: m, counts: counts)
            let hv = try hvp.apply(v)
            var total = 0.0
            for l in 0..<L {
                var d = 0.0
                for k in 0..<counts[l] { d += v[l][k] * hv[l][k] }
                sum[l] += d
                sumSq[l] += d * d
                total += d
            }
            m += 1
            let mean = sum.reduce(0, +) / Double(m)
            if m >= minProbes, let prev = previousMean, abs(mean - prev) < relativeTolerance * abs(mean) { break }
            previousMean = mean
        }
        let traces = sum.map { $0 / Double(max(m, 1)) }
        let variances: [Double] = (0..<L).map { l in
            guard m >= 2 else { return 0 }
            let mean = sum[l] / Double(m)
            let sampleVar = max(0, (sumSq[l] - Double(m) * mean * mean) / Double(m - 1))
            return sampleVar / Double(m)
        }
        return HessianTraceEstimate(traces: traces, variances: variances, probes: m)
    }
}

/// HAWQ-V2 average-trace sensitivity per layer (MSQ-SPEC §4):
///
///     Ω_l = Tr(H_l) / N_l · ‖Q_{n_l}(W_l) − W_l‖²
///
/// with Q_{n_l} the layer's RoundClamp quantizer at its current precision (computed from its codes,
/// so the quantizer's `lastScale` is not touched) and N_l = `layer.count`.
public func sensitivity(traces: [Double], layers: [QuantizedLayer]) -> [Double] {
    precondition(traces.count == layers.count, "sensitivity: \(traces.count) traces for \(layers.count) layers")
    return zip(traces, layers).map { trace, layer in
        let w = layer.parameter.value
        let (s, codes) = layer.quantizer.codes(of: w)
        let half = Double(1 << (layer.bits - 1))
        var err = 0.0
        w.withUnsafePointer { p in
            for k in 0..<w.count {
                let q = Double(s) * Double(codes[k]) / half
                let d = q - Double(p[k])
                err += d * d
            }
        }
        return layer.count > 0 ? trace / Double(layer.count) * err : 0
    }
}

/// The aggressive-pruning step per layer (MSQ-SPEC §4): k_l = 1 if Ω_l > mean(Ω), else 2.
/// (Sensitive layers are pruned gently, one bit; the rest two bits.) Empty input gives `[]`.
public func aggressivePruningK(omega: [Double]) -> [Int] {
    guard !omega.isEmpty else { return [] }
    let mean = omega.reduce(0, +) / Double(omega.count)
    return omega.map { $0 > mean ? 1 : 2 }
}
