/// Element type of a safetensors entry, spelled as in the file header (`"F32"`).
///
/// The cases are in the order of the reference implementation's `Dtype` enum (increasing
/// alignment), which decides the order tensors are written in. Sub-byte types (`F4`, `F6_*`) are
/// not supported.
public enum SafeTensorsDType: String, CaseIterable, Sendable {
    /// Boolean, one byte (0 or 1).
    case bool = "BOOL"
    /// Unsigned 8-bit integer.
    case uint8 = "U8"
    /// Signed 8-bit integer.
    case int8 = "I8"
    /// 8-bit float, 5 exponent bits (stored only; no conversion).
    case float8E5M2 = "F8_E5M2"
    /// 8-bit float, 4 exponent bits (stored only; no conversion).
    case float8E4M3 = "F8_E4M3"
    /// 8-bit power of two (stored only; no conversion).
    case float8E8M0 = "F8_E8M0"
    /// 8-bit float, 4 exponent bits, no negative zero (stored only; no conversion).
    case float8E4M3FNUZ = "F8_E4M3FNUZ"
    /// 8-bit float, 5 exponent bits, no negative zero (stored only; no conversion).
    case float8E5M2FNUZ = "F8_E5M2FNUZ"
    /// Signed 16-bit integer.
    case int16 = "I16"
    /// Unsigned 16-bit integer.
    case uint16 = "U16"
    /// IEEE half precision.
    case float16 = "F16"
    /// bfloat16 (the upper half of a Float32).
    case bfloat16 = "BF16"
    /// Signed 32-bit integer.
    case int32 = "I32"
    /// Unsigned 32-bit integer.
    case uint32 = "U32"
    /// IEEE single precision.
    case float32 = "F32"
    /// Complex number of two Float32 parts (stored only; no conversion).
    case complex64 = "C64"
    /// IEEE double precision.
    case float64 = "F64"
    /// Signed 64-bit integer.
    case int64 = "I64"
    /// Unsigned 64-bit integer.
    case uint64 = "U64"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .bool, .uint8, .int8, .float8E5M2, .float8E4M3, .float8E8M0, .float8E4M3FNUZ, .float8E5M2FNUZ: return 1
        case .int16, .uint16, .float16, .bfloat16: return 2
        case .int32, .uint32, .float32: return 4
        case .complex64, .float64, .int64, .uint64: return 8
        }
    }

    /// Position in the reference implementation's dtype order; larger ones are written first.
    var writeRank: Int { Self.allCases.firstIndex(of: self) ?? 0 }
}

/// One tensor of a safetensors file: its dtype, shape and little-endian row-major bytes.
///
/// The bytes always hold exactly `shape.product × dtype.byteSize` bytes: every initializer checks it.
public struct SafeTensor: Equatable, Sendable {
    /// Element type.
    public let dtype: SafeTensorsDType
    /// Extent of each dimension, outermost first (`[]` is a scalar).
    public let shape: [Int]
    /// The elements, little-endian, row-major.
    public let bytes: [UInt8]

    /// Number of elements: the product of `shape`.
    public var elementCount: Int { shape.reduce(1, *) }

    /// An entry from raw little-endian bytes.
    /// - Throws: ``SafeTensorsError/elementCountMismatch(shape:count:)`` if a dimension is negative
    ///   or `bytes` is not `shape.product × dtype.byteSize` long.
    public init(dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) throws(SafeTensorsError) {
        guard let count = checkedProduct(shape), bytes.count % dtype.byteSize == 0,
              count == bytes.count / dtype.byteSize else {
            throw .elementCountMismatch(shape: shape, count: bytes.count / dtype.byteSize)
        }
        self.init(unchecked: dtype, shape: shape, bytes: bytes)
    }

