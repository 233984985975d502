import ArgumentParser
import CKernels
import Foundation
import MSQ

/// `msq-bench logits`: a built-in model with weights from a safetensors file, its eval-mode logits
/// on a batch from another — the Swift half of bench/scripts/check-safetensors.sh.
struct LogitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logits",
        abstract: "Load PyTorch-named safetensors weights into a model and write its eval-mode logits on a batch.",
        discussion: """
        The input file holds one F32 tensor `input` of shape [N, C, H, W]; the model is built with C input \
        channels and --classes outputs, loaded with loadSafeTensors (PyTorch names, num_batches_tracked \
        skipped, nothing missing or extra), and its eval-mode output is written as tensor `logits` [N, classes]. \
        When the weights are an `msq export --format safetensors` file of a run with quantized activations \
        (metadata msq.activation_bits), the PACT input quantizers are attached with the metadata's clip levels \
        (msq.input_alpha.<layer>), so the model computes what `msq eval` computes.
        """)

    @Option(help: "Model: \(ModelKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var model: String
    @Option(help: "Weights (.safetensors, PyTorch state_dict names).")
    var weights: String
    @Option(help: "Batch (.safetensors with an F32 tensor `input`, [N, C, H, W]).")
    var input: String
    @Option(help: "Where to write the logits (.safetensors, tensor `logits`).")
    var out: String
    @Option(help: "Classifier outputs.")
    var classes: Int = 10
    @Option(help: "Kernel threads (0 = all cores).")
    var threads: Int = 0
    @Option(help: "Images per forward pass.")
    var batchSize: Int = 256

    func validate() throws {
        guard ModelKind(rawValue: model) != nil else { throw ValidationError("unknown --model \(model)") }
        guard classes >= 1 else { throw ValidationError("--classes must be ≥ 1") }
        guard threads >= 0 else { throw ValidationError("--threads must be ≥ 0") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be ≥ 1") }
    }

    func run() throws {
        guard let kind = ModelKind(rawValue: model) else { throw ValidationError("unknown --model \(model)") }
        let batch = try SafeTensors.read(from: input).tensor(named: "input")
        guard batch.shape.count == 4 else { throw ValidationError("\(input): tensor 'input' has shape \(batch.shape), not [N, C, H, W]") }
        msq_set_num_threads(Int32(threads))
        let network = makeModel(kind, inputChannels: batch.shape[1], numClasses: classes, seed: 0, inputSize: batch.shape[2])
        let file = try SafeTensors.read(from: weights)
        let loaded = try loadSafeTensors(file, into: network, source: weights)
        let pact = try attachPACT(from: file.metadata, to: network)
        let n = batch.shape[0], per = batch.count / max(n, 1), all = batch.scalars
        var scalars: [Float] = []
        scalars.reserveCapacity(n * classes)
        for start in stride(from: 0, to: n, by: batchSize) {
            let end = min(start + batchSize, n)
            let chunk = Tensor(shape: [end - start] + batch.shape.dropFirst(), scalars: Array(all[(start * per)..<(end * per)]))
            scalars += network.forward(chunk, mode: .eval).scalars
        }
        let logits = Tensor(shape: [n, classes], scalars: scalars)
        var result = SafeTensors()
        result.add(logits, named: "logits")
        try result.write(to: out)
        writeLine("msq-bench logits: \(model), \(loaded.tensorCount) tensors from \(weights) (skipped \(loaded.skipped.count) PyTorch-only buffers: num_batches_tracked, relative_position_index), "
                  + (pact > 0 ? "\(pact) PACT input quantizers from the metadata, " : "")
                  + "input \(batch.shape) → logits \(logits.shape) in \(out)")
    }

    /// Attaches the PACT input quantizers an MSQ export's metadata describes (none without
    /// `msq.activation_bits`); layers without `msq.input_alpha.<layer>` keep float inputs.
    func attachPACT(from metadata: [String: String], to network: any Module) throws -> Int {
        guard let bits = metadata["msq.activation_bits"].flatMap({ Int($0) }) else { return 0 }
        var alphas: [String: Float] = [:]
        for (key, value) in metadata where key.hasPrefix("msq.input_alpha.") {
            guard let alpha = Float(value) else { throw ValidationError("\(weights): metadata \(key) = '\(value)' is not a number") }
            alphas[String(key.dropFirst("msq.input_alpha.".count))] = alpha
        }
        let floatInputs = Set(quantizableLayers(of: network).map(\.path).filter { alphas[$0] == nil })
        let attached = try quantizeActivations(network, bits: bits, excluded: floatInputs)
        for (path, quantizer) in attached { quantizer.alpha.value = Tensor(shape: [1], repeating: alphas[path] ?? 0) }
        guard attached.count == alphas.count else {
            throw ValidationError("\(weights): metadata names clip levels of layers \(model) does not have")
        }
        return attached.count
    }
}
