import Foundation

/// Why a checkpoint could not be written or read, in words a user can act on.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    /// The file does not exist or cannot be opened.
    case unreadable(path: String, reason: String)
    /// The file does not start with the checkpoint magic.
    case notACheckpoint(path: String)
    /// The file was written by a format version this build does not read.
    case unsupportedVersion(path: String, found: UInt32, supported: UInt32)
    /// The file is shorter than its header says or its checksum does not match.
    case corrupt(path: String, reason: String)
    /// The checkpoint belongs to another model or another run configuration.
    case mismatch(path: String, reason: String)
    /// Writing the file failed.
    case writeFailed(path: String, reason: String)
    /// A header field (or a tensor) holds a value no run could have written: `field` names it
    /// as the header's JSON does (`globalStep`, `tensors[3].shape`, `methodState.k[2]`).
    case invalidField(path: String, field: String, problem: String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "cannot read checkpoint \(path): \(reason)"
        case let .notACheckpoint(path): return "\(path) is not an MSQ checkpoint (bad magic number)"
        case let .unsupportedVersion(path, found, supported):
            return "checkpoint \(path) has format version \(found); this build reads version \(supported)"
        case let .corrupt(path, reason): return "checkpoint \(path) is corrupt: \(reason)"
        case let .mismatch(path, reason):
            return "checkpoint \(path) does not belong to this run: \(reason). Use another output directory, or the original settings."
        case let .writeFailed(path, reason): return "cannot write checkpoint \(path): \(reason)"
        case let .invalidField(path, field, problem): return "checkpoint \(path) is invalid: field \(field) \(problem)"
        }
    }
}

/// One named tensor in a checkpoint.
public struct CheckpointTensor: Codable, Sendable, Equatable {
    /// Path such as `layer1.0.conv1.weight` or `optimizer.momentum.fc.weight`.
    public var name: String
    /// Shape of the tensor.
    public var shape: [Int]

    /// Names a tensor of the given shape.
    public init(name: String, shape: [Int]) {
        self.name = name
        self.shape = shape
    }
}

/// A training checkpoint: a JSON header (run identity and progress), named float tensors, a checksum.
///
/// File layout (little-endian): magic `MSQCKPT\0` · UInt32 format version · UInt64 header length ·
/// header JSON · Float32 data of each tensor in header order · UInt64 FNV-1a hash of all preceding bytes.
/// Written atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves
/// either the old checkpoint or the new one, never a torn file.
public struct Checkpoint {
    /// Format version written by this build.
    public static let formatVersion: UInt32 = 1
    static let magic: [UInt8] = Array("MSQCKPT\0".utf8)

    /// Progress and identity, stored as JSON.
    public struct Header: Codable, Sendable, Equatable {
        /// Identity of the run: a checkpoint is only resumed by a run with the same fingerprint.
        public var runFingerprint: String
        /// Human-readable description of the fingerprint's fields, for error messages.
        public var runDescription: [String: String]
        /// Epochs completed when this checkpoint was written.
        public var epochsCompleted: Int
        /// Optimizer steps taken so far.
        public var globalStep: Int
        /// Wall-clock seconds spent training (excluding evaluation) so far, across resumes.
        public var trainSeconds: Double
        /// Images processed in training so far.
        public var trainImagesSeen: Int
        /// State of the trainer's random generator.
        public var rngState: [UInt64]
        /// Extra state of the training method (JSON), e.g. quantizer precisions.
        public var methodState: String
        /// The tensors that follow the header, in order.
        public var tensors: [CheckpointTensor]
        /// Updates the optimizer has applied, for one whose update depends on it (AdamW); nil
        /// (and absent from the JSON) for SGD, so SGD checkpoints are unchanged.
        public var optimizerSteps: Int?

        /// A header from all its fields.
        public init(runFingerprint: String, runDescription: [String: String], epochsCompleted: Int, globalStep: Int,
                    trainSeconds: Double, trainImagesSeen: Int, rngState: [UInt64], methodState: String,
                    tensors: [CheckpointTensor]) {
            self.runFingerprint = runFingerprint
            self.runDescription = runDescription
            self.epochsCompleted = epochsCompleted
            self.globalStep = globalStep
            self.trainSeconds = trainSeconds
            self.trainImagesSeen = trainImagesSeen
            self.rngState = rngState
            self.methodState = methodState
            self.tensors = tensors
        }
    }

    /// Progress and identity.
    public var header: Header
    /// Tensor data in header order.
    public var tensorData: [Tensor]

    /// A checkpoint from its parts; `tensorData` must match `header.tensors` in order and shape.
    public init(header: Header, tensorData: [Tensor]) {
        precondition(header.tensors.count == tensorData.count
                     && zip(header.tensors, tensorData).allSatisfy { $0.shape == $1.shape },
                     "Checkpoint: tensor list does not match header")
        self.header = header
        self.tensorData = tensorData
    }

