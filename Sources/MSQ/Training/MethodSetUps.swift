// One set-up call per method (MethodSetUp), each next to nothing but the quantizer choices it makes;
// the methods' own files keep their training logic.

extension MSQTraining: MethodSetUp {
    /// Quantizes `model` for MSQ: RoundClamp quantizers at ``MSQOptions/initialBits`` with
    /// ``MSQOptions/scaleGranularity`` scales on every conv/linear layer, PACT inputs when
    /// ``MethodContext/activationBits`` is set, and (with ``MSQOptions/hessian``) the calibration
    /// batch from ``MethodContext/calibrationData``.
    ///
    /// With ``MethodContext/bitScheme`` the run trains that scheme from step 0 (plain QAT, no search):
    /// the target becomes the scheme's own compression and the Hessian is off; the other search
    /// options are unused.
    /// - Throws: ``QuantizationError`` for bits or paths the model does not have,
    ///   ``MethodSetUpError/missingCalibrationData(method:property:)``, ``TrainingError`` for options
    ///   out of range. Nothing in the model changes on a throw.
    public static func setUp(model: any Module, options: MSQOptions, context: MethodContext) throws -> MSQTraining {
        let excluded = context.activationBits == nil ? [] : defaultActivationExclusions(model).sorted()
        if let fixed = context.bitScheme {
            let scheme = QuantizationScheme(layers: fixed, activationBits: context.activationBits,
                                            activationExcluded: excluded, scaleGranularity: options.scaleGranularity)
            let counts = try checkedCounts(of: model, scheme: scheme)
            var o = options
            o.targetCompression = LSBPruningScheduler.compression(counts: counts, bits: fixed.map(\.bits))
            o.hessian = false
            try o.validate(maxCompression: o.maxCompression(counts: counts))
            let layers = try scheme.apply(to: model)
            return try MSQTraining(layers: layers, options: o, calibration: nil, activationBits: context.activationBits,
                                   activationExcluded: excluded, seed: context.seed, fixedScheme: true)
        }
        let paths = quantizableLayers(of: model).map(\.path)
        let scheme = QuantizationScheme(layers: paths.map { .init(path: $0, bits: options.initialBits) },
                                        activationBits: context.activationBits, activationExcluded: excluded,
                                        scaleGranularity: options.scaleGranularity)
        // Everything that can be refused is checked before the model is touched.
        let counts = try checkedCounts(of: model, scheme: scheme)
        try options.validate(maxCompression: options.maxCompression(counts: counts))
        let calibration = options.hessian
            ? try context.calibrationBatch(count: options.hessianBatch, method: "MSQ", property: "MSQOptions.hessian")
            : nil
        let layers = try scheme.apply(to: model)
        return try MSQTraining(layers: layers, options: options, calibration: calibration,
                               activationBits: context.activationBits, activationExcluded: excluded, seed: context.seed)
    }

    /// ``MSQOptions/identity`` with the starting precision, activation bits and scale choice (a
    /// fixed-scheme run: the options and activation bits; its scheme is fingerprinted on its own).
    public var runIdentity: [String: String] {
        let activation = [String: String](uniqueKeysWithValues: [("msq.act_bits", activationBits.map(String.init) ?? "off")])
        if fixedScheme { return options.identity.merging(activation) { a, _ in a } }
        return options.identity
            .merging(["msq.weight_bits": String(options.initialBits)]) { a, _ in a }
            .merging(activation) { a, _ in a }
            .merging(options.scaleGranularity.identity(method: "msq")) { a, _ in a }
    }
}

extension DoReFaTraining: MethodSetUp {
    /// Quantizes `model` with DoReFa weights at ``DoReFaOptions/weightBits`` (or each layer at
    /// ``MethodContext/bitScheme``'s precision) and PACT inputs when ``MethodContext/activationBits``
    /// is set; see ``init(model:options:activationBits:bitScheme:)``.
    public static func setUp(model: any Module, options: DoReFaOptions, context: MethodContext) throws -> DoReFaTraining {
        try DoReFaTraining(model: model, options: options, activationBits: context.activationBits, bitScheme: context.bitScheme)
    }

    /// ``DoReFaOptions/identity`` with the activation bits.
    public var runIdentity: [String: String] {
        options.identity.merging(["dorefa.act_bits": activationBits.map(String.init) ?? "off"]) { a, _ in a }
    }
}

