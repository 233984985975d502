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
    @Option(help: "Training method: fp (float), msq (LSB pruning to --target-compression), or the baselines dorefa (uniform QAT at --weight-bits), hawq (float warm-up, Hessian traces, the least-Ω scheme for --target-compression by dynamic programming, then QAT), bsq (bit-plane group lasso to --target-compression), csq (continuous sparsification of bits and bit masks to --target-compression), smpq (a differentiable supernet over 2–8 bits per layer on a held-out split, the precisions for --target-compression chosen by Monte Carlo Shapley values, or by α with --selection alpha, then QAT).")
    var method: String = "fp"
    @Option(help: "Number of epochs.")
    var epochs: Int = 2
    @Option(help: "Images per step.")
    var batchSize: Int = 128
    @Option(help: "Peak learning rate (after warm-up, then cosine annealing to 0). Default 0.1; 1e-3 for the vision transformers (deit-tiny, deit-small, swin-t).")
    var lr: Double?
    @Option(help: "Optimizer: sgd (momentum, Nesterov) or adamw (PyTorch's AdamW: decoupled weight decay, bias correction). Default sgd; adamw for the vision transformers (deit-tiny, deit-small, swin-t), as DeiT and Swin train.")
    var optimizer: String?
    @Option(help: "SGD momentum (--optimizer sgd).")
    var momentum: Double = 0.9
    @Option(help: "Weight decay, not applied to batch-norm parameters and biases (default: 5e-4 for sgd, 0.05 for adamw, where it is decoupled: w ← w·(1 − lr·λ)).")
    var weightDecay: Double?
    @Option(help: "AdamW's β1 (default 0.9).")
    var beta1: Double?
    @Option(help: "AdamW's β2 (default 0.999).")
    var beta2: Double?
    @Option(help: "AdamW's ε, added outside the square root (default 1e-8).")
    var eps: Double?
    @Flag(inversion: .prefixedNo, help: "Nesterov momentum (--optimizer sgd).")
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
    @Option(help: "Kernel threads (0 = all cores; under mpirun, the cores of this rank: those it is bound to, or the node's cores shared among its ranks). A count above the cores this process may use is capped at them, with a warning.")
    var threads: Int = 0
    @Option(help: "Output directory (default: runs/<model>-<dataset>-<time>).")
    var out: String?
    @Flag(help: "Continue the run whose checkpoint is in --out (at any number of mpirun processes).")
    var resume = false
    @Flag(help: "Under mpirun: batch norm uses the statistics of the whole global batch, all-reduced every step, instead of each process's shard.")
    var syncBn = false
    @Option(help: ArgumentHelp("Start from the weights and batch-norm statistics of an earlier run's checkpoint (e.g. a float run's checkpoint.msqckpt) or of a .safetensors file with PyTorch state_dict names (num_batches_tracked ignored), any --method; a checkpoint's optimizer state, step and method state are not taken (the run starts at step 0). Same model and shapes required. Part of the run fingerprint (content hash); with --resume the run's own checkpoint wins, but the file must still be there and unchanged.", valueName: "checkpoint|file.safetensors"))
    var initFrom: String?

    @OptionGroup(title: "Quantized methods (--method msq, dorefa, bsq, csq, hawq, smpq)")
    var msq: MSQArguments

    func run() throws {
        let collective = try startProcesses()
        try runOrAbort(collective) {
            do {
                try train(collective)
            } catch let error as TrainingError {
                // The library names Swift properties and calls; the user typed flags.
                throw cliError(for: error)
            }
        }
        finishProcesses(collective)
    }

    func train(_ collective: any Collective) throws {
        // Rank 0 speaks for the run; the others' errors still surface through runOrAbort.
        let root = collective.isRoot
        let writeLine: (String) -> Void = { line in if root { MSQ.writeLine(line) } }
        guard let kind = ModelKind(rawValue: model) else {
            throw ValidationError("unknown --model \(model); choose one of \(ModelKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard ["fp", "msq", "dorefa", "bsq", "csq", "hawq", "smpq"].contains(method) else {
            throw ValidationError("unknown --method \(method); choose fp, msq, dorefa, bsq, csq, hawq or smpq")
        }
        try msq.refuseInapplicable(method: method)
        // Transformers train with AdamW at a small lr (DeiT's recipe); SGD at 0.1 diverges them.
        let transformer = kind.isTransformer
        let optimizer = self.optimizer ?? (transformer ? "adamw" : "sgd")
        let lr = self.lr ?? (transformer ? 1e-3 : 0.1)
        guard let optimizerKind = OptimizerKind(rawValue: optimizer) else {
            throw ValidationError("unknown --optimizer \(optimizer); choose sgd or adamw")
        }
        if optimizerKind != .adamw {
            for (flag, value) in [("--beta1", beta1), ("--beta2", beta2), ("--eps", eps)] where value != nil {
                throw ValidationError("\(flag) applies to --optimizer adamw only")
            }
        }
        if resume && out == nil { throw ValidationError("--resume needs the --out directory of the run to continue") }

        var config = TrainingConfig(model: model, dataset: dataset, epochs: epochs, batchSize: batchSize, learningRate: lr)
        config.method = method
        config.optimizer = optimizerKind
        config.momentum = momentum
        // AdamW's decay is decoupled from the gradient's scale, so it takes a far larger λ
        // (0.05 is the value of the README's AdamW-vs-SGD grid).
        config.weightDecay = weightDecay ?? (optimizerKind == .adamw ? 0.05 : 5e-4)
        config.beta1 = beta1 ?? config.beta1
        config.beta2 = beta2 ?? config.beta2
        config.epsilon = eps ?? config.epsilon
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
        config.threads = threads < 0 ? threads : cappedThreads(threads == 0 ? defaultThreads(processes: collective.size) : threads)
        // Parsed (and refused) before any data is read; the method is built once the model is.
        let schemeSpec = try msq.bitSchemeSpec()
        let choice = try msq.methodChoice(method: method, fixedScheme: schemeSpec != nil, batchSize: batchSize)
        try config.validate()

        let data = try DatasetCatalog.load(name: dataset, directory: dataDir,
                                           limitTrain: config.limitTrain, limitTest: config.limitTest, seed: seed)
        do {
            try checkImageSize(kind, height: data.train.sampleShape[1], width: data.train.sampleShape[2])
        } catch {
            throw ValidationError("--model \(model) with --dataset \(dataset): \(error)")
        }
        let network = makeModel(kind, inputChannels: data.train.sampleShape[0], numClasses: data.train.numClasses, seed: seed,
                                inputSize: data.train.sampleShape[1])
        // Rank 0's clock names the directory: the ranks may start in different seconds.
        let outDir = try out ?? collective.broadcast(defaultOutputDirectory(), root: 0)
        if let initFrom {
            // Before any quantizer is attached: BSQ and CSQ build their bit variables from these weights.
            let loaded = try loadInitialWeights(from: initFrom, into: network, expectedModel: model)
            config.initFrom = loaded
            reportInitFrom(loaded, writeLine)
        }
        var fixedScheme: [QuantizationScheme.LayerBits]? = nil
        if let schemeSpec {
            let resolved = try schemeSpec.resolve(layerPaths: quantizableLayers(of: network).map(\.path))
            fixedScheme = resolved
            config.bitScheme = bitSchemeLine(resolved)
            reportFixedScheme(resolved, of: network, writeLine)
        }
        // SMPQ fits α and its Shapley values on held-out images: the weights train on the rest.
        var trainSet: any Dataset = data.train
        var validationData: (dataset: any Dataset, normalization: Normalization)? = nil
        if case let .smpq(o) = choice {
            let parts = try SMPQTraining.split(data.train, options: o, seed: seed)
            trainSet = parts.train
            validationData = (parts.validation, data.normalization)
        }
        let context = MethodContext(activationBits: msq.actBits, calibrationData: (trainSet, data.normalization),
                                    validationData: validationData, seed: seed, bitScheme: fixedScheme)
        let trainingMethod = try choice.setUp(model: network, context: context)
        config.methodOptions = trainingMethod.runIdentity
        writeLine("msq train: \(model) on \(dataset) (\(trainSet.count) train" + (validationData.map { " + \($0.dataset.count) validation" } ?? "")
                  + " / \(data.test.count) test images, " +
              "\(network.trainableParameterCount) parameters), \(epochs) epochs, batch \(batchSize), lr \(lr) → \(outDir)"
                  + (collective.size > 1 ? "; \(collective.size) processes × \(config.threads) threads, \(batchSize / collective.size)–\((batchSize + collective.size - 1) / collective.size) images each per step, batch norm \(syncBn ? "synchronised" : "per process")" : ""))
        let trainer = Trainer(config: config, model: network, method: trainingMethod, train: trainSet, test: data.test,
                              normalization: data.normalization, outDirectory: outDir, log: writeLine)
        trainer.collective = collective
        trainer.synchronizeBatchNorm = syncBn
        // The trainer leaves the kernels' thread count to its caller; set here, just before the
        // first step as the trainer once did, so everything before it runs as it always has.
        setKernelThreads(config.threads)
        let summary = try trainer.run(resume: resume)
        writeLine(String(format: "test_accuracy %.4f", summary.testAccuracy))
        let fields = summary.methodFields
        if let c = fields["compression_ratio"]?.doubleValue, let cp = fields["compression_ratio_paper"]?.doubleValue,
           let bits = fields["average_weight_bits"]?.doubleValue, let scheme = fields["bit_scheme"]?.stringValue {
            writeLine(String(format: "compression_ratio %.3f (sign counted; paper-style magnitude bits: %.3f), average_weight_bits %.3f", c, cp, bits))
            writeLine("bit scheme: \(scheme)")
        }
    }

    /// The --init-from line: what was loaded and its content hash.
    func reportInitFrom(_ loaded: LoadedWeights, _ writeLine: (String) -> Void) {
        guard let initFrom else { return }
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

    /// The --bit-scheme lines: average bits and C both ways, then the scheme, before training.
    func reportFixedScheme(_ resolved: [QuantizationScheme.LayerBits], of network: any Module, _ writeLine: (String) -> Void) {
        let counts = quantizableLayers(of: network).compactMap { _, m in ((m as? Conv2d)?.weight ?? (m as? Linear)?.weight)?.value.count }
        let bits = resolved.map(\.bits)
        let total = Double(counts.reduce(0, +))
        let stored = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        let magnitude = zip(counts, bits).reduce(0.0) { $0 + Double($1.0) * Double($1.1 - 1) }
        writeLine(String(format: "bit scheme (fixed from step 0): %d layers, %.3f bits average, C %.3fx (sign counted; paper-style magnitude bits: %.3fx)",
                         resolved.count, stored / total, 32 * total / stored, 32 * total / magnitude))
        writeLine("  " + bitSchemeLine(resolved))
    }

    func defaultOutputDirectory() -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd-HHmmss"
        return "runs/\(model)-\(dataset)-\(f.string(from: Date()))"
    }
}
