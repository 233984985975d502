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

/// timm's initialisation of a transformer's linear layers: weight ~ N(0, 0.02²), bias 0.
func initTransformerLinear(_ layer: Linear, rng: inout RandomSource) {
    layer.weight.value = Tensor.randomNormal(layer.weight.value.shape, std: 0.02, using: &rng)
    if let bias = layer.bias { bias.value = Tensor(shape: bias.value.shape) }
}
