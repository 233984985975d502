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
        let activation = activationBitsIdentity(activationBits, method: "msq")
        if fixedScheme { return options.identity.merging(activation) { a, _ in a } }
        return options.identity
            .merging(["msq.weight_bits": String(options.initialBits)]) { a, _ in a }
            .merging(activation) { a, _ in a }
            .merging(options.scaleGranularity.identity(method: "msq")) { a, _ in a }
    }
}
