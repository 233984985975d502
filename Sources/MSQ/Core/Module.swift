/// A trainable tensor, its gradient, and the optimizer's per-tensor state.
///
/// A reference type: modules, the optimizer and checkpoints all refer to the same parameter.
/// Buffers that are saved but not trained (batch-norm running statistics) are parameters with
/// `trainable == false`.
public final class Parameter {
    /// The current value.
    public var value: Tensor
    /// dLoss/dValue, accumulated by backward passes; zeroed by ``Module/zeroGradients()``.
    public var grad: Tensor
    /// Whether the optimizer updates this tensor (false for running statistics).
    public let trainable: Bool
    /// Whether weight decay applies (false for BN affine parameters and biases, by convention).
    public var decays: Bool
    /// The direction v of a Hessian-vector product restricted to this tensor (same shape as
    /// ``value``), read by ``CurvatureModule/rForward(_:tangent:)``; nil = 0. Set only while an HVP runs.
    public var tangent: Tensor?
    /// Where ``CurvatureModule/rBackward(_:tangent:inputGradients:)`` accumulates (H v) restricted to
    /// this tensor; nil = this tensor is outside the space H acts on. Set only while an HVP runs.
    public var hessianVector: Tensor?

    /// Wraps an initial value; the gradient starts at zero.
    public init(_ value: Tensor, trainable: Bool = true, decays: Bool = true) {
        self.value = value
        self.grad = trainable ? Tensor(shape: value.shape) : Tensor(shape: [0])
        self.trainable = trainable
        self.decays = decays
    }
}

/// Whether a forward pass trains (batch statistics, caches for backward) or evaluates.
public enum ForwardMode: Sendable {
    /// Training: batch norm uses and updates batch statistics.
    case train
    /// Inference: batch norm uses its running statistics.
    case eval
}

/// A differentiable layer or block.
///
/// Backward is per module: `forward` keeps what `backward` needs (the input, argmax indices,
/// batch statistics), and `backward` returns dLoss/dInput while ACCUMULATING dLoss/dParameter
/// into each ``Parameter/grad``. A container calls its children's backward in reverse order.
/// `backward` must follow the `forward` whose gradient it computes; it works after an `.eval`
/// forward too (Hessian-vector products are taken in eval mode).
public protocol Module: AnyObject {
    /// Computes the output for `input` and caches what ``backward(_:)`` needs.
    func forward(_ input: Tensor, mode: ForwardMode) -> Tensor
    /// Given dLoss/dOutput of the last forward, accumulates parameter gradients and returns dLoss/dInput.
    func backward(_ gradOutput: Tensor) -> Tensor
    /// ``backward(_:)`` for a caller that discards dLoss/dInput (training, Hessian traces): the same
    /// parameter gradients, but a module may skip computing its input gradient (a network's first
    /// convolution then saves its transposed convolution, the costliest input gradient there is).
    func backwardParameters(_ gradOutput: Tensor)
    /// Calls `body` with every parameter and buffer and its dotted path (`layer2.1.conv1.weight`).
    func visitParameters(prefix: String, _ body: (String, Parameter) -> Void)
    /// Calls `body` with every direct and nested child module and its path, depth first.
    func visitModules(prefix: String, _ body: (String, Module) -> Void)
}

extension Module {
    /// Leaves have no children.
    public func visitModules(prefix: String, _ body: (String, Module) -> Void) {}

    /// By default the full backward, its input gradient dropped.
    public func backwardParameters(_ gradOutput: Tensor) { _ = backward(gradOutput) }

    /// Every parameter and buffer with its full path, in a stable order.
    public func namedParameters() -> [(name: String, parameter: Parameter)] {
        var out: [(String, Parameter)] = []
        visitParameters(prefix: "") { out.append(($0, $1)) }
        return out
    }

    /// The trainable parameters, in the same stable order as ``namedParameters()``.
    public func trainableParameters() -> [Parameter] {
        namedParameters().map(\.parameter).filter(\.trainable)
    }

    /// Number of trainable scalars.
    public var trainableParameterCount: Int {
        trainableParameters().reduce(0) { $0 + $1.value.count }
    }

    /// Zeroes every trainable parameter's gradient.
    public func zeroGradients() {
        for p in trainableParameters() { p.grad.zero() }
    }
}

/// Joins a path prefix and a child name with a dot (`""` + `conv1` → `conv1`).
@inlinable
public func joinPath(_ prefix: String, _ name: String) -> String {
    prefix.isEmpty ? name : prefix + "." + name
}
