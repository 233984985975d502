import Foundation
import MSQ
import Testing

// MARK: - Helpers

private func temporaryDirectory() throws -> String {
    let dir = NSTemporaryDirectory() + "msq-packed-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

private func fileBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

private func writeBytes(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Bytes before the header JSON in a `.msqmodel` file: magic (8), version (4), header length (8).
private let filePrefixBytes = 20
/// Bytes of the trailing FNV-1a checksum.
private let fileChecksumBytes = 8
/// Images per forward in the logit comparisons: small, so the debug-build tests stay fast.
private let testBatch = 3
/// Mixed precisions assigned to the quantized layers in turn (sign included).
private let mixedBits = [2, 3, 5, 8]

/// A random batch `[n, c, h, w]` with values in a normalised-image range.
private func randomBatch(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = RandomSource(seed: seed)
    return Tensor.randomNormal(shape, std: 1, using: &rng)
}

/// The IEEE-754 bits of every element: "bit for bit" means these are equal (unlike `==` on
/// floats, which equates +0 and −0 and never equates NaNs).
private func bitsOf(_ t: Tensor) -> [UInt32] { t.scalars.map(\.bitPattern) }

/// `bytes` (a serialised `.msqmodel`) with its version field set to `version` and the FNV-1a-64
/// checksum recomputed, as a writer of that version would have finished it.
private func withVersion(_ version: UInt32, _ bytes: [UInt8]) -> [UInt8] {
    var out = Array(bytes.dropLast(fileChecksumBytes))
    for i in 0..<4 { out[8 + i] = UInt8(truncatingIfNeeded: version >> (8 * i)) }
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in out { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
    for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: h >> (8 * i))) }
    return out
}

/// A trained-looking quantized ResNet-20 for Fashion-MNIST and the checkpoint `Trainer` would
/// write for it: mixed per-layer bits (2, 3, 5, 8 in turn), the last conv/linear layer left float,
/// a few SGD steps in train mode so the weights, BN statistics (and PACT α) have left their
/// initial values, then `model + optimizer.momentum.*` tensors and a method state `{"scheme": …}`.
private func trainedQuantizedModel(activationBits: Int? = nil, seed: UInt64 = 1,
                                   scaleGranularity: ScaleGranularity = .perTensor) throws
    -> (model: any Module, layers: [QuantizedLayer], scheme: QuantizationScheme, checkpoint: Checkpoint) {
    let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: seed)
    let paths = quantizableLayers(of: model).map(\.path)
    let quantizedPaths = paths.dropLast()  // one float conv/linear layer stays float
    let scheme = QuantizationScheme(
        layers: quantizedPaths.enumerated().map { .init(path: $1, bits: mixedBits[$0 % mixedBits.count]) },
        activationBits: activationBits, activationExcluded: activationBits == nil ? [] : [paths[0]],
        scaleGranularity: scaleGranularity)
    let layers = try scheme.apply(to: model)

    let optimizer = SGD(model: model, momentum: 0.9, weightDecay: 5e-4, nesterov: true)
    let loss = SoftmaxCrossEntropy()
    for step in 0..<2 {
        model.zeroGradients()
        let x = randomBatch([4, 1, 28, 28], seed: 100 + UInt64(step))
        let logits = model.forward(x, mode: .train)
        _ = try loss.forward(logits: logits, labels: [0, 3, 7, 9])
        _ = model.backward(loss.backward())
        optimizer.step(learningRate: 0.1)
    }

    var entries: [CheckpointTensor] = [], data: [Tensor] = []
    for (name, p) in model.namedParameters() {
        entries.append(CheckpointTensor(name: name, shape: p.value.shape))
        data.append(p.value)
    }
    for (i, (name, _)) in optimizer.parameters.enumerated() {
        entries.append(CheckpointTensor(name: "optimizer.momentum." + name, shape: optimizer.momentumBuffers[i].shape))
        data.append(optimizer.momentumBuffers[i])
    }
    let schemeJSON = String(decoding: try JSONEncoder().encode(scheme), as: UTF8.self)
    let header = Checkpoint.Header(
        runFingerprint: "test", runDescription: ["model": "resnet20", "dataset": "fashion-mnist", "seed": String(seed)],
        epochsCompleted: 1, globalStep: 2, trainSeconds: 0, trainImagesSeen: 8, rngState: [1, 2, 3, 4],
        methodState: "{\"scheme\": \(schemeJSON)}", tensors: entries)
    return (model, layers, scheme, Checkpoint(header: header, tensorData: data))
}

