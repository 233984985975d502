extension PackedModel {
    /// The entry named `name`, if the file has one.
    public func entry(named name: String) -> TensorEntry? {
        header.tensors.first { $0.name == name }
    }

    /// A packed layer's deployable form: its scales (`[s]` per tensor, one per output channel per
    /// channel), bits n and the codes j_n (row-major, N of them), exactly as
    /// ``RoundClampQuantizer/codes(of:)`` returned them at export.
    /// - Throws: ``PackedModelError/modelMismatch(reason:)`` when `name` is not a packed tensor.
    public func codes(named name: String) throws(PackedModelError) -> (scales: [Float], bits: Int, codes: [Int32]) {
        guard let e = entry(named: name), e.kind == .packed, let bits = e.bits, let count = e.elementCount,
              let codeBytes = e.codeByteCount else {
            throw .modelMismatch(reason: "the file has no packed tensor \(name)")
        }
        let scales: [Float]
        if e.isPerChannel {
            scales = Self.channelScales(of: e, in: payload)
        } else if let sb = e.scaleBits {
            scales = [Float(bitPattern: sb)]
        } else {
            throw .modelMismatch(reason: "the packed tensor \(name) has no scale")
        }
        return (scales, bits, try bitUnpack(payload[e.offset..<(e.offset + codeBytes)], count: count, bits: bits))
    }

    /// The tensor a layer computes with: for a packed weight W' = s · j / 2^(n−1) (shape of the
    /// original weight; s = s_c of the element's output channel when per channel), evaluated as
    /// `(s · j) / 2^(n−1)` in float32 like `msq_roundclamp_forward`,
    /// so it equals ``RoundClampQuantizer/forward(_:)`` of the latent weight bit for bit; for a
    /// float tensor its stored values.
    /// - Throws: ``PackedModelError/modelMismatch(reason:)`` when the file has no tensor `name`.
    public func tensor(named name: String) throws(PackedModelError) -> Tensor {
        guard let e = entry(named: name) else { throw .modelMismatch(reason: "the file has no tensor \(name)") }
        switch e.kind {
        case .packed:
            let (scales, bits, codes) = try self.codes(named: name)
            return Self.dequantize(codes: codes, scales: scales, bits: bits, shape: e.shape)
        case .float32:
            var t = Tensor(shape: e.shape)
            let count = t.count
            t.withUnsafeMutablePointer { p in
                for i in 0..<count {
                    let at = e.offset + 4 * i
                    let bitPattern = UInt32(payload[at]) | UInt32(payload[at + 1]) << 8
                        | UInt32(payload[at + 2]) << 16 | UInt32(payload[at + 3]) << 24
                    p[i] = Float(bitPattern: bitPattern)
                }
            }
            return t
        }
    }

    /// W' = (s · j) / 2^(n−1) per element, s the scale of the element's group (the one scale, or its
    /// output channel's: `scales.count` equal groups of contiguous elements) — the kernel's operation
    /// order, hence its bits (with s = 0 the kernel writes +0 for every element, and so does this:
    /// codes are then 0).
    static func dequantize(codes: [Int32], scales: [Float], bits: Int, shape: [Int]) -> Tensor {
        let half = Float(1 << (bits - 1))
        var t = Tensor(shape: shape)
        let size = scales.isEmpty ? 0 : codes.count / scales.count
        t.withUnsafeMutablePointer { p in
            for (g, scale) in scales.enumerated() {
                for i in (g * size)..<((g + 1) * size) { p[i] = (scale * Float(codes[i])) / half }
            }
        }
        return t
    }

    /// Builds a built-in network (a ``ModelKind``) from the file alone, ready for `.eval` forwards:
    /// ``makeModel(_:inputChannels:numClasses:seed:inputSize:)`` (at the file's input height) then ``load(into:)``.
    ///
    /// Loading: ``QuantizationScheme/apply(to:)`` attaches the
    /// scheme (including PACT input quantizers when ``Header/activationBits`` is set), and then:
    /// each quantized layer's weight is set to W' = s · j / 2^(n−1) (s per channel when the file has
    /// per-channel scales) decoded from its codes and its
    /// RoundClamp transform is REMOVED; every other parameter (BN, biases, running statistics,
    /// `input_alpha`) gets its float32 values. The layer thus computes with exactly the weight
    /// RoundClamp produced in training, and the logits equal the training model's eval logits bit
    /// for bit. The transform must not stay: RoundClamp re-derives s' = max|W'| = s · max|j| / 2^(n−1),
    /// which differs from s unless some code is −2^(n−1), and would then requantize W' to other levels.
    ///
    /// - Throws: ``PackedModelError/notBuiltIn(model:)`` when the header names a model of the
    ///   caller's own (build it and call ``load(into:)``); ``PackedModelError/modelMismatch(reason:)``
    ///   when the tensors do not match the network's parameters one to one.
    public func makeModule() throws(PackedModelError) -> any Module {
        guard let kind = ModelKind(rawValue: header.model) else { throw .notBuiltIn(model: header.model) }
        let model = makeModel(kind, inputChannels: header.inputShape[0], numClasses: header.numClasses, seed: 0,
                              inputSize: header.inputShape[1])
        do {
            try load(into: model)
        } catch let .loadMismatch(reason) {
            throw .modelMismatch(reason: reason)
        }
        return model
    }

    /// Loads the file into `model`, a network the caller built exactly as it was built for training
    /// and left float (no quantizers attached: this call attaches the file's own, so they cannot be
    /// applied in the wrong order). Afterwards `model` computes the exported model's eval logits bit
    /// for bit: packed weights become W' = s · j / 2^(n−1) with no RoundClamp transform, every other
    /// tensor (BN, biases, running statistics, PACT `input_alpha`) takes its float32 values.
    ///
    /// Checked before it returns, with `model` restored on any failure: every quantized path names a
    /// conv/linear layer, every parameter of the quantized model has a tensor of its shape in the
    /// file, the file has no tensor the model lacks, and packed tensors are exactly the quantized weights.
    /// - Throws: ``PackedModelError/loadMismatch(reason:)`` naming the layer or tensor.
    public func load(into model: any Module) throws(PackedModelError) {
        for (path, module) in quantizableLayers(of: model) {
            if layerWeightTransform(of: module) != nil || layerInputQuantizer(of: module) != nil {
                throw .loadMismatch(reason: "layer \(path) already has a quantizer; pass the float model as built, load(into:) attaches the file's scheme itself")
            }
        }
        let saved = model.namedParameters().map { ($0.parameter, $0.parameter.value) }
        do {
            try attachAndFill(model)
        } catch {
            // Leave the caller's model as it was: float, its own values.
            for (_, module) in quantizableLayers(of: model) { removeQuantizers(from: module) }
            for (parameter, value) in saved { parameter.value = value }
            throw error
        }
    }

    /// Attaches the scheme to `model`, drops the weight transforms it attached and fills every parameter.
    private func attachAndFill(_ model: any Module) throws(PackedModelError) {
        let quantized: [QuantizedLayer]
        do {
            quantized = try scheme.apply(to: model)
        } catch {
            throw .loadMismatch(reason: "its quantization scheme does not fit the model: \(error)")
        }
        let layerOf = Dictionary(uniqueKeysWithValues: quantized.map { (ObjectIdentifier($0.parameter), $0) })
        let quantizedPaths = Set(quantized.map(\.path))
        for (path, module) in quantizableLayers(of: model) where quantizedPaths.contains(path) {
            setWeightTransform(nil, of: module)
        }
        var byName: [String: TensorEntry] = [:]
        for e in header.tensors { byName[e.name] = e }
        var used = Set<String>()
        for (name, parameter) in model.namedParameters() {
            guard let e = byName[name] else {
                throw .loadMismatch(reason: "the file has no tensor \(name), which the model with this scheme needs")
            }
            guard e.shape == parameter.value.shape else {
                throw .loadMismatch(reason: "\(name) has shape \(e.shape) in the file, the model's is \(parameter.value.shape)")
            }
            let isQuantized = layerOf[ObjectIdentifier(parameter)] != nil
            guard isQuantized == (e.kind == .packed) else {
                throw .loadMismatch(reason: "\(name) is stored as \(e.kind.rawValue), but the scheme \(isQuantized ? "quantizes" : "does not quantize") it")
            }
            do {
                parameter.value = try tensor(named: name)
            } catch {
                throw .loadMismatch(reason: "\(error)")
            }
            used.insert(name)
        }
        let extra = header.tensors.map(\.name).filter { !used.contains($0) }
        guard extra.isEmpty else {
            throw .loadMismatch(reason: "tensors \(extra.joined(separator: ", ")) belong to no parameter of the model")
        }
    }

    /// Checks that `dataset` has images, that they have the model's input shape and that its
    /// labels fit the model's classes, so evaluation cannot trap inside a layer or print NaN.
    /// - Throws: ``PackedModelError/incompatibleData(reason:)`` naming both shapes or class counts.
    public func checkCompatible(with dataset: any Dataset) throws(PackedModelError) {
        guard dataset.count >= 1 else { throw .incompatibleData(reason: "\(dataset.name) has no images: there is nothing to evaluate") }
        guard dataset.sampleShape == header.inputShape else {
            throw .incompatibleData(reason: "\(dataset.name) has images of shape \(dataset.sampleShape), but the model (\(header.model), trained on \(header.dataset)) takes \(header.inputShape); evaluate it on \(header.dataset) or data of that shape")
        }
        guard dataset.numClasses == header.numClasses else {
            throw .incompatibleData(reason: "\(dataset.name) has \(dataset.numClasses) classes, but the model (trained on \(header.dataset)) predicts \(header.numClasses)")
        }
    }
}
