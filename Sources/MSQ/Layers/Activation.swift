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
    /// `relu6(x + 3) / 6`, the gate of a squeeze-excitation block (PyTorch's Hardsigmoid).
    case hardsigmoid

    var kernelKind: msq_activation {
        switch self {
        case .relu: return MSQ_ACT_RELU
        case .relu6: return MSQ_ACT_RELU6
        case .hardswish: return MSQ_ACT_HARDSWISH
        case .gelu: return MSQ_ACT_GELU
        case .hardsigmoid: return MSQ_ACT_HARDSIGMOID
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
    // rForward's input and its tangent, for rBackward.
    private var curvatureCache: (x: Tensor, rx: Tensor?)?

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

extension Activation: CurvatureModule {
    /// `y = act(x)` and `Ry = act′(x)·Rx` (`msq_activation_rforward`).
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        curvatureCache = nil
        let y = forward(input, mode: .eval)
        cachedInput = nil
        var ry: Tensor? = nil
        if let tangent {
            LayerKit.require(tangent.shape == input.shape,
                             "Activation(\(kind)): input tangent shape \(tangent.shape), expected \(input.shape)")
            var out = Tensor(unfilledShape: input.shape)
            tangent.withUnsafePointer { rx in
                input.withUnsafePointer { x in
                    out.withUnsafeMutablePointer { rp in msq_activation_rforward(rp, rx, x, input.count, kind.kernelKind) }
                }
            }
            ry = out
        }
        curvatureCache = (input, tangent)
        return (y, ry)
    }

    /// `g_x = g_y·act′(x)` and `R g_x = R g_y·act′(x) + g_y·act″(x)·Rx` (`msq_activation_rbackward`).
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let c = curvatureCache else {
            fatalError("Activation(\(kind)): rBackward called without a preceding rForward")
        }
        curvatureCache = nil
        LayerKit.require(tangent.shape == c.x.shape && (gradient?.shape ?? c.x.shape) == c.x.shape,
                         "Activation(\(kind)): gradient shapes do not match output \(c.x.shape)")
        guard inputGradients else { return (nil, nil) }
        let count = c.x.count
        var gx: Tensor? = nil
        if let gradient {
            var g = Tensor(shape: c.x.shape)
            gradient.withUnsafePointer { dy in
                c.x.withUnsafePointer { x in
                    g.withUnsafeMutablePointer { dx in msq_activation_backward(dx, dy, x, count, kind.kernelKind) }
                }
            }
            gx = g
        }
        var rgx = Tensor(shape: c.x.shape)
        tangent.withUnsafePointer { rdy in
            LayerKit.withOptionalPointer(gradient) { dy in
                c.x.withUnsafePointer { x in
                    LayerKit.withOptionalPointer(c.rx) { rx in
                        rgx.withUnsafeMutablePointer { rdx in msq_activation_rbackward(rdx, rdy, dy, x, rx, count, kind.kernelKind) }
                    }
                }
            }
        }
        return (gx, rgx)
    }

    /// ReLU, ReLU6 and hard-sigmoid are; hard-swish and GELU are not.
    public var isPiecewiseLinear: Bool { kind == .relu || kind == .relu6 || kind == .hardsigmoid }
}
