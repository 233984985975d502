import Foundation

/// A deployable MSQ model (`.msqmodel`): each quantized layer stored as its RoundClamp scale s (or
/// one scale s_c per output channel) and n-bit codes j_n only (MSQ-SPEC §1: "a deployed layer is
/// (s, j_n[]) — nothing else"), and every other tensor (batch-norm parameters and running
/// statistics, biases, PACT clip levels) as float32.
///
/// File layout (all integers little-endian):
///
/// | bytes              | content                                                              |
/// |--------------------|----------------------------------------------------------------------|
/// | 8                  | magic `MSQMODEL`                                                     |
/// | 4                  | UInt32 format version (``formatVersion``)                            |
/// | 8                  | UInt64 header length H                                               |
/// | H                  | header JSON, UTF-8 (``Header``)                                      |
/// | Σ ceil(N_l·n_l/8) + 4·C_l | each quantized layer: its packed codes (see ``bitPack(codes:bits:)``), then, per channel, its C_l float32 scales; in table order |
/// | 4 · Σ N_f          | float32 data of each float tensor, in table order                    |
/// | 8                  | UInt64 FNV-1a 64 of every preceding byte                             |
///
/// Every tensor's `offset` in the header is counted from the first payload byte (the byte after
/// the header JSON), so the header does not depend on its own length. Packed tensors come first,
/// then float tensors; tensors are contiguous, each packed tensor starts on a byte boundary, and
/// there is no other padding. A per-tensor layer's scale is in its table entry (``TensorEntry/scaleBits``,
/// C_l = 0); a per-channel layer (``TensorEntry/scaleGranularity`` `per-channel`) stores its
/// C_l = O_l scales s_c (O_l = the weight's first dimension) as float32 right after its codes,
/// inside the entry's `length`. Hence
///
///     file bytes = (20 + H) + Σ_l (ceil(N_l · n_l / 8) + 4 · C_l) + 4 · Σ_f N_f + 8
///
/// (see ``sizeBreakdown``). A quantized layer computes with W' = s · j / 2^(n−1) (s = s_c of the
/// element's output channel when per channel), evaluated in float32 as `(s · j) / 2^(n−1)`, the
/// operation order of the RoundClamp kernel, so the deployed weight is bit-identical to what
/// ``RoundClampQuantizer/forward(_:)`` produced in training.
///
/// Versions: 1 had per-tensor scales only; 2 (this build) adds per-channel scales, and a
/// per-tensor model is stored exactly as in version 1 but for the version field. Files of both
/// versions are read; per-channel entries in a version-1 file are refused as corrupt.
///
/// Written atomically (temporary file, fsync, rename); ``read(from:)`` verifies magic, version,
/// checksum and every size before trusting the contents.
public struct PackedModel: Sendable {
    /// Format version written by this build (2: per-channel scales).
    public static let formatVersion: UInt32 = 2
    /// Format versions this build reads: 1 (per-tensor scales only) and 2.
    public static let readableVersions: ClosedRange<UInt32> = 1...formatVersion
    /// The file's first 8 bytes.
    public static let magic: [UInt8] = Array("MSQMODEL".utf8)
    /// Conventional file extension (without the dot).
    public static let fileExtension = "msqmodel"
    /// Bytes before the header JSON: magic, version, header length.
    static let prefixBytes = 8 + 4 + 8
    /// Bytes of the trailing checksum.
    static let checksumBytes = 8
    /// The most classes a file may declare (ImageNet-21k has 21,841).
    public static let maxClasses = 1 << 16
    /// The most input channels a file may declare.
    public static let maxInputChannels = 1 << 12

    /// One tensor of the file: its name, shape, storage kind and where its bytes are.
    public struct TensorEntry: Codable, Equatable, Sendable {
        /// How a tensor is stored.
        public enum Kind: String, Codable, Sendable {
            /// A quantized layer's weight: n-bit codes, bit-packed, plus the scale s (or per-channel scales).
            case packed
            /// Float32 values, little-endian.
            case float32
        }

