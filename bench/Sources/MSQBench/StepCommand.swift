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

    @OptionGroup var step: StepOptions
    @Option(help: "fp or msq.")
    var method: String = "fp"
    @Option(help: "Write the result as JSON here.")
    var json: String?

    /// Refuses methods other than fp and msq (``StepOptions`` checks the rest).
    func validate() throws {
        guard BenchMethods.local.contains(method) else {
            throw ValidationError("--method must be fp or msq (got '\(method)')")
        }
        if step.actBits != nil && method != "msq" { throw ValidationError("--act-bits needs --method msq") }
    }

    /// Builds the configuration, times it, prints the line and writes the JSON.
    func run() throws {
        guard let kind = step.kind else { throw ValidationError("unknown --model '\(step.model)'") }
        msq_set_num_threads(Int32(step.threads))
        var rng = RandomSource(seed: 1)
        let harness = try TrainingStepHarness(model: kind, method: method, batch: step.batch, actBits: step.actBits,
                                              targetCompression: 0, plannedSteps: step.warmup + step.steps, rng: &rng)
        let times = try harness.time(warmup: step.warmup, steps: step.steps)
        let peakRSS = peakResidentSetBytes()
        let threadCount = Int(msq_get_num_threads())
        let imagesPerSecond = Double(step.batch) * 1000 / times.mean
        var result: [String: Any] = [
            "model": step.model, "method": method, "batch": step.batch, "steps": step.steps, "warmup": step.warmup,
            "input": harness.input, "threads": threadCount,
            "ms_per_step": times.mean, "ms_per_step_median": times.median, "step_ms": times.milliseconds,
            "images_per_second": imagesPerSecond,
            "images_per_second_median": Double(step.batch) * 1000 / times.median,
            "peak_rss_bytes": peakRSS,
        ]
        if let a = step.actBits { result["act_bits"] = a }
        writeLine(stepSummaryLine(model: step.model, method: method, batch: step.batch, times: times, peakRSS: peakRSS,
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
