import Foundation

/// Named tensors and string metadata in the safetensors format, the interchange format of
/// PyTorch (`safetensors.torch.save_file`) and NumPy (`safetensors.numpy.save_file`).
///
/// File layout: UInt64 little-endian header length N · N bytes of JSON header
/// `{"__metadata__": {"k": "v"}, "NAME": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}`
/// padded with spaces to a multiple of 8 · the data, tensors contiguous, offsets relative to the
/// data start. ``serialized()`` writes what the Python library writes, byte for byte: tensors by
/// decreasing dtype alignment, then by name (so all-F32 files are in name order), compact JSON.
/// ``init(serialized:source:)`` validates everything before returning and never traps.
public struct SafeTensors: Equatable, Sendable {
    /// The tensors, by name.
    public var tensors: [String: SafeTensor]
    /// The header's `__metadata__` (string to string); written only when non-empty.
    public var metadata: [String: String]

    /// The largest header read, as the reference implementation: a bigger one is a corrupt length.
    public static let maximumHeaderBytes = 100_000_000
    /// The header key reserved for metadata.
    public static let metadataKey = "__metadata__"

    /// No tensors, no metadata.
    public init() {
        tensors = [:]
        metadata = [:]
    }

    /// The given tensors and metadata.
    public init(tensors: [String: SafeTensor], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    // MARK: Tensor convenience

    /// Stores `tensor` as an `F32` entry named `name`, replacing any entry of that name.
    public mutating func add(_ tensor: Tensor, named name: String) {
        tensors[name] = SafeTensor(tensor)
    }

    /// The floating-point entry `name` as a ``Tensor`` (`F64`, `F16`, `BF16` converted to Float).
    /// - Throws: ``SafeTensorsError/missingTensor(name:)`` or ``SafeTensorsError/wrongDType(name:dtype:wanted:)``.
    public func tensor(named name: String) throws(SafeTensorsError) -> Tensor {
        let entry = try self.entry(named: name)
        guard let t = entry.tensor() else { throw .wrongDType(name: name, dtype: entry.dtype, wanted: "a Float tensor") }
        return t
    }

    /// The integer entry `name`'s elements as Int64 (labels, indices), row-major.
    /// - Throws: ``SafeTensorsError/missingTensor(name:)`` or ``SafeTensorsError/wrongDType(name:dtype:wanted:)``.
    public func int64s(named name: String) throws(SafeTensorsError) -> [Int64] {
        let entry = try self.entry(named: name)
        guard let values = entry.int64s() else { throw .wrongDType(name: name, dtype: entry.dtype, wanted: "Int64") }
        return values
    }

    /// The entry `name`.
    /// - Throws: ``SafeTensorsError/missingTensor(name:)``.
    public func entry(named name: String) throws(SafeTensorsError) -> SafeTensor {
        guard let entry = tensors[name] else { throw .missingTensor(name: name) }
        return entry
    }

    // MARK: Files

    /// Reads and validates the safetensors file at `url` (a file URL).
    /// - Throws: ``SafeTensorsError`` naming the file and what is wrong; never traps on a bad file.
    public static func read(contentsOf url: URL) throws(SafeTensorsError) -> SafeTensors {
        try read(from: url.path)
    }

    /// Reads and validates the safetensors file at `path`.
    /// - Throws: ``SafeTensorsError`` naming the file and what is wrong; never traps on a bad file.
    public static func read(from path: String) throws(SafeTensorsError) -> SafeTensors {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw .unreadable(path: path, reason: "no such file")
        }
        guard !isDirectory.boolValue, let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: isDirectory.boolValue ? "it is a directory" : "permission denied or not a regular file")
        }
        return try SafeTensors(serialized: [UInt8](data), source: path)
    }

    /// Writes ``serialized()`` to `url` (a file URL) atomically: temporary file, fsync, rename.
    /// - Throws: ``SafeTensorsError/writeFailed(path:reason:)``.
    public func write(to url: URL) throws(SafeTensorsError) {
        try write(to: url.path)
    }

    /// Writes ``serialized()`` to `path` atomically: a crash leaves the old file or the new one.
    /// - Throws: ``SafeTensorsError/writeFailed(path:reason:)``.
    public func write(to path: String) throws(SafeTensorsError) {
        let bytes = try serialized(destination: path)
        do {
            try writeAtomically(bytes, to: path)
        } catch {
            if case let .writeFailed(_, reason) = error { throw .writeFailed(path: path, reason: reason) }
            throw .writeFailed(path: path, reason: error.description)
        }
    }

    // MARK: Bytes

    /// The complete file contents, as Python's `safetensors` would write them.
    /// - Throws: ``SafeTensorsError/writeFailed(path:reason:)`` if a tensor is named `__metadata__`.
    public func serialized() throws(SafeTensorsError) -> [UInt8] {
        try serialized(destination: "(in memory)")
    }

    private func serialized(destination: String) throws(SafeTensorsError) -> [UInt8] {
        guard tensors[Self.metadataKey] == nil else {
            throw .writeFailed(path: destination, reason: "a tensor is named '\(Self.metadataKey)', which the format reserves for metadata")
        }
        // The reference writer's order: larger alignment first (keeps every tensor aligned to its
        // element size), then bytewise by name.
        let order = tensors.sorted { a, b in
            a.value.dtype.writeRank != b.value.dtype.writeRank
                ? a.value.dtype.writeRank > b.value.dtype.writeRank
                : Array(a.key.utf8).lexicographicallyPrecedes(Array(b.key.utf8))
        }
        var header = "{"
        var fields: [String] = []
        if !metadata.isEmpty {
            let pairs = metadata.sorted { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }
            fields.append(jsonString(Self.metadataKey) + ":{"
                          + pairs.map { jsonString($0.key) + ":" + jsonString($0.value) }.joined(separator: ",") + "}")
        }
        var offset = 0
        for (name, t) in order {
            let end = offset + t.bytes.count
            fields.append(jsonString(name) + ":{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":["
                          + t.shape.map(String.init).joined(separator: ",") + "],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        header += fields.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        headerBytes += [UInt8](repeating: 0x20, count: (8 - headerBytes.count % 8) % 8)

        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + headerBytes.count + offset)
        appendLE(UInt64(headerBytes.count), to: &bytes)
        bytes += headerBytes
        for (_, t) in order { bytes += t.bytes }
        return bytes
    }

    /// Parses and validates the bytes of a safetensors file; `source` names it in errors.
    /// - Throws: ``SafeTensorsError``: truncated, malformed header, unknown dtype, size mismatch, bad offsets.
    public init(serialized bytes: [UInt8], source: String) throws(SafeTensorsError) {
        let path = source
        guard bytes.count >= 8 else {
            throw .truncated(path: path, reason: "the file is \(bytes.count) bytes, shorter than the 8-byte header length")
        }
        var declared: UInt64 = 0
        for i in 0..<8 { declared |= UInt64(bytes[i]) << (8 * i) }
        guard declared <= UInt64(Self.maximumHeaderBytes) else {
            throw .malformedHeader(path: path, reason: "the header length \(declared) exceeds the \(Self.maximumHeaderBytes)-byte limit (not a safetensors file?)")
        }
        let headerEnd = 8 + Int(declared)
        guard headerEnd <= bytes.count else {
            throw .truncated(path: path, reason: "the header is \(declared) bytes but only \(bytes.count - 8) follow the length")
        }
        let parsed = try SafeTensorsHeader.parse(bytes[8..<headerEnd], path: path)
        let dataCount = bytes.count - headerEnd
        try Self.validateLayout(parsed.entries, dataCount: dataCount, path: path)

        var tensors: [String: SafeTensor] = [:]
        for e in parsed.entries {
            let slice = bytes[(headerEnd + e.begin)..<(headerEnd + e.end)]
            tensors[e.name] = SafeTensor(unchecked: e.dtype, shape: e.shape, bytes: Array(slice))
        }
        self.init(tensors: tensors, metadata: parsed.metadata)
    }

    /// Checks every entry's size against its shape and dtype, and that the entries tile the data
    /// section exactly: sorted by offset they start at 0, each begins where the previous ended
    /// (no overlap, no gap) and the last ends at the end of the file.
    private static func validateLayout(_ entries: [SafeTensorsHeader.Entry], dataCount: Int, path: String) throws(SafeTensorsError) {
        for e in entries {
            guard e.begin <= e.end else {
                throw .badOffsets(path: path, tensor: e.name, reason: "begin \(e.begin) is after end \(e.end)")
            }
            let expected = checkedProduct(e.shape).flatMap { n -> Int? in
                let (bytes, overflow) = n.multipliedReportingOverflow(by: e.dtype.byteSize)
                return overflow ? nil : bytes
            }
            guard let expected else {
                throw .malformedHeader(path: path, reason: "tensor '\(e.name)' has shape \(e.shape), whose size overflows")
            }
            guard expected == e.end - e.begin else {
                throw .sizeMismatch(path: path, tensor: e.name, dtype: e.dtype, shape: e.shape,
                                    expectedBytes: expected, actualBytes: e.end - e.begin)
            }
        }
        var position = 0
        // Ties (empty tensors at one offset) by name, so the message does not depend on hash order.
        for e in entries.sorted(by: { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }) {
            if e.begin < position {
                throw .badOffsets(path: path, tensor: e.name, reason: "[\(e.begin), \(e.end)) overlaps another tensor's data, which ends at \(position)")
            }
            if e.begin > position {
                throw .badOffsets(path: path, tensor: e.name, reason: "it starts at \(e.begin) but the data before it ends at \(position): bytes \(position)..<\(e.begin) belong to no tensor")
            }
            if e.end > dataCount {
                throw .truncated(path: path, reason: "tensor '\(e.name)' ends at data byte \(e.end) but the data section holds only \(dataCount) bytes")
            }
            position = e.end
        }
        if position != dataCount {
            let last = entries.max { ($0.end, $0.name) < ($1.end, $1.name) }?.name ?? "(none)"
            throw .badOffsets(path: path, tensor: last, reason: "the data section holds \(dataCount) bytes but the tensors end at \(position): the rest belongs to no tensor")
        }
    }
}

/// `s` as a JSON string literal, escaped as serde_json does (so headers match Python's bytes):
/// quote, backslash and control characters only; `/` and non-ASCII are written as they are.
func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
