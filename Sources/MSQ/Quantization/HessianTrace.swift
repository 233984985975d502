import CKernels

/// Hessian-vector products and Hutchinson trace estimates over the quantized layers' weights
/// (MSQ-SPEC §4, paper Sec. 3.2, Eq. 9).
///
/// H is the Hessian of the task loss (softmax cross-entropy, no label smoothing, batch mean) on a
/// fixed calibration batch, taken with the model in EVAL mode (batch norm uses running statistics),
/// w.r.t. the latent weights W_l of the given ``QuantizedLayer``s only (the other parameters are
/// held fixed). The model is used as it is: when the layers' ``RoundClampQuantizer``s are attached,
/// the gradient is the straight-through one, so H is the Hessian of L(Q(W)) w.r.t. W under the STE
/// (what MSQ's sensitivity uses); with no transform attached it is the Hessian of L(W).

/// How ``HessianVectorProduct`` computes H·v.
public enum HessianMode: String, CaseIterable, Codable, Sendable {
    /// Pearlmutter's R-operator, forward over reverse: the exact H·v (C kernels; float32, or double
    /// with ``HessianPrecision/float64``).
    case exact
    /// The generalized Gauss-Newton product J^T H_L J v: one R-forward and one backward. Its
    /// diagonal blocks equal the Hessian's almost everywhere for networks piecewise linear in each
    /// layer's weights (conv, linear, eval batch norm, ReLU, pooling, sums); its off-diagonal blocks
    /// do not, so per-layer Hutchinson terms agree with ``exact`` in expectation, not probe by probe.
    case gaussNewton = "gauss-newton"
    /// (∇L(w + εv) − ∇L(w − εv)) / 2ε, the reference the R-operator replaced. Not an HVP of a ReLU
    /// network in float32: a step large enough to beat round-off flips ReLUs (MSQ-SPEC §4).
    case centralDifference = "central-difference"

    /// The cheapest mode that is exact for `model`'s per-layer traces: ``gaussNewton`` when every
    /// module is piecewise linear, ``exact`` when every module has an R-operator, else
    /// ``centralDifference`` (a model with modules that do not conform to ``CurvatureModule``).
    public static func automatic(for model: any Module) -> HessianMode {
        automatic(for: try? curvatureSupport(of: model))
    }

    /// ``automatic(for:)`` from a model's ``curvatureSupport(of:)`` (nil: a module has no R-operator).
    static func automatic(for support: CurvatureSupport?) -> HessianMode {
        switch support {
        case .piecewiseLinear?: return .gaussNewton
        case .general?: return .exact
        case nil: return .centralDifference
        }
    }
}

/// H·v restricted to the quantized layers' weights, by the R-operator (``HessianMode/exact``,
/// ``HessianMode/gaussNewton``) or by central differences of the gradient:
///
///     Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / (2ε),    ε = relativeStep · ‖w‖ / ‖v‖
///
/// where ‖w‖ is the Euclidean norm of ALL the layers' weights concatenated and ‖v‖ that of the whole
/// probe (perturbed weights formed in Double, rounded to Float). If ‖w‖ = 0, ε = relativeStep / ‖v‖.
///
/// Vectors are per layer, in `layers` order, each of the layer's `count` elements in the weight
/// tensor's row-major order: `[[Double]]` through ``apply(_:)``, float ``Tensor``s through
/// ``apply(tensors:)``. The R-operator modes set each weight's ``Parameter/tangent`` and
/// ``Parameter/hessianVector`` for the duration of a call and need every module to conform to
/// ``CurvatureModule``.
///
/// Side effects: none that survive a call. Weights, gradients, tangents are as they were (central
/// differences put the saved tensors back, nothing is added or subtracted).
public struct HessianVectorProduct {
    /// The model whose loss is differentiated.
    public let model: any Module
    /// The layers whose weights span the space H acts on.
    public let layers: [QuantizedLayer]
    /// The calibration images (the model's input batch).
    public let images: Tensor
    /// The calibration labels, one per image.
    public let labels: [Int32]
    /// How H·v is computed.
    public let mode: HessianMode
    /// eps0 in ε = eps0 · ‖w‖ / ‖v‖ (central differences only).
    public let relativeStep: Double
    /// The arithmetic of the R-operator modes (``HessianPrecision``); central differences are float32.
    public let precision: HessianPrecision
    // Whether every module has an R-operator, checked once: the model's structure does not change.
    private let support: Result<CurvatureSupport, CurvatureError>
    // Whether every module has a float64 R-pass (checked only for float64 precision).
    private let float64Support: Result<Void, CurvatureError>

