import Foundation

/// SMPQ (and DMPQ, its baseline) as a ``TrainingMethod`` (SMPQ-SPEC §1–4).
///
/// 1. Warm-up: every conv/linear layer computes with a ``SupernetWeight`` over
///    ``SMPQOptions/candidates``, α frozen at uniform; only W trains.
/// 2. Search: after each W step (the Trainer's, on a training batch) one Adam step on α with the task
///    loss on a validation batch plus the ``BitBudgetPenalty``; the W gradients are set aside while
///    α's are taken, so neither step sees the other's data. Every ``SMPQOptions/shapleyEveryEpochs``
///    and at the end of the search, a truncated Monte Carlo Shapley estimate of every
///    (layer, candidate) on the fixed validation batch, smoothed into φ.
/// 3. Selection: the exact allocator picks one precision per layer under the storage of the target,
///    by φ (SMPQ) or by α (DMPQ), and the supernet layers are replaced by RoundClamp quantizers at
///    those precisions, so α leaves the model.
/// 4. QAT at that scheme for the rest of the run. The checkpointed state carries the scheme under
///    `scheme` from then on, so `msq export` and `msq eval` work as for MSQ and HAWQ.
///
/// Both selections run the same search (the Shapley values are measured, never trained on), so with
/// one seed SMPQ and DMPQ differ only in the selection.
///
/// **Several processes** (``TrainingPlan/collective``): each Shapley estimate's permutations are
/// split over the ranks (rank r walks permutations r, r + P, …, see
/// ``MonteCarloShapley/walk(orders:playerCount:collective:value:)``), and every rank gets the same
/// φ, the one one process would estimate. The α steps run on every rank on the same validation
/// batch (identical replicas, so identical α), and the selection is computed on every rank from φ
/// or α (no communication; a broadcast from rank 0 would hide a drifted replica instead of
/// reporting it); ``Collective/checkSameBitScheme(paths:bits:step:)`` then checks that the ranks
/// selected the same scheme, throwing ``CollectiveError/replicasDiffer(_:)`` if not.
public final class SMPQTraining: TrainingMethod {
    /// The run's options.
    public let options: SMPQOptions
    /// The quantized layers with the RoundClamp quantizers they get after the search, in model order.
    public let layers: [QuantizedLayer]
    /// Each layer's supernet weight during the search, in the order of ``layers``.
    public let supernets: [SupernetWeight]
    /// The held-out images α and the Shapley values are fitted on.
    public let validation: any Dataset
    let modules: [any Module]
    let normalization: Normalization
    let shapleyBatch: (images: Tensor, labels: [Int32])
    let activationBits: Int?
    let activationExcluded: [String]
    let seed: UInt64
    let alphaOptimizer: AdamW
    let budget: BitBudgetPenalty
    let lossFunction = SoftmaxCrossEntropy(labelSmoothing: 0)
    var plan = TrainingPlan(stepsPerEpoch: 1, epochs: 1, log: { _ in })
    var state: State
    /// Wall-clock mark of the last search step (search seconds exclude the Trainer's evaluations).
    var lastMark = Date()
    /// W, batch norm, PACT and α: what the search trains (α leaves the model at the selection).
    var searchTrainableParameters = 0

    /// Where the run is.
    public enum Phase: String, Codable, Sendable {
        /// W alone, α uniform.
        case warmup
        /// W and α alternate; Shapley estimates.
        case search
        /// Quantization-aware training at the selected scheme.
        case qat
    }

    /// An SMPQ method over `layers` of `model` (RoundClamp quantizers attached, e.g. by
    /// ``QuantizationScheme/apply(to:)``), whose transforms it replaces by supernet weights.
    /// `validation` must be held out from the Trainer's training set (``SMPQTraining/split(_:options:seed:)``).
    /// Prefer ``setUp(model:options:context:)``, which builds all of it.
    public init(model: any Module, layers: [QuantizedLayer], options: SMPQOptions,
                validation: (dataset: any Dataset, normalization: Normalization),
                activationBits: Int? = nil, activationExcluded: [String] = [], seed: UInt64) throws {
        try options.validate(counts: layers.map(\.count))
        let byPath = Dictionary(quantizableLayers(of: model).map { ($0.path, $0.module) }, uniquingKeysWith: { a, _ in a })
        var modules: [any Module] = []
        for layer in layers {
            guard let module = byPath[layer.path], layerWeightTransform(of: module) === layer.quantizer else {
                throw QuantizationError.unknownLayer(path: layer.path, valid: Array(byPath.keys).sorted())
            }
            modules.append(module)
        }
        guard validation.dataset.count >= 1 else {
            throw TrainingError.invalidMethodOption(options: SMPQOptions.optionsName, property: "validationFraction",
                                                    problem: "leaves no validation image (MethodContext.validationData is empty)")
        }
        self.options = options
        self.layers = layers
        self.modules = modules
        self.validation = validation.dataset
        self.normalization = validation.normalization
        self.shapleyBatch = try calibrationBatch(from: validation.dataset, normalization: validation.normalization,
                                                 count: options.shapleyBatch)
        self.activationBits = activationBits
        self.activationExcluded = activationExcluded
        self.seed = seed
        let granularity = layers.first?.quantizer.granularity ?? options.scaleGranularity
        self.supernets = layers.map { _ in SupernetWeight(candidates: options.candidates, granularity: granularity) }
        self.alphaOptimizer = AdamW(parameters: zip(layers, supernets).map { ($0.path + ".smpq.alpha", $1.alpha) },
                                    beta1: options.alphaBeta1, beta2: options.alphaBeta2, epsilon: 1e-8, weightDecay: 0)
        self.budget = BitBudgetPenalty(targetCompression: options.targetCompression, gamma: options.budgetWeight)
        self.state = State(validationCount: validation.dataset.count,
                           validationIndices: (validation.dataset as? DatasetSubset)?.indices)
        installPhaseTransforms()
    }

