extension SMPQTraining: MethodSetUp {
    /// Builds SMPQ on `model`: RoundClamp quantizers (``SMPQOptions/scaleGranularity`` scales) on every
    /// conv/linear layer, each wrapped in a ``SupernetWeight`` over ``SMPQOptions/candidates`` for the
    /// search; PACT inputs when ``MethodContext/activationBits`` is set; the fixed Shapley batch from
    /// ``MethodContext/validationData``.
    ///
    /// The validation data must be held out from what the ``Trainer`` trains on:
    ///
    ///     let (train, validation) = try SMPQTraining.split(data.train, options: options, seed: seed)
    ///     let method = try SMPQTraining.setUp(model: model, options: options, context:
    ///         MethodContext(validationData: (validation, data.normalization), seed: seed))
    ///     let trainer = Trainer(config: config, model: model, method: method, train: train, …)
    ///
    /// - Throws: ``MethodSetUpError`` for a bit scheme or missing validation data; ``TrainingError``
    ///   for options out of range. Nothing in the model changes on a throw.
    public static func setUp(model: any Module, options: SMPQOptions, context: MethodContext) throws -> SMPQTraining {
        try context.refuseBitScheme(method: "SMPQ")
        guard let validation = context.validationData else { throw MethodSetUpError.missingValidationData(method: "SMPQ") }
        let excluded = context.activationBits == nil ? [] : defaultActivationExclusions(model).sorted()
        let paths = quantizableLayers(of: model).map(\.path)
        let top = options.candidates.max() ?? 8
        let scheme = QuantizationScheme(layers: paths.map { .init(path: $0, bits: top) }, activationBits: context.activationBits,
                                        activationExcluded: excluded, scaleGranularity: options.scaleGranularity)
        try options.validate(counts: try checkedCounts(of: model, scheme: scheme))
        if validation.dataset.count < 1 {
            throw TrainingError.invalidMethodOption(options: SMPQOptions.optionsName, property: "validationFraction",
                                                    problem: "leaves no validation image (MethodContext.validationData is empty)")
        }
        let layers = try scheme.apply(to: model)
        return try SMPQTraining(model: model, layers: layers, options: options, validation: validation,
                                activationBits: context.activationBits, activationExcluded: excluded, seed: context.seed)
    }

    /// ``SMPQOptions/identity`` with the activation bits.
    public var runIdentity: [String: String] {
        options.identity.merging(activationBitsIdentity(activationBits, method: "smpq")) { a, _ in a }
    }
}