// MARK: - Bit packing

@Suite("Packed model") struct PackedModelTests {
    @Test("bit packing round-trips every width 1…16 at odd lengths, in ceil(N·n/8) bytes", arguments: Array(1...16))
    func bitPackRoundTrip(bits: Int) throws {
        var rng = RandomSource(seed: UInt64(bits))
        let low = -(1 << (bits - 1)), high = (1 << (bits - 1)) - 1
        for length in [0, 1, 3, 7, 13, 101] {
            // Both extremes first, so sign extension of the most negative code is always exercised.
            var codes: [Int32] = [Int32(low), Int32(high)].prefix(length).map { $0 }
            while codes.count < length {
                let u = Int(rng.next() % UInt64(high - low + 1))
                codes.append(Int32(low + u))
            }
            let packed = try bitPack(codes: codes, bits: bits)
            #expect(packed.count == (length * bits + 7) / 8)
            #expect(packed.count == packedByteCount(count: length, bits: bits))
            #expect(try bitUnpack(packed, count: length, bits: bits) == codes)
        }
    }

    @Test("bit packing follows the documented LSB-first layout and sign-extends on unpack")
    func bitPackLayout() throws {
        #expect(try bitPack(codes: [-1, 2, -4], bits: 3) == [0x17, 0x01])
        #expect(try bitUnpack([0x17, 0x01], count: 3, bits: 3) == [-1, 2, -4])
        // All-ones fields are −1 at every width.
        for bits in 2...16 {
            #expect(try bitUnpack([UInt8](repeating: 0xFF, count: bits), count: 8, bits: bits)
                    == [Int32](repeating: -1, count: 8))
        }
        // 16-bit codes are plain little-endian Int16s.
        #expect(try bitPack(codes: [-2, 0x1234], bits: 16) == [0xFE, 0xFF, 0x34, 0x12])
    }

    @Test("out-of-range codes, bad widths, wrong lengths and set padding bits are refused")
    func bitPackRejects() throws {
        for bits in 2...16 {
            let high = Int32((1 << (bits - 1)) - 1)
            #expect(throws: PackedModelError.codeOutOfRange(index: 1, code: Int(high) + 1, bits: bits)) {
                try bitPack(codes: [0, high + 1], bits: bits)
            }
            #expect(throws: PackedModelError.codeOutOfRange(index: 0, code: -Int(high) - 2, bits: bits)) {
                try bitPack(codes: [-high - 2], bits: bits)
            }
        }
        #expect(throws: PackedModelError.invalidBits(0)) { try bitPack(codes: [0], bits: 0) }
        #expect(throws: PackedModelError.invalidBits(17)) { try bitPack(codes: [0], bits: 17) }
        #expect(throws: PackedModelError.packedLengthMismatch(expected: 2, actual: 1)) {
            try bitUnpack([0x17], count: 3, bits: 3)
        }
        #expect(throws: PackedModelError.nonzeroPadding) { try bitUnpack([0x17, 0x81], count: 3, bits: 3) }
    }

    // MARK: - Export and deployment

    @Test("the packed model's logits equal the training model's eval logits bit for bit (mixed 2/3/5/8 bits; per-tensor and per-channel scales)",
          arguments: [nil, 4] as [Int?], ScaleGranularity.allCases)
    func logitsBitIdentical(activationBits: Int?, scaleGranularity: ScaleGranularity) throws {
        let (model, layers, scheme, checkpoint) = try trainedQuantizedModel(activationBits: activationBits,
                                                                            scaleGranularity: scaleGranularity)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/m.msqmodel"
        try PackedModel.export(checkpoint: checkpoint).write(to: path)
        let packed = try PackedModel.read(from: path)
        #expect(packed.scheme == scheme)
        #expect(packed.scheme.scaleGranularity == scaleGranularity)
        #expect(packed.header.tensors.filter { $0.kind == .packed }.allSatisfy {
            scaleGranularity == .perChannel
                ? $0.scaleGranularity == .perChannel && $0.scaleCount == $0.shape[0] && $0.scaleBits == nil
                : $0.scaleGranularity == nil && $0.scaleCount == nil && $0.scaleBits != nil
        })
        // With activation quantization the PACT clip levels travel as float32 tensors.
        let alphas = packed.header.tensors.filter { $0.name.hasSuffix(".input_alpha") }
        #expect(alphas.isEmpty == (activationBits == nil))
        #expect(alphas.allSatisfy { $0.kind == .float32 })

        // Per layer: the stored codes are RoundClamp's, and the decoded weight is its forward output.
        for layer in layers {
            let name = layer.path + ".weight"
            let latent = layer.parameter.value
            let (scales, codes) = layer.quantizer.codes(of: latent)
            let stored = try packed.codes(named: name)
            #expect(stored.bits == layer.bits)
            #expect(stored.scales.map(\.bitPattern) == scales.map(\.bitPattern))
            #expect(stored.scales.count == (scaleGranularity == .perChannel ? latent.shape[0] : 1))
            #expect(stored.codes == codes)
            #expect(bitsOf(try packed.tensor(named: name)) == bitsOf(layer.quantizer.forward(latent)))
        }

        let deployed = try packed.makeModule()
        // The deployed model holds no latent weights: its quantized layers compute with W' directly.
        let deployedWeights = Dictionary(uniqueKeysWithValues: deployed.namedParameters().map { ($0.name, $0.parameter) })
        for layer in layers {
            #expect(deployedWeights[layer.path + ".weight"].map { bitsOf($0.value) } == bitsOf(layer.quantizer.forward(layer.parameter.value)))
        }
        for seed in [UInt64(7), 8] {
            let x = randomBatch([testBatch, 1, 28, 28], seed: seed)
            let expected = model.forward(x, mode: .eval)
            let actual = deployed.forward(x, mode: .eval)
            #expect(actual.shape == [testBatch, 10])
            #expect(bitsOf(actual) == bitsOf(expected))
        }
    }

    @Test("file size = (20 + header JSON) + Σ (ceil(N_l·n_l/8) + 4·C_l) + 4·(float values) + 8, as documented",
          arguments: ScaleGranularity.allCases)
    func fileSize(scaleGranularity: ScaleGranularity) throws {
        let (model, layers, _, checkpoint) = try trainedQuantizedModel(scaleGranularity: scaleGranularity)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/m.msqmodel"
        let packed = try PackedModel.export(checkpoint: checkpoint)
        try packed.write(to: path)
        let bytes = try fileBytes(path)

        var headerLength = 0
        for i in 0..<8 { headerLength |= Int(bytes[12 + i]) << (8 * i) }
        let quantizedNames = Set(layers.map { $0.path + ".weight" })
        let packedBytes = layers.reduce(0) { $0 + ($1.count * $1.bits + 7) / 8 }
        // Per channel: one float32 scale per output channel in the payload (per tensor: in the header).
        let channelScales = scaleGranularity == .perChannel ? layers.reduce(0) { $0 + $1.parameter.value.shape[0] } : 0
        let floatValues = model.namedParameters().filter { !quantizedNames.contains($0.name) }
            .reduce(0) { $0 + $1.parameter.value.count }
        #expect(bytes.count == filePrefixBytes + headerLength + packedBytes + 4 * channelScales + 4 * floatValues + fileChecksumBytes)

        let size = packed.sizeBreakdown
        #expect(size.totalBytes == bytes.count)
        #expect(size.headerBytes == filePrefixBytes + headerLength)
        #expect(size.packedWeightBytes == packedBytes)
        #expect(size.scaleBytes == 4 * channelScales)
        #expect(size.scaleCount == (scaleGranularity == .perChannel ? channelScales : layers.count))
        #expect(size.floatBytes == 4 * floatValues)
        #expect(size.checksumBytes == fileChecksumBytes)
        #expect(size.quantizedWeightCount == layers.reduce(0) { $0 + $1.count })
        #expect(size.analyticWeightBytes == Double(layers.reduce(0) { $0 + $1.count * $1.bits }) / 8)
        #expect(size.analyticModelBytes == size.analyticWeightBytes + Double(4 * size.scaleCount + 4 * floatValues))
        #expect(size.float32ModelBytes == 4 * model.namedParameters().reduce(0) { $0 + $1.parameter.value.count })
        // The optimizer state is not deployed.
        #expect(!packed.header.tensors.contains { $0.name.hasPrefix("optimizer.") })
    }

    @Test("write then read gives back the same header and payload, and rewrites byte for byte")
    func fileRoundTrip() throws {
        let (_, _, _, checkpoint) = try trainedQuantizedModel()
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let packed = try PackedModel.export(checkpoint: checkpoint)
        try packed.write(to: dir + "/a.msqmodel")
        let back = try PackedModel.read(from: dir + "/a.msqmodel")
        #expect(back.header == packed.header)
        #expect(back.payload == packed.payload)
        try back.write(to: dir + "/b.msqmodel")
        #expect(try fileBytes(dir + "/a.msqmodel") == fileBytes(dir + "/b.msqmodel"))
        // The atomic write leaves no temporary file behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["a.msqmodel", "b.msqmodel"])
        // Float tensors keep their exact bits.
        let bn = try #require(checkpoint.tensor(named: "bn1.running_var"))
        #expect(bitsOf(try back.tensor(named: "bn1.running_var")) == bitsOf(bn))
    }

    @Test("a flipped byte, a truncated file, a foreign file, a checkpoint and a future version are refused")
    func corruptFiles() throws {
        let (_, _, _, checkpoint) = try trainedQuantizedModel()
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/m.msqmodel"
        try PackedModel.export(checkpoint: checkpoint).write(to: path)
        let bytes = try fileBytes(path)

        for position in [30, bytes.count / 2, bytes.count - 9] {
            var flipped = bytes
            flipped[position] ^= 0x10
            try writeBytes(flipped, to: dir + "/flipped")
            #expect(throws: PackedModelError.corrupt(path: dir + "/flipped",
                                                     reason: "checksum mismatch (the file was truncated or modified)")) {
                try PackedModel.read(from: dir + "/flipped")
            }
        }

        for keep in [bytes.count - 1, bytes.count / 2, 25, 10] {
            try writeBytes(Array(bytes.prefix(keep)), to: dir + "/short")
            #expect(throws: PackedModelError.self) { try PackedModel.read(from: dir + "/short") }
        }

        var foreign = bytes
        foreign[0] = UInt8(ascii: "X")
        try writeBytes(foreign, to: dir + "/foreign")
        #expect(throws: PackedModelError.notAPackedModel(path: dir + "/foreign")) {
            try PackedModel.read(from: dir + "/foreign")
        }
        try writeBytes([], to: dir + "/empty")
        #expect(throws: PackedModelError.notAPackedModel(path: dir + "/empty")) {
            try PackedModel.read(from: dir + "/empty")
        }

        try checkpoint.write(to: dir + "/c.msqckpt")
        #expect(throws: PackedModelError.checkpointGiven(path: dir + "/c.msqckpt")) {
            try PackedModel.read(from: dir + "/c.msqckpt")
        }

        var future = bytes
        future[8] = 99
        try writeBytes(future, to: dir + "/future")
        #expect(throws: PackedModelError.unsupportedVersion(path: dir + "/future", found: 99, supported: PackedModel.formatVersion)) {
            try PackedModel.read(from: dir + "/future")
        }

        #expect(throws: PackedModelError.unreadable(path: dir + "/missing", reason: "no such file")) {
            try PackedModel.read(from: dir + "/missing")
        }
    }

    @Test("a header that contradicts the payload is refused even when the checksum matches")
    func inconsistentHeader() throws {
        let (_, _, _, checkpoint) = try trainedQuantizedModel()
        let packed = try PackedModel.export(checkpoint: checkpoint)
        var header = packed.header
        header.tensors[0].bits = (header.tensors[0].bits ?? 2) + 1
        #expect(throws: PackedModelError.self) { try PackedModel(header: header, payload: packed.payload) }
        #expect(throws: PackedModelError.self) { try PackedModel(header: packed.header, payload: packed.payload.dropLast(1)) }
        var swapped = packed.header
        swapped.tensors.swapAt(0, swapped.tensors.count - 1)
        #expect(throws: PackedModelError.self) { try PackedModel(header: swapped, payload: packed.payload) }
    }

    @Test("a float checkpoint (no scheme) is refused with the reason")
    func floatCheckpointRefused() throws {
        let (_, _, _, checkpoint) = try trainedQuantizedModel()
        var header = checkpoint.header
        header.methodState = "{}"
        let float = Checkpoint(header: header, tensorData: checkpoint.tensorData)
        #expect(throws: PackedModelError.notQuantized(.noScheme)) { try PackedModel.export(checkpoint: float) }
        do {
            _ = try PackedModel.export(checkpoint: float)
        } catch {
            #expect(error.description.contains("--method msq"))
        }
    }

    @Test("a checkpoint of another network is refused, not trapped on")
    func mismatchedCheckpointRefused() throws {
        let (_, _, _, checkpoint) = try trainedQuantizedModel()
        var header = checkpoint.header
        header.runDescription["dataset"] = "cifar10"  // 3 input channels: conv1 no longer fits
        let other = Checkpoint(header: header, tensorData: checkpoint.tensorData)
        #expect(throws: PackedModelError.self) { try PackedModel.export(checkpoint: other) }
        header.runDescription["model"] = "resnet999"
        let unknown = Checkpoint(header: header, tensorData: checkpoint.tensorData)
        #expect(throws: PackedModelError.self) { try PackedModel.export(checkpoint: unknown) }
    }

    @Test("evaluation data of another image shape or class count is refused before any forward")
    func incompatibleData() throws {
        let (_, _, _, checkpoint) = try trainedQuantizedModel()
        let packed = try PackedModel.export(checkpoint: checkpoint)
        #expect(packed.header.inputShape == [1, 28, 28])
        #expect(throws: PackedModelError.self) {
            try packed.checkCompatible(with: SyntheticDataset(count: 2, sampleShape: [3, 32, 32]))
        }
        #expect(throws: PackedModelError.self) {
            try packed.checkCompatible(with: SyntheticDataset(count: 2, sampleShape: [1, 28, 28], numClasses: 5))
        }
        try packed.checkCompatible(with: SyntheticDataset(count: 2, sampleShape: [1, 28, 28], numClasses: 10))
    }

    @Test("a version-1 file (per-tensor scales) still loads and runs; per-channel entries in a version-1 file are refused")
    func version1Files() throws {
        let (model, _, scheme, checkpoint) = try trainedQuantizedModel()
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let packed = try PackedModel.export(checkpoint: checkpoint)
        #expect(PackedModel.formatVersion == 2)
        #expect(PackedModel.readableVersions == 1...2)
        // A per-tensor model is stored as version 1 stored it but for the version field: the same
        // header JSON and payload. Rewriting the version (and the checksum) gives the v1 file.
        let v2 = packed.serialized()
        #expect(Array(v2[8..<12]) == [2, 0, 0, 0])
        let v1 = withVersion(1, v2)
        try writeBytes(v1, to: dir + "/v1.msqmodel")
        let old = try PackedModel.read(from: dir + "/v1.msqmodel")
        #expect(old.header == packed.header)
        #expect(old.payload == packed.payload)
        #expect(old.scheme == scheme)
        let deployed = try old.makeModule()
        let x = randomBatch([testBatch, 1, 28, 28], seed: 9)
        #expect(bitsOf(deployed.forward(x, mode: .eval)) == bitsOf(model.forward(x, mode: .eval)))

        // A per-channel table under version 1 is refused as corrupt, naming the version.
        let perChannel = try PackedModel.export(checkpoint: trainedQuantizedModel(scaleGranularity: .perChannel).checkpoint)
        try writeBytes(withVersion(1, perChannel.serialized()), to: dir + "/v1pc.msqmodel")
        #expect {
            try PackedModel.read(from: dir + "/v1pc.msqmodel")
        } throws: { error in
            guard case let .corrupt(_, reason)? = error as? PackedModelError else { return false }
            return reason.contains("per-channel") && reason.contains("version 1")
        }
        // The message for a future version says which versions this build reads.
        let future = PackedModelError.unsupportedVersion(path: "m", found: 3, supported: PackedModel.formatVersion)
        #expect(future.description.contains("1 to 2"))
    }

    @Test("per-channel tables that contradict the payload are refused: scale count, a stray per-tensor scale, a negative or NaN channel scale, mixed granularities")
    func perChannelInconsistencies() throws {
        let (_, _, _, checkpoint) = try trainedQuantizedModel(scaleGranularity: .perChannel)
        let packed = try PackedModel.export(checkpoint: checkpoint)
        var header = packed.header
        header.tensors[0].scaleCount = (header.tensors[0].scaleCount ?? 0) + 1
        #expect(throws: PackedModelError.self) { try PackedModel(header: header, payload: packed.payload) }
        header = packed.header
        header.tensors[1].scaleBits = Float(1).bitPattern
        #expect(throws: PackedModelError.self) { try PackedModel(header: header, payload: packed.payload) }
        header = packed.header
        header.tensors[1].scaleGranularity = nil
        header.tensors[1].scaleCount = nil
        header.tensors[1].scaleBits = Float(1).bitPattern
        #expect {
            try PackedModel(header: header, payload: packed.payload)
        } throws: { error in
            guard case let .corrupt(_, reason)? = error as? PackedModelError else { return false }
            return reason.contains("one granularity per model")
        }
        // The first layer's first channel scale sits right after its codes.
        let e = packed.header.tensors[0]
        let at = e.offset + ((e.elementCount ?? 0) * (e.bits ?? 0) + 7) / 8
        for bad in [Float(-1), .nan, .infinity] {
            var payload = packed.payload
            withUnsafeBytes(of: bad.bitPattern.littleEndian) { for (i, b) in $0.enumerated() { payload[at + i] = b } }
            #expect(throws: PackedModelError.self) { try PackedModel(header: packed.header, payload: payload) }
        }
        // The scale read back is the first channel's scale of the export.
        #expect(try packed.codes(named: e.name).scales.first == Float(bitPattern: UInt32(packed.payload[at])
            | UInt32(packed.payload[at + 1]) << 8 | UInt32(packed.payload[at + 2]) << 16 | UInt32(packed.payload[at + 3]) << 24))
    }

    @Test("RoundClamp applied again to the decoded weight W' need not give W' back, so deployment must not requantize")
    func requantizingDecodedWeightsDiffers() {
        // s = 1, n = 2: codes [1, 1, 0] → W' = [0.5, 0.5, 0]; then max|W'| = 0.5 ≠ s, and RoundClamp
        // of W' gives [0.25, 0.25, 0].
        let quantizer = RoundClampQuantizer(bits: 2)
        let w = Tensor(shape: [3], scalars: [1.0, 0.3, -0.2])
        let decoded = quantizer.forward(w)
        #expect(decoded.scalars == [0.5, 0.5, 0])
        #expect(quantizer.forward(decoded).scalars == [0.25, 0.25, 0])
    }
}
