/// Plain float training: no extra terms, no state.
public final class FloatTraining: TrainingMethod {
    /// Creates the identity method.
    public init() {}
    public var name: String { "fp" }
    public func prepare(model: Module, plan: TrainingPlan) throws {}
    public func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double { 0 }
    public func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {}
    public func encodeState() throws -> String { "{}" }
    public func restoreState(_ json: String) throws {}
    public func summaryFields() -> [String: Any] { [:] }
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
