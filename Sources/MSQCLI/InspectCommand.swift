import ArgumentParser
import Foundation
import MSQ

/// `msq inspect`: what a checkpoint holds, and a hash of its weights for comparing runs; with
/// `--hessian`, the per-layer Hessian figures PyHessian reports, computed here.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Print a checkpoint's progress, run options, tensors and a hash of its model weights.",
        discussion: """
            With --hessian: per quantized layer the Hutchinson trace of its Hessian block with its standard error, \
            the average trace Tr(H_l)/N_l, the top eigenvalue by power iteration and Ω_l at the layer's bits, on the \
            first --calibration training images (eval mode, at the quantized weights), written to JSON too.
            """)

    @Argument(help: "Path of a checkpoint file (checkpoint.msqckpt).")
    var checkpoint: String
    @Flag(help: "List every tensor with its shape.")
    var tensors = false
    @Flag(help: "Compute per-layer Hessian traces, top eigenvalues and Ω (see below).")
    var hessian = false
    @Option(help: "Calibration images for --hessian: the first N training images (default 64).")
    var calibration: Int = 64
    @Option(help: "Hutchinson probes for --hessian (default 16).")
    var probes: Int = 16
    @Option(help: "Most power iterations per layer for the top eigenvalue (default 20).")
    var powerIterations: Int = 20
    @Option(help: "Hessian-vector products: auto, exact, gauss-newton, central-difference (default auto).")
    var hessianMode: String = "auto"
    @Option(help: "Arithmetic of the exact and Gauss-Newton products: float32, or float64 (ResNets; a slower reference) (default float32).")
    var hessianPrecision: String = "float32"
    @Option(help: "Probe seed (default 0).")
    var seed: UInt64 = 0
    @Option(help: "Dataset directory, for datasets read from files (default: the dataset's standard place).")
    var dataDir: String?
    @Option(help: "Where --hessian writes its JSON (default: hessian.json beside the checkpoint).")
    var json: String?
    @Option(help: "Kernel threads (0 = all cores; a count above the available cores is capped at them).")
    var threads: Int = 0

    func validate() throws {
        if !(1...RunLimits.maxCalibrationImages).contains(calibration) {
            throw ValidationError("--calibration must be in 1...\(RunLimits.maxCalibrationImages) (got \(calibration))")
        }
        if !(1...RunLimits.maxProbes).contains(probes) {
            throw ValidationError("--probes must be in 1...\(RunLimits.maxProbes) (got \(probes))")
        }
        if !(1...RunLimits.maxPowerIterations).contains(powerIterations) {
            throw ValidationError("--power-iterations must be in 1...\(RunLimits.maxPowerIterations) (got \(powerIterations))")
        }
        if threads < 0 { throw ValidationError("--threads must be ≥ 0 (got \(threads); 0 means all cores)") }
        if hessianMode != "auto" && HessianMode(rawValue: hessianMode) == nil {
            throw ValidationError("--hessian-mode must be auto, \(HessianMode.allCases.map(\.rawValue).joined(separator: ", ")) (got \(hessianMode))")
        }
        guard let precision = HessianPrecision(rawValue: hessianPrecision) else {
            throw ValidationError("--hessian-precision must be float32 or float64 (got \(hessianPrecision))")
        }
        if precision == .float64 && hessianMode == HessianMode.centralDifference.rawValue {
            throw ValidationError("--hessian-precision float64 needs --hessian-mode auto, exact or gauss-newton: central differences run in float32")
        }
    }

    func run() throws {
        let ckpt = try Checkpoint.read(from: checkpoint)
        let h = ckpt.header
        writeLine("checkpoint \(checkpoint)")
        writeLine("  epochs completed \(h.epochsCompleted), step \(h.globalStep), " +
              "\(h.trainImagesSeen) images, \(String(format: "%.1f", h.trainSeconds)) s training")
        writeLine("  run: " + h.runDescription.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        let model = zip(h.tensors, ckpt.tensorData).filter { !$0.0.name.hasPrefix("optimizer.") }
        writeLine("  model tensors \(model.count), optimizer tensors \(h.tensors.count - model.count)")
        writeLine("  weights_fnv1a64 " + String(ckpt.weightsHash(), radix: 16))
        if tensors {
            for (entry, _) in model { writeLine("    \(entry.name) \(entry.shape)") }
        }
        if hessian { try inspectHessian(ckpt) }
    }

    private func inspectHessian(_ ckpt: Checkpoint) throws {
        setCappedKernelThreads(threads)
        let restored = try RestoredModel(checkpoint: ckpt)
        let batch = try restored.calibrationBatch(count: calibration, dataDirectory: dataDir)
        let start = Date()
        let result = try MSQ.inspectHessian(model: restored.model, layers: restored.layers, images: batch.images,
                                            labels: batch.labels, mode: HessianMode(rawValue: hessianMode), probes: probes,
                                            seed: seed, maxIterations: powerIterations, quantized: restored.isQuantized,
                                            precision: HessianPrecision(rawValue: hessianPrecision) ?? .float32)
        let seconds = Date().timeIntervalSince(start)
        writeLine(String(format: "hessian (%@, %@): %d probes on %d images, power iteration ≤ %d per layer, %.1f s",
                         result.mode.rawValue, hessianPrecision, probes, batch.labels.count, powerIterations, seconds))
        writeLine("  layer                    params  bits     Tr(H)      ± se   Tr(H)/N      λ_max  iters        Ω")
        for r in result.layers {
            let name = r.path.padding(toLength: max(22, r.path.count), withPad: " ", startingAt: 0)
            let bits = r.bits.map(String.init) ?? "-"
            writeLine("  " + name + String(format: " %8d  ", r.params) + String(repeating: " ", count: max(0, 4 - bits.count)) + bits
                      + String(format: "  %9.4g  %8.2g  %8.3g  %9.4g  %5d  %9.3g", r.trace, r.traceStandardError,
                               r.averageTrace, r.topEigenvalue, r.powerIterations, r.omega ?? .nan))
        }
        struct Report: Encodable {
            var checkpoint: String, mode: String, precision: String, calibration: Int, probes: Int, seed: UInt64, seconds: Double
            var layers: [LayerHessianReport]
        }
        let out = json ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().appendingPathComponent("hessian.json").path
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let bytes = try encoder.encode(Report(checkpoint: checkpoint, mode: result.mode.rawValue, precision: hessianPrecision, calibration: batch.labels.count,
                                              probes: probes, seed: seed, seconds: seconds, layers: result.layers))
        do {
            try bytes.write(to: URL(fileURLWithPath: out), options: .atomic)
        } catch {
            throw ValidationError("cannot write \(out): \(error.localizedDescription)")
        }
        writeLine("  wrote \(out)")
    }
}
