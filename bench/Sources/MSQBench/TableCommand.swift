import ArgumentParser
import Foundation

/// `msq-bench table`: one markdown table from the JSON files `msq-bench cost --json` wrote.
struct TableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Markdown table of the msq-bench cost JSON files in a directory.",
        discussion: """
        One row per file, ordered by model (resnet20, resnet18, others) and method (fp, msq, dorefa, bsq, \
        csq, others). params ratio vs MSQ = trainable parameters / those of msq on the same model; ratio vs \
        FP = ms/step / that of fp on the same model and batch. Files that are not cost results are ignored \
        (with a note on standard error).
        """)

    @Option(help: "Directory of cost JSON files (*.json).")
    var jsonDir: String

    struct Row {
        var model, method: String
        var batch, params: Int
        var msPerStep, imagesPerSecond: Double
        var peakRSS: Int
    }

    func run() throws {
        let rows = try readResults(in: jsonDir, command: "table", kind: "cost", parse: Self.row)
        print(Self.markdown(rows), terminator: "")
    }

    static func row(_ o: [String: Any]) -> Row? {
        guard let model = o["model"] as? String, let method = o["method"] as? String,
              let batch = (o["batch"] as? NSNumber)?.intValue,
              let params = (o["trainable_params"] as? NSNumber)?.intValue,
              let ms = (o["ms_per_step"] as? NSNumber)?.doubleValue,
              let rss = (o["peak_rss_bytes"] as? NSNumber)?.intValue else { return nil }
        let ips = (o["images_per_second"] as? NSNumber)?.doubleValue ?? Double(batch) * 1000 / ms
        return Row(model: model, method: method, batch: batch, params: params, msPerStep: ms,
                   imagesPerSecond: ips, peakRSS: rss)
    }

    static func rank(_ value: String, in order: [String]) -> Int { order.firstIndex(of: value) ?? order.count }

    static func markdown(_ unsorted: [Row]) -> String {
        let models = ["resnet20", "resnet18"]
        let rows = unsorted.sorted {
            (rank($0.model, in: models), $0.model, rank($0.method, in: BenchMethods.all), $0.method, $0.batch)
                < (rank($1.model, in: models), $1.model, rank($1.method, in: BenchMethods.all), $1.method, $1.batch)
        }
        func ratio(_ x: Double, _ base: Double?) -> String {
            guard let base, base > 0 else { return "—" }
            return String(format: "%.2f×", x / base)
        }
        let header = ["model", "method", "batch", "trainable params", "params ratio vs MSQ", "ms/step", "ratio vs FP",
                      "img/s", "peak RSS (MiB)"]
        let rightAligned = [false, false, true, true, true, true, true, true, true]
        var cells: [[String]] = []
        for r in rows {
            let msqParams = rows.first { $0.model == r.model && $0.method == "msq" }?.params
            let fpMs = rows.first { $0.model == r.model && $0.method == "fp" && $0.batch == r.batch }?.msPerStep
            cells.append([r.model, r.method, String(r.batch), grouped(r.params), ratio(Double(r.params), msqParams.map(Double.init)),
                          fmt(r.msPerStep), ratio(r.msPerStep, fpMs), fmt(r.imagesPerSecond),
                          fmt(Double(r.peakRSS) / 1_048_576, 0)])
        }
        let widths = header.indices.map { c in ([header[c]] + cells.map { $0[c] }).map(\.count).max()! }
        func line(_ values: [String]) -> String {
            "| " + values.indices.map { c in
                let pad = String(repeating: " ", count: widths[c] - values[c].count)
                return rightAligned[c] ? pad + values[c] : values[c] + pad
            }.joined(separator: " | ") + " |\n"
        }
        var out = line(header)
        out += "|" + widths.indices.map { c in
            rightAligned[c] ? String(repeating: "-", count: widths[c] + 1) + ":" : ":" + String(repeating: "-", count: widths[c] + 1)
        }.joined(separator: "|") + "|\n"
        for row in cells { out += line(row) }
        return out
    }
}

/// 1234567 → "1,234,567".
func grouped(_ n: Int) -> String {
    let digits = String(abs(n))
    var out = ""
    for (i, ch) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
        out.append(ch)
    }
    return (n < 0 ? "-" : "") + out
}

/// The results in every `*.json` file of `directory` (in name order) that `parse` accepts; the others
/// are skipped with a note on standard error (`<command>: ignoring <path> (not a <kind> result)`).
/// Throws when none is accepted.
func readResults<T>(in directory: String, command: String, kind: String,
                    parse: ([String: Any]) -> T?) throws -> [T] {
    let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }.sorted()
    var results: [T] = []
    for name in names {
        let path = (directory as NSString).appendingPathComponent(name)
        guard let data = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let result = parse(object) else {
            FileHandle.standardError.write(Data("\(command): ignoring \(path) (not a \(kind) result)\n".utf8))
            continue
        }
        results.append(result)
    }
    guard !results.isEmpty else { throw ValidationError("no \(kind) JSON files in \(directory)") }
    return results
}
