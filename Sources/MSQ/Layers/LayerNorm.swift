import CKernels

/// Layer normalisation over the last axis: `y = (x − μ)/sqrt(σ² + ε)·γ + β`, μ and σ² (biased)
/// per row of the last axis.
///
/// Shapes: input and output `[..., dim]` (a transformer's tokens `[N, T, dim]`), `weight` (γ) and
/// `bias` (β) `[dim]`, initialised to 1 and 0 and not decayed. Same in train and eval mode.
/// Kernels: `msq_layernorm_forward` / `_backward`.
public final class LayerNorm: Module {
    /// Size of the normalised (last) axis.
    public let dim: Int
    /// ε added to the variance.
    public let epsilon: Float
    /// γ `[dim]`.
    public let weight: Parameter
    /// β `[dim]`.
    public let bias: Parameter

    private var cache: (x: Tensor, mean: Tensor, rstd: Tensor)?
    // What rBackward needs from rForward: the forward's cache and the input tangent.
    private var curvatureCache: (x: Tensor, mean: Tensor, rstd: Tensor, rx: Tensor?)?

    /// A layer norm over a last axis of `dim`; timm's vision transformers use ε = 1e-6,
    /// torchvision's Swin 1e-5.
    public init(dim: Int, epsilon: Float = 1e-6) {
        LayerKit.require(dim > 0 && epsilon >= 0, "LayerNorm: invalid dim \(dim) or epsilon \(epsilon)")
        self.dim = dim
        self.epsilon = epsilon
        weight = Parameter(Tensor(shape: [dim], repeating: 1), decays: false)
        bias = Parameter(Tensor(shape: [dim]), decays: false)
    }

    /// `y = (x − μ)·rstd·γ + β` over the last axis; caches x, μ and rstd.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        cache = nil
        LayerKit.require(input.shape.last == dim && input.count > 0,
                         "LayerNorm(\(dim)): expected input [..., \(dim)], got \(input.shape)")
        let rows = input.count / dim
        var y = Tensor(unfilledShape: input.shape)
        var mean = Tensor(unfilledShape: [rows]), rstd = Tensor(unfilledShape: [rows])
        input.withUnsafePointer { x in
            weight.value.withUnsafePointer { g in
                bias.value.withUnsafePointer { b in
                    y.withUnsafeMutablePointer { yp in
                        mean.withUnsafeMutablePointer { m in
                            rstd.withUnsafeMutablePointer { r in
                                msq_layernorm_forward(yp, m, r, x, g, b, LayerKit.c(rows), LayerKit.c(dim), epsilon)
                            }
                        }
                    }
                }
            }
        }
        cache = (input, mean, rstd)
        return y
    }

    /// dx (returned), and dγ, dβ accumulated.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let c = cache else { fatalError("LayerNorm(\(dim)): backward called without a preceding forward") }
        LayerKit.require(gradOutput.shape == c.x.shape,
                         "LayerNorm(\(dim)): gradient shape \(gradOutput.shape) does not match output \(c.x.shape)")
        cache = nil
        let rows = c.x.count / dim
        var dx = Tensor(shape: c.x.shape)
        gradOutput.withUnsafePointer { dy in
            c.x.withUnsafePointer { x in
                c.mean.withUnsafePointer { m in
                    c.rstd.withUnsafePointer { r in
                        weight.value.withUnsafePointer { g in
                            dx.withUnsafeMutablePointer { dxp in
                                LayerKit.withGradPointer(weight) { dg in
                                    LayerKit.withGradPointer(bias) { db in
                                        msq_layernorm_backward(dxp, dg, db, dy, x, m, r, g, LayerKit.c(rows), LayerKit.c(dim))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return dx
    }

    /// `weight`, `bias` (torch.nn.LayerNorm's names).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        body(joinPath(prefix, "weight"), weight)
        body(joinPath(prefix, "bias"), bias)
    }
}

extension LayerNorm: CurvatureModule {
    /// `y` and `Ry = γ ⊙ J·Rx`, J = rstd·(I − 11ᵀ/dim − x̂x̂ᵀ/dim) per row (`msq_layernorm_rforward`);
    /// γ and β are held fixed (their tangents are not read).
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        curvatureCache = nil
        let y = forward(input, mode: .eval)
        guard let c = cache else { fatalError("LayerNorm(\(dim)): forward left no cache") }
        cache = nil
        LayerKit.require(tangent == nil || tangent?.shape == input.shape,
                         "LayerNorm(\(dim)): input tangent shape \(tangent?.shape ?? []), expected \(input.shape)")
        var ry: Tensor? = nil
        if let tangent {
            var out = Tensor(unfilledShape: input.shape)
            withRowPointers(c) { x, m, r, g, rows in
                tangent.withUnsafePointer { rx in
                    out.withUnsafeMutablePointer { rp in msq_layernorm_rforward(rp, x, rx, m, r, g, rows, LayerKit.c(dim)) }
                }
            }
            ry = out
        }
        curvatureCache = (c.x, c.mean, c.rstd, tangent)
        return (y, ry)
    }

    /// `g_x = J·(γ ⊙ g_y)` and `R g_x = J·(γ ⊙ R g_y) + R_x[J]·(γ ⊙ g_y)` (`msq_layernorm_rbackward`).
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let c = curvatureCache else { fatalError("LayerNorm(\(dim)): rBackward called without a preceding rForward") }
        curvatureCache = nil
        LayerKit.require(tangent.shape == c.x.shape && (gradient?.shape ?? c.x.shape) == c.x.shape,
                         "LayerNorm(\(dim)): gradient shapes do not match output \(c.x.shape)")
        guard inputGradients else { return (nil, nil) }
        var gx: Tensor? = nil
        if let gradient {
            var dx = Tensor(shape: c.x.shape)
            withRowPointers((c.x, c.mean, c.rstd)) { x, m, r, g, rows in
                gradient.withUnsafePointer { dy in
                    dx.withUnsafeMutablePointer { dxp in msq_layernorm_backward(dxp, nil, nil, dy, x, m, r, g, rows, LayerKit.c(dim)) }
                }
            }
            gx = dx
        }
        var rgx = Tensor(shape: c.x.shape)
        withRowPointers((c.x, c.mean, c.rstd)) { x, m, r, g, rows in
            tangent.withUnsafePointer { rdy in
                LayerKit.withOptionalPointer(gradient) { dy in
                    LayerKit.withOptionalPointer(c.rx) { rx in
                        rgx.withUnsafeMutablePointer { rdx in msq_layernorm_rbackward(rdx, rdy, dy, x, rx, m, r, g, rows, LayerKit.c(dim)) }
                    }
                }
            }
        }
        return (gx, rgx)
    }

    /// Layer norm divides by the input's spread: not piecewise linear.
    public var isPiecewiseLinear: Bool { false }

    /// x, mean, rstd, γ and the row count, for one kernel call.
    private func withRowPointers(_ c: (x: Tensor, mean: Tensor, rstd: Tensor),
                                 _ body: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, Int32) -> Void) {
        c.x.withUnsafePointer { x in
            c.mean.withUnsafePointer { m in
                c.rstd.withUnsafePointer { r in
                    weight.value.withUnsafePointer { g in body(x, m, r, g, LayerKit.c(c.x.count / dim)) }
                }
            }
        }
    }
}