    init(unchecked dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// An `F32` entry of the given shape holding `values` in row-major order.
    /// - Throws: ``SafeTensorsError/elementCountMismatch(shape:count:)`` if they do not fill it.
    public init(shape: [Int], float32 values: [Float]) throws(SafeTensorsError) {
        try self.init(checking: shape, values, as: .float32) { $0.bitPattern }
    }

    /// An `F64` entry of the given shape holding `values` in row-major order.
    /// - Throws: ``SafeTensorsError/elementCountMismatch(shape:count:)`` if they do not fill it.
    public init(shape: [Int], float64 values: [Double]) throws(SafeTensorsError) {
        try self.init(checking: shape, values, as: .float64) { $0.bitPattern }
    }

    /// An `I64` entry of the given shape holding `values` in row-major order (labels, indices).
    /// - Throws: ``SafeTensorsError/elementCountMismatch(shape:count:)`` if they do not fill it.
    public init(shape: [Int], int64 values: [Int64]) throws(SafeTensorsError) {
        try self.init(checking: shape, values, as: .int64) { $0 }
    }

    /// An `I32` entry of the given shape holding `values` in row-major order.
    /// - Throws: ``SafeTensorsError/elementCountMismatch(shape:count:)`` if they do not fill it.
    public init(shape: [Int], int32 values: [Int32]) throws(SafeTensorsError) {
        try self.init(checking: shape, values, as: .int32) { $0 }
    }

    /// An `F32` entry with the shape and elements of `tensor`.
    public init(_ tensor: Tensor) {
        let bytes = littleEndianBytes(tensor.scalars) { $0.bitPattern }
        self.init(unchecked: .float32, shape: tensor.shape, bytes: bytes)
    }

    private init<T, W: FixedWidthInteger>(checking shape: [Int], _ values: [T], as dtype: SafeTensorsDType,
                                          _ bits: (T) -> W) throws(SafeTensorsError) {
        guard checkedProduct(shape) == values.count else {
            throw .elementCountMismatch(shape: shape, count: values.count)
        }
        self.init(unchecked: dtype, shape: shape, bytes: littleEndianBytes(values, bits))
    }

    // MARK: Typed access

    /// The elements as Float: exact for `F32`, `F16`, `BF16`; `F64` rounded to nearest. Nil for
    /// other dtypes.
    public func floats() -> [Float]? {
        switch dtype {
        case .float32: return load(UInt32.self) { Float(bitPattern: $0) }
        case .float64: return load(UInt64.self) { Float(Double(bitPattern: $0)) }
        case .bfloat16: return load(UInt16.self) { Float(bitPattern: UInt32($0) << 16) }
        case .float16: return load(UInt16.self, halfToFloat)
        default: return nil
        }
    }

    /// The elements as Double, exact for `F64`, `F32`, `F16`, `BF16`. Nil for other dtypes.
    public func doubles() -> [Double]? {
        if dtype == .float64 { return load(UInt64.self) { Double(bitPattern: $0) } }
        return floats().map { $0.map(Double.init) }
    }

    /// The elements as Int64, exact for every integer dtype and `BOOL`; nil for floats and for `U64`
    /// values above `Int64.max`.
    public func int64s() -> [Int64]? {
        switch dtype {
        case .int64: return load(UInt64.self) { Int64(bitPattern: $0) }
        case .uint64:
            let values = load(UInt64.self) { $0 }
            guard values.allSatisfy({ $0 <= UInt64(Int64.max) }) else { return nil }
            return values.map { Int64($0) }
        case .int32: return load(UInt32.self) { Int64(Int32(bitPattern: $0)) }
        case .uint32: return load(UInt32.self) { Int64($0) }
        case .int16: return load(UInt16.self) { Int64(Int16(bitPattern: $0)) }
        case .uint16: return load(UInt16.self) { Int64($0) }
        case .int8: return bytes.map { Int64(Int8(bitPattern: $0)) }
        case .uint8, .bool: return bytes.map { Int64($0) }
        default: return nil
        }
    }

    /// A ``Tensor`` of this shape from a floating-point entry (see ``floats()``); nil for others.
    public func tensor() -> Tensor? {
        guard let values = floats() else { return nil }
        return Tensor(shape: shape, scalars: values)
    }

    /// Decodes every element as a little-endian `W` and maps it (unaligned loads: the bytes array
    /// need not be aligned for `W`).
    private func load<W: FixedWidthInteger, T>(_: W.Type, _ convert: (W) -> T) -> [T] {
        let n = bytes.count / MemoryLayout<W>.size
        return bytes.withUnsafeBytes { raw in
            (0..<n).map { convert(W(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * MemoryLayout<W>.size, as: W.self))) }
        }
    }
}

/// `values` as little-endian bytes of their bit patterns.
private func littleEndianBytes<T, W: FixedWidthInteger>(_ values: [T], _ bits: (T) -> W) -> [UInt8] {
    let size = MemoryLayout<W>.size
    var out = [UInt8](repeating: 0, count: values.count * size)
    out.withUnsafeMutableBytes { raw in
        for (i, v) in values.enumerated() {
            raw.storeBytes(of: bits(v).littleEndian, toByteOffset: i * size, as: W.self)
        }
    }
    return out
}

/// IEEE half → Float, exact (Float16 itself is unavailable on some supported platforms).
private func halfToFloat(_ h: UInt16) -> Float {
    let sign: Float = h & 0x8000 == 0 ? 1 : -1
    let exponent = Int(h >> 10 & 0x1F), mantissa = UInt32(h & 0x3FF)
    switch exponent {
    case 0: return sign * Float(mantissa) * 0x1p-24
    case 31: return Float(bitPattern: UInt32(h & 0x8000) << 16 | 0x7F80_0000 | mantissa << 13)
    default: return Float(bitPattern: UInt32(h & 0x8000) << 16 | UInt32(exponent + 112) << 23 | mantissa << 13)
    }
}