        /// Parameter path, e.g. `layer1.0.conv1.weight`, `bn1.running_mean`, `fc.input_alpha`.
        public var name: String
        /// Shape of the tensor; N = product of the dimensions.
        public var shape: [Int]
        /// Storage kind.
        public var kind: Kind
        /// Packed only: module path of the quantized layer (`layer1.0.conv1`).
        public var layer: String?
        /// Packed only: n, bits per code, sign included.
        public var bits: Int?
        /// Packed per-tensor only: s = max|W| of the latent weight, for people reading the JSON (may
        /// be rounded by a JSON tool); ``scaleBits`` is what the reader uses.
        public var scale: Float?
        /// Packed per-tensor only: the IEEE-754 bit pattern of s, exact whatever a JSON tool does to decimals.
        public var scaleBits: UInt32?
        /// Packed only (format 2): `per-channel` when the layer has one scale per output channel,
        /// stored as ``scaleCount`` float32 values after its codes; absent (nil) = per tensor, the
        /// scale in ``scaleBits`` (format 1 has no such field).
        public var scaleGranularity: ScaleGranularity?
        /// Packed per-channel only: C, the number of scales (the weight's first dimension).
        public var scaleCount: Int?
        /// First byte of the data, counted from the start of the payload.
        public var offset: Int
        /// Bytes of data: ceil(N·n/8) packed per tensor, ceil(N·n/8) + 4·C packed per channel, 4·N float32.
        public var length: Int

        /// N, the number of elements (nil if the shape has a negative dimension or overflows).
        public var elementCount: Int? { checkedProduct(shape) }

        /// An entry from all its fields (writers use ``PackedModel/export(checkpoint:)``).
        public init(name: String, shape: [Int], kind: Kind, layer: String? = nil, bits: Int? = nil,
                    scaleBits: UInt32? = nil, scaleGranularity: ScaleGranularity? = nil, scaleCount: Int? = nil,
                    offset: Int, length: Int) {
            self.name = name
            self.shape = shape
            self.kind = kind
            self.layer = layer
            self.bits = bits
            self.scale = scaleBits.map { Float(bitPattern: $0) }
            self.scaleBits = scaleBits
            self.scaleGranularity = scaleGranularity
            self.scaleCount = scaleCount
            self.offset = offset
            self.length = length
        }

        /// Whether this packed entry has one scale per output channel (stored after its codes).
        public var isPerChannel: Bool { scaleGranularity == .perChannel }

        /// Packed only: ceil(N·n/8), the bytes of the codes (the entry's first bytes); nil when the
        /// shape or bits are invalid.
        var codeByteCount: Int? {
            guard let count = elementCount, let bits, bitPackRange.contains(bits) else { return nil }
            let (bitCount, overflow) = count.multipliedReportingOverflow(by: bits)
            return overflow ? nil : bitCount / 8 + (bitCount % 8 == 0 ? 0 : 1)
        }
    }

    /// The header JSON: what network to build, what data it expects, and the tensor table.
    public struct Header: Codable, Equatable, Sendable {
        /// Model kind (``ModelKind`` raw value, e.g. `resnet20`).
        public var model: String
        /// Dataset the model was trained on (catalog name; `msq eval`'s default).
        public var dataset: String
        /// Input shape of one sample, `[C, H, W]`.
        public var inputShape: [Int]
        /// Number of classes (logits per sample).
        public var numClasses: Int
        /// Per-channel normalisation to apply to [0, 1] pixels before the network.
        public var normalization: Normalization
        /// PACT activation bits A on the inputs of quantized layers; nil = float inputs.
        public var activationBits: Int?
        /// Quantized layers whose input stays float even when ``activationBits`` is set.
        public var activationExcluded: [String]
        /// The training run's description (the checkpoint's `runDescription`), for provenance.
        public var source: [String: String]
        /// Every tensor, packed ones first (in scheme order), then float ones (in parameter order).
        public var tensors: [TensorEntry]

