import ArgumentParser
import CKernels
import Foundation
import MSQ

/// The methods `msq-bench cost` accepts, in table order. `fp` and `msq` are built in TrainingStepHarness.swift;
/// the others come from the MSQ library (see ``makeLibraryMethod(_:model:targetCompression:side:batch:)``).
enum BenchMethods {
    static let local = ["fp", "msq"]
    static let library = ["dorefa", "bsq", "csq", "smpq"]
    static var all: [String] { local + library }
}

/// `msq-bench cost`: the cost of one training configuration, measured in its own process so that
/// peak RSS belongs to it. Synthetic data of the model's input shape, 10 classes.
struct CostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cost",
        abstract: "Time per training step, images/s, trainable parameters and peak RSS of one model/method/batch.",
        discussion: """
        fp: forward, loss, backward, SGD step. msq: the same with every conv/linear layer behind a \
        RoundClamp quantizer at 8 bits plus the fused LSB-regulariser pass (the pruning phase's step; \
        the finetuning phase drops the regulariser). dorefa, bsq, csq, smpq: the MSQ library's method \
        (makeBenchmarkMethod), its afterBackward hook in every step, --target-compression passed on \
        (smpq: every step a search step, W then α on a validation batch; no Shapley estimate). \
        --hessian-probes M also times one Hutchinson trace \
        estimate of exactly M probes on a --hessian-batch calibration batch and reports it in training steps. \
        peak_rss_bytes is the process's peak RSS after the timed steps (before any Hessian estimate).
        """)

    @OptionGroup var step: StepOptions
    @Option(help: "fp, msq, dorefa, bsq, csq or smpq.")
    var method: String = "fp"
    @Option(help: "Target compression passed to the library's dorefa/bsq/csq/smpq methods.")
    var targetCompression: Double = 10.67
    @Option(help: "Also time one Hessian-trace estimate with exactly this many probes (msq only).")
    var hessianProbes: Int?
    @Option(help: "Calibration batch of the Hessian estimate.")
    var hessianBatch: Int = 64
    @Option(help: "Write the result as JSON here.")
    var json: String?

    /// Refuses unknown methods and a Hessian estimate without msq (``StepOptions`` checks the rest).
    func validate() throws {
        guard BenchMethods.all.contains(method) else {
            throw ValidationError("unknown --method '\(method)'; expected one of \(BenchMethods.all.joined(separator: ", "))")
        }
        if hessianProbes != nil && method != "msq" { throw ValidationError("--hessian-probes needs --method msq") }
    }

    func run() throws {
        guard let kind = step.kind else { throw ValidationError("unknown --model '\(step.model)'") }
        msq_set_num_threads(Int32(step.threads))
        var rng = RandomSource(seed: 1)
        let harness = try TrainingStepHarness(model: kind, method: method, batch: step.batch, actBits: step.actBits,
                                              targetCompression: targetCompression, plannedSteps: step.warmup + step.steps, rng: &rng)
        let net = harness.net, side = harness.side
        let msPerStep = try harness.time(warmup: step.warmup, steps: step.steps).mean
        let stepPeakRSS = peakResidentSetBytes()
        var result: [String: Any] = [
            "model": step.model, "method": method, "batch": step.batch, "steps": step.steps, "warmup": step.warmup,
            "input": harness.input,
            "threads": Int(msq_get_num_threads()),
            "trainable_params": net.trainableParameterCount,
            "ms_per_step": msPerStep, "images_per_second": Double(step.batch) * 1000 / msPerStep,
            "peak_rss_bytes": stepPeakRSS,
        ]
        if let a = step.actBits { result["act_bits"] = a }
        if harness.libraryMethod != nil { result["target_compression"] = targetCompression }
        var line = "\(step.model) \(method) batch \(step.batch): \(fmt(msPerStep)) ms/step, \(fmt(Double(step.batch) * 1000 / msPerStep)) img/s"
        line += "; peak RSS \(fmt(Double(stepPeakRSS) / 1_048_576)) MiB; \(net.trainableParameterCount) trainable parameters"
        if let probes = hessianProbes {
            let hImages = Tensor.randomNormal([hessianBatch, 3, side, side], std: 1, using: &rng)
            let hLabels = (0..<hessianBatch).map { _ in Int32(rng.nextInt(below: 10)) }
            let estimator = HutchinsonTrace(model: net, layers: harness.layers, images: hImages, labels: hLabels, seed: 7,
                                            maxProbes: probes, minProbes: probes, relativeTolerance: 0)
            let t0 = Date()
            let estimate = try estimator.estimate()
            let ms = Date().timeIntervalSince(t0) * 1000
            result["hessian_batch"] = hessianBatch
            result["hessian_probes"] = estimate.probes
            result["hessian_ms"] = ms
            result["hessian_in_steps"] = ms / msPerStep
            result["peak_rss_with_hessian_bytes"] = peakResidentSetBytes()
            line += "; Hessian trace (\(estimate.probes) probes, batch \(hessianBatch)): \(fmt(ms)) ms = \(fmt(ms / msPerStep, 2)) steps"
            line += ", peak RSS with it \(fmt(Double(peakResidentSetBytes()) / 1_048_576)) MiB"
        }
        writeLine(line)
        if let json { try writeJSON(result, to: json) }
    }
}

// MARK: - the library's methods

/// Builds a method of ``BenchMethods/library`` on `model` (adding its quantizers and parameters)
/// with the library's benchmark defaults (see `makeBenchmarkMethod` in MSQ).
func makeLibraryMethod(_ name: String, model: any Module, targetCompression: Double, side: Int, batch: Int) throws -> TrainingMethod {
    try makeBenchmarkMethod(name, model: model, targetCompression: targetCompression, sampleShape: [3, side, side], batch: batch)
}
