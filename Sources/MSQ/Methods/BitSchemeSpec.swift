import Foundation

/// Why a `--bit-scheme` could not be read or does not fit the model. Messages about layer paths
/// list the model's valid ones.
public enum BitSchemeError: Error, CustomStringConvertible, Equatable {
    /// The spec names a file that does not exist (and is not an inline `path:bits` list).
    case noSuchFile(String)
    /// The file exists but cannot be read as UTF-8 text.
    case unreadableFile(path: String, reason: String)
    /// The spec lists no layer at all.
    case empty(origin: String)
    /// An entry is not `path:bits` with an integer `bits` (`line` is 1-based; 0 for inline specs).
    case syntax(origin: String, line: Int, entry: String, reason: String)
    /// A precision outside 2…16 bits (sign included).
    case bitsOutOfRange(path: String, bits: Int)
    /// The same path (or the default `*`) is given twice.
    case duplicate(path: String)
    /// Paths that name no quantized layer of the model.
    case unknownLayers([String], valid: [String])
    /// Quantized layers the spec does not name, with no default `*:bits` given.
    case missingLayers([String], valid: [String])

    public var description: String {
        func list(_ paths: [String]) -> String { paths.joined(separator: ", ") }
        switch self {
        case let .noSuchFile(spec):
            return "--bit-scheme \(spec): no such file, and not an inline list of path:bits entries"
        case let .unreadableFile(path, reason): return "--bit-scheme: cannot read \(path): \(reason)"
        case let .empty(origin): return "--bit-scheme \(origin) lists no layer"
        case let .syntax(origin, line, entry, reason):
            return "--bit-scheme \(origin)\(line > 0 ? " line \(line)" : ""): \"\(entry)\" is not path:bits (\(reason))"
        case let .bitsOutOfRange(path, bits):
            return "--bit-scheme: \(path) at \(bits) bits; precisions must be in 2...16 (sign included)"
        case let .duplicate(path): return "--bit-scheme names \(path) more than once"
        case let .unknownLayers(paths, valid):
            return "--bit-scheme names \(paths.count == 1 ? "a layer" : "layers") the model does not quantize: \(list(paths)). Valid layer paths: \(list(valid))"
        case let .missingLayers(paths, valid):
            return "--bit-scheme does not name \(list(paths)); name every quantized layer or give a default (*:bits). Valid layer paths: \(list(valid))"
        }
    }
}

/// A per-layer precision assignment given by the user (`msq train --bit-scheme`): the fixed
/// scheme of a control run that trains a given mixed precision from step 0.
///
/// Accepted text, entries separated by commas, spaces or newlines, `#` starting a comment:
/// - `path:bits` entries, e.g. `conv1:8,layer1.0.conv1:3,…` or the `bit_scheme` line that MSQ's
///   logs and `summary.json` print (`conv1:8 layer1.0.conv1:3 …`), or one entry per line;
/// - `*:bits`, the precision of every quantized layer not named (without it every quantized layer
///   must be named exactly once);
/// - a `summary.json` of an earlier run (a JSON object): its `bit_scheme` string is read.
///
/// Precisions count the sign bit (as everywhere in MSQ) and must be in 2…16.
public struct BitSchemeSpec: Equatable, Sendable {
    /// The named layers and their precisions, in the order given.
    public var entries: [QuantizationScheme.LayerBits]
    /// The precision of layers not named (`*:bits`), if given.
    public var defaultBits: Int?

    /// A spec from explicit entries (checked by ``resolve(layerPaths:)``).
    public init(entries: [QuantizationScheme.LayerBits], defaultBits: Int? = nil) {
        self.entries = entries
        self.defaultBits = defaultBits
    }

