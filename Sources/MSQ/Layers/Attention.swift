import CKernels

/// Multi-head self-attention over tokens, as timm's `Attention`: `qkv` (Linear dim → 3·dim), then
/// per head `softmax(Q·Kᵀ/sqrt(d))·V`, heads concatenated, then `proj` (Linear dim → dim).
///
/// Shapes: input and output `[N, T, dim]`; `dim = heads · d`. `qkv`'s output is read as
/// `[N, T, 3, heads, d]` (timm's layout, so its weights load unchanged). The attention matrix
/// `[N, heads, T, T]` is kept for the backward (`msq_attention_forward` / `_backward`). Both
/// linears are ordinary ``Linear``s, so every quantization method finds them.
public final class MultiHeadSelfAttention: Module {
    /// Token width.
    public let dim: Int
    /// Number of heads.
    public let heads: Int
    /// Dim → 3·dim: queries, keys and values of every head.
    public let qkv: Linear
    /// Dim → dim: the output projection.
    public let proj: Linear

    private var cache: (qkv: Tensor, probs: Tensor, batch: Int, tokens: Int)?
    // What rBackward needs from rForward: qkv's output and its tangent, P and its tangent RP.
    private var curvatureCache: (qkv: Tensor, rqkv: Tensor?, probs: Tensor, rprobs: Tensor?, batch: Int, tokens: Int)?

    /// Width of one head, `dim / heads`.
    public var headDim: Int { dim / heads }
    /// `1/sqrt(headDim)`, the scale of Q·Kᵀ.
    public var scale: Float { 1 / Float(headDim).squareRoot() }

    /// An attention layer with timm's initialisation: linear weights ~ N(0, 0.02²) (timm's
    /// truncation at ±2 never binds at that width), biases 0.
    public init(dim: Int, heads: Int, qkvBias: Bool = true, rng: inout RandomSource) {
        LayerKit.require(dim > 0 && heads > 0 && dim % heads == 0, "MultiHeadSelfAttention: dim \(dim) is not a multiple of heads \(heads)")
        self.dim = dim
        self.heads = heads
        qkv = Linear(inFeatures: dim, outFeatures: 3 * dim, bias: qkvBias, rng: &rng)
        proj = Linear(inFeatures: dim, outFeatures: dim, rng: &rng)
        initTransformerLinear(qkv, rng: &rng)
        initTransformerLinear(proj, rng: &rng)
    }

    /// `proj(attention(qkv(x)))`; caches qkv's output and the attention matrix.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        cache = nil
        let d = input.shape
        LayerKit.require(d.count == 3 && d[2] == dim, "MultiHeadSelfAttention(\(dim)): expected input [N, T, \(dim)], got \(d)")
        let (n, t) = (d[0], d[1])
        let q = qkv.forward(input.reshaped([n * t, dim]), mode: mode)
        var out = Tensor(unfilledShape: [n * t, dim])
        var probs = Tensor(unfilledShape: [n, heads, t, t])
        q.withUnsafePointer { qp in
            out.withUnsafeMutablePointer { o in
                probs.withUnsafeMutablePointer { p in
                    msq_attention_forward(o, p, qp, LayerKit.c(n), LayerKit.c(t), LayerKit.c(heads), LayerKit.c(headDim), scale)
                }
            }
        }
        cache = (q, probs, n, t)
        return proj.forward(out, mode: mode).reshaped([n, t, dim])
    }

    /// dx through proj, the attention and qkv (their parameter gradients accumulated).
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let c = cache else { fatalError("MultiHeadSelfAttention(\(dim)): backward called without a preceding forward") }
        LayerKit.require(gradOutput.shape == [c.batch, c.tokens, dim],
                         "MultiHeadSelfAttention(\(dim)): gradient shape \(gradOutput.shape), expected \([c.batch, c.tokens, dim])")
        cache = nil
        let dOut = proj.backward(gradOutput.reshaped([c.batch * c.tokens, dim]))
        var dq = Tensor(shape: c.qkv.shape)
        dOut.withUnsafePointer { go in
            c.qkv.withUnsafePointer { q in
                c.probs.withUnsafePointer { p in
                    dq.withUnsafeMutablePointer { dqp in
                        msq_attention_backward(dqp, go, q, p, LayerKit.c(c.batch), LayerKit.c(c.tokens), LayerKit.c(heads),
                                               LayerKit.c(headDim), scale)
                    }
                }
            }
        }
        return qkv.backward(dq).reshaped([c.batch, c.tokens, dim])
    }

    /// `qkv.*`, then `proj.*`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        qkv.visitParameters(prefix: joinPath(prefix, "qkv"), body)
        proj.visitParameters(prefix: joinPath(prefix, "proj"), body)
    }

    /// `qkv`, `proj`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("qkv", qkv), ("proj", proj)], prefix: prefix, body)
    }
}

