/// A transformer's feed-forward network on tokens, as timm's `Mlp`: `fc2(GELU(fc1(x)))`.
///
/// Shapes: input and output `[N, T, dim]`, hidden width `hidden`; fc1 dim → hidden, fc2 hidden →
/// dim, initialised as timm's (weights ~ N(0, 0.02²), biases 0).
public final class TokenMLP: Module {
    /// Dim → hidden.
    public let fc1: Linear
    /// The exact (erf) GELU.
    public let act = Activation(.gelu)
    /// Hidden → dim.
    public let fc2: Linear
    private var tokenShape: [Int]?

    /// A feed-forward network of width `dim` with `hidden` hidden units.
    public init(dim: Int, hidden: Int, rng: inout RandomSource) {
        fc1 = Linear(inFeatures: dim, outFeatures: hidden, rng: &rng)
        fc2 = Linear(inFeatures: hidden, outFeatures: dim, rng: &rng)
        initTransformerLinear(fc1, rng: &rng)
        initTransformerLinear(fc2, rng: &rng)
    }

    /// `fc2(GELU(fc1(x)))` on every token.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count == 3 && d[2] == fc1.inFeatures, "TokenMLP: expected input [N, T, \(fc1.inFeatures)], got \(d)")
        tokenShape = d
        let h = act.forward(fc1.forward(input.reshaped([d[0] * d[1], d[2]]), mode: mode), mode: mode)
        return fc2.forward(h, mode: mode).reshaped(d)
    }

    /// dx, with the linears' parameter gradients accumulated.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let d = tokenShape else { fatalError("TokenMLP: backward called without a preceding forward") }
        LayerKit.require(gradOutput.shape == d, "TokenMLP: gradient shape \(gradOutput.shape) does not match output \(d)")
        tokenShape = nil
        let g = act.backward(fc2.backward(gradOutput.reshaped([d[0] * d[1], d[2]])))
        return fc1.backward(g).reshaped(d)
    }

    /// `fc1.*`, then `fc2.*`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        fc1.visitParameters(prefix: joinPath(prefix, "fc1"), body)
        fc2.visitParameters(prefix: joinPath(prefix, "fc2"), body)
    }

    /// `fc1`, `act`, `fc2`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("fc1", fc1), ("act", act), ("fc2", fc2)], prefix: prefix, body)
    }
}

/// A pre-norm transformer block, as timm's `Block`:
/// `h = x + attn(norm1(x))`, `y = h + mlp(norm2(h))`.
///
/// Shapes: input and output `[N, T, dim]`.
public final class TransformerBlock: Module {
    /// Normalises the attention's input.
    public let norm1: LayerNorm
    /// Multi-head self-attention.
    public let attn: MultiHeadSelfAttention
    /// Normalises the MLP's input.
    public let norm2: LayerNorm
    /// Feed-forward network of width `mlpRatio · dim`.
    public let mlp: TokenMLP

    /// A block of width `dim` with `heads` heads and an MLP `mlpRatio` times as wide.
    public init(dim: Int, heads: Int, mlpRatio: Int = 4, epsilon: Float = 1e-6, rng: inout RandomSource) {
        norm1 = LayerNorm(dim: dim, epsilon: epsilon)
        attn = MultiHeadSelfAttention(dim: dim, heads: heads, rng: &rng)
        norm2 = LayerNorm(dim: dim, epsilon: epsilon)
        mlp = TokenMLP(dim: dim, hidden: mlpRatio * dim, rng: &rng)
    }

    /// `h = x + attn(norm1(x))`, `y = h + mlp(norm2(h))`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let h = LayerKit.add(input, attn.forward(norm1.forward(input, mode: mode), mode: mode), context: "TransformerBlock")
        return LayerKit.add(h, mlp.forward(norm2.forward(h, mode: mode), mode: mode), context: "TransformerBlock")
    }

    /// dx = dh + norm1ᵀ·attnᵀ·dh with dh = dy + norm2ᵀ·mlpᵀ·dy.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        var dh = norm2.backward(mlp.backward(gradOutput))
        LayerKit.accumulate(&dh, gradOutput)
        var dx = norm1.backward(attn.backward(dh))
        LayerKit.accumulate(&dx, dh)
        return dx
    }

    /// `norm1.*`, `attn.*`, `norm2.*`, `mlp.*`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        norm1.visitParameters(prefix: joinPath(prefix, "norm1"), body)
        attn.visitParameters(prefix: joinPath(prefix, "attn"), body)
        norm2.visitParameters(prefix: joinPath(prefix, "norm2"), body)
        mlp.visitParameters(prefix: joinPath(prefix, "mlp"), body)
    }

    /// `norm1`, `attn`, `norm2`, `mlp`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("norm1", norm1), ("attn", attn), ("norm2", norm2), ("mlp", mlp)], prefix: prefix, body)
    }
}
