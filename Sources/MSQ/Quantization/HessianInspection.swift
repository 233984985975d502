import CKernels
import Foundation

/// A training checkpoint's network rebuilt for analysis: the model with the checkpoint's weights
/// and batch-norm buffers, its quantization scheme attached (if the run had one), and the layers
/// the Hessian is taken over.
public struct RestoredModel {
    /// The network, weights loaded.
    public let model: any Module
    /// Its kind (from the run description).
    public let kind: ModelKind
    /// The dataset it was trained on (input shape, classes, normalisation).
    public let dataset: DatasetInfo
    /// The quantized layers (the scheme's precisions), or every conv/linear at 8 bits, unattached,
    /// for a float run.
    public let layers: [QuantizedLayer]
    /// Whether the checkpoint carries a quantization scheme.
    public let isQuantized: Bool
    /// The run's seed (synthetic data is drawn from it).
    public let runSeed: UInt64

    /// Rebuilds the network of `checkpoint` (model and dataset from its run description, scheme from
    /// its method state) and loads every tensor the network has.
    /// - Throws: ``PackedModelError/checkpointMismatch(reason:)`` when the description is incomplete
    ///   or a tensor is missing or misshapen.
    public init(checkpoint: Checkpoint) throws(PackedModelError) {
        let h = checkpoint.header
        guard let modelName = h.runDescription["model"], let datasetName = h.runDescription["dataset"] else {
            throw .checkpointMismatch(reason: "the checkpoint's run description has no model or dataset entry")
        }
        do {
            kind = try ModelKind(name: modelName)
            dataset = try DatasetCatalog.info(name: datasetName)
        } catch {
            throw .checkpointMismatch(reason: "\(error)")
        }
        runSeed = h.runDescription["seed"].flatMap(UInt64.init) ?? 0
        model = makeModel(kind, inputChannels: dataset.sampleShape[0], numClasses: dataset.numClasses, seed: 0,
                          inputSize: dataset.sampleShape[1])
        if let scheme = try? QuantizationScheme.decode(fromMethodState: h.methodState) {
            do {
                layers = try scheme.apply(to: model)
            } catch {
                throw .checkpointMismatch(reason: "the checkpoint's quantization scheme does not fit \(modelName): \(error)")
            }
            isQuantized = true
        } else {
            layers = quantizableLayers(of: model).compactMap { path, m in
                guard let w = layerWeight(of: m) else { return nil }
                return QuantizedLayer(path: path, parameter: w, quantizer: RoundClampQuantizer(bits: 8), count: w.value.count)
            }
            isQuantized = false
        }
        for (name, parameter) in model.namedParameters() {
            guard let value = checkpoint.tensor(named: name) else {
                throw .checkpointMismatch(reason: "the checkpoint has no tensor \(name), which \(modelName) needs")
            }
            guard value.shape == parameter.value.shape else {
                throw .checkpointMismatch(reason: "\(name) has shape \(value.shape) in the checkpoint, \(modelName) expects \(parameter.value.shape)")
            }
            parameter.value = value
        }
    }

    /// The Hessian's calibration batch for this run: the first `count` training images of its
    /// dataset (read from `dataDirectory`, or the dataset's standard place), normalised, as MSQ takes it.
    /// - Throws: ``DataError`` when the data cannot be read.
    public func calibrationBatch(count: Int, dataDirectory: String?) throws -> (images: Tensor, labels: [Int32]) {
        let data = try DatasetCatalog.load(name: dataset.name, directory: dataDirectory, limitTrain: count,
                                           limitTest: 1, seed: runSeed)
        return try MSQ.calibrationBatch(from: data.train, normalization: data.normalization, count: count)
    }
}

/// Runs `body` with each layer's weight replaced by Q_n(W) and its quantizer bypassed (PACT input
/// quantizers too), then puts the latent weights and quantizers back. The Hessian MSQ uses is that
/// of the task loss at the weights the network computes with (MSQ-SPEC §4 leaves the point open):
/// the quantizers are piecewise constant, so H through them is zero almost everywhere.
public func atQuantizedWeights<T>(model: any Module, layers: [QuantizedLayer], _ body: () throws -> T) rethrows -> T {
    let latent = layers.map { $0.parameter.value }
    for layer in layers { layer.parameter.value = layer.quantizer.forward(layer.parameter.value) }
    for layer in layers { layer.quantizer.isBypassed = true }
    let activations = quantizableLayers(of: model).compactMap { layerInputQuantizer(of: $0.module) }
    for q in activations { q.isBypassed = true }
    defer {
        for q in activations { q.isBypassed = false }
        for (layer, w) in zip(layers, latent) {
            layer.quantizer.isBypassed = false
            layer.parameter.value = w
        }
    }
    return try body()
}

/// One layer's line of a Hessian inspection (PyHessian's per-layer figures).
public struct LayerHessianReport: Codable, Sendable, Equatable {
    /// Module path.
    public var path: String
    /// N_l.
    public var params: Int
    /// n_l (nil for a float run).
    public var bits: Int?
    /// Hutchinson estimate of Tr(H_l).
    public var trace: Double
    /// Its standard error (sample sd of the per-probe terms / √m).
    public var traceStandardError: Double
    /// Tr(H_l) / N_l.
    public var averageTrace: Double
    /// The eigenvalue of H_l largest in magnitude, by power iteration (Rayleigh quotient).
    public var topEigenvalue: Double
    /// Power iterations it took.
    public var powerIterations: Int
    /// Ω_l = Tr(H_l)/N_l · ‖Q_n(W_l) − W_l‖² at the layer's bits (nil for a float run).
    public var omega: Double?
}

