import ArgumentParser
import Foundation

/// `msq-bench accuracy-table`: one markdown table from the `summary.json` files of `msq train` runs.
struct AccuracyTableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accuracy-table",
        abstract: "Markdown table (accuracy, compression both ways, bits per layer) of msq train run directories.",
        discussion: """
        One row per run directory holding a summary.json, in the order given. C counts the sign bit \
        (compression_ratio); "C paper" counts magnitude bits only (compression_ratio_paper). Directories \
        without a summary (unfinished runs) are listed as such.
        """)

    @Argument(help: "Run directories (each written by msq train --out).")
    var runs: [String]

    func run() throws {
        guard !runs.isEmpty else { throw ValidationError("give at least one run directory") }
        var lines = ["| run | method | train images | epochs | test accuracy | C | C paper | bits avg | bits per layer |",
                     "|:--|:--|--:|--:|--:|--:|--:|--:|:--|"]
        for dir in runs {
            let path = (dir as NSString).appendingPathComponent("summary.json")
            guard let data = FileManager.default.contents(atPath: path),
                  let s = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                lines.append("| \(dir) | – | – | – | not finished (no summary.json) | – | – | – | – |")
                continue
            }
            func number(_ key: String) -> Double? { (s[key] as? NSNumber)?.doubleValue }
            let method = s["method"] as? String ?? "?"
            let accuracy = number("test_accuracy").map { String(format: "%.4f", $0) } ?? "?"
            let c = number("compression_ratio").map { String(format: "%.2f", $0) } ?? "1"
            let cp = number("compression_ratio_paper").map { String(format: "%.2f", $0) } ?? "1"
            let bits = number("average_weight_bits").map { String(format: "%.3f", $0) } ?? "32"
            let layers = (s["layers"] as? [[String: Any]])?.compactMap { ($0["bits"] as? NSNumber)?.stringValue }
            let perLayer = layers.map { Set($0).count == 1 ? "all \($0[0])" : $0.joined(separator: " ") } ?? "–"
            let images = number("train_images").map { String(Int($0)) } ?? "?"
            let epochs = number("epochs").map { String(Int($0)) } ?? "?"
            lines.append("| \((dir as NSString).lastPathComponent) | \(method) | \(images) | \(epochs) | \(accuracy) | \(c) | \(cp) | \(bits) | \(perLayer) |")
        }
        print(lines.joined(separator: "\n"))
    }
}
