import ArgumentParser
import CKernels
import Foundation
import MSQ
import MSQDistributed

/// `msq-bench dp-step`: the data-parallel training step (issue 19), alone or under `mpirun`.
///
/// The step is `step`'s, split over the ranks as `Trainer` splits it: each rank holds its shard of
/// the same synthetic global batch, starts `GradientBuckets` before the backward and waits for
/// them before the method's extra gradient and SGD. What the line and the JSON tell: global
/// images/s, the compute (forward + backward) and the all-reduce the backward did not hide, and a
/// blocking all-reduce of the same bytes, so the overlap 1 − exposed/blocking can be stated.
struct DataParallelStepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dp-step",
        abstract: "Data-parallel training-step throughput (run alone or under mpirun), or with --bytes-only the all-reduce bytes of every model.",
        discussion: """
        --batch is the GLOBAL batch, split as BatchLoader.Shard splits it. Before each timed step the \
        ranks meet at a barrier, so a step's time on rank 0 is the slowest rank's. exposed = the step's \
        time in GradientBuckets.finish(); blocking = MPI_Allreduce of the same floats on their own \
        (mean of --reduce-calls after one untimed call); overlap = 1 − exposed/blocking, with the exposed \
        time of the rank that ended its backward last (the others' also holds the wait for it). At P = 1 \
        there are no buckets, as in Trainer. Only rank 0 prints and writes.
        """)

    @OptionGroup var step: StepOptions
    @Option(help: "fp or msq.")
    var method: String = "fp"
    @Option(help: "Write the result as JSON here (rank 0).")
    var json: String?
    @Option(help: "Timed blocking all-reduces of the gradient's size.")
    var reduceCalls: Int = 5
    @Option(help: "A free-form note stored in the JSON (e.g. the mpirun binding).")
    var label: String = ""
    @Flag(help: "Print every catalog model's trainable parameters and all-reduce bytes per step; no training.")
    var bytesOnly = false

    func validate() throws {
        guard BenchMethods.local.contains(method) else {
            throw ValidationError("--method must be fp or msq (got '\(method)')")
        }
        if step.actBits != nil && method != "msq" { throw ValidationError("--act-bits needs --method msq") }
        guard reduceCalls >= 1 else { throw ValidationError("--reduce-calls must be ≥ 1") }
    }

    func run() throws {
        if bytesOnly { return try printBytes() }
        guard let kind = step.kind else { throw ValidationError("unknown --model '\(step.model)'") }
        let collective: any Collective = MPICollective.launchedByMPI ? try MPICollective.initialize() : SingleProcess()
        // A failure on one rank would leave the others waiting in a collective: end them all.
        do {
            try measure(kind, collective)
        } catch {
            guard collective.size > 1 else { throw error }
            collective.abort("error: \(error)", code: 1)
        }
        if let mpi = collective as? MPICollective { try mpi.finalize() }
    }

    /// Times the step on every rank; rank 0 reports.
    private func measure(_ kind: ModelKind, _ collective: any Collective) throws {
        let p = collective.size
        guard step.batch >= p else { throw ValidationError("--batch \(step.batch) is the global batch: it needs ≥ \(p) images") }
        msq_set_num_threads(Int32(step.threads))
        var rng = RandomSource(seed: 1)
        let harness = try TrainingStepHarness(model: kind, method: method, batch: step.batch, actBits: step.actBits,
                                              targetCompression: 0, plannedSteps: step.warmup + step.steps, rng: &rng,
                                              shard: BatchLoader.Shard(index: collective.rank, count: p))
        // No buckets at P = 1, as in Trainer: they would only copy the gradient twice.
        let buckets = p > 1 ? GradientBuckets(model: harness.net, collective: collective) : nil
        for _ in 0..<step.warmup { try harness.step(buckets: buckets) }

        let before = (buckets?.started ?? 0, buckets?.startedDuringBackward ?? 0)
        var ms: [Double] = [], compute: [Double] = [], exposed: [Double] = []
        for _ in 0..<step.steps {
            try collective.barrier()
            let t0 = DispatchTime.now().uptimeNanoseconds, e0 = buckets?.exposedSeconds ?? 0
            compute.append(try harness.step(buckets: buckets) * 1000)
            ms.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            exposed.append(((buckets?.exposedSeconds ?? 0) - e0) * 1000)
        }
        let started = (buckets?.started ?? 0) - before.0, early = (buckets?.startedDuringBackward ?? 0) - before.1
        let floats = harness.net.trainableParameterCount
        let blockingMs = p > 1 ? try timeBlockingAllReduce(floats: floats, collective) : 0
        // Every rank's per-step compute and exposed time (each rank fills its own slots of the sum):
        // a rank that ends its backward first waits in finish() for the others, so its exposed time
        // holds their lateness too; the last rank to end the backward waited for nobody, and its
        // exposed time is the all-reduce alone.
        var slots = [Double](repeating: 0, count: 2 * p * step.steps)
        for i in 0..<step.steps {
            slots[(collective.rank * step.steps + i) * 2] = compute[i]
            slots[(collective.rank * step.steps + i) * 2 + 1] = exposed[i]
        }
        let all = try collective.allReduceSum(slots)
        guard collective.isRoot else { return }

        let n = Double(step.steps)
        let computeOf = { (r: Int, i: Int) in all[(r * step.steps + i) * 2] }
        let exposedOf = { (r: Int, i: Int) in all[(r * step.steps + i) * 2 + 1] }
        let computeMs = compute.reduce(0, +) / n
        let exposedMs = exposed.reduce(0, +) / n
        let lastRankExposedMs = (0..<step.steps).map { i in
            exposedOf((0..<p).max { computeOf($0, i) < computeOf($1, i) }!, i)
        }.reduce(0, +) / n
        let computePerRank = (0..<p).map { r in (0..<step.steps).map { computeOf(r, $0) }.reduce(0, +) / n }
        let times = StepTimes(milliseconds: ms)
        let bytes = floats * MemoryLayout<Float>.stride
        let overlap: Double? = p > 1 && blockingMs > 0 ? 1 - lastRankExposedMs / blockingMs : nil
        let threads = Int(msq_get_num_threads())
        writeLine("\(step.model) \(method) global batch \(step.batch) on \(p)×\(threads) threads: "
            + "\(fmt(Double(step.batch) * 1000 / times.mean)) img/s (median \(fmt(Double(step.batch) * 1000 / times.median))); "
            + "\(fmt(times.mean)) ms/step, compute \(fmt(computeMs))"
            + (p > 1 ? ", exposed all-reduce \(fmt(exposedMs, 2)) (last rank out of backward: \(fmt(lastRankExposedMs, 2))); "
                + "buckets started during backward \(early)/\(started)" : "")
            + "; \(fmt(Double(bytes) / 1e6, 2)) MB/step"
            + (p > 1 ? "; blocking all-reduce \(fmt(blockingMs, 2)) ms" : "") + (overlap.map { ", overlap \(fmt($0 * 100))%" } ?? ""))
        var result: [String: Any] = [
            "model": step.model, "method": method, "batch": step.batch, "batch_per_rank": harness.batch,
            "processes": p, "threads": threads, "steps": step.steps, "warmup": step.warmup, "input": harness.input,
            "label": label, "step_ms": ms, "ms_per_step": times.mean, "ms_per_step_median": times.median,
            "images_per_second": Double(step.batch) * 1000 / times.mean,
            "images_per_second_median": Double(step.batch) * 1000 / times.median,
            "compute_ms": computeMs, "compute_ms_per_rank": computePerRank, "step_compute_ms": compute,
            "exposed_all_reduce_ms": exposedMs, "exposed_all_reduce_ms_last_rank": lastRankExposedMs,
            "step_exposed_ms": exposed,
            "buckets": buckets?.bucketCount ?? 0, "buckets_started": started, "buckets_started_during_backward": early,
            "all_reduce_bytes_per_step": bytes, "blocking_all_reduce_ms": blockingMs,
            "date": ISO8601DateFormatter().string(from: Date()),
        ]
        if let overlap { result["overlap"] = overlap }
        if let json { try writeJSON(result, to: json) }
    }

    /// Mean ms of a blocking all-reduce of `floats` floats, the ranks aligned by a barrier each time.
    private func timeBlockingAllReduce(floats: Int, _ collective: any Collective) throws -> Double {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(floats, 1))
        defer { buffer.deallocate() }
        buffer.initialize(repeating: 1)
        let values = UnsafeMutableBufferPointer(rebasing: buffer[0..<floats])
        try collective.allReduceSum(values)  // untimed: connections and buffers set up
        var total = 0.0
        for _ in 0..<reduceCalls {
            try collective.barrier()
            let t0 = DispatchTime.now().uptimeNanoseconds
            try collective.allReduceSum(values)
            total += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        }
        return total / Double(reduceCalls)
    }

    /// The catalog's gradient sizes: what a data-parallel step all-reduces, for float training and
    /// for MSQ (8-bit quantizers on every conv/linear, which add their own trainable scales).
    private func printBytes() throws {
        writeLine("model              input      classes  fp params   fp MB/step  msq params  msq MB/step")
        var rows: [[String: Any]] = []
        for kind in ModelKind.allCases {
            // makeModel's own sizes: CIFAR kinds at 32² with 10 classes, the others at ImageNet's 224², 1000.
            let side = kind.isCIFARStyle ? 32 : 224, classes = kind.isCIFARStyle ? 10 : 1000
            let fp = makeModel(kind, inputChannels: 3, numClasses: classes, seed: 0, inputSize: side).trainableParameterCount
            let net = makeModel(kind, inputChannels: 3, numClasses: classes, seed: 0, inputSize: side)
            let paths = quantizableLayers(of: net).map(\.path)
            _ = try QuantizationScheme(layers: paths.map { .init(path: $0, bits: 8) }).apply(to: net)
            let quantized = net.trainableParameterCount
            let name = kind.rawValue.padding(toLength: 18, withPad: " ", startingAt: 0)
            let input = "3x\(side)x\(side)".padding(toLength: 10, withPad: " ", startingAt: 0)
            writeLine(name + " " + input + String(format: " %7d  %10d  %10.2f  %10d  %11.2f", classes, fp, Double(4 * fp) / 1e6,
                                                  quantized, Double(4 * quantized) / 1e6))
            rows.append(["model": kind.rawValue, "input": "3x\(side)x\(side)", "classes": classes,
                         "trainable_params": fp, "all_reduce_bytes_per_step": 4 * fp,
                         "msq_trainable_params": quantized, "msq_all_reduce_bytes_per_step": 4 * quantized])
        }
        if let json { try writeJSON(["models": rows], to: json) }
    }
}
