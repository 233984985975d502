extension DoReFaTraining: MethodSetUp {
    /// Quantizes `model` with DoReFa weights at ``DoReFaOptions/weightBits`` (or each layer at
    /// ``MethodContext/bitScheme``'s precision) and PACT inputs when ``MethodContext/activationBits``
    /// is set; see ``init(model:options:activationBits:bitScheme:)``.
    public static func setUp(model: any Module, options: DoReFaOptions, context: MethodContext) throws -> DoReFaTraining {
        try DoReFaTraining(model: model, options: options, activationBits: context.activationBits, bitScheme: context.bitScheme)
    }

    /// ``DoReFaOptions/identity`` with the activation bits.
    public var runIdentity: [String: String] {
        options.identity.merging(activationBitsIdentity(activationBits, method: "dorefa")) { a, _ in a }
    }
}
