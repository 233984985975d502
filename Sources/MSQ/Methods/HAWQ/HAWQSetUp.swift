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
