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
    /// A model that is not built in has no checkpoint path: pack it live with
    /// ``export(model:name:data:source:)``.
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
        let model = makeModel(kind, inputChannels: data.sampleShape[0], numClasses: data.numClasses, seed: 0,
                              inputSize: data.sampleShape[1])
        let quantized: [QuantizedLayer]
        do {
            quantized = try scheme.apply(to: model)
        } catch let error as QuantizationError {
            throw .notQuantized(error)
        } catch {
            throw .checkpointMismatch(reason: "the checkpoint's quantization scheme does not fit \(modelName): \(error)")
        }
        var used = Set<String>()
        for (name, parameter) in model.namedParameters() {
            guard let value = checkpoint.tensor(named: name) else {
                throw .checkpointMismatch(reason: "the checkpoint has no tensor \(name), which \(modelName) with this scheme needs")
            }
            guard value.shape == parameter.value.shape else {
                throw .checkpointMismatch(reason: "\(name) has shape \(value.shape) in the checkpoint, \(modelName) expects \(parameter.value.shape)")
            }
            parameter.value = value
            used.insert(name)
        }
        let extra = checkpoint.header.tensors.map(\.name).filter { !$0.hasPrefix("optimizer.") && !used.contains($0) }
        guard extra.isEmpty else {
            throw .checkpointMismatch(reason: "the checkpoint has tensors \(modelName) with this scheme does not: \(extra.joined(separator: ", "))")
        }
        do {
            return try pack(model, quantized: quantized, scheme: scheme, name: kind.rawValue,
                            data: DatasetInfo(name: datasetName, sampleShape: data.sampleShape, numClasses: data.numClasses,
                                              normalization: data.normalization),
                            source: h.runDescription)
        } catch let .notPackable(reason) {
            throw .checkpointMismatch(reason: reason)
        }
    }

    /// Packs a live model, any ``Module``: its conv/linear layers that carry a
    /// ``RoundClampQuantizer`` (MSQ, HAWQ, ``QuantizationScheme/apply(to:)``) become (s, j_n[]) at their
    /// current precision and scale granularity, their PACT input quantizers' bits and clip levels are
    /// kept, and every other parameter and buffer is stored as float32 — what
    /// ``export(checkpoint:)`` stores for a built-in model.
    ///
    /// `name` is recorded as the header's `model`; use a ``ModelKind`` raw value only for that built-in
    /// network (``makeModule()`` rebuilds those); for any other name, read the file back into a fresh
    /// instance with ``load(into:)``. `data` describes the input (sample shape `[C, H, W]`, classes,
    /// normalisation; ``DatasetInfo/init(_:normalization:)`` takes them from a dataset). `source` is
    /// free-form provenance stored in the header.
    ///
    /// - Throws: ``PackedModelError/notPackable(reason:)`` when no layer is quantized, a layer has
    ///   another weight transform (DoReFa, BSQ, CSQ), the layers mix scale granularities or
    ///   activation bits, a float layer quantizes its input, or a quantized weight is not finite.
    public static func export(model: any Module, name: String, data: DatasetInfo,
                              source: [String: String] = [:]) throws(PackedModelError) -> PackedModel {
        let scheme = try liveScheme(of: model)
        let quantized: [QuantizedLayer] = quantizableLayers(of: model).compactMap { path, module in
            guard let q = layerWeightTransform(of: module) as? RoundClampQuantizer, let weight = layerWeight(of: module) else { return nil }
            return QuantizedLayer(path: path, parameter: weight, quantizer: q, count: weight.value.count)
        }
        return try pack(model, quantized: quantized, scheme: scheme, name: name, data: data, source: source)
    }

    /// The scheme a live model carries: its RoundClamp layers and their PACT or LSQ inputs.
    static func liveScheme(of model: any Module) throws(PackedModelError) -> QuantizationScheme {
        var layers: [QuantizationScheme.LayerBits] = [], granularities = Set<ScaleGranularity>()
        var activationBits = Set<Int>(), excluded: [String] = []
        // Loading rebuilds the input quantizers from the model's declaration: signedness must match it.
        let signed = signedActivationInputs(of: model)
        for (path, module) in quantizableLayers(of: model) {
            let transform = layerWeightTransform(of: module)
            let input = layerInputQuantizer(of: module)
            guard let transform else {
                if input != nil {
                    throw .notPackable(reason: "layer \(path) quantizes its input but not its weight; the packed format quantizes the inputs of quantized layers only")
                }
                continue
            }
            guard let roundClamp = transform as? RoundClampQuantizer else {
                throw .notPackable(reason: "layer \(path) has a \(type(of: transform)) weight transform; only RoundClamp layers (MSQ, HAWQ) can be packed")
            }
            layers.append(.init(path: path, bits: roundClamp.bits))
            granularities.insert(roundClamp.granularity)
            if let input {
                guard input.signed == signed.contains(path) else {
                    throw .notPackable(reason: "layer \(path)'s input quantizer is \(input.signed ? "signed" : "unsigned") but the model declares it "
                                       + "\(input.signed ? "unsigned" : "signed") (SignedActivationInputs); loading would rebuild it the other way")
                }
                activationBits.insert(input.bits)
            } else {
                excluded.append(path)
            }
        }
        guard !layers.isEmpty else {
            throw .notPackable(reason: "no layer carries a RoundClamp quantizer; quantize the model (e.g. MSQTraining.setUp) and train it first")
        }
        guard granularities.count == 1, let granularity = granularities.first else {
            throw .notPackable(reason: "the layers mix per-tensor and per-channel scales; a packed model has one granularity")
        }
        guard activationBits.count <= 1 else {
            throw .notPackable(reason: "the layers' inputs are quantized at different bit widths \(activationBits.sorted()); a packed model has one")
        }
        let bits = activationBits.first
        return QuantizationScheme(layers: layers, activationBits: bits, activationExcluded: bits == nil ? [] : excluded,
                                  scaleGranularity: granularity)
    }

    /// The file of `model` (its parameters' current values) with `quantized` packed: codes in the
    /// scheme's order, then every other tensor as float32 in parameter order.
    static func pack(_ model: any Module, quantized: [QuantizedLayer], scheme: QuantizationScheme, name: String,
                     data: DatasetInfo, source: [String: String]) throws(PackedModelError) -> PackedModel {
        let layerOf = Dictionary(uniqueKeysWithValues: quantized.map { (ObjectIdentifier($0.parameter), $0) })
        var floatNames: [(name: String, value: Tensor)] = []
        var codesByLayer: [String: (entry: TensorEntry, bytes: [UInt8])] = [:]
        for (name, parameter) in model.namedParameters() {
            let value = parameter.value
            guard let layer = layerOf[ObjectIdentifier(parameter)] else {
                floatNames.append((name, value))
                continue
            }
            let (scales, codes) = layer.quantizer.codes(of: value)
            // NaN weights are ignored by max|W| but give code 0; an infinite one makes s = ∞ and
            // the layer useless. Either way the run diverged: refuse rather than deploy garbage.
            guard scales.allSatisfy(\.isFinite), value.scalars.allSatisfy(\.isFinite) else {
                throw .notPackable(reason: "\(name) holds non-finite weights (the run diverged)")
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

        // Packed tensors in the scheme's order (what ``scheme`` reads back), then floats.
        var packedEntries: [TensorEntry] = [], payload: [UInt8] = []
        for layer in quantized {
            guard let (original, bytes) = codesByLayer[layer.path] else { continue }
            var entry = original
            entry.offset = payload.count
            packedEntries.append(entry)
            payload += bytes
        }
        var floatEntries: [TensorEntry] = []
        for (name, value) in floatNames {
            let entry = TensorEntry(name: name, shape: value.shape, kind: .float32, offset: payload.count, length: 4 * value.count)
            floatEntries.append(entry)
            payload.reserveCapacity(payload.count + entry.length)
            for x in value.scalars { appendLE(x.bitPattern, to: &payload) }
        }
        let header = Header(model: name, dataset: data.name, inputShape: data.sampleShape,
                            numClasses: data.numClasses, normalization: data.normalization,
                            activationBits: scheme.activationBits, activationExcluded: scheme.activationExcluded,
                            source: source, tensors: packedEntries + floatEntries)
        return try PackedModel(header: header, payload: payload)
    }
}
