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
        options.identity.merging(activationBitsIdentity(activationBits, method: "bsq")) { a, _ in a }
    }
}
