import CKernels

/// The elementwise nonlinearities ``Activation`` supports.
public enum ActivationKind: String, CaseIterable, Sendable {
    /// `max(x, 0)`.
    case relu
    /// `min(max(x, 0), 6)`.
    case relu6
    /// `x · relu6(x + 3) / 6`.
    case hardswish
    /// `x · Φ(x)`, exact erf form (PyTorch's default GELU).
    case gelu

    var kernelKind: msq_activation {
        switch self {
        case .relu: return MSQ_ACT_RELU
        case .relu6: return MSQ_ACT_RELU6
        case .hardswish: return MSQ_ACT_HARDSWISH
        case .gelu: return MSQ_ACT_GELU
        }
    }
}

/// Elementwise activation `y = act(x)` of any shape; no parameters.
///
/// Backward: `dx = dy · act'(x)`, with PyTorch's one-sided derivatives at kinks (relu'(0) = 0).
public final class Activation: Module {
    /// The nonlinearity.
    public let kind: ActivationKind
    private var cachedInput: Tensor?

    /// An activation layer of the given kind.
    public init(_ kind: ActivationKind) { self.kind = kind }

    /// `y = act(x)`; caches x.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        var y = Tensor(unfilledShape: input.shape)
        let n = input.count
        input.withUnsafePointer { x in
            y.withUnsafeMutablePointer { yp in msq_activation_forward(yp, x, n, kind.kernelKind) }
        }
        cachedInput = input
        return y
    }

    /// `dx = dy · act'(x)`.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let x = cachedInput else {
            fatalError("Activation(\(kind)): backward called without a preceding forward")
        }
        LayerKit.require(gradOutput.shape == x.shape,
                         "Activation(\(kind)): gradient shape \(gradOutput.shape) does not match output \(x.shape)")
        cachedInput = nil
        var dx = Tensor(shape: x.shape)
        let n = x.count
        gradOutput.withUnsafePointer { dy in
            x.withUnsafePointer { xp in
                dx.withUnsafeMutablePointer { dxp in msq_activation_backward(dxp, dy, xp, n, kind.kernelKind) }
            }
        }
        return dx
    }

    /// No parameters.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
}
