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
        options.identity.merging(activationBitsIdentity(activationBits, method: "csq")) { a, _ in a }
    }
}
