import Foundation

/// A JSON value: what a ``TrainingMethod``'s summary fields hold, typed and `Codable`.
///
/// Non-finite doubles encode as `null`, as `summary.json` has always written them. A whole-number
/// double may decode as ``int(_:)`` (JSON does not tell 1 from 1.0); ``doubleValue`` reads both.
public enum JSONValue: Codable, Sendable, Equatable {
    /// `null`.
    case null
    /// `true` / `false`.
    case bool(Bool)
    /// An integer.
    case int(Int)
    /// A floating-point number.
    case double(Double)
    /// A string.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object.
    case object([String: JSONValue])

    /// Converts a `JSONSerialization`-style value (`NSNull`, `Bool`, integers, `Double`, `Float`,
    /// `String`, arrays, `[String: Any]`, optionals); nil for anything else.
    public init?(any value: Any) {
        switch value {
        case is NSNull: self = .null
        case let b as Bool: self = .bool(b)
        case let i as Int: self = .int(i)
        case let i as Int32: self = .int(Int(i))
        case let i as Int64: self = .int(Int(i))
        case let i as UInt32: self = .int(Int(i))
        case let i as UInt64:
            guard let n = Int(exactly: i) else { return nil }
            self = .int(n)
        case let d as Double: self = .double(d)
        case let f as Float: self = .double(Double(f))
        case let s as String: self = .string(s)
        case let dict as [String: Any]:
            var object: [String: JSONValue] = [:]
            for (key, element) in dict {
                guard let converted = JSONValue(any: element) else { return nil }
                object[key] = converted
            }
            self = .object(object)
        case let array as [Any]:
            var elements: [JSONValue] = []
            for element in array {
                guard let converted = JSONValue(any: element) else { return nil }
                elements.append(converted)
            }
            self = .array(elements)
        default:
            // An Optional boxed in Any: nil is null, a value converts as itself.
            let mirror = Mirror(reflecting: value)
            guard mirror.displayStyle == .optional else { return nil }
            guard let wrapped = mirror.children.first?.value else { self = .null; return }
            guard let converted = JSONValue(any: wrapped) else { return nil }
            self = converted
        }
    }

    /// The value as `JSONSerialization` takes it (`NSNull` for null and for non-finite doubles).
    public var anyValue: Any {
        switch self {
        case .null: return NSNull()
        case let .bool(b): return b
        case let .int(i): return i
        case let .double(d): return d.isFinite ? d : NSNull()
        case let .string(s): return s
        case let .array(a): return a.map(\.anyValue)
        case let .object(o): return o.mapValues(\.anyValue)
        }
    }

    /// The number, for ``int(_:)`` and ``double(_:)``; nil otherwise.
    public var doubleValue: Double? {
        switch self {
        case let .int(i): return Double(i)
        case let .double(d): return d
        default: return nil
        }
    }

    /// The string, for ``string(_:)``; nil otherwise.
    public var stringValue: String? {
        if case let .string(s) = self { return s }
        return nil
    }

    /// Decodes any JSON value; integers that fit an `Int` become ``int(_:)``.
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// Encodes the value; a non-finite ``double(_:)`` as `null`.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case let .bool(b): try c.encode(b)
        case let .int(i): try c.encode(i)
        case let .double(d): if d.isFinite { try c.encode(d) } else { try c.encodeNil() }
        case let .string(s): try c.encode(s)
        case let .array(a): try c.encode(a)
        case let .object(o): try c.encode(o)
        }
    }
}
