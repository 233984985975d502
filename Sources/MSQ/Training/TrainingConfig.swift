/// Everything that defines a training run: model, data, recipe and seed.
///
/// Two runs with the same configuration (and thread count) produce bit-identical weights; a
/// checkpoint is only resumed by a run whose ``fingerprint`` matches.
public struct TrainingConfig: Codable, Sendable, Equatable {
    /// The model's name: a ``ModelKind`` raw value (`resnet20`) for the built-in models, any label
    /// for a model the caller built. Recorded in the fingerprint and the summary; the ``Trainer``
    /// trains the model it is given, whatever this says.
    public var model: String
    /// The dataset's name: a ``DatasetCatalog`` name (`fashion-mnist`, `cifar10`, `synthetic`) or
    /// any label for the caller's own data. Recorded like ``model``.
    public var dataset: String
    /// The training method's ``TrainingMethod/name`` (`fp`, `msq`, `dorefa`, `bsq`, `csq`, `hawq`),
    /// recorded in the fingerprint; the ``Trainer`` runs the method object it is given.
    public var method: String = "fp"
    /// Number of passes over the training set.
    public var epochs: Int
    /// Images per optimizer step.
    public var batchSize: Int
    /// Peak learning rate.
    public var learningRate: Double
    /// Which optimizer the ``Trainer`` builds (``OptimizerKind``); SGD by default.
    public var optimizer: OptimizerKind = .sgd
    /// SGD momentum (``OptimizerKind/sgd`` only).
    public var momentum: Double = 0.9
    /// Weight decay λ (not applied to batch-norm parameters and biases): added to the gradient
    /// by SGD, decoupled (w ← w·(1 − lr·λ)) by AdamW.
    public var weightDecay: Double = 5e-4
    /// AdamW's first-moment decay rate β1 (PyTorch's default 0.9; ``OptimizerKind/adamw`` only).
    public var beta1: Double = 0.9
    /// AdamW's second-moment decay rate β2 (PyTorch's default 0.999).
    public var beta2: Double = 0.999
    /// AdamW's ε, added outside the square root (PyTorch's default 1e-8).
    public var epsilon: Double = 1e-8
    /// Nesterov momentum, SGD only (on by default: ResNet-20, Fashion-MNIST 10k, 3 epochs, seed 0, one thread:
    /// 0.853 with it, 0.836 without).
    public var nesterov: Bool = true
    /// Linear warm-up length in epochs (fractional allowed); cosine annealing follows.
    public var warmupEpochs: Double = 0.5
    /// Label smoothing ε of the cross-entropy loss.
    public var labelSmoothing: Double = 0
    /// Random crop padding in pixels (0 = no crop augmentation).
    public var cropPadding: Int = 0
    /// Random horizontal flips.
    public var horizontalFlip: Bool = false
    /// Use only the first N training images.
    public var limitTrain: Int?
    /// Use only the first N test images.
    public var limitTest: Int?
    /// Seed for initialisation, shuffling and augmentation.
    public var seed: UInt64 = 0
    /// The kernel thread count the run is recorded with (0 = all cores). Part of the fingerprint
    /// because reduction order, and so the last bits of the weights, depend on it. The ``Trainer``
    /// does not set the kernels' count: the caller does, with ``setKernelThreads(_:)``, and should
    /// record the count it set here (the ``Trainer`` warns when they differ).
    public var threads: Int = 0
    /// The method's own options as name → value (e.g. ``MSQOptions/identity``), part of the
    /// fingerprint so a run is only resumed with the options it started with.
    public var methodOptions: [String: String] = [:]
    /// The weights the run started from (``loadWeights(from:into:expectedModel:)``, `--init-from`);
    /// nil = the model's seeded initialisation. In the fingerprint as `init_from` (the content hash
    /// only), so a run is only resumed with the same starting weights.
    public var initFrom: LoadedWeights?
    /// The fixed per-layer precisions the run trains at from step 0 (`--bit-scheme`, resolved:
    /// ``bitSchemeLine(_:)`` of ``BitSchemeSpec/resolve(layerPaths:)``); nil = none. In the
    /// fingerprint as `bit_scheme`.
    public var bitScheme: String?

    /// A configuration with the required fields; the rest take their defaults.
    public init(model: String, dataset: String, epochs: Int, batchSize: Int, learningRate: Double) {
        self.model = model
        self.dataset = dataset
        self.epochs = epochs
        self.batchSize = batchSize
        self.learningRate = learningRate
    }

    /// The fields that must match for a checkpoint to be resumed, as name → value.
    public var identity: [String: String] {
        let base: [String: String] = [
            "model": model, "dataset": dataset, "method": method, "epochs": String(epochs),
            "batch_size": String(batchSize), "lr": String(learningRate), "momentum": String(momentum),
            "weight_decay": String(weightDecay), "nesterov": String(nesterov),
            "warmup_epochs": String(warmupEpochs), "label_smoothing": String(labelSmoothing),
            "crop_padding": String(cropPadding), "flip": String(horizontalFlip),
            "limit_train": limitTrain.map(String.init) ?? "all", "limit_test": limitTest.map(String.init) ?? "all",
            "seed": String(seed), "threads": String(threads),
        ]
        var extra: [String: String] = [:]
        // Only when set: checkpoints written before these options existed still resume.
        if let initFrom { extra["init_from"] = initFrom.identity }
        if let bitScheme { extra["bit_scheme"] = bitScheme }
        if optimizer != .sgd {
            extra["optimizer"] = optimizer.rawValue
            extra["beta1"] = String(beta1)
            extra["beta2"] = String(beta2)
            extra["eps"] = String(epsilon)
        }
        return base.merging(methodOptions) { old, _ in old }.merging(extra) { old, _ in old }
    }