extension BSQTraining: MethodSetUp {
    /// Replaces `model`'s conv/linear weights by BSQ bit planes (``BSQOptions/initialBits``) and
    /// quantizes their inputs when ``MethodContext/activationBits`` is set; see
    /// ``init(model:options:activationBits:)``.
    /// - Throws: ``MethodSetUpError/bitSchemeUnsupported(method:)`` with a bit scheme.
    public static func setUp(model: any Module, options: BSQOptions, context: MethodContext) throws -> BSQTraining {
        try context.refuseBitScheme(method: "BSQ")
        return try BSQTraining(model: model, options: options, activationBits: context.activationBits)
    }

    /// ``BSQOptions/identity`` with the activation bits.
    public var runIdentity: [String: String] {
        options.identity.merging(["bsq.act_bits": activationBits.map(String.init) ?? "off"]) { a, _ in a }
    }
}

extension CSQTraining: MethodSetUp {
    /// Replaces `model`'s conv/linear weights by CSQ's soft bits (``CSQOptions/initialBits``) and
    /// quantizes their inputs when ``MethodContext/activationBits`` is set; see
    /// ``init(model:options:activationBits:)``.
    /// - Throws: ``MethodSetUpError/bitSchemeUnsupported(method:)`` with a bit scheme.
    public static func setUp(model: any Module, options: CSQOptions, context: MethodContext) throws -> CSQTraining {
        try context.refuseBitScheme(method: "CSQ")
        return try CSQTraining(model: model, options: options, activationBits: context.activationBits)
    }

    /// ``CSQOptions/identity`` with the activation bits.
    public var runIdentity: [String: String] {
        options.identity.merging(["csq.act_bits": activationBits.map(String.init) ?? "off"]) { a, _ in a }
    }
}

extension HAWQTraining: MethodSetUp {
    /// Quantizes `model` at ``HAWQOptions/maxBits`` with ``HAWQOptions/scaleGranularity`` scales and
    /// builds the calibration batch of its traces from ``MethodContext/calibrationData``.
    /// - Throws: ``MethodSetUpError`` for a bit scheme, activation bits or missing calibration data;
    ///   ``TrainingError`` for options out of range. Nothing in the model changes on a throw.
    public static func setUp(model: any Module, options: HAWQOptions, context: MethodContext) throws -> HAWQTraining {
        try context.refuseBitScheme(method: "HAWQ")
        try context.refuseActivationBits(method: "HAWQ")
        let paths = quantizableLayers(of: model).map(\.path)
        let scheme = QuantizationScheme(layers: paths.map { .init(path: $0, bits: options.maxBits) },
                                        scaleGranularity: options.scaleGranularity)
        try options.validate(counts: try checkedCounts(of: model, scheme: scheme))
        let calibration = try context.calibrationBatch(count: options.hessianBatch, method: "HAWQ",
                                                       property: "HAWQOptions.hessianBatch")
        let layers = try scheme.apply(to: model)
        return try HAWQTraining(layers: layers, options: options, calibration: calibration, seed: context.seed)
    }

    /// ``HAWQOptions/identity`` with the scale choice.
    public var runIdentity: [String: String] {
        options.identity.merging(options.scaleGranularity.identity(method: "hawq")) { a, _ in a }
    }
}

/// Float training has no options; ``FloatTraining/setUp(model:options:context:)`` takes this.
public struct FloatOptions: Sendable, Equatable {
    /// No options.
    public init() {}
}

extension FloatTraining: MethodSetUp {
    /// Float training: the model is left as it is.
    /// - Throws: ``MethodSetUpError`` for a bit scheme or activation bits.
    public static func setUp(model: any Module, options: FloatOptions, context: MethodContext) throws -> FloatTraining {
        try context.refuseBitScheme(method: "float training")
        try context.refuseActivationBits(method: "float training")
        return FloatTraining()
    }

    /// Empty: float training has no options.
    public var runIdentity: [String: String] { [:] }
}

/// The weight counts of the layers `scheme` quantizes in `model`, after checking that its paths and
/// bits fit, without changing the model.
private func checkedCounts(of model: any Module, scheme: QuantizationScheme) throws -> [Int] {
    let layers = quantizableLayers(of: model)
    let valid = layers.map(\.path)
    var countOf: [String: Int] = [:]
    for (path, module) in layers {
        countOf[path] = ((module as? Conv2d)?.weight ?? (module as? Linear)?.weight)?.value.count
    }
    return try scheme.layers.map { layer in
        guard let count = countOf[layer.path] else { throw QuantizationError.unknownLayer(path: layer.path, valid: valid) }
        guard msqBitRange.contains(layer.bits) else { throw QuantizationError.invalidBits(bits: layer.bits, path: layer.path) }
        return count
    }
}
