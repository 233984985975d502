/// Why a packed model (`.msqmodel`) could not be exported, written, read or run, in words a user
/// can act on. Reading never traps on a bad file: every check failure is one of these.
public enum PackedModelError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file does not exist or cannot be opened.
    case unreadable(path: String, reason: String)
    /// The file does not start with the packed-model magic `MSQMODEL`.
    case notAPackedModel(path: String)
    /// The file is a training checkpoint (`.msqckpt`), which must be exported first.
    case checkpointGiven(path: String)
    /// The file was written by a format version this build does not read (`supported` is the
    /// newest it reads; it reads every version from 1 to that).
    case unsupportedVersion(path: String, found: UInt32, supported: UInt32)
    /// The file is truncated, fails its checksum, or its header contradicts its contents.
    case corrupt(path: String, reason: String)
    /// Writing the file failed.
    case writeFailed(path: String, reason: String)
    /// The checkpoint holds no usable quantization scheme (e.g. a float run: ``QuantizationError/noScheme``).
    case notQuantized(QuantizationError)
    /// The checkpoint's tensors or run description do not fit the model it names.
    case checkpointMismatch(reason: String)
    /// The file's tensors do not fit the model its header names (written by another build?).
    case modelMismatch(reason: String)
    /// ``PackedModel/makeModule()`` was asked for a network that is not a built-in ``ModelKind``.
    case notBuiltIn(model: String)
    /// The model given to ``PackedModel/load(into:)`` does not fit the file; the model is unchanged.
    case loadMismatch(reason: String)
    /// A live model given to ``PackedModel/export(model:name:data:source:)`` cannot be packed.
    case notPackable(reason: String)
    /// A dataset's images or classes do not fit the model's input or output.
    case incompatibleData(reason: String)
    /// A bit width outside 1…16 was given to the bit packer.
    case invalidBits(Int)
    /// `code` (at `index`) does not fit in `bits`-bit two's complement.
    case codeOutOfRange(index: Int, code: Int, bits: Int)
    /// Packed bytes of the wrong length for the number of codes and the bit width.
    case packedLengthMismatch(expected: Int, actual: Int)
    /// The unused high bits of the last packed byte are not zero.
    case nonzeroPadding

    /// A one-line message naming the file (where there is one), the problem and what to do.
    public var description: String {
        switch self {
        case let .unreadable(path, reason):
            return "cannot read packed model \(path): \(reason)"
        case let .notAPackedModel(path):
            return "\(path) is not an MSQ packed model (bad magic number); create one with `msq export --checkpoint FILE --out MODEL`"
        case let .checkpointGiven(path):
            return "\(path) is a training checkpoint, not a packed model; run `msq export --checkpoint \(path) --out model.msqmodel` first"
        case let .unsupportedVersion(path, found, supported):
            return "packed model \(path) has format version \(found); this build reads versions 1 to \(supported). Export it again from its checkpoint with this build, or evaluate it with the newer build that wrote it"
        case let .corrupt(path, reason):
            return "packed model \(path) is corrupt: \(reason). Copy it again or re-export it from its checkpoint"
        case let .writeFailed(path, reason):
            return "cannot write packed model \(path): \(reason)"
        case let .notQuantized(error):
            return "cannot export: \(error). Export needs a checkpoint written by `msq train --method msq`"
        case let .checkpointMismatch(reason):
            return "cannot export: \(reason)"
        case let .modelMismatch(reason):
            return "the packed model does not fit the network it names: \(reason). Re-export it with this build"
        case let .notBuiltIn(model):
            return "the packed model is a '\(model)', which is not a built-in model (\(ModelKind.allCases.map(\.rawValue).joined(separator: ", "))): build that network the way it was built for training and call PackedModel.load(into:)"
        case let .loadMismatch(reason):
            return "the packed model does not fit the model given to load(into:): \(reason); the model was left unchanged"
        case let .notPackable(reason):
            return "cannot export the model: \(reason)"
        case let .incompatibleData(reason):
            return reason
        case let .invalidBits(bits):
            return "bit width \(bits) outside the packable range 1...16"
        case let .codeOutOfRange(index, code, bits):
            return "code \(code) at index \(index) does not fit in \(bits)-bit two's complement [\(-(1 << (bits - 1))), \((1 << (bits - 1)) - 1)]"
        case let .packedLengthMismatch(expected, actual):
            return "packed codes take \(expected) bytes, got \(actual)"
        case .nonzeroPadding:
            return "the unused bits of the last packed byte are not zero"
        }
    }
}