/// Per-layer traces, average traces, top eigenvalues and Ω of `layers` (MSQ-SPEC §4): Hutchinson
/// with `probes` Rademacher probes (no early stop) under `seed`, then for each layer power iteration
/// on its diagonal block H_ll (probes supported on that layer, at most `maxIterations`, stopping when
/// the Rayleigh quotient moves by less than `tolerance` relative). With `quantized` the Hessian is
/// taken at the quantized weights with the quantizers bypassed (``atQuantizedWeights(model:layers:_:)``,
/// as MSQ does) and Ω at the latent weights; without it (a float run) at the weights as they are,
/// and Ω is nil. `precision` is the HVPs' arithmetic (``HessianPrecision``). The model is as it was
/// afterwards.
///
/// With a `collective` of several ranks (each holding the same model and batch) the work is split
/// and every rank gets the one-process report: the Hutchinson probes as
/// ``HutchinsonTrace/estimate(collective:)`` splits them, and layer l's power iteration on rank
/// l mod P, its eigenvalue and iteration count shared by one all-reduce (each rank writes only its
/// layers' entries, the others are zero, so the sums are exact).
public func inspectHessian(model: any Module, layers: [QuantizedLayer], images: Tensor, labels: [Int32],
                           mode: HessianMode? = nil, probes: Int, seed: UInt64, maxIterations: Int = 20,
                           tolerance: Double = 1e-3, quantized: Bool = true, precision: HessianPrecision = .float32,
                           collective: any Collective = SingleProcess()) throws -> (mode: HessianMode, layers: [LayerHessianReport]) {
    precondition(probes >= 1 && maxIterations >= 1, "inspectHessian: probes and maxIterations must be positive")
    let estimator = HutchinsonTrace(model: model, layers: layers, images: images, labels: labels, seed: seed,
                                    maxProbes: probes, minProbes: probes, relativeTolerance: 0, mode: mode,
                                    precision: precision)
    let hvp = estimator.hvp
    let counts = hvp.layerCounts
    func measure() throws -> (HessianTraceEstimate, [(Double, Int)]) {
        let estimate = try estimator.estimate(collective: collective)
        // [λ_l, iterations_l] per layer, filled on the layer's rank only.
        var eigen = [Double](repeating: 0, count: 2 * layers.count)
        for l in layers.indices where l % collective.size == collective.rank {
            let (lambda, iterations) = try topEigenvalue(hvp: hvp, layer: l, counts: counts, seed: seed,
                                                         maxIterations: maxIterations, tolerance: tolerance)
            eigen[2 * l] = lambda
            eigen[2 * l + 1] = Double(iterations)
        }
        eigen = try collective.allReduceSum(eigen)
        return (estimate, layers.indices.map { (eigen[2 * $0], Int(eigen[2 * $0 + 1])) })
    }
    let (estimate, eigen) = quantized ? try atQuantizedWeights(model: model, layers: layers, measure) : try measure()
    let omega = quantized ? sensitivity(traces: estimate.traces, layers: layers) : nil
    var reports: [LayerHessianReport] = []
    for (l, layer) in layers.enumerated() {
        let (lambda, iterations) = eigen[l]
        let trace = estimate.traces[l]
        reports.append(LayerHessianReport(path: layer.path, params: counts[l], bits: quantized ? layer.bits : nil,
                                          trace: trace, traceStandardError: estimate.variances[l].squareRoot(),
                                          averageTrace: trace / Double(max(counts[l], 1)), topEigenvalue: lambda,
                                          powerIterations: iterations, omega: omega?[l]))
    }
    return (hvp.mode, reports)
}

/// Power iteration on H_ll: the Rayleigh quotient of the eigenvalue largest in magnitude and the
/// iterations taken.
private func topEigenvalue(hvp: HessianVectorProduct, layer l: Int, counts: [Int], seed: UInt64,
                           maxIterations: Int, tolerance: Double) throws -> (Double, Int) {
    var v = HutchinsonTrace.probeTensors(seed: seed &+ 0x706F_7765_72, probe: l, counts: [counts[l]])[0]
    var lambda = 0.0, iterations = 0
    for it in 1...maxIterations {
        iterations = it
        let norm = v.squaredNorm().squareRoot()
        guard norm > 0 else { break }
        v = Tensor(shape: v.shape, scalars: v.scalars.map { Float(Double($0) / norm) })
        let blocks = counts.enumerated().map { i, n in i == l ? v : Tensor(shape: [n]) }
        let hv = try hvp.apply(tensors: blocks)[l].reshaped([counts[l]])
        let rayleigh = v.dot(hv)
        let converged = it > 1 && abs(rayleigh - lambda) <= tolerance * abs(rayleigh)
        lambda = rayleigh
        v = hv
        if converged { break }
    }
    return (lambda, iterations)
}
