import ArgumentParser
import Foundation
import MSQ
#if canImport(Glibc)
import Glibc
#endif

/// `msq-bench max-batch`: the largest batch whose training step stays within a peak-RSS budget,
/// each candidate measured by `msq-bench cost` in a child process.
struct MaxBatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "max-batch",
        abstract: "Largest batch whose training step fits a peak-RSS budget (one `cost` child process per candidate).",
        discussion: """
        Candidates double from --start until one does not fit (or --max is reached), then a binary search \
        between the last batch that fit and the first that did not, on multiples of --multiple. A candidate \
        fits when its child exits normally with peak_rss_bytes ≤ the budget. A child that crashes, is killed \
        (e.g. by the OOM killer) or times out does not fit; on Linux the child's peak RSS (VmHWM) is polled \
        and the child is killed as soon as it exceeds the budget. Peak RSS is the whole process's: model, \
        optimizer state, the synthetic batch and every activation of the step.
        """)

    @Option(help: "Peak-RSS budget in GiB (2^30 bytes).")
    var memoryGib: Double
    @Option(help: "resnet20 or resnet18.")
    var model: String = "resnet20"
    @Option(help: "fp, msq, dorefa, bsq or csq.")
    var method: String = "fp"
    @Option(help: "Largest batch tried.")
    var max: Int = 4096
    @Option(help: "First batch tried.")
    var start: Int = 1
    @Option(help: "Only try multiples of this (after --start).")
    var multiple: Int = 1
    @Option(help: "Timed steps per child (with --warmup, enough steps for peak RSS to settle: it grows over the first ~4).")
    var steps: Int = 3
    @Option(help: "Warm-up steps per child.")
    var warmup: Int = 1
    @Option(help: "Kernel threads of the child (0 = all cores).")
    var threads: Int = 0
    @Option(help: "Passed on to cost (dorefa/bsq/csq).")
    var targetCompression: Double?
    @Option(help: "Passed on to cost (msq).")
    var actBits: Int?
    @Option(help: "Seconds before a child is killed (counts as not fitting).")
    var timeout: Double = 1800
    @Option(help: "Write the result as JSON here.")
    var json: String?

    func validate() throws {
        guard memoryGib > 0, memoryGib.isFinite else { throw ValidationError("--memory-gib must be > 0") }
        guard start >= 1, multiple >= 1, max >= 1 else { throw ValidationError("--start, --multiple and --max must be ≥ 1") }
        guard BenchMethods.all.contains(method) else {
            throw ValidationError("unknown --method '\(method)'; expected one of \(BenchMethods.all.joined(separator: ", "))")
        }
        guard model == "resnet20" || model == "resnet18" else { throw ValidationError("--model must be resnet20 or resnet18") }
    }

    /// The outcome of one candidate.
    struct Probe {
        var batch: Int
        var fits: Bool
        var peakRSS: Int?
        var msPerStep: Double?
        var status: String

        var json: [String: Any] {
            var o: [String: Any] = ["batch": batch, "fits": fits, "status": status]
            if let peakRSS { o["peak_rss_bytes"] = peakRSS }
            if let msPerStep { o["ms_per_step"] = msPerStep }
            return o
        }
    }

    func run() throws {
        let budget = Int(memoryGib * 1_073_741_824)
        let executable = try currentExecutable()
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("msq-bench-max-batch-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        writeLine("\(model) \(method): largest batch within \(fmt(Double(budget) / 1_048_576, 0)) MiB peak RSS (max \(max))")

        var probes: [Probe] = []
        func probe(_ b: Int) throws -> Probe {
            let p = try runChild(executable: executable, batch: b, budget: budget, scratch: scratch)
            let rss = p.peakRSS.map { fmt(Double($0) / 1_048_576) + " MiB" } ?? "?"
            writeLine("  batch \(b): \(p.fits ? "fits" : "does not fit"), peak RSS \(rss) (\(p.status))")
            probes.append(p)
            return p
        }

        let m = multiple
        let cap = (max / m) * m
        guard cap >= m else { throw ValidationError("--max \(max) is below --multiple \(m)") }
        var best: Probe? = nil          // largest batch known to fit
        var firstMiss: Int? = nil       // smallest batch known not to fit
        // Doubling.
        var b = Swift.min(((start + m - 1) / m) * m, cap)
        while true {
            let p = try probe(b)
            if p.fits {
                best = p
                if b >= cap { break }
                b = Swift.min(b * 2, cap)
            } else {
                firstMiss = b
                break
            }
        }
        // Binary search between the last fit (or 0) and the first miss, on multiples of m.
        if let miss = firstMiss {
            var lo = best?.batch ?? 0, hi = miss
            while hi - lo > m {
                let mid = lo + ((hi - lo) / m / 2) * m
                let p = try probe(mid)
                if p.fits { best = p; lo = mid } else { hi = mid }
            }
        }

        var result: [String: Any] = [
            "model": model, "method": method, "memory_gib": memoryGib, "budget_bytes": budget, "max": max,
            "multiple": m, "steps": steps, "warmup": warmup, "probes": probes.map(\.json),
        ]
        if let best {
            let capped = firstMiss == nil
            result["max_batch"] = best.batch
            result["peak_rss_bytes"] = best.peakRSS ?? 0
            if let ms = best.msPerStep { result["ms_per_step"] = ms }
            result["capped_by_max"] = capped
            writeLine("\(model) \(method): max batch \(best.batch)\(capped ? " (= --max; larger not tried)" : "") within \(fmt(memoryGib, 2)) GiB, peak RSS \(fmt(Double(best.peakRSS ?? 0) / 1_048_576)) MiB")
        } else {
            result["max_batch"] = 0
            writeLine("\(model) \(method): no batch ≥ \(m) fits within \(fmt(memoryGib, 2)) GiB")
        }
        if let json { try writeJSON(result, to: json) }
        if best == nil { throw ExitCode(2) }
    }

    /// Runs `msq-bench cost` for one batch; never throws for a failing child (that batch does not fit),
    /// only when the child refuses its arguments (exit 64: the configuration itself is invalid).
    func runChild(executable: URL, batch: Int, budget: Int, scratch: URL) throws -> Probe {
        let jsonURL = scratch.appendingPathComponent("cost-\(batch).json")
        let logURL = scratch.appendingPathComponent("cost-\(batch).log")
        try? FileManager.default.removeItem(at: jsonURL)
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        defer { try? log.close() }

        var args = ["cost", "--model", model, "--method", method, "--batch", String(batch),
                    "--steps", String(steps), "--warmup", String(warmup), "--threads", String(threads),
                    "--json", jsonURL.path]
        if let t = targetCompression { args += ["--target-compression", String(t)] }
        if let a = actBits { args += ["--act-bits", String(a)] }
        let child = Process()
        child.executableURL = executable
        child.arguments = args
        child.standardInput = FileHandle.nullDevice
        child.standardOutput = log
        child.standardError = log
        do { try child.run() } catch {
            throw ValidationError("cannot start \(executable.path): \(error)")
        }

        // Watch the child: kill it once its peak RSS passes the budget or it runs out of time.
        let started = Date()
        var killedFor: String? = nil
        var watchedPeak = 0
        while child.isRunning {
            #if os(Linux)
            if let hwm = Self.peakRSS(pid: child.processIdentifier) {
                watchedPeak = Swift.max(watchedPeak, hwm)
                if hwm > budget && killedFor == nil {
                    killedFor = "killed: over budget"
                    kill(child.processIdentifier, SIGKILL)
                }
            }
            #endif
            if killedFor == nil && Date().timeIntervalSince(started) > timeout {
                killedFor = "killed: timeout after \(fmt(timeout)) s"
                kill(child.processIdentifier, SIGKILL)
            }
            usleep(20_000)
        }
        child.waitUntilExit()

        if let reason = killedFor {
            return Probe(batch: batch, fits: false, peakRSS: watchedPeak > 0 ? watchedPeak : nil, msPerStep: nil, status: reason)
        }
        if child.terminationReason == .uncaughtSignal {
            let sig = child.terminationStatus
            let why = sig == SIGKILL ? "killed by signal 9 (out of memory?)" : "died from signal \(sig)"
            return Probe(batch: batch, fits: false, peakRSS: watchedPeak > 0 ? watchedPeak : nil, msPerStep: nil, status: why)
        }
        if child.terminationStatus != 0 {
            let tail = Self.lastErrorLine(logURL)
            if child.terminationStatus == ExitCode.validationFailure.rawValue {
                throw ValidationError("msq-bench cost refused the configuration: \(tail)")
            }
            return Probe(batch: batch, fits: false, peakRSS: watchedPeak > 0 ? watchedPeak : nil, msPerStep: nil,
                         status: "exit \(child.terminationStatus): \(tail)")
        }
        guard let data = FileManager.default.contents(atPath: jsonURL.path),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let rss = (o["peak_rss_bytes"] as? NSNumber)?.intValue else {
            return Probe(batch: batch, fits: false, peakRSS: nil, msPerStep: nil, status: "no JSON result")
        }
        let ms = (o["ms_per_step"] as? NSNumber)?.doubleValue
        return Probe(batch: batch, fits: rss <= budget, peakRSS: rss, msPerStep: ms,
                     status: rss <= budget ? "ok" : "over budget")
    }

    /// The running executable, so children are the same build.
    func currentExecutable() throws -> URL {
        #if os(Linux)
        if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            return URL(fileURLWithPath: path)
        }
        #endif
        if let url = Bundle.main.executableURL { return url }
        throw ValidationError("cannot locate the msq-bench executable")
    }

    /// VmHWM (peak RSS) of a process, from /proc; nil when unavailable.
    static func peakRSS(pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, let kib = Int(fields[1]) { return kib * 1024 }
        }
        return nil
    }

    /// The child's first "Error:" line, else its last non-empty line.
    static func lastErrorLine(_ url: URL) -> String {
        let text = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
        let lines = text.split(separator: "\n").map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        if let error = lines.first(where: { $0.hasPrefix("Error:") }) {
            return String(error.dropFirst("Error:".count)).trimmingCharacters(in: .whitespaces)
        }
        return lines.last ?? "(no output)"
    }
}
