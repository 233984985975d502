import ArgumentParser
import Foundation
import MSQ

/// `msq export`: packs an MSQ checkpoint into a deployable `.msqmodel` file and reports its size.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Pack an MSQ checkpoint into a deployable .msqmodel file (n-bit codes + float32 BN/biases), or write its dequantized weights as safetensors for PyTorch.",
        discussion: """
        Each quantized layer is stored as its scale s (one per output channel for a --scale per-channel run) \
        and its n-bit two's-complement codes, bit-packed; \
        the float latent weights and the optimizer state are dropped. `msq eval --model MODEL` runs the file.
        """)

    @Option(help: "Checkpoint written by `msq train --method msq` (checkpoint.msqckpt in its --out directory).")
    var checkpoint: String
    @Option(help: "File to write (conventionally *.msqmodel, or *.safetensors with --format safetensors); replaced atomically if it exists.")
    var out: String
    @Option(help: "msqmodel (bit-packed codes, for `msq eval`) or safetensors (dequantized float32 weights under PyTorch state_dict names, bits, scales and PACT clip levels as metadata; README).")
    var format: String = "msqmodel"

    func validate() throws {
        guard ["msqmodel", "safetensors"].contains(format) else {
            throw ValidationError("unknown --format \(format); choose msqmodel or safetensors")
        }
    }

    func run() throws {
        let ckpt = try Checkpoint.read(from: checkpoint)
        let packed = try PackedModel.export(checkpoint: ckpt)
        if format == "safetensors" {
            try writeSafeTensors(packed)
            return
        }
        try packed.write(to: out)
        let size = packed.sizeBreakdown
        let h = packed.header
        writeLine("msq export: \(checkpoint) → \(out) (\(h.model), \(h.dataset) input \(h.inputShape), \(h.numClasses) classes; format version \(PackedModel.formatVersion))")
        writeLine("file_bytes \(size.totalBytes)")
        writeLine(String(format: "analytic_weight_bytes %.2f", size.analyticWeightBytes)
                  + "  (Σ_l N_l·n_l/8 over \(packed.scheme.layers.count) quantized layers, \(size.quantizedWeightCount) weights)")
        writeLine(String(format: "analytic_model_bytes %.2f", size.analyticModelBytes)
                  + "  (weights + 4 bytes per scale × \(size.scaleCount) \(packed.scheme.scaleGranularity) scales + float32 tensors; no header, rounding or checksum)")
        writeLine("float32_model_bytes \(size.float32ModelBytes)  (all \(size.quantizedWeightCount + size.floatValueCount) parameters × 4)")
        writeLine("  header \(size.headerBytes) + packed weights \(size.packedWeightBytes) + channel scales \(size.scaleBytes)"
                  + " + float32 tensors \(size.floatBytes)"
                  + " (\(size.floatValueCount) values) + checksum \(size.checksumBytes)")
        writeLine(String(format: "file compression %.2fx vs float32", Double(size.float32ModelBytes) / Double(max(size.totalBytes, 1))))
        let activations = h.activationBits.map { "\($0)-bit PACT/LSQ inputs" + (h.activationExcluded.isEmpty ? "" : " except \(h.activationExcluded.joined(separator: ", "))") }
            ?? "float (32-bit) activations"
        writeLine("scheme (bits per weight, sign included; \(packed.scheme.scaleGranularity) scales; \(activations)):")
        let width = h.tensors.compactMap(\.layer).map(\.count).max() ?? 0
        for e in h.tensors where e.kind == .packed {
            let layer = e.layer ?? e.name
            let n = e.elementCount ?? 0
            writeLine("  " + layer.padding(toLength: width, withPad: " ", startingAt: 0)
                      + String(format: "  %2d bits  %9d weights  %9d bytes  shape ", e.bits ?? 0, n, e.length) + "\(e.shape)")
        }
    }

    /// `--format safetensors`: the dequantized model, and one line per quantized weight.
    func writeSafeTensors(_ packed: PackedModel) throws {
        let file = try packed.safeTensors()
        try file.write(to: out)
        let h = packed.header
        let floats = file.tensors.values.filter { $0.dtype == .float32 }
        writeLine("msq export: \(checkpoint) → \(out) (safetensors, PyTorch state_dict names; \(h.model), \(h.dataset) input \(h.inputShape), \(h.numClasses) classes)")
        writeLine("tensors \(file.tensors.count) (\(floats.count) float32 holding \(floats.reduce(0) { $0 + $1.elementCount }) values, "
                  + "\(file.tensors.count - floats.count) int64 num_batches_tracked); \(packed.scheme.layers.count) weights dequantized, "
                  + "\(packed.scheme.scaleGranularity) scales"
                  + (h.activationBits.map { ", \($0)-bit PACT/LSQ inputs (clip levels in metadata msq.input_alpha.*, signed ones listed in msq.input_signed)" } ?? ", float activations"))
        let width = h.tensors.filter { $0.kind == .packed }.map(\.name.count).max() ?? 0
        for e in h.tensors where e.kind == .packed {
            writeLine("  " + e.name.padding(toLength: width, withPad: " ", startingAt: 0) + String(format: "  %2d bits", e.bits ?? 0))
        }
    }
}