    /// The tensor with `name`, if present.
    public func tensor(named name: String) -> Tensor? {
        header.tensors.firstIndex { $0.name == name }.map { tensorData[$0] }
    }

    /// FNV-1a hash over the model tensors' bytes (names excluded, optimizer state excluded):
    /// equal for two runs exactly when their weights and batch-norm statistics are bit-identical.
    public func weightsHash() -> UInt64 {
        var h = fnv1a64Offset
        for (entry, t) in zip(header.tensors, tensorData) where !entry.name.hasPrefix("optimizer.") {
            h = t.withUnsafePointer { fnv1a64(UnsafeRawBufferPointer(start: $0, count: 4 * t.count), continuing: h) }
        }
        return h
    }

    /// Serialises and writes atomically to `path`.
    public func write(to path: String) throws(CheckpointError) {
        var bytes = Checkpoint.magic
        withUnsafeBytes(of: Checkpoint.formatVersion.littleEndian) { bytes += $0 }
        let json: Data
        do {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            json = try enc.encode(header)
        } catch {
            throw .writeFailed(path: path, reason: "header encoding failed: \(error)")
        }
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { bytes += $0 }
        bytes += json
        bytes.reserveCapacity(bytes.count + tensorData.reduce(0) { $0 + 4 * $1.count } + 8)
        for t in tensorData {
            t.withUnsafePointer { p in
                UnsafeRawBufferPointer(start: p, count: 4 * t.count).withMemoryRebound(to: UInt8.self) { bytes += $0 }
            }
        }
        let hash = fnv1a64(bytes)
        withUnsafeBytes(of: hash.littleEndian) { bytes += $0 }
        try writeAtomically(bytes, to: path)
    }

    /// Reads and verifies a checkpoint: magic, version, checksum, then every field before it is
    /// used (header length, counters, RNG state, each tensor's shape and element count against
    /// the bytes present, every value finite).
    ///
    /// The checksum only guards against accidents; a file written by another program can carry
    /// a valid checksum around any field, so a bad field is reported by name, never trapped on.
    public static func read(from path: String) throws(CheckpointError) -> Checkpoint {
        if FileBytes.isDirectory(path) {
            throw .unreadable(path: path, reason: "it is a directory, not a checkpoint file")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: FileManager.default.fileExists(atPath: path)
                              ? "permission denied or not a regular file" : "no such file")
        }
        return try Checkpoint(serialized: [UInt8](data), path: path)
    }

    /// Parses and verifies the bytes of a checkpoint file; `path` names it in errors.
    public init(serialized bytes: [UInt8], path: String) throws(CheckpointError) {
        let magic = Checkpoint.magic
        guard bytes.count >= magic.count, Array(bytes[0..<magic.count]) == magic else { throw .notACheckpoint(path: path) }
        guard bytes.count >= magic.count + 4 + 8 + 8 else {
            throw .corrupt(path: path, reason: "file is only \(bytes.count) bytes")
        }
        let version = readLE(UInt32.self, bytes, at: magic.count)
        guard version == Checkpoint.formatVersion else {
            throw .unsupportedVersion(path: path, found: version, supported: Checkpoint.formatVersion)
        }
        let body = bytes.count - 8
        let stored = readLE(UInt64.self, bytes, at: body)
        guard fnv1a64(bytes[0..<body]) == stored else {
            throw .corrupt(path: path, reason: "checksum mismatch (the file was truncated or modified)")
        }
        let headerStart = magic.count + 12
        // Compared as UInt64: a length of 2^63 or more does not fit an Int.
        let declared = readLE(UInt64.self, bytes, at: magic.count + 4)
        guard declared <= UInt64(body - headerStart) else {
            throw .invalidField(path: path, field: "header length", problem: "is \(declared) bytes, but only \(body - headerStart) follow it")
        }
        let headerEnd = headerStart + Int(declared)
        let header: Header
        do {
            header = try JSONDecoder().decode(Header.self, from: Data(bytes[headerStart..<headerEnd]))
        } catch {
            throw .corrupt(path: path, reason: "unreadable header: \(error)")
        }
        try Checkpoint.validateCounters(header, path: path)
        var offset = headerEnd
        var tensors: [Tensor] = []
        tensors.reserveCapacity(header.tensors.count)
        for (i, entry) in header.tensors.enumerated() {
            guard let count = checkedProduct(entry.shape) else {
                throw .invalidField(path: path, field: "tensors[\(i)].shape", problem: "of \(entry.name) is \(entry.shape): a negative dimension or more elements than any file holds")
            }
            // Divided rather than multiplied: 4·count can overflow, the remaining bytes cannot.
            guard count <= (body - offset) / 4 else {
                throw .invalidField(path: path, field: "tensors[\(i)].shape", problem: "of \(entry.name) is \(entry.shape) (\(count) floats), but only \(body - offset) bytes of data remain")
            }
            var t = Tensor(shape: entry.shape)
            let finite = t.withUnsafeMutablePointer { p -> Bool in
                bytes.withUnsafeBytes { raw in
                    guard let base = raw.baseAddress, count > 0 else { return true }
                    UnsafeMutableRawPointer(p).copyMemory(from: base + offset, byteCount: 4 * count)
                    return !(0..<count).contains { !p[$0].isFinite }
                }
            }
            // A NaN weight once resumed with exit status 0 and trained to garbage.
            guard finite else {
                throw .invalidField(path: path, field: "tensors[\(i)]", problem: "(\(entry.name)) holds a NaN or infinite value")
            }
            tensors.append(t)
            offset += 4 * count
        }
        guard offset == body else {
            throw .corrupt(path: path, reason: "\(body - offset) unexpected bytes after the tensor data")
        }
        self.init(header: header, tensorData: tensors)
    }

    /// The header's counters and RNG state in the ranges a run can produce (the plan-relative
    /// checks, e.g. `globalStep` against the run's steps, are the ``Trainer``'s on resume).
    static func validateCounters(_ h: Header, path: String) throws(CheckpointError) {
        func bad(_ field: String, _ problem: String) -> CheckpointError { .invalidField(path: path, field: field, problem: problem) }
        let limit = RunLimits.maxTotalSteps
        if !(0...limit).contains(h.epochsCompleted) { throw bad("epochsCompleted", "is \(h.epochsCompleted), outside 0...\(limit)") }
        if !(0...limit).contains(h.globalStep) { throw bad("globalStep", "is \(h.globalStep), outside 0...\(limit)") }
        if let n = h.optimizerSteps, !(0...limit).contains(n) { throw bad("optimizerSteps", "is \(n), outside 0...\(limit)") }
        if h.trainImagesSeen < 0 { throw bad("trainImagesSeen", "is negative (\(h.trainImagesSeen))") }
        if !(h.trainSeconds >= 0) || !h.trainSeconds.isFinite { throw bad("trainSeconds", "is \(h.trainSeconds), not a finite number ≥ 0") }
        if h.rngState.count != 4 { throw bad("rngState", "has \(h.rngState.count) words, expected 4") }
        // xoshiro256's one fixed point: from an all-zero state it returns zeros forever.
        if h.rngState.allSatisfy({ $0 == 0 }) { throw bad("rngState", "is all zeros, which no generator state can be") }
    }
}