    /// An HVP on a fixed batch. `mode` nil picks ``HessianMode/automatic(for:)``; `relativeStep` is
    /// eps0 of the central differences (see the type's documentation); `precision` the R-operator's
    /// arithmetic (``HessianPrecision/float64`` needs an R-operator mode and a model of the layers
    /// it lists, else ``apply(_:)`` throws ``CurvatureError``).
    public init(model: any Module, layers: [QuantizedLayer], images: Tensor, labels: [Int32],
                mode: HessianMode? = nil, relativeStep: Double = 1e-3, precision: HessianPrecision = .float32) {
        precondition(relativeStep > 0 && relativeStep.isFinite, "HessianVectorProduct: relativeStep must be positive")
        self.model = model
        self.layers = layers
        self.images = images
        self.labels = labels
        let support = Result { () throws(CurvatureError) in try curvatureSupport(of: model) }
        self.support = support
        self.mode = mode ?? HessianMode.automatic(for: try? support.get())
        self.relativeStep = relativeStep
        self.precision = precision
        if precision == .float64 {
            float64Support = Result { () throws(CurvatureError) in try checkFloat64Curvature(of: model) }
        } else {
            float64Support = .success(())
        }
    }

    /// Number of weights per layer (N_l), in `layers` order.
    public var layerCounts: [Int] { layers.map { $0.parameter.value.count } }

    /// ‖w‖ over all the layers' weights.
    public func weightNorm() -> Double {
        layers.reduce(0.0) { $0 + $1.parameter.value.squaredNorm() }.squareRoot()
    }

    /// The step ε central differences use for probe `v`.
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
    /// - Throws: ``LossError`` if a label is outside the model's classes; ``CurvatureError`` if an
    ///   R-operator mode meets a module without one.
    public func apply(_ v: [[Double]]) throws -> [[Double]] {
        checkBlocks(v.map(\.count))
        if precision == .float64 {
            return try float64ROperator(zip(v, layers).map { Float64Tensor(shape: $1.parameter.value.shape, scalars: $0) })
        }
        if mode == .centralDifference { return try centralDifference(v) }
        let tensors = zip(v, layers).map { row, layer in
            Tensor(shape: layer.parameter.value.shape, scalars: row.map(Float.init))
        }
        return try rOperator(tensors, exact: mode == .exact).map { $0.scalars.map(Double.init) }
    }

    /// H·v per layer on float tensors shaped as the layers' weights (the form the Hutchinson
    /// estimator uses: no Double copies of a probe).
    public func apply(tensors v: [Tensor]) throws -> [Tensor] {
        checkBlocks(v.map(\.count))
        if precision == .float64 {
            let hv = try float64ROperator(zip(v, layers).map { Float64Tensor($0).reshaped($1.parameter.value.shape) })
            return zip(hv, layers).map { Tensor(shape: $1.parameter.value.shape, scalars: $0.map(Float.init)) }
        }
        switch mode {
        case .centralDifference:
            let hv = try centralDifference(v.map { $0.scalars.map(Double.init) })
            return zip(hv, layers).map { Tensor(shape: $1.parameter.value.shape, scalars: $0.map(Float.init)) }
        case .exact, .gaussNewton:
            return try rOperator(v.enumerated().map { i, t in t.reshaped(layers[i].parameter.value.shape) },
                                 exact: mode == .exact)
        }
    }

    private func checkBlocks(_ counts: [Int]) {
        precondition(counts.count == layers.count, "HessianVectorProduct: \(counts.count) vector blocks for \(layers.count) layers")
        for (n, layer) in zip(counts, layers) {
            precondition(n == layer.parameter.value.count,
                         "HessianVectorProduct: block of \(n) for layer '\(layer.path)' of \(layer.parameter.value.count) weights")
        }
    }