extension MultiHeadSelfAttention: CurvatureModule {
    /// `y` and its tangent through qkv, the attention (`msq_attention_rforward`: RS = scale·(RQ·Kᵀ +
    /// Q·RKᵀ), RP = P ⊙ (RS − rowsum(P ⊙ RS)), RO = RP·V + P·RV) and proj. Keeps P and RP
    /// (2·N·heads·T² floats) for the R-backward.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        curvatureCache = nil
        let d = input.shape
        LayerKit.require(d.count == 3 && d[2] == dim, "MultiHeadSelfAttention(\(dim)): expected input [N, T, \(dim)], got \(d)")
        LayerKit.require(tangent == nil || tangent?.shape == d,
                         "MultiHeadSelfAttention(\(dim)): input tangent shape \(tangent?.shape ?? []), expected \(d)")
        let (n, t) = (d[0], d[1])
        let (cn, ct, ch, cd) = (LayerKit.c(n), LayerKit.c(t), LayerKit.c(heads), LayerKit.c(headDim))
        let q = qkv.rForward(input.reshaped([n * t, dim]), tangent: tangent?.reshaped([n * t, dim]))
        var out = Tensor(unfilledShape: [n * t, dim])
        var probs = Tensor(unfilledShape: [n, heads, t, t])
        q.output.withUnsafePointer { qp in
            out.withUnsafeMutablePointer { o in
                probs.withUnsafeMutablePointer { p in msq_attention_forward(o, p, qp, cn, ct, ch, cd, scale) }
            }
        }
        var rout: Tensor? = nil, rprobs: Tensor? = nil
        if let rq = q.tangent {
            var ro = Tensor(unfilledShape: [n * t, dim]), rp = Tensor(unfilledShape: [n, heads, t, t])
            q.output.withUnsafePointer { qp in
                rq.withUnsafePointer { rqp in
                    probs.withUnsafePointer { p in
                        ro.withUnsafeMutablePointer { rop in
                            rp.withUnsafeMutablePointer { rpp in msq_attention_rforward(rop, rpp, qp, rqp, p, cn, ct, ch, cd, scale) }
                        }
                    }
                }
            }
            (rout, rprobs) = (ro, rp)
        }
        curvatureCache = (q.output, q.tangent, probs, rprobs, n, t)
        let y = proj.rForward(out, tangent: rout)
        return (y.output.reshaped(d), y.tangent?.reshaped(d))
    }

    /// `(g_x, R g_x)` back through proj, the attention (`msq_attention_backward`,
    /// `msq_attention_rbackward`) and qkv, whose R-backwards accumulate their weights' H·v.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let c = curvatureCache else {
            fatalError("MultiHeadSelfAttention(\(dim)): rBackward called without a preceding rForward")
        }
        curvatureCache = nil
        let (n, t) = (c.batch, c.tokens)
        LayerKit.require(tangent.shape == [n, t, dim] && (gradient?.shape ?? tangent.shape) == tangent.shape,
                         "MultiHeadSelfAttention(\(dim)): gradient shapes do not match output \([n, t, dim])")
        let (cn, ct, ch, cd) = (LayerKit.c(n), LayerKit.c(t), LayerKit.c(heads), LayerKit.c(headDim))
        let g = rBackwardChained(proj, (gradient?.reshaped([n * t, dim]), tangent.reshaped([n * t, dim])))
        guard let rdOut = g.tangent else { preconditionFailure("Linear returned no input tangent") }
        var dq: Tensor? = nil
        if let dOut = g.gradient {
            var out = Tensor(shape: c.qkv.shape)
            dOut.withUnsafePointer { go in
                c.qkv.withUnsafePointer { q in
                    c.probs.withUnsafePointer { p in
                        out.withUnsafeMutablePointer { dqp in msq_attention_backward(dqp, go, q, p, cn, ct, ch, cd, scale) }
                    }
                }
            }
            dq = out
        }
        var rdq = Tensor(shape: c.qkv.shape)
        rdOut.withUnsafePointer { rgo in
            LayerKit.withOptionalPointer(g.gradient) { go in
                c.qkv.withUnsafePointer { q in
                    LayerKit.withOptionalPointer(c.rqkv) { rq in
                        c.probs.withUnsafePointer { p in
                            LayerKit.withOptionalPointer(c.rprobs) { rp in
                                rdq.withUnsafeMutablePointer { out in
                                    msq_attention_rbackward(out, rgo, go, q, rq, p, rp, cn, ct, ch, cd, scale)
                                }
                            }
                        }
                    }
                }
            }
        }
        let x = qkv.rBackward(dq, tangent: rdq, inputGradients: inputGradients)
        return (x.gradient?.reshaped([n, t, dim]), x.tangent?.reshaped([n, t, dim]))
    }

    /// Attention is bilinear in the queries and keys: not piecewise linear.
    public var isPiecewiseLinear: Bool { false }
}

/// timm's initialisation of a transformer's linear layers: weight ~ N(0, 0.02²), bias 0.
func initTransformerLinear(_ layer: Linear, rng: inout RandomSource) {
    layer.weight.value = Tensor.randomNormal(layer.weight.value.shape, std: 0.02, using: &rng)
    if let bias = layer.bias { bias.value = Tensor(shape: bias.value.shape) }
}
