import Foundation

/// The parsed JSON header of a safetensors file: entries as written, not yet checked against the data.
struct SafeTensorsHeader {
    /// One tensor's header entry.
    struct Entry {
        var name: String
        var dtype: SafeTensorsDType
        var shape: [Int]
        var begin: Int
        var end: Int
    }

    var entries: [Entry]
    var metadata: [String: String]

    /// Parses the header bytes (JSON, possibly followed by padding spaces).
    /// - Throws: ``SafeTensorsError/malformedHeader(path:reason:)`` or ``SafeTensorsError/unknownDType(path:tensor:dtype:)``.
    static func parse(_ bytes: ArraySlice<UInt8>, path: String) throws(SafeTensorsError) -> SafeTensorsHeader {
        guard bytes.first(where: { $0 != 0x20 }) == UInt8(ascii: "{") else {
            throw .malformedHeader(path: path, reason: "it does not start with a JSON object ('{')")
        }
        let raw: RawHeader
        do {
            raw = try JSONDecoder().decode(RawHeader.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw .malformedHeader(path: path, reason: describe(error, json: Data(bytes)))
        } catch {
            throw .malformedHeader(path: path, reason: "\(error)")
        }
        var entries: [Entry] = []
        for (name, e) in raw.entries {
            guard let dtype = SafeTensorsDType(rawValue: e.dtype) else {
                throw .unknownDType(path: path, tensor: name, dtype: e.dtype)
            }
            guard e.shape.allSatisfy({ $0 >= 0 }) else {
                throw .malformedHeader(path: path, reason: "tensor '\(name)' has a negative dimension in shape \(e.shape)")
            }
            guard e.dataOffsets.count == 2 else {
                throw .malformedHeader(path: path, reason: "tensor '\(name)' has data_offsets \(e.dataOffsets), not [begin, end]")
            }
            guard e.dataOffsets.allSatisfy({ $0 >= 0 }) else {
                throw .badOffsets(path: path, tensor: name, reason: "\(e.dataOffsets) holds a negative offset")
            }
            entries.append(Entry(name: name, dtype: dtype, shape: e.shape, begin: e.dataOffsets[0], end: e.dataOffsets[1]))
        }
        return SafeTensorsHeader(entries: entries, metadata: raw.metadata)
    }

    /// A decoding error as "at KEY.PATH: what went wrong", without Foundation's long dump.
    private static func describe(_ error: DecodingError, json: Data) -> String {
        let (context, what): (DecodingError.Context?, String) = switch error {
        case let .dataCorrupted(c) where c.codingPath.isEmpty: (nil, describeCorrupt(json))
        case let .dataCorrupted(c): (c, c.debugDescription)
        case let .keyNotFound(key, c): (c, "missing key '\(key.stringValue)'")
        case let .typeMismatch(type, c): (c, "expected \(type)")
        case let .valueNotFound(type, c): (c, "expected \(type), found null")
        @unknown default: (nil, "\(error)")
        }
        guard let context else { return what }
        let at = context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        let detail = context.underlyingError.map { " (\($0.localizedDescription))" } ?? ""
        return (at.isEmpty ? "" : "at \(at): ") + what + detail
    }

    /// Why JSONDecoder found the header corrupt: some decoders report a fractional or
    /// out-of-range number where an Int belongs as corrupt data, without a path, so tell that
    /// apart from JSON that does not parse at all.
    private static func describeCorrupt(_ json: Data) -> String {
        do {
            _ = try JSONSerialization.jsonObject(with: json)
            return "a value has the wrong type (shape and data_offsets hold non-negative integers; dtype and metadata values are strings)"
        } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey].map { " (\($0))" } ?? ""
            return "not valid JSON" + detail
        }
    }
}

/// The header as JSON: every key but `__metadata__` is a tensor entry.
private struct RawHeader: Decodable {
    var entries: [(String, RawEntry)] = []
    var metadata: [String: String] = [:]

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        for key in container.allKeys {
            if key.stringValue == SafeTensors.metadataKey {
                metadata = try container.decode([String: String].self, forKey: key)
            } else {
                entries.append((key.stringValue, try container.decode(RawEntry.self, forKey: key)))
            }
        }
    }
}

/// One tensor entry as JSON. Numbers must be integers: JSONDecoder refuses 1.5 for an Int.
private struct RawEntry: Decodable {
    var dtype: String
    var shape: [Int]
    var dataOffsets: [Int]

    enum CodingKeys: String, CodingKey {
        case dtype, shape
        case dataOffsets = "data_offsets"
    }
}