    /// One R-forward, the loss's Hessian on the logits' tangent, one R-backward (with the gradient
    /// chain when `exact`, without it for Gauss-Newton).
    private func rOperator(_ v: [Tensor], exact: Bool) throws -> [Tensor] {
        _ = try support.get()
        let root = curvatureChild(model)
        for (layer, t) in zip(layers, v) {
            layer.parameter.tangent = t
            layer.parameter.hessianVector = Tensor(shape: t.shape)
        }
        defer {
            for layer in layers {
                layer.parameter.tangent = nil
                layer.parameter.hessianVector = nil
            }
        }
        let (logits, rz) = root.rForward(images, tangent: nil)
        let loss = SoftmaxCrossEntropy()
        _ = try loss.forward(logits: logits, labels: labels)
        let rg = loss.hessianProduct(rz ?? Tensor(shape: logits.shape))
        _ = root.rBackward(exact ? loss.backward() : nil, tangent: rg, inputGradients: false)
        return layers.map { $0.parameter.hessianVector ?? Tensor(shape: $0.parameter.value.shape) }
    }

    /// ``rOperator(_:exact:)`` in double (``HessianPrecision/float64``): the same passes, on the
    /// float64 R-passes of the modules.
    private func float64ROperator(_ v: [Float64Tensor]) throws -> [[Double]] {
        guard mode != .centralDifference else { throw CurvatureError.float64NeedsROperator }
        try float64Support.get()
        let context = Float64CurvatureContext()
        for (layer, t) in zip(layers, v) { context.probe(layer.parameter, tangent: t) }
        let pass = float64Child(model).float64RPass(Float64Tensor(images), tangent: nil, context: context,
                                                    inputGradients: false)
        let d = pass.output.shape
        precondition(d.count == 2 && d[0] == labels.count, "HessianVectorProduct: logits \(d) for \(labels.count) labels")
        if let bad = labels.firstIndex(where: { $0 < 0 || Int($0) >= d[1] }) {
            throw LossError.labelOutOfRange(index: bad, label: labels[bad], numClasses: d[1])
        }
        let loss = Float64SoftmaxCrossEntropy(logits: pass.output, labels: labels)
        let rg = loss.hessianProduct(pass.tangent ?? Float64Tensor(zeros: pass.output.shape))
        _ = pass.backward(mode == .exact ? loss.gradient() : nil, rg)
        return layers.map { context.hessianVector(of: $0.parameter) ?? [Double](repeating: 0, count: $0.parameter.value.count) }
    }

    private func centralDifference(_ v: [[Double]]) throws -> [[Double]] {
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
/// Probe j draws a Rademacher vector v_j (±1 each) over ALL quantized weights at once, layers in
/// order, each layer's weights in row-major order, from the counter-based `msq_rademacher` with
/// stream j (see ``rademacherProbe(seed:probe:counts:)``): the same vectors at any thread count.
/// One HVP gives every layer's v_j,lᵀ(Hv_j)_l (block-diagonal estimate). Probing stops after
/// `maxProbes`, or earlier once at least `minProbes` probes were taken and the running mean of the
/// total trace changed by less than `relativeTolerance · |running mean|` with the last probe
/// (tolerance 0 never stops early). The result depends only on the model, batch and seed.
///
/// Over several processes (``estimate(collective:)``) the ranks share the probes: rank r evaluates
/// probes r, r + P, r + 2P, … of the sequence above, in rounds of P probes with one all-reduce of
/// the round's per-layer terms each. Every rank then adds the probes in probe order and applies the
/// stopping rule after each, as one process does, so all ranks stop after the one-process probe
/// count (not necessarily a multiple of P: the later probes of the last round are evaluated and
/// dropped) and hold the one-process estimate, bit for bit given the same per-probe terms.
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

    /// A trace estimator on a fixed calibration batch; `mode` nil is ``HessianMode/automatic(for:)``,
    /// `relativeStep` the central differences' eps0, `precision` the R-operator's arithmetic.
    public init(model: any Module, layers: [QuantizedLayer], images: Tensor, labels: [Int32], seed: UInt64,
                maxProbes: Int = 50, minProbes: Int = 4, relativeTolerance: Double = 0.05,
                mode: HessianMode? = nil, relativeStep: Double = 1e-3, precision: HessianPrecision = .float32) {
        precondition(maxProbes >= 1, "HutchinsonTrace: maxProbes must be at least 1")
        precondition(minProbes >= 1, "HutchinsonTrace: minProbes must be at least 1")
        precondition(relativeTolerance >= 0, "HutchinsonTrace: relativeTolerance must be non-negative")
        self.hvp = HessianVectorProduct(model: model, layers: layers, images: images, labels: labels,
                                        mode: mode, relativeStep: relativeStep, precision: precision)
        self.seed = seed
        self.maxProbes = maxProbes
        self.minProbes = minProbes
        self.relativeTolerance = relativeTolerance
    }

    /// The Rademacher probe number `probe` for layers of `counts` weights: layer l's block is the
    /// slice at offset Σ_{m<l} N_m of `msq_rademacher`'s stream `probe` under `seed`.
    public static func rademacherProbe(seed: UInt64, probe: Int, counts: [Int]) -> [[Double]] {
        probeTensors(seed: seed, probe: probe, counts: counts).map { $0.scalars.map(Double.init) }
    }

    /// ``rademacherProbe(seed:probe:counts:)`` as float tensors of shape `[N_l]`.
    public static func probeTensors(seed: UInt64, probe: Int, counts: [Int]) -> [Tensor] {
        var offset: UInt64 = 0
        return counts.map { n in
            var t = Tensor(unfilledShape: [n])
            t.withUnsafeMutablePointer { msq_rademacher($0, n, seed, UInt64(probe), offset) }
            offset += UInt64(n)
            return t
        }
    }

    /// Runs the probes (see the type's documentation), split over `collective`'s ranks: every rank
    /// must call it with the same model, batch and options, and every rank gets the same estimate,
    /// which is the one-process estimate (the default, ``SingleProcess``). Weights and gradients are
    /// unchanged afterwards.
    /// - Throws: ``LossError`` if a label is outside the model's classes; ``CollectiveError`` if the
    ///   ranks' sum fails.
    public func estimate(collective: any Collective = SingleProcess()) throws -> HessianTraceEstimate {
        let counts = hvp.layerCounts
        return try ProbeAccumulator.collect(layers: counts.count, maxProbes: maxProbes, minProbes: minProbes,
                                            relativeTolerance: relativeTolerance, collective: collective) { j in
            let v = Self.probeTensors(seed: seed, probe: j, counts: counts)
            let hv = try hvp.apply(tensors: v)
            return counts.indices.map { v[$0].dot(hv[$0]) }
        }
    }
}

/// Per-layer running sums of probe terms with the trace estimators' stopping rule: stop after
/// `maxProbes`, or once at least `minProbes` were taken and the running mean of the total moved by
/// less than `relativeTolerance` of itself with the last probe.
struct ProbeAccumulator {
    let maxProbes: Int
    let minProbes: Int
    let relativeTolerance: Double
    private var sum: [Double]
    private var sumSq: [Double]
    private var previousMean: Double? = nil
    private(set) var count = 0
    private(set) var isDone = false

