/// Why a safetensors file could not be read or written, or an entry not converted, in words a user
/// can act on. Reading never traps on a bad file: every check failure is one of these.
public enum SafeTensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file does not exist or cannot be opened.
    case unreadable(path: String, reason: String)
    /// The file ends before its header or a tensor's data does.
    case truncated(path: String, reason: String)
    /// The header is not a JSON object of well-formed entries (or is not UTF-8, or is too large).
    case malformedHeader(path: String, reason: String)
    /// An entry's `dtype` is not one this reader knows (sub-byte types such as `F4` included).
    case unknownDType(path: String, tensor: String, dtype: String)
    /// An entry's byte span is not its element count times its element size.
    case sizeMismatch(path: String, tensor: String, dtype: SafeTensorsDType, shape: [Int], expectedBytes: Int, actualBytes: Int)
    /// An entry's `data_offsets` are reversed, out of range, overlap another's, leave a gap, or
    /// leave bytes after the last tensor.
    case badOffsets(path: String, tensor: String, reason: String)
    /// Values given to build an entry do not fill its shape.
    case elementCountMismatch(shape: [Int], count: Int)
    /// No entry has this name.
    case missingTensor(name: String)
    /// The entry exists but its dtype cannot be converted to what was asked for.
    case wrongDType(name: String, dtype: SafeTensorsDType, wanted: String)
    /// Writing the file failed (including a tensor named `__metadata__`, which the format reserves).
    case writeFailed(path: String, reason: String)

    /// A one-line message naming the file (where there is one), the entry and what is wrong.
    public var description: String {
        switch self {
        case let .unreadable(path, reason):
            return "cannot read safetensors file \(path): \(reason)"
        case let .truncated(path, reason):
            return "safetensors file \(path) is truncated: \(reason). Copy or write it again"
        case let .malformedHeader(path, reason):
            return "safetensors file \(path) has a malformed header: \(reason)"
        case let .unknownDType(path, tensor, dtype):
            let known = SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
            return "safetensors file \(path): tensor '\(tensor)' has dtype '\(dtype)', which this reader does not support (supported: \(known))"
        case let .sizeMismatch(path, tensor, dtype, shape, expected, actual):
            return "safetensors file \(path): tensor '\(tensor)' (\(dtype.rawValue), shape \(shape)) needs \(expected) bytes but its data_offsets span \(actual)"
        case let .badOffsets(path, tensor, reason):
            return "safetensors file \(path): bad data_offsets of tensor '\(tensor)': \(reason)"
        case let .elementCountMismatch(shape, count):
            return "\(count) values do not fill a tensor of shape \(shape) (\(shape.reduce(1, *)) elements)"
        case let .missingTensor(name):
            return "no tensor named '\(name)' in the safetensors data"
        case let .wrongDType(name, dtype, wanted):
            return "tensor '\(name)' has dtype \(dtype.rawValue), which does not convert to \(wanted)"
        case let .writeFailed(path, reason):
            return "cannot write safetensors file \(path): \(reason)"
        }
    }
}
