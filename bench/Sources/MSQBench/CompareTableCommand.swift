import ArgumentParser
import Foundation

/// `msq-bench compare-table`: markdown table of MSQ vs PyTorch from `step` and `train_step.py` JSON files.
struct CompareTableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare-table",
        abstract: "Markdown table of msq-bench step vs PyTorch train_step.py results in a directory.",
        discussion: """
        Files with a torch_version key are PyTorch's, the others ours. One row per (model, method, batch), \
        ordered resnet20, resnet18, mobilenetv3-large, mobilenetv3-small then fp, msq. img/s is each run's images_per_second (batch / mean step \
        time); best and median are over the repeated runs. ours/PyTorch divides the medians. Peak RSS is \
        the median over runs, in MiB (2^20 bytes). Files that are not step results are ignored (with a \
        note on standard error).
        """)

    @Option(help: "Directory of step JSON files (*.json).")
    var jsonDir: String

    /// One run's figures.
    struct Run {
        var model, method: String
        var batch: Int
        var isPyTorch: Bool
        var imagesPerSecond: Double
        var peakRSS: Double

        /// The configuration this run belongs to.
        var key: Key { Key(model: model, method: method, batch: batch) }
    }

    /// The configuration a row stands for.
    struct Key: Hashable {
        var model, method: String
        var batch: Int
    }

    /// Refuses a --json-dir that is not a directory.
    func validate() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: jsonDir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ValidationError("--json-dir \(jsonDir) is not a directory")
        }
    }

    /// Reads every JSON file of the directory and prints the table.
    func run() throws {
        let runs = try readResults(in: jsonDir, command: "compare-table", kind: "step", parse: Self.run)
        print(Self.markdown(runs), terminator: "")
    }

    /// The run a JSON object describes, nil when a key is missing.
    static func run(_ o: [String: Any]) -> Run? {
        guard let model = o["model"] as? String, let method = o["method"] as? String,
              let batch = (o["batch"] as? NSNumber)?.intValue,
              let ips = (o["images_per_second"] as? NSNumber)?.doubleValue,
              let rss = (o["peak_rss_bytes"] as? NSNumber)?.doubleValue else { return nil }
        return Run(model: model, method: method, batch: batch, isPyTorch: o["torch_version"] != nil,
                   imagesPerSecond: ips, peakRSS: rss)
    }

    /// The table, one row per configuration; "—" where one side has no run.
    static func markdown(_ runs: [Run]) -> String {
        func order(_ k: Key) -> (Int, String, Int, String, Int) {
            (TableCommand.rank(k.model, in: ["resnet20", "resnet18", "mobilenetv3-large", "mobilenetv3-small"]), k.model,
             TableCommand.rank(k.method, in: BenchMethods.all), k.method, k.batch)
        }
        let keys = Set(runs.map(\.key)).sorted { order($0) < order($1) }
        var lines = [
            "| model | method | batch | ours img/s best | ours img/s median | PyTorch img/s best | PyTorch img/s median "
                + "| ours / PyTorch | peak RSS ours (MiB) | peak RSS PyTorch (MiB) | RSS ours / PyTorch |",
            "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for key in keys {
            let mine = runs.filter { !$0.isPyTorch && $0.key == key }
            let theirs = runs.filter { $0.isPyTorch && $0.key == key }
            let oursMedian = mine.isEmpty ? nil : medianOf(mine.map(\.imagesPerSecond))
            let torchMedian = theirs.isEmpty ? nil : medianOf(theirs.map(\.imagesPerSecond))
            let oursRSS = mine.isEmpty ? nil : medianOf(mine.map(\.peakRSS)) / 1_048_576
            let torchRSS = theirs.isEmpty ? nil : medianOf(theirs.map(\.peakRSS)) / 1_048_576
            let cells = [
                key.model, key.method, String(key.batch),
                cell(mine.map(\.imagesPerSecond).max()), cell(oursMedian),
                cell(theirs.map(\.imagesPerSecond).max()), cell(torchMedian),
                ratio(oursMedian, torchMedian),
                cell(oursRSS, digits: 0), cell(torchRSS, digits: 0), ratio(oursRSS, torchRSS),
            ]
            lines.append("| " + cells.joined(separator: " | ") + " |")
        }
        lines.append("")
        lines.append("Runs per configuration: ours \(runCounts(runs, pyTorch: false)), PyTorch \(runCounts(runs, pyTorch: true)).")
        return lines.joined(separator: "\n") + "\n"
    }

    /// A figure, or "—" when there is none.
    static func cell(_ x: Double?, digits: Int = 1) -> String { x.map { fmt($0, digits) } ?? "—" }

    /// x / y as "0.87×", or "—".
    static func ratio(_ x: Double?, _ y: Double?) -> String {
        guard let x, let y, y > 0 else { return "—" }
        return String(format: "%.2f×", x / y)
    }

    /// "2" when every configuration has the same number of runs of that side, else e.g. "1–2".
    static func runCounts(_ runs: [Run], pyTorch: Bool) -> String {
        let counts = Dictionary(grouping: runs.filter { $0.isPyTorch == pyTorch }, by: \.key).values.map(\.count)
        guard let lo = counts.min(), let hi = counts.max() else { return "0" }
        return lo == hi ? "\(lo)" : "\(lo)–\(hi)"
    }
}
