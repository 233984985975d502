import ArgumentParser
import Foundation
import MSQ

/// `msq train`: trains a model and writes checkpoints, metrics and a summary to --out.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model (float by default) and write checkpoints, metrics.jsonl and summary.json.",
        discussion: """
        A run killed at any point continues from its last completed epoch with --resume and the same options.
        """)

    @Option(help: "Model: \(ModelKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var model: String = "resnet20"
    @Option(help: "Dataset: fashion-mnist, cifar10 or synthetic.")
    var dataset: String = "fashion-mnist"
    @Option(help: "Dataset directory (default for fashion-mnist: /usr/share/datasets/fashion-mnist).")
    var dataDir: String?
    @Option(help: "Training method: fp (float), msq (LSB pruning to --target-compression), or the baselines dorefa (uniform QAT at --weight-bits), hawq (float warm-up, Hessian traces, the least-Ω scheme for --target-compression by dynamic programming, then QAT), bsq (bit-plane group lasso to --target-compression), csq (continuous sparsification of bits and bit masks to --target-compression).")
    var method: String = "fp"
    @Option(help: "Number of epochs.")
    var epochs: Int = 2
    @Option(help: "Images per step.")
    var batchSize: Int = 128
    @Option(help: "Peak learning rate (after warm-up, then cosine annealing to 0).")
    var lr: Double = 0.1
    @Option(help: "SGD momentum.")
    var momentum: Double = 0.9
    @Option(help: "Weight decay (not applied to batch-norm parameters and biases).")
    var weightDecay: Double = 5e-4
    @Flag(inversion: .prefixedNo, help: "Nesterov momentum.")
    var nesterov = true
    @Option(help: "Linear warm-up length in epochs.")
    var warmupEpochs: Double = 0.5
    @Option(help: "Label smoothing of the cross-entropy loss.")
    var labelSmoothing: Double = 0
    @Option(help: "Random-crop padding in pixels, 0 = off (default: 4 for cifar10, 0 otherwise).")
    var cropPadding: Int?
    @Flag(inversion: .prefixedNo, help: "Random horizontal flips (default: on for cifar10, off otherwise).")
    var flip: Bool?
    @Option(help: "Use only the first N training images.")
    var limitTrain: Int?
    @Option(help: "Use only the first N test images.")
    var limitTest: Int?
    @Option(help: "Random seed for initialisation, shuffling and augmentation.")
    var seed: UInt64 = 0
    @Option(help: "Kernel threads (0 = all cores). A count above the cores this process may use is capped at them, with a warning.")
    var threads: Int = 0
    @Option(help: "Output directory (default: runs/<model>-<dataset>-<time>).")
    var out: String?
    @Flag(help: "Continue the run whose checkpoint is in --out.")
    var resume = false
    @Option(help: ArgumentHelp("Start from the weights and batch-norm statistics of an earlier run's checkpoint (e.g. a float run's checkpoint.msqckpt) or of a .safetensors file with PyTorch state_dict names (num_batches_tracked ignored), any --method; a checkpoint's optimizer state, step and method state are not taken (the run starts at step 0). Same model and shapes required. Part of the run fingerprint (content hash); with --resume the run's own checkpoint wins, but the file must still be there and unchanged.", valueName: "checkpoint|file.safetensors"))
    var initFrom: String?

    @OptionGroup(title: "Quantized methods (--method msq, dorefa, bsq, csq, hawq)")
    var msq: MSQArguments

    func run() throws {
        do {
            try train()
        } catch let TrainingError.invalidProperty(property, problem) {
            // The library names TrainingConfig's properties; the user typed flags.
            throw ValidationError("\(Self.flag(for: property)) \(problem)")
        }
    }

    /// The flag that sets each ``TrainingConfig`` property the library may name in an error.
    static let flags: [String: String] = [
        "epochs": "--epochs", "batchSize": "--batch-size", "learningRate": "--lr", "momentum": "--momentum",
        "weightDecay": "--weight-decay", "warmupEpochs": "--warmup-epochs", "labelSmoothing": "--label-smoothing",
        "cropPadding": "--crop-padding", "limitTrain": "--limit-train", "limitTest": "--limit-test",
        "threads": "--threads",
    ]

    /// `property`'s flag (the property name itself for one the CLI does not set).
    static func flag(for property: String) -> String { flags[property] ?? property }

    func train() throws {
        guard let kind = ModelKind(rawValue: model) else {
            throw ValidationError("unknown --model \(model); choose one of \(ModelKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard ["fp", "msq", "dorefa", "bsq", "csq", "hawq"].contains(method) else {
            throw ValidationError("unknown --method \(method); choose fp, msq, dorefa, bsq, csq or hawq")
        }
        try msq.refuseInapplicable(method: method)
        if resume && out == nil { throw ValidationError("--resume needs the --out directory of the run to continue") }

        var config = TrainingConfig(model: model, dataset: dataset, epochs: epochs, batchSize: batchSize, learningRate: lr)
        config.method = method
        config.momentum = momentum
        config.weightDecay = weightDecay
        config.nesterov = nesterov
        config.warmupEpochs = warmupEpochs
        config.labelSmoothing = labelSmoothing
        // Short runs on small images learn faster without augmentation (ResNet-20, Fashion-MNIST 10k,
        // 3 epochs: 0.837 without, 0.785 with crop 2 + flip; PyTorch 0.800 with); CIFAR-10 needs it.
        let augmentByDefault = dataset == "cifar10"
        config.cropPadding = cropPadding ?? (augmentByDefault ? 4 : 0)
        config.horizontalFlip = flip ?? augmentByDefault
        config.limitTrain = limitTrain
        config.limitTest = limitTest
        config.seed = seed
        // Capped here, not only in the Trainer, so the fingerprint records the count the kernels use.
        config.threads = threads < 0 ? threads : cappedThreads(threads)
        var msqOptions: MSQOptions? = nil
        var doReFaOptions: DoReFaOptions? = nil
        var bsqOptions: BSQOptions? = nil
        var csqOptions: CSQOptions? = nil
        var hawqOptions: HAWQOptions? = nil
        let schemeSpec = try msq.bitSchemeSpec()
        switch method {
        case "msq" where schemeSpec != nil:
            break  // options from the resolved scheme, once the model is built
        case "msq":
            let options = try msq.options()
            msqOptions = options
            // --scale joins the fingerprint only when per channel (older checkpoints still resume).
            config.methodOptions = options.identity.merging([
                "msq.weight_bits": String(msq.msqWeightBits), "msq.act_bits": msq.actBitsIdentity,
            ].merging(try msq.scaleGranularity().identity(method: "msq")) { a, _ in a }) { a, _ in a }
        case "dorefa":
            let options = try msq.doReFaOptions()
            doReFaOptions = options
            config.methodOptions = options.identity.merging(["dorefa.act_bits": msq.actBitsIdentity]) { a, _ in a }
        case "bsq":
            let options = try msq.bsqOptions()
            bsqOptions = options
            config.methodOptions = options.identity.merging(["bsq.act_bits": msq.actBitsIdentity]) { a, _ in a }
        case "csq":
            let options = try msq.csqOptions()
            csqOptions = options
            config.methodOptions = options.identity.merging(["csq.act_bits": msq.actBitsIdentity]) { a, _ in a }
        case "hawq":
            let options = try msq.hawqOptions()
            hawqOptions = options
            config.methodOptions = options.identity.merging(
                try msq.scaleGranularity().identity(method: "hawq")
            ) { a, _ in a }
        default:
            break
        }
        try config.validate()

        let data = try DatasetCatalog.load(name: dataset, directory: dataDir,
                                           limitTrain: config.limitTrain, limitTest: config.limitTest, seed: seed)
        let network = makeModel(kind, inputChannels: data.train.sampleShape[0], numClasses: data.train.numClasses, seed: seed)
        let outDir = out ?? defaultOutputDirectory()
        if let initFrom {
            // Before any quantizer is attached: BSQ and CSQ build their bit variables from these weights.
            let loaded = try loadInitialWeights(from: initFrom, into: network, expectedModel: model)
            config.initFrom = loaded
            if SafeTensors.isSafeTensorsFile(atPath: initFrom) {
                writeLine("init-from \(initFrom) (safetensors, PyTorch names): \(loaded.tensorCount) tensors (weights and batch-norm statistics)"
                          + (loaded.sourceMethod.map { " of an msq \($0) run" } ?? "") + ", weights_fnv1a64 \(loaded.weightsHashHex)")
            } else {
                writeLine("init-from \(initFrom): \(loaded.tensorCount) tensors (weights and batch-norm statistics) of a "
                          + "\(loaded.sourceMethod ?? "?") run after \(loaded.sourceEpochs) epochs, weights_fnv1a64 \(loaded.weightsHashHex)"
                          + (loaded.ignored.isEmpty ? "" : "; not taken: \(loaded.ignored.count) PACT clip levels")
                          + "; optimizer state and step are not taken (step 0)")
            }
        }
        var fixedScheme: [QuantizationScheme.LayerBits]? = nil
        if let schemeSpec {
            let resolved = try schemeSpec.resolve(layerPaths: quantizableLayers(of: network).map(\.path))
            fixedScheme = resolved
            config.bitScheme = bitSchemeLine(resolved)
            let counts = quantizableLayers(of: network).compactMap { _, m in ((m as? Conv2d)?.weight ?? (m as? Linear)?.weight)?.value.count }
            let bits = resolved.map(\.bits)
            let total = Double(counts.reduce(0, +))
            let stored = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            let magnitude = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1 - 1) }
            writeLine(String(format: "bit scheme (fixed from step 0): %d layers, %.3f bits average, C %.3fx (sign counted; paper-style magnitude bits: %.3fx)",
                             resolved.count, stored / total, 32 * total / stored, 32 * total / magnitude))
            writeLine("  " + config.bitScheme!)
        }
        let trainingMethod: TrainingMethod
        if method == "msq", let fixedScheme {
            let (fixed, options) = try msq.makeFixedSchemeMethod(model: network, scheme: fixedScheme, seed: seed)
            config.methodOptions = options.identity.merging(["msq.act_bits": msq.actBitsIdentity]) { a, _ in a }
            trainingMethod = fixed
        } else if let msqOptions {
            trainingMethod = try msq.makeMethod(model: network, options: msqOptions, data: data, seed: seed)
        } else if let doReFaOptions {
            trainingMethod = try DoReFaTraining(model: network, options: doReFaOptions, activationBits: msq.actBits,
                                                bitScheme: fixedScheme)
        } else if let bsqOptions {
            trainingMethod = try BSQTraining(model: network, options: bsqOptions, activationBits: msq.actBits)
        } else if let csqOptions {
            trainingMethod = try CSQTraining(model: network, options: csqOptions, activationBits: msq.actBits)
        } else if let hawqOptions {
            trainingMethod = try msq.makeHAWQ(model: network, options: hawqOptions, data: data, seed: seed)
        } else {
            trainingMethod = FloatTraining()
        }
        writeLine("msq train: \(model) on \(dataset) (\(data.train.count) train / \(data.test.count) test images, " +
              "\(network.trainableParameterCount) parameters), \(epochs) epochs, batch \(batchSize), lr \(lr) → \(outDir)")
        let trainer = Trainer(config: config, model: network, method: trainingMethod, train: data.train, test: data.test,
                              normalization: data.normalization, outDirectory: outDir)
        let summary = try trainer.run(resume: resume)
        if let acc = summary["test_accuracy"] as? Double {
            writeLine(String(format: "test_accuracy %.4f", acc))
        }
        if let c = summary["compression_ratio"] as? Double, let cp = summary["compression_ratio_paper"] as? Double,
           let bits = summary["average_weight_bits"] as? Double, let scheme = summary["bit_scheme"] as? String {
            writeLine(String(format: "compression_ratio %.3f (sign counted; paper-style magnitude bits: %.3f), average_weight_bits %.3f", c, cp, bits))
            writeLine("bit scheme: \(scheme)")
        }
    }

    func defaultOutputDirectory() -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd-HHmmss"
        return "runs/\(model)-\(dataset)-\(f.string(from: Date()))"
    }
}