    public var name: String { "smpq" }

    /// The RoundClamp scale granularity, in the search and after it.
    public var scaleGranularity: ScaleGranularity? { layers.first?.quantizer.granularity }

    /// Where the run is.
    public var phase: Phase { state.phase }

    /// N_l per layer.
    var counts: [Int] { layers.map(\.count) }

    /// Steps of the search (warm-up included); the selection happens after the last one.
    var searchSteps: Int { max(1, RunLimits.steps(epochs: options.searchFraction * Double(plan.epochs), stepsPerEpoch: plan.stepsPerEpoch)) }
    /// Steps of the warm-up (α frozen).
    var warmupSteps: Int { Int((options.warmupFraction * Double(searchSteps)).rounded(.down)) }
    /// Steps between Shapley estimates.
    var shapleyInterval: Int { max(1, RunLimits.steps(epochs: options.shapleyEveryEpochs, stepsPerEpoch: plan.stepsPerEpoch)) }

    public func prepare(model: Module, plan: TrainingPlan) throws {
        self.plan = plan
        guard searchSteps < plan.totalSteps else {
            throw TrainingError.invalidMethodOption(options: SMPQOptions.optionsName, property: "searchFraction", problem: String(format: "%g of %d steps leaves no step of QAT at the chosen scheme", options.searchFraction, plan.totalSteps))
        }
        if let step = state.selectionStep, step > plan.totalSteps {
            throw MethodStateChecks.invalid("selectionStep", "is \(step), after the run's last step \(plan.totalSteps)")
        }
        lastMark = Date()
        searchTrainableParameters = model.trainableParameterCount + (state.phase == .qat ? supernets.reduce(0) { $0 + $1.candidates.count } : 0)
        guard state.phase != .qat else { return }
        plan.log(String(format: "smpq: %d layers × %d candidates %@ (%d players), selection by %@; search %d steps (warm-up %d), then QAT for %d; target C %.2fx (paper %.2fx), γ %g; validation %d images, Shapley batch %d, M %d",
                        layers.count, options.candidates.count, options.candidates.map(String.init).joined(separator: ","),
                        layers.count * options.candidates.count, options.selection.rawValue, searchSteps, warmupSteps,
                        plan.totalSteps - searchSteps, options.targetCompression, 32 / (32 / options.targetCompression - 1),
                        options.budgetWeight, validation.count, shapleyBatch.labels.count, options.shapleyPermutations))
    }

    public func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
        guard state.phase != .qat else { return 0 }
        let done = step + 1
        // α trains on validation data only: the training batch's α gradient must not reach the W optimizer.
        for net in supernets { net.alpha.grad.zero() }
        var penalty = 0.0
        if done > warmupSteps {
            state.phase = .search
            penalty = try alphaStep(model: model)
        }
        if state.phase == .search && options.shapleyPermutations > 0 && (done % shapleyInterval == 0 || done == searchSteps) {
            try estimateShapley(model: model, stepsDone: done)
        }
        let now = Date()
        state.searchSeconds += now.timeIntervalSince(lastMark)
        lastMark = now
        if done == searchSteps { try select(stepsDone: done) }
        return penalty
    }

    public func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
        defer { lastMark = Date() }
        if state.phase == .qat {
            log(String(format: "smpq: after epoch %d: QAT at C %.2fx (paper %.2fx), %.3f bits average", epoch,
                       compressionRatio(layers), compressionRatioPaper(layers), averageWeightBits(layers)))
            return
        }
        let argmax = supernets.map { net in net.candidates[net.probabilities.indices.max { net.probabilities[$0] < net.probabilities[$1] } ?? 0] }
        log(String(format: "smpq: after epoch %d: %@, E[bits] %.3f (target %.3f), penalty %.4f; argmax α: %@", epoch,
                   state.phase.rawValue, budget.expectedBits(supernets, counts: counts), budget.targetBits,
                   state.lastPenalty, argmax.map(String.init).joined(separator: " ")))
    }

    /// Splits a training set for SMPQ: the `train` part goes to the ``Trainer``, the `validation`
    /// part (``SMPQOptions/validationFraction`` of it, chosen by `seed`) to
    /// ``MethodContext/validationData``.
    public static func split(_ train: any Dataset, options: SMPQOptions,
                             seed: UInt64) throws(DataError) -> (train: DatasetSubset, validation: DatasetSubset) {
        try randomSplit(train, validationFraction: options.validationFraction, seed: seed)
    }
}
