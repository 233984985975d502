import ArgumentParser
import Foundation
import MSQ

/// `msq eval`: test accuracy and loss of a packed model, computed from the file alone.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate a packed .msqmodel on a dataset's test split (integer codes → weights, eval mode).",
        discussion: """
        The network, its quantization scheme and the input normalisation all come from the file. \
        With the training run's --threads and batch size the figures equal the run's final test figures.
        """)

    @Option(help: "Packed model written by `msq export`.")
    var model: String
    @Option(help: "Dataset: fashion-mnist, cifar10 or synthetic (default: the one the model was trained on).")
    var dataset: String?
    @Option(help: "Dataset directory (default for fashion-mnist: /usr/share/datasets/fashion-mnist).")
    var dataDir: String?
    @Option(help: "Use only the first N test images.")
    var limitTest: Int?
    @Option(help: "Images per forward pass (default: the training run's evaluation batch, max(batch size, 256)).")
    var batchSize: Int?
    @Option(help: "Kernel threads (0 = all cores; a count above the available cores is capped at them).")
    var threads: Int = 0
    @Option(help: "Seed of the synthetic dataset (default: the training run's seed); other datasets ignore it.")
    var seed: UInt64?

    func validate() throws {
        if let batchSize, batchSize < 1 { throw ValidationError("--batch-size must be at least 1 (got \(batchSize))") }
        if let limitTest, limitTest < 1 { throw ValidationError("--limit-test must be at least 1 (got \(limitTest))") }
        if threads < 0 { throw ValidationError("--threads must be ≥ 0 (got \(threads); 0 means all cores)") }
    }

    func run() throws {
        let packed = try PackedModel.read(from: model)
        let h = packed.header
        let name = dataset ?? h.dataset
        let runSeed = seed ?? h.source["seed"].flatMap { UInt64($0) } ?? 0
        // Only the test split is needed: limit the training split to one image so it costs nothing.
        let data = try DatasetCatalog.load(name: name, directory: dataDir, limitTrain: 1, limitTest: limitTest, seed: runSeed)
        try packed.checkCompatible(with: data.test)
        // Training evaluates with max(batch, 256) images per pass; use the same by default.
        let trainingBatch = h.source["batch_size"].flatMap { Int($0) } ?? 0
        let batch = batchSize ?? max(trainingBatch, 256)
        setCappedKernelThreads(threads)
        let network = try packed.makeModule()
        let bits = packed.scheme.layers.map(\.bits)
        writeLine("msq eval: \(model) (\(h.model), \(bits.count) quantized layers at \(bits.min() ?? 0)–\(bits.max() ?? 0) bits, \(packed.scheme.scaleGranularity) scales"
                  + (h.activationBits.map { ", \($0)-bit activations" } ?? "") + ") on \(data.test.name), \(data.test.count) images")
        let result = evaluate(network, on: data.test, normalization: h.normalization, batchSize: batch)
        writeLine(String(format: "test_accuracy %.4f", result.accuracy))
        writeLine(String(format: "test_loss %.4f", result.loss))
    }
}