    init(layers: Int, maxProbes: Int, minProbes: Int, relativeTolerance: Double) {
        self.maxProbes = maxProbes
        self.minProbes = minProbes
        self.relativeTolerance = relativeTolerance
        sum = [Double](repeating: 0, count: layers)
        sumSq = sum
    }

    /// Adds one probe's per-layer terms and updates ``isDone``.
    mutating func add(_ terms: [Double]) {
        for (l, d) in terms.enumerated() {
            sum[l] += d
            sumSq[l] += d * d
        }
        count += 1
        let mean = sum.reduce(0, +) / Double(count)
        if count >= maxProbes
            || (count >= minProbes && previousMean.map { abs(mean - $0) < relativeTolerance * abs(mean) } ?? false) {
            isDone = true
        }
        previousMean = mean
    }

    /// Probes `0..<maxProbes` split over `collective`'s ranks, summed into one accumulator on every
    /// rank. `probe(j)` gives probe j's per-layer terms (`layers` of them) and depends on j alone.
    ///
    /// The probes go in rounds of P = `collective.size`: in round t, rank r evaluates probe tP + r
    /// (none once that is past `maxProbes`) and writes its terms into row r of a P × `layers` block
    /// of zeros; one all-reduce of the block gives every rank every probe of the round, each element
    /// the sum of one rank's value and zeros, so exactly that value. Every rank then adds the round's
    /// probes to its accumulator in probe order, one at a time, with the stopping rule after each, as
    /// one process does. So the ranks stop together after the same probe count as one process,
    /// which need not be a multiple of P: probes of the last round past the stopping point are
    /// evaluated and discarded (at most P − 1 wasted probes per estimate, the price of a stopping
    /// rule that does not depend on P). Sums, sums of squares and the stopping test run on every
    /// rank from the same numbers in the same order, so the estimate is bit-identical on every rank
    /// and to the one-process estimate (given the same per-probe terms). One all-reduce of P ×
    /// `layers` doubles per round: small next to a probe's forward and backward.
    ///
    /// Every rank must call it with the same arguments: a rank whose `probe` throws leaves the others
    /// waiting in the all-reduce (the probes of identical replicas on the same batch throw together).
    static func collect(layers: Int, maxProbes: Int, minProbes: Int, relativeTolerance: Double,
                        collective: any Collective, probe: (Int) throws -> [Double]) throws -> HessianTraceEstimate {
        var accumulator = ProbeAccumulator(layers: layers, maxProbes: maxProbes, minProbes: minProbes,
                                           relativeTolerance: relativeTolerance)
        let ranks = collective.size, rank = collective.rank
        precondition(ranks >= 1 && (0..<ranks).contains(rank), "ProbeAccumulator: rank \(rank) of \(ranks)")
        var first = 0
        repeat {
            var block = [Double](repeating: 0, count: ranks * layers)
            if first + rank < maxProbes {
                let terms = try probe(first + rank)
                precondition(terms.count == layers, "ProbeAccumulator: \(terms.count) terms for \(layers) layers")
                block.replaceSubrange((rank * layers)..<((rank + 1) * layers), with: terms)
            }
            block = try collective.allReduceSum(block)
            for k in 0..<ranks where first + k < maxProbes && !accumulator.isDone {
                accumulator.add(Array(block[(k * layers)..<((k + 1) * layers)]))
            }
            first += ranks
        } while !accumulator.isDone
        return accumulator.estimate
    }