        /// A header from all its fields.
        public init(model: String, dataset: String, inputShape: [Int], numClasses: Int, normalization: Normalization,
                    activationBits: Int?, activationExcluded: [String], source: [String: String], tensors: [TensorEntry]) {
            self.model = model
            self.dataset = dataset
            self.inputShape = inputShape
            self.numClasses = numClasses
            self.normalization = normalization
            self.activationBits = activationBits
            self.activationExcluded = activationExcluded
            self.source = source
            self.tensors = tensors
        }
    }

    /// What the file holds.
    public let header: Header
    /// The payload: packed codes, then float32 data, laid out as ``header``'s table says.
    public let payload: [UInt8]
    /// The header as serialised (kept so a model read from a file writes back byte for byte).
    let headerJSON: [UInt8]

    /// A model from a header and its payload, validated against each other.
    /// - Throws: ``PackedModelError/corrupt(path:reason:)`` (path `<memory>`) when the table does
    ///   not describe the payload exactly; ``PackedModelError/writeFailed(path:reason:)`` when the
    ///   header cannot be encoded as JSON (a non-finite normalisation value).
    public init(header: Header, payload: [UInt8]) throws(PackedModelError) {
        let json: Data
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            json = try encoder.encode(header)
        } catch {
            throw .writeFailed(path: "<memory>", reason: "the header cannot be encoded as JSON: \(error)")
        }
        try Self.validate(header, payload: payload, version: Self.formatVersion, path: "<memory>")
        self.header = header
        self.payload = payload
        self.headerJSON = [UInt8](json)
    }

    private init(validatedHeader header: Header, headerJSON: [UInt8], payload: [UInt8]) {
        self.header = header
        self.headerJSON = headerJSON
        self.payload = payload
    }

    /// The quantization scheme the file encodes: its packed layers with their bits (in table order,
    /// which is the scheme's), the activation settings and the scale granularity.
    public var scheme: QuantizationScheme {
        QuantizationScheme(
            layers: header.tensors.compactMap { e in
                guard e.kind == .packed, let layer = e.layer, let bits = e.bits else { return nil }
                return .init(path: layer, bits: bits)
            },
            activationBits: header.activationBits, activationExcluded: header.activationExcluded,
            scaleGranularity: header.tensors.contains { $0.kind == .packed && $0.isPerChannel } ? .perChannel : .perTensor)
    }

    // MARK: Serialisation

    /// The complete file contents: magic, version, header length, header, payload, checksum.
    public func serialized() -> [UInt8] {
        var bytes = Self.magic
        bytes.reserveCapacity(Self.prefixBytes + headerJSON.count + payload.count + Self.checksumBytes)
        appendLE(Self.formatVersion, to: &bytes)
        appendLE(UInt64(headerJSON.count), to: &bytes)
        bytes += headerJSON
        bytes += payload
        appendLE(fnv1a64(bytes), to: &bytes)
        return bytes
    }

    /// Writes ``serialized()`` to `path` atomically: a crash leaves the old file or the new one.
    public func write(to path: String) throws(PackedModelError) {
        do {
            try writeAtomically(serialized(), to: path)
        } catch {
            if case let .writeFailed(_, reason) = error { throw .writeFailed(path: path, reason: reason) }
            throw .writeFailed(path: path, reason: error.description)
        }
    }

    /// Reads and verifies a packed model file (magic, version, checksum, header, every size).
    /// - Throws: ``PackedModelError`` naming the file and the problem; never traps on a bad file.
    public static func read(from path: String) throws(PackedModelError) -> PackedModel {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw .unreadable(path: path, reason: "no such file")
        }
        guard !isDirectory.boolValue, let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: isDirectory.boolValue ? "it is a directory" : "permission denied or not a regular file")
        }
        return try PackedModel(serialized: [UInt8](data), source: path)
    }

    /// Parses and verifies the bytes of a packed model file; `source` names it in errors.
    /// - Throws: ``PackedModelError`` (bad magic, a checkpoint, unsupported version, corrupt).
    public init(serialized bytes: [UInt8], source: String) throws(PackedModelError) {
        let path = source
        guard bytes.count >= Self.magic.count, Array(bytes[0..<Self.magic.count]) == Self.magic else {
            if bytes.count >= Checkpoint.magic.count, Array(bytes[0..<Checkpoint.magic.count]) == Checkpoint.magic {
                throw .checkpointGiven(path: path)
            }
            throw .notAPackedModel(path: path)
        }
        guard bytes.count >= Self.prefixBytes + Self.checksumBytes else {
            throw .corrupt(path: path, reason: "the file is only \(bytes.count) bytes (truncated)")
        }
        let version: UInt32 = readLE(bytes, at: Self.magic.count)
        guard Self.readableVersions.contains(version) else {
            throw .unsupportedVersion(path: path, found: version, supported: Self.formatVersion)
        }
        let body = bytes.count - Self.checksumBytes
        let stored: UInt64 = readLE(bytes, at: body)
        guard fnv1a64(bytes[0..<body]) == stored else {
            throw .corrupt(path: path, reason: "checksum mismatch (the file was truncated or modified)")
        }
        let declared: UInt64 = readLE(bytes, at: Self.magic.count + 4)
        guard declared <= UInt64(body - Self.prefixBytes) else {
            throw .corrupt(path: path, reason: "header length \(declared) exceeds the file")
        }
        let headerEnd = Self.prefixBytes + Int(declared)
        let headerJSON = Array(bytes[Self.prefixBytes..<headerEnd])
        let header: Header
        do {
            header = try JSONDecoder().decode(Header.self, from: Data(headerJSON))
        } catch {
            throw .corrupt(path: path, reason: "unreadable header JSON: \(error)")
        }
        let payload = Array(bytes[headerEnd..<body])
        try Self.validate(header, payload: payload, version: version, path: path)
        self.init(validatedHeader: header, headerJSON: headerJSON, payload: payload)
    }

    /// Checks that `header` is self-consistent and describes `payload` exactly: shapes, bits,
    /// scales (per-channel ones only from format `version` 2, all finite and ≥ 0, one granularity
    /// for all layers), lengths, contiguous offsets, packed-then-float order, unique names.
    static func validate(_ header: Header, payload: [UInt8], version: UInt32, path: String) throws(PackedModelError) {
        let payloadCount = payload.count
        func fail(_ reason: String) -> PackedModelError { .corrupt(path: path, reason: reason) }
        guard header.inputShape.count == 3, header.inputShape.allSatisfy({ $0 >= 1 }) else {
            throw fail("input shape \(header.inputShape) is not [C, H, W] with positive sizes")
        }
        guard header.numClasses >= 1 else { throw fail("class count \(header.numClasses) is not positive") }
        // The network is built from these before its shapes are compared with the table, so
        // they are bounded first: a class count of 2^40 would allocate the classifier and trap.
        guard header.numClasses <= Self.maxClasses, header.inputShape[0] <= Self.maxInputChannels else {
            throw fail("class count \(header.numClasses) or input channels \(header.inputShape[0]) above the supported \(Self.maxClasses) and \(Self.maxInputChannels)")
        }
        do {
            try header.normalization.validate(channels: header.inputShape[0])
        } catch {
            throw fail("bad normalisation: \(error)")
        }
        var names = Set<String>()
        var offset = 0
        var seenFloat = false
        var granularity: ScaleGranularity? = nil
        for e in header.tensors {
            guard names.insert(e.name).inserted else { throw fail("tensor \(e.name) is listed twice") }
            guard let count = e.elementCount else { throw fail("tensor \(e.name) has an invalid shape \(e.shape)") }
            let expected: Int?
            switch e.kind {
            case .packed:
                guard !seenFloat else { throw fail("packed tensor \(e.name) follows float tensors") }
                guard let bits = e.bits, bitPackRange.contains(bits) else {
                    throw fail("packed tensor \(e.name) has bits \(e.bits.map(String.init) ?? "missing"), expected 1...16")
                }
                guard let layer = e.layer, joinPath(layer, "weight") == e.name else {
                    throw fail("packed tensor \(e.name) does not name its layer (expected `<layer>.weight`)")
                }
                let entryGranularity = e.scaleGranularity ?? .perTensor
                guard granularity == nil || granularity == entryGranularity else {
                    throw fail("packed tensor \(e.name) has \(entryGranularity) scales, the tensors before it \(granularity!) ones (one granularity per model)")
                }
                granularity = entryGranularity
                let codeBytes = e.codeByteCount
                switch entryGranularity {
                case .perTensor:
                    guard let sb = e.scaleBits, Float(bitPattern: sb).isFinite, Float(bitPattern: sb) >= 0 else {
                        throw fail("packed tensor \(e.name) has no valid scale (scaleBits missing, negative or not finite)")
                    }
                    guard e.scaleCount == nil else { throw fail("per-tensor packed tensor \(e.name) has a scaleCount") }
                    expected = codeBytes
                case .perChannel:
                    guard version >= 2 else {
                        throw fail("packed tensor \(e.name) has per-channel scales, which format version \(version) does not have")
                    }
                    guard e.scaleBits == nil else { throw fail("per-channel packed tensor \(e.name) also has a per-tensor scale") }
                    let channels = ScaleGranularity.perChannel.groups(shape: e.shape).count
                    guard e.scaleCount == channels else {
                        throw fail("per-channel packed tensor \(e.name) of shape \(e.shape) needs \(channels) scales, the table says \(e.scaleCount.map(String.init) ?? "none")")
                    }
                    expected = codeBytes.flatMap { b in
                        let (bytes, overflow) = channels.multipliedReportingOverflow(by: 4)
                        return overflow ? nil : b.addingReportingOverflow(bytes).overflow ? nil : b + bytes
                    }
                }
            case .float32:
                seenFloat = true
                let (bytes, overflow) = count.multipliedReportingOverflow(by: 4)
                expected = overflow ? nil : bytes
            }
            guard let expected, e.length == expected else {
                throw fail("tensor \(e.name) of shape \(e.shape) should take \(expected.map(String.init) ?? "too many") bytes, the table says \(e.length)")
            }
            guard e.offset == offset else {
                throw fail("tensor \(e.name) starts at payload byte \(e.offset), expected \(offset) (tensors are contiguous)")
            }
            guard e.length <= payloadCount - offset else {
                throw fail("data of \(e.name) runs past the end of the file (truncated?)")
            }
            offset += e.length
        }
        guard offset == payloadCount else {
            throw fail("\(payloadCount - offset) unexpected bytes after the tensor data")
        }
        // A NaN batch-norm value once made `msq eval` print "test_loss -nan" with exit status 0.
        for e in header.tensors where e.kind == .float32 {
            if let i = (0..<(e.length / 4)).first(where: { !Float(bitPattern: readLE(payload, at: e.offset + 4 * $0)).isFinite }) {
                throw fail("float tensor \(e.name) holds a NaN or infinite value at element \(i)")
            }
        }
        for e in header.tensors where e.kind == .packed && e.isPerChannel {
            let scales = channelScales(of: e, in: payload)
            if let c = scales.firstIndex(where: { !($0.isFinite && $0 >= 0) }) {
                throw fail("per-channel packed tensor \(e.name) has scale \(scales[c]) for channel \(c) (negative or not finite)")
            }
        }
    }

    /// The float32 scales a validated per-channel packed entry stores after its codes.
    static func channelScales(of e: TensorEntry, in payload: [UInt8]) -> [Float] {
        let start = e.offset + (e.codeByteCount ?? 0)
        return (0..<(e.scaleCount ?? 0)).map { c in Float(bitPattern: readLE(payload, at: start + 4 * c)) }
    }

    // MARK: Sizes

    /// Byte counts of the file's parts and the figures `msq export` reports.
    public struct SizeBreakdown: Sendable, Equatable {
        /// Magic, version, header length and header JSON: 20 + H.
        public var headerBytes: Int
        /// Σ_l ceil(N_l · n_l / 8): the packed codes of all quantized layers.
        public var packedWeightBytes: Int
        /// 4 · Σ_l C_l: the float32 scales of the per-channel layers, stored in the payload after
        /// their codes (0 for a per-tensor model, whose scales are in the header).
        public var scaleBytes: Int
        /// 4 · Σ_f N_f: the float32 tensors (BN, biases, PACT α).
        public var floatBytes: Int
        /// The trailing checksum, 8.
        public var checksumBytes: Int
        /// The file size: header + packed + scales + float + checksum.
        public var totalBytes: Int
        /// Σ_l N_l · n_l / 8, the analytic size of the quantized weights (no per-layer byte rounding).
        public var analyticWeightBytes: Double
        /// The number of scales: one per per-tensor layer, C_l (output channels) per per-channel layer.
        public var scaleCount: Int
        /// The analytic size of the model: Σ_l N_l · n_l / 8 + 4 · (scales) + 4 · Σ_f N_f, i.e. what
        /// the network needs with no header, byte rounding or checksum.
        public var analyticModelBytes: Double
        /// Σ_l N_l, the number of quantized weights.
        public var quantizedWeightCount: Int
        /// Σ_f N_f, the number of values stored as float32.
        public var floatValueCount: Int
        /// 4 · (Σ_l N_l + Σ_f N_f): the same tensors all stored as float32, scales excluded.
        public var float32ModelBytes: Int
    }

    /// The size of each part of the file (equal to `serialized().count` in total).
    public var sizeBreakdown: SizeBreakdown {
        var packed = 0, scaleBytes = 0, floats = 0, quantizedCount = 0, floatCount = 0, scaleCount = 0
        var analyticBits = 0.0
        for e in header.tensors {
            // The table was validated, so element counts exist.
            let n = e.elementCount ?? 0
            switch e.kind {
            case .packed:
                let codes = e.codeByteCount ?? e.length
                packed += codes
                scaleBytes += e.length - codes
                scaleCount += e.isPerChannel ? (e.scaleCount ?? 0) : 1
                quantizedCount += n
                analyticBits += Double(n) * Double(e.bits ?? 0)
            case .float32:
                floats += e.length
                floatCount += n
            }
        }
        let headerBytes = Self.prefixBytes + headerJSON.count
        return SizeBreakdown(headerBytes: headerBytes, packedWeightBytes: packed, scaleBytes: scaleBytes,
                             floatBytes: floats, checksumBytes: Self.checksumBytes,
                             totalBytes: headerBytes + packed + scaleBytes + floats + Self.checksumBytes,
                             analyticWeightBytes: analyticBits / 8, scaleCount: scaleCount,
                             analyticModelBytes: analyticBits / 8 + Double(4 * scaleCount) + Double(4 * floatCount),
                             quantizedWeightCount: quantizedCount,
                             floatValueCount: floatCount, float32ModelBytes: 4 * (quantizedCount + floatCount))
    }
}

/// The product of `dims`, or nil when a dimension is negative or the product overflows.
func checkedProduct(_ dims: [Int]) -> Int? {
    var n = 1
    for d in dims {
        guard d >= 0 else { return nil }
        let (p, overflow) = n.multipliedReportingOverflow(by: d)
        if overflow { return nil }
        n = p
    }
    return n
}

/// Appends `value`'s little-endian bytes.
func appendLE<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
}

/// The little-endian integer at `offset` (the caller checks that the bytes exist).
private func readLE<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int) -> T {
    var v: T = 0
    for i in 0..<MemoryLayout<T>.size { v |= T(bytes[offset + i]) << (8 * i) }
    return v
}
