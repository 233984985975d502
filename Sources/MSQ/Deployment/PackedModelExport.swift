import Foundation

extension PackedModel {
    /// Packs the model of an MSQ training checkpoint: each quantized layer becomes (s, j_n[]) from
    /// ``RoundClampQuantizer/codes(of:)`` on its latent weight (one s per output channel when the
    /// scheme's ``QuantizationScheme/scaleGranularity`` is per channel), every other model tensor is kept as
    /// float32, and the optimizer state (`optimizer.*`) is dropped.
    ///
    /// The network is identified by the checkpoint's `runDescription` (`model`, `dataset`); the
    /// dataset's input shape, class count and normalisation come from ``DatasetCatalog/info(name:)``.
    /// The quantization scheme comes from the method state (``QuantizationScheme/decode(fromMethodState:)``).
    ///
    /// - Throws: ``PackedModelError/notQuantized(_:)`` for a checkpoint without a scheme (a float run);
    ///   ``PackedModelError/checkpointMismatch(reason:)`` when the run description is incomplete or
    ///   unknown, or the checkpoint's tensors do not match the network the scheme describes, or a
    ///   quantized weight is not finite.
    public static func export(checkpoint: Checkpoint) throws(PackedModelError) -> PackedModel {
        let h = checkpoint.header
        let scheme: QuantizationScheme
        do {
            scheme = try QuantizationScheme.decode(fromMethodState: h.methodState)
        } catch let error as QuantizationError {
            throw .notQuantized(error)
        } catch {
            throw .notQuantized(.noScheme)
        }
        guard let modelName = h.runDescription["model"], let datasetName = h.runDescription["dataset"] else {
            throw .checkpointMismatch(reason: "the checkpoint's run description has no model or dataset entry")
        }
        let kind: ModelKind
        let data: DatasetInfo
        do {
            kind = try ModelKind(name: modelName)
        } catch {
            throw .checkpointMismatch(reason: "\(error)")
        }
        do {
            data = try DatasetCatalog.info(name: datasetName)
        } catch {
            throw .checkpointMismatch(reason: "\(error)")
        }

        // The network the checkpoint was trained as: its parameter list (incl. PACT α when the
        // scheme quantizes activations) is exactly what the file must store, in a stable order.
        let model = makeModel(kind, inputChannels: data.sampleShape[0], numClasses: data.numClasses, seed: 0)
        let quantized: [QuantizedLayer]
        do {
            quantized = try scheme.apply(to: model)
        } catch let error as QuantizationError {
            throw .notQuantized(error)
        } catch {
            throw .checkpointMismatch(reason: "the checkpoint's quantization scheme does not fit \(modelName): \(error)")
        }
        let layerOf = Dictionary(uniqueKeysWithValues: quantized.map { (ObjectIdentifier($0.parameter), $0) })

        var packedEntries: [TensorEntry] = [], packedBytes: [UInt8] = []
        var floatNames: [(name: String, value: Tensor)] = []
        var codesByLayer: [String: (entry: TensorEntry, bytes: [UInt8])] = [:]
        var used = Set<String>()
        for (name, parameter) in model.namedParameters() {
            guard let value = checkpoint.tensor(named: name) else {
                throw .checkpointMismatch(reason: "the checkpoint has no tensor \(name), which \(modelName) with this scheme needs")
            }
            guard value.shape == parameter.value.shape else {
                throw .checkpointMismatch(reason: "\(name) has shape \(value.shape) in the checkpoint, \(modelName) expects \(parameter.value.shape)")
            }
            used.insert(name)
            guard let layer = layerOf[ObjectIdentifier(parameter)] else {
                floatNames.append((name, value))
                continue
            }
            let (scales, codes) = layer.quantizer.codes(of: value)
            // NaN weights are ignored by max|W| but give code 0; an infinite one makes s = ∞ and
            // the layer useless. Either way the run diverged: refuse rather than deploy garbage.
            guard scales.allSatisfy(\.isFinite), value.scalars.allSatisfy(\.isFinite) else {
                throw .checkpointMismatch(reason: "\(name) holds non-finite weights (the run diverged)")
            }
            var bytes = try bitPack(codes: codes, bits: layer.bits)
            let entry: TensorEntry
            switch layer.quantizer.granularity {
            case .perTensor:
                entry = TensorEntry(name: name, shape: value.shape, kind: .packed, layer: layer.path, bits: layer.bits,
                                    scaleBits: scales[0].bitPattern, offset: 0, length: bytes.count)
            case .perChannel:
                // One float32 scale per output channel, right after the codes (format version 2).
                for s in scales { appendLE(s.bitPattern, to: &bytes) }
                entry = TensorEntry(name: name, shape: value.shape, kind: .packed, layer: layer.path, bits: layer.bits,
                                    scaleGranularity: .perChannel, scaleCount: scales.count, offset: 0, length: bytes.count)
            }
            codesByLayer[layer.path] = (entry, bytes)
        }
        let extra = checkpoint.header.tensors.map(\.name).filter { !$0.hasPrefix("optimizer.") && !used.contains($0) }
        guard extra.isEmpty else {
            throw .checkpointMismatch(reason: "the checkpoint has tensors \(modelName) with this scheme does not: \(extra.joined(separator: ", "))")
        }

        // Packed tensors in the scheme's order (what ``scheme`` reads back), then floats.
        for layer in quantized {
            guard let (original, bytes) = codesByLayer[layer.path] else { continue }
            var entry = original
            entry.offset = packedBytes.count
            packedEntries.append(entry)
            packedBytes += bytes
        }
        var payload = packedBytes
        var floatEntries: [TensorEntry] = []
        for (name, value) in floatNames {
            let entry = TensorEntry(name: name, shape: value.shape, kind: .float32, offset: payload.count, length: 4 * value.count)
            floatEntries.append(entry)
            payload.reserveCapacity(payload.count + entry.length)
            for x in value.scalars { appendLE(x.bitPattern, to: &payload) }
        }
        let header = Header(model: kind.rawValue, dataset: datasetName, inputShape: data.sampleShape,
                            numClasses: data.numClasses, normalization: data.normalization,
                            activationBits: scheme.activationBits, activationExcluded: scheme.activationExcluded,
                            source: h.runDescription, tensors: packedEntries + floatEntries)
        return try PackedModel(header: header, payload: payload)
    }
}
