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