    /// The means and their squared standard errors (sample variance with m − 1, divided by m).
    var estimate: HessianTraceEstimate {
        let m = Double(max(count, 1))
        let variances: [Double] = sum.indices.map { l in
            guard count >= 2 else { return 0 }
            let mean = sum[l] / m
            return max(0, (sumSq[l] - m * mean * mean) / (m - 1)) / m
        }
        return HessianTraceEstimate(traces: sum.map { $0 / m }, variances: variances, probes: count)
    }
}

/// HAWQ-V2 average-trace sensitivity per layer (MSQ-SPEC §4):
///
///     Ω_l = Tr(H_l) / N_l · ‖Q_{n_l}(W_l) − W_l‖²
///
/// with Q_{n_l} the layer's RoundClamp quantizer at its current precision
/// (``RoundClampQuantizer/squaredErrors(of:bits:)``; `lastScale` untouched) and N_l = `layer.count`.
public func sensitivity(traces: [Double], layers: [QuantizedLayer]) -> [Double] {
    precondition(traces.count == layers.count, "sensitivity: \(traces.count) traces for \(layers.count) layers")
    return zip(traces, layers).map { trace, layer in sensitivities(trace: trace, layer: layer, bits: [layer.bits])[0] }
}

/// Ω_l(n) = Tr(H_l)/N_l · ‖Q_n(W_l) − W_l‖² for every precision n in `bits` (HAWQ's table;
/// ``sensitivity(traces:layers:)`` is it at each layer's own precision). 0 for an empty layer.
public func sensitivities(trace: Double, layer: QuantizedLayer, bits: [Int]) -> [Double] {
    layer.quantizer.squaredErrors(of: layer.parameter.value, bits: bits).map {
        layer.count > 0 ? trace / Double(layer.count) * $0 : 0
    }
}

/// `traces` with each per-weight trace Tr_l/N_l raised to at least 1 % of the mean of
/// max(Tr_l/N_l, 0) over layers: a floor for Hutchinson estimates of positive semidefinite blocks
/// that noise made negative or zero (all zero stays zero).
public func flooredTraces(_ traces: [Double], counts: [Int]) -> [Double] {
    precondition(traces.count == counts.count, "flooredTraces: \(traces.count) traces for \(counts.count) layers")
    guard !traces.isEmpty else { return [] }
    let perWeight = zip(traces, counts).map { $0 / Double(max(1, $1)) }
    let floor = 0.01 * perWeight.reduce(0) { $0 + max($1, 0) } / Double(perWeight.count)
    return zip(perWeight, counts).map { max($0, floor) * Double(max(1, $1)) }
}

/// The aggressive-pruning step per layer (MSQ-SPEC §4): k_l = 1 if Ω_l > mean(Ω), else 2.
/// (Sensitive layers are pruned gently, one bit; the rest two bits.) Empty input gives `[]`.
public func aggressivePruningK(omega: [Double]) -> [Int] {
    guard !omega.isEmpty else { return [] }
    let mean = omega.reduce(0, +) / Double(omega.count)
    return omega.map { $0 > mean ? 1 : 2 }
}