/// FNV-1a's 64-bit offset basis: the state of a fresh hash.
let fnv1a64Offset: UInt64 = 0xcbf2_9ce4_8422_2325

/// FNV-1a, 64-bit, over `bytes`, continuing from `h`: cheap, dependency-free, and enough to
/// detect truncation and bit rot.
func fnv1a64<C: Collection>(_ bytes: C, continuing h: UInt64 = fnv1a64Offset) -> UInt64 where C.Element == UInt8 {
    var h = h
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}

private func readLE<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], at offset: Int) -> T {
    var v: T = 0
    for i in 0..<MemoryLayout<T>.size { v |= T(bytes[offset + i]) << (8 * i) }
    return v
}

/// Writes `bytes` to `path` so that readers see either the old file or the complete new one.
func writeAtomically(_ bytes: [UInt8], to path: String) throws(CheckpointError) {
    if let reason = atomicWrite(bytes, to: path) { throw .writeFailed(path: path, reason: reason) }
}

/// Writes `bytes` to `path` through `path.tmp-PID`, fsync and rename (then fsyncs the directory,
/// so the rename itself is durable); nil on success, else the system's reason. A crash leaves the
/// old file or the new one, never a torn file (and at worst the temporary file, which the
/// ``Trainer`` removes at its next start).
func atomicWrite(_ bytes: [UInt8], to path: String) -> String? {
    let tmp = path + ".tmp-\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { return String(cString: strerror(errno)) }
    var problem = writeAll(fd, bytes)
    if problem == nil, fsync(fd) != 0 { problem = String(cString: strerror(errno)) }
    close(fd)
    if let problem {
        unlink(tmp)
        return problem
    }
    guard rename(tmp, path) == 0 else {
        let err = String(cString: strerror(errno))
        unlink(tmp)
        return err
    }
    let dir = (path as NSString).deletingLastPathComponent
    let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY)
    if dfd >= 0 { fsync(dfd); close(dfd) }
    return nil
}