    /// Reads `spec`: the path of an existing file (a list of entries or a `summary.json`), or else
    /// an inline list of `path:bits` entries.
    /// - Throws: ``BitSchemeError``: no such file (a spec without `:` that names no file), syntax,
    ///   range, duplicates.
    public static func load(_ spec: String) throws(BitSchemeError) -> BitSchemeSpec {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: spec, isDirectory: &isDirectory), !isDirectory.boolValue {
            guard let data = FileManager.default.contents(atPath: spec) else {
                throw .unreadableFile(path: spec, reason: "permission denied")
            }
            guard let text = String(data: data, encoding: .utf8) else {
                throw .unreadableFile(path: spec, reason: "not UTF-8 text")
            }
            return try parse(text, origin: spec, isFile: true)
        }
        guard spec.contains(":") else { throw .noSuchFile(spec) }
        return try parse(spec, origin: "\"\(spec)\"", isFile: false)
    }

    /// Parses the text of a spec (see the type's documentation); `origin` names it in errors.
    public static func parse(_ text: String, origin: String, isFile: Bool = false) throws(BitSchemeError) -> BitSchemeSpec {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix("{") {
            guard let object = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any],
                  let line = object["bit_scheme"] as? String else {
                throw .syntax(origin: origin, line: 1, entry: String(trimmed.prefix(20)),
                              reason: "a JSON file must be a summary.json with a bit_scheme string")
            }
            return try parse(line, origin: origin + " (bit_scheme)")
        }
        var entries: [QuantizationScheme.LayerBits] = []
        var defaultBits: Int?
        var seen = Set<String>()
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let tokens = line.split { $0 == "," || $0 == " " || $0 == "\t" || $0 == "\r" }
            for token in tokens {
                let entry = String(token)
                let lineNumber = isFile ? index + 1 : 0
                let parts = entry.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    throw .syntax(origin: origin, line: lineNumber, entry: entry,
                                  reason: parts.count < 2 ? "no ':'" : "more than one ':'")
                }
                let path = String(parts[0])
                guard !path.isEmpty else { throw .syntax(origin: origin, line: lineNumber, entry: entry, reason: "empty path") }
                guard let bits = Int(parts[1]) else {
                    throw .syntax(origin: origin, line: lineNumber, entry: entry, reason: "bits must be an integer")
                }
                guard msqBitRange.contains(bits) else { throw .bitsOutOfRange(path: path, bits: bits) }
                guard seen.insert(path).inserted else { throw .duplicate(path: path) }
                if path == "*" {
                    defaultBits = bits
                } else {
                    entries.append(.init(path: path, bits: bits))
                }
            }
        }
        if entries.isEmpty && defaultBits == nil { throw .empty(origin: origin) }
        return BitSchemeSpec(entries: entries, defaultBits: defaultBits)
    }

    /// The precision of each of `layerPaths` (the model's quantized layers, in walk order), in
    /// that order.
    /// - Throws: ``BitSchemeError/unknownLayers(_:valid:)`` for entries that name none of
    ///   `layerPaths`, ``BitSchemeError/missingLayers(_:valid:)`` for layers not named when there is
    ///   no default, ``BitSchemeError/duplicate(path:)`` and ``BitSchemeError/bitsOutOfRange(path:bits:)``
    ///   for entries built without ``parse(_:origin:isFile:)``.
    public func resolve(layerPaths: [String]) throws(BitSchemeError) -> [QuantizationScheme.LayerBits] {
        var byPath: [String: Int] = [:]
        for e in entries {
            guard msqBitRange.contains(e.bits) else { throw .bitsOutOfRange(path: e.path, bits: e.bits) }
            guard byPath.updateValue(e.bits, forKey: e.path) == nil else { throw .duplicate(path: e.path) }
        }
        if let d = defaultBits, !msqBitRange.contains(d) { throw .bitsOutOfRange(path: "*", bits: d) }
        let valid = Set(layerPaths)
        let unknown = entries.map(\.path).filter { !valid.contains($0) }
        if !unknown.isEmpty { throw .unknownLayers(unknown, valid: layerPaths) }
        let missing = layerPaths.filter { byPath[$0] == nil }
        if !missing.isEmpty && defaultBits == nil { throw .missingLayers(missing, valid: layerPaths) }
        return layerPaths.map { .init(path: $0, bits: byPath[$0] ?? defaultBits!) }
    }
}

/// `conv1:8 layer1.0.conv1:3 …`: the line MSQ's logs and `summary.json` print, which
/// ``BitSchemeSpec/parse(_:origin:isFile:)`` reads back.
public func bitSchemeLine(_ layers: [QuantizationScheme.LayerBits]) -> String {
    bitSchemeLine(paths: layers.map(\.path), bits: layers.map(\.bits))
}