    /// The optimizer ``optimizer`` names, over `model`'s trainable parameters, with this
    /// configuration's hyper-parameters.
    public func makeOptimizer(for model: Module) -> any Optimizer {
        switch optimizer {
        case .sgd: return SGD(model: model, momentum: momentum, weightDecay: weightDecay, nesterov: nesterov)
        case .adamw: return AdamW(model: model, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay)
        }
    }

    /// A stable string over ``identity``.
    public var fingerprint: String {
        identity.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ";")
    }

    /// Checks ranges a user can get wrong, and that every number is finite.
    /// - Throws: ``TrainingError/invalidProperty(property:problem:)`` naming the first bad
    ///   property by its Swift name (the CLI maps it to its flag, e.g. `warmupEpochs` →
    ///   `--warmup-epochs`).
    public func validate() throws(TrainingError) {
        func bad(_ property: String, _ problem: String) -> TrainingError { .invalidProperty(property: property, problem: problem) }
        if epochs < 1 { throw bad("epochs", "must be at least 1 (got \(epochs))") }
        if epochs > RunLimits.maxTotalSteps {
            throw bad("epochs", "must be at most \(RunLimits.maxTotalSteps), the most steps a run may plan (got \(epochs))")
        }
        if batchSize < 1 { throw bad("batchSize", "must be at least 1 (got \(batchSize))") }
        if !(learningRate > 0) || !learningRate.isFinite { throw bad("learningRate", "must be a positive number (got \(learningRate))") }
        if !(0..<1).contains(momentum) { throw bad("momentum", "must be in [0, 1) (got \(momentum))") }
        if !(weightDecay >= 0) || !weightDecay.isFinite { throw bad("weightDecay", "must be a finite number ≥ 0 (got \(weightDecay))") }
        if !(0..<1).contains(beta1) { throw bad("beta1", "must be in [0, 1) (got \(beta1))") }
        if !(0..<1).contains(beta2) { throw bad("beta2", "must be in [0, 1) (got \(beta2))") }
        if !(epsilon > 0) || !epsilon.isFinite { throw bad("epsilon", "must be a finite number > 0 (got \(epsilon))") }
        // `!(x >= 0)` rather than `x < 0`: NaN fails every comparison, and a NaN warm-up once
        // reached `Int(nan)` in the schedule and trapped.
        if !(warmupEpochs >= 0) || !(warmupEpochs <= Double(epochs)) {
            throw bad("warmupEpochs", "must be a number in [0, epochs] (got \(warmupEpochs))")
        }
        if !(0..<1).contains(labelSmoothing) { throw bad("labelSmoothing", "must be in [0, 1) (got \(labelSmoothing))") }
        if cropPadding < 0 { throw bad("cropPadding", "must be ≥ 0 (got \(cropPadding))") }
        if let n = limitTrain, n < 1 { throw bad("limitTrain", "must be at least 1 (got \(n))") }
        if let n = limitTest, n < 1 { throw bad("limitTest", "must be at least 1 (got \(n))") }
        if threads < 0 { throw bad("threads", "must be ≥ 0 (got \(threads); 0 means all cores)") }
    }
}

/// Why a training run could not start or continue.
public enum TrainingError: Error, CustomStringConvertible {
    /// An option is out of range (the message names it).
    case invalidOption(String)
    /// A ``TrainingConfig`` property is out of range or not finite: `property` is its Swift name
    /// (`warmupEpochs`), `problem` what is wrong with its value ("must be … (got nan)").
    case invalidProperty(property: String, problem: String)
    /// A method's option is out of range: `options` is the type (`MSQOptions`, or `MethodContext`),
    /// `property` its Swift name (`minBits`), `problem` what is wrong ("must be in 2...16 (got 1)").
    /// Other properties the problem mentions are given by their Swift names too.
    case invalidMethodOption(options: String, property: String, problem: String)
    /// The output directory cannot be used.
    case outputDirectory(String)
    /// The output directory already holds a checkpoint and the run was not asked to resume it.
    case existingCheckpoint(directory: String)
    /// ``Trainer/run(resume:)`` was asked to resume, but the ``Trainer`` has no output directory.
    case resumeWithoutDirectory
    /// The training or test data cannot be used with this model or with each other.
    case incompatibleData(String)
    /// The loss became NaN or infinite at `step` of `epoch` (global step `globalStep`; both counted
    /// from 1, as in the progress lines); `culprit`
    /// names the first parameter (in model order) whose weight or gradient is not finite, if any.
    case nonFinite(epoch: Int, step: Int, globalStep: Int, loss: Float, culprit: String?)

    public var description: String {
        switch self {
        case let .invalidOption(m): return m
        case let .invalidProperty(property, problem): return "TrainingConfig.\(property) \(problem)"
        case let .invalidMethodOption(options, property, problem): return "\(options).\(property) \(problem)"
        case let .outputDirectory(m): return m
        case let .existingCheckpoint(directory):
            return "\(directory) already holds a checkpoint: call run(resume: true) to continue that run, or give the Trainer another outputDirectory"
        case .resumeWithoutDirectory:
            return "run(resume: true) needs the Trainer's outputDirectory, which holds the checkpoint to resume"
        case let .incompatibleData(m): return m
        case let .nonFinite(epoch, step, globalStep, loss, culprit):
            return "training stopped at epoch \(epoch), step \(step) (global step \(globalStep)): the loss is \(loss); "
                + (culprit ?? "every weight and gradient is finite (the forward pass overflowed)")
                + (epoch > 1 ? ". The checkpoint of epoch \(epoch - 1) was kept" : ". No epoch had completed, so there is no checkpoint")
                + ". Try a lower TrainingConfig.learningRate or a longer TrainingConfig.warmupEpochs."
        }
    }
}
