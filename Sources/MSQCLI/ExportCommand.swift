import ArgumentParser
import Foundation
import MSQ

/// `msq export`: packs an MSQ checkpoint into a deployable `.msqmodel` file and reports its size.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Pack an MSQ checkpoint into a deployable .msqmodel file (n-bit codes + float32 BN/biases).",
        discussion: """
        Each quantized layer is stored as its scale s (one per output channel for a --scale per-channel run) \
        and its n-bit two's-complement codes, bit-packed; \
        the float latent weights and the optimizer state are dropped. `msq eval --model MODEL` runs the file.
        """)

    @Option(help: "Checkpoint written by `msq train --method msq` (checkpoint.msqckpt in its --out directory).")
    var checkpoint: String
    @Option(help: "Packed model file to write (conventionally *.msqmodel); replaced atomically if it exists.")
    var out: String

    func run() throws {
        let ckpt = try Checkpoint.read(from: checkpoint)
        let packed = try PackedModel.export(checkpoint: ckpt)
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
        let activations = h.activationBits.map { "\($0)-bit PACT inputs" + (h.activationExcluded.isEmpty ? "" : " except \(h.activationExcluded.joined(separator: ", "))") }
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
}
