import ArgumentParser
import CKernels
import Foundation
import MSQ

/// `msq-bench step`: images/s and peak RSS of one training configuration, the peer of
/// `bench/pytorch/train_step.py` (same options, same JSON keys).
struct StepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "step",
        abstract: "Training-step throughput (mean and median ms/step) and peak RSS of one model/method/batch.",
        discussion: """
        One configuration per process, so peak RSS is its own. Synthetic data of the model's input shape, \
        10 classes; the step is `cost`'s (fp: forward, loss, backward, SGD; msq: every conv/linear weight \
        behind an 8-bit RoundClamp quantizer plus the LSB regulariser, λ = 5, k = 1). --warmup steps are \
        not timed; each timed step is timed on its own, and both the mean and the median are reported \
        (the median resists a busy machine). peak_rss_bytes is read after the timed steps.
        """)

    @Option(help: "resnet20 (3×32×32) or resnet18 (3×224×224).")
    var model: String = "resnet20"
    @Option(help: "fp or msq.")
    var method: String = "fp"
    @Option(help: "Images per step.")
    var batch: Int = 128
    @Option(help: "Timed steps (after --warmup untimed ones).")
    var steps: Int = 10
    @Option(help: "Untimed warm-up steps.")
    var warmup: Int = 2
    @Option(help: "Kernel threads (0 = all cores).")
    var threads: Int = 0
    @Option(help: "PACT activation bits for msq (default: float activations).")
    var actBits: Int?
    @Option(help: "Write the result as JSON here.")
    var json: String?

    /// Refuses unknown models and methods, and counts out of range.
    func validate() throws {
        guard let kind = ModelKind(rawValue: model), kind == .resnet20 || kind == .resnet18 else {
            throw ValidationError("--model must be resnet20 or resnet18 (got '\(model)')")
        }
        guard BenchMethods.local.contains(method) else {
            throw ValidationError("--method must be fp or msq (got '\(method)')")
        }
        guard batch >= 1, steps >= 1, warmup >= 0, threads >= 0 else {
            throw ValidationError("--batch and --steps must be ≥ 1, --warmup and --threads ≥ 0")
        }
        if actBits != nil && method != "msq" { throw ValidationError("--act-bits needs --method msq") }
    }

    /// Builds the configuration, times it, prints the line and writes the JSON.
    func run() throws {
        guard let kind = ModelKind(rawValue: model) else { throw ValidationError("unknown --model '\(model)'") }
        msq_set_num_threads(Int32(threads))
        var rng = RandomSource(seed: 1)
        let harness = try TrainingStepHarness(model: kind, method: method, batch: batch, actBits: actBits,
                                              targetCompression: 0, plannedSteps: warmup + steps, rng: &rng)
        let times = try harness.time(warmup: warmup, steps: steps)
        let peakRSS = peakResidentSetBytes()
        let threadCount = Int(msq_get_num_threads())
        let imagesPerSecond = Double(batch) * 1000 / times.mean
        var result: [String: Any] = [
            "model": model, "method": method, "batch": batch, "steps": steps, "warmup": warmup,
            "input": harness.input, "threads": threadCount,
            "ms_per_step": times.mean, "ms_per_step_median": times.median, "step_ms": times.milliseconds,
            "images_per_second": imagesPerSecond,
            "images_per_second_median": Double(batch) * 1000 / times.median,
            "peak_rss_bytes": peakRSS,
        ]
        if let a = actBits { result["act_bits"] = a }
        writeLine(stepSummaryLine(model: model, method: method, batch: batch, times: times, peakRSS: peakRSS,
                                  threads: threadCount))
        if let json { try writeJSON(result, to: json) }
    }
}

/// The one line `msq-bench step` prints (mirrored by train_step.py so the two read alike).
func stepSummaryLine(model: String, method: String, batch: Int, times: StepTimes, peakRSS: Int, threads: Int) -> String {
    "\(model) \(method) batch \(batch): \(fmt(times.mean)) ms/step (median \(fmt(times.median))), "
        + "\(fmt(Double(batch) * 1000 / times.mean)) img/s; peak RSS \(fmt(Double(peakRSS) / 1_048_576)) MiB; "
        + "\(threads) threads"
}
