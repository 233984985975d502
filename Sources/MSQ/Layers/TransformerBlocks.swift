/// A transformer's feed-forward network on tokens, as timm's `Mlp` and torchvision's Swin `MLP`:
/// `fc2(GELU(fc1(x)))`.
///
/// Shapes: input and output `[..., dim]` (DeiT's `[N, T, dim]`, Swin's NHWC `[N, H, W, dim]`),
/// hidden width `hidden`; fc1 dim → hidden, fc2 hidden → dim, initialised as timm and torchvision's
/// Swin do (weights ~ N(0, 0.02²), biases 0). Children named by ``Naming``.
public final class TokenMLP: Module {
    /// The children's names: timm's (`fc1`, `act`, `fc2`) or torchvision's Swin (`0`, `1`, `3`;
    /// its indices 2 and 4 are dropouts, which have no parameters).
    public enum Naming: Sendable {
        /// `fc1`, `act`, `fc2`.
        case timm
        /// `0`, `1`, `3`.
        case torchvision

        var names: (fc1: String, act: String, fc2: String) { self == .timm ? ("fc1", "act", "fc2") : ("0", "1", "3") }
    }

    /// Dim → hidden.
    public let fc1: Linear
    /// The exact (erf) GELU.
    public let act = Activation(.gelu)
    /// Hidden → dim.
    public let fc2: Linear
    /// How the children are named.
    public let naming: Naming
    private var tokenShape: [Int]?

    /// A feed-forward network of width `dim` with `hidden` hidden units.
    public init(dim: Int, hidden: Int, naming: Naming = .timm, rng: inout RandomSource) {
        self.naming = naming
        fc1 = Linear(inFeatures: dim, outFeatures: hidden, rng: &rng)
        fc2 = Linear(inFeatures: hidden, outFeatures: dim, rng: &rng)
        initTransformerLinear(fc1, rng: &rng)
        initTransformerLinear(fc2, rng: &rng)
    }

    /// `fc2(GELU(fc1(x)))` on every token.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let rows = tokenRows(input.shape, width: fc1.inFeatures)
        tokenShape = input.shape
        let h = act.forward(fc1.forward(input.reshaped(rows), mode: mode), mode: mode)
        return fc2.forward(h, mode: mode).reshaped(input.shape)
    }

    /// dx, with the linears' parameter gradients accumulated.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let d = tokenShape else { fatalError("TokenMLP: backward called without a preceding forward") }
        LayerKit.require(gradOutput.shape == d, "TokenMLP: gradient shape \(gradOutput.shape) does not match output \(d)")
        tokenShape = nil
        let g = act.backward(fc2.backward(gradOutput.reshaped(tokenRows(d, width: fc2.outFeatures))))
        return fc1.backward(g).reshaped(d)
    }

    /// `fc1.*`, then `fc2.*` (under ``naming``'s names).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        fc1.visitParameters(prefix: joinPath(prefix, naming.names.fc1), body)
        fc2.visitParameters(prefix: joinPath(prefix, naming.names.fc2), body)
    }

    /// `fc1`, `act`, `fc2` (under ``naming``'s names).
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        let n = naming.names
        LayerKit.visitChildren([(n.fc1, fc1), (n.act, act), (n.fc2, fc2)], prefix: prefix, body)
    }

    /// `[tokens, width]` for a `[..., width]` shape.
    fileprivate func tokenRows(_ d: [Int], width: Int) -> [Int] {
        LayerKit.require(d.count >= 2 && d.last == width, "TokenMLP: expected [..., \(width)], got \(d)")
        return [d.dropLast().reduce(1, *), width]
    }
}

/// A pre-norm transformer block: `h = x + attn(norm1(x))`, `y = h + mlp(norm2(h))`, as timm's
/// `Block` (``TransformerBlock``) and torchvision's Swin `SwinTransformerBlock`
/// (``SwinTransformerBlock``); `Attention` is the token mixer.
///
/// Shapes: input and output `[..., dim]` (DeiT's `[N, T, dim]`, Swin's NHWC `[N, H, W, dim]`).
public final class PreNormBlock<Attention: Module>: Module {
    /// Normalises the attention's input.
    public let norm1: LayerNorm
    /// The token mixer.
    public let attn: Attention
    /// Normalises the MLP's input.
    public let norm2: LayerNorm
    /// Feed-forward network.
    public let mlp: TokenMLP

    /// A block of the given parts; both layer norms over `dim` with `epsilon`.
    init(dim: Int, epsilon: Float, attn: Attention, mlp: TokenMLP) {
        norm1 = LayerNorm(dim: dim, epsilon: epsilon)
        self.attn = attn
        norm2 = LayerNorm(dim: dim, epsilon: epsilon)
        self.mlp = mlp
    }

    /// `h = x + attn(norm1(x))`, `y = h + mlp(norm2(h))`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let h = LayerKit.add(input, attn.forward(norm1.forward(input, mode: mode), mode: mode), context: "transformer block")
        return LayerKit.add(h, mlp.forward(norm2.forward(h, mode: mode), mode: mode), context: "transformer block")
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

/// timm's pre-norm transformer block (DeiT): multi-head self-attention and a `fc1`/`fc2` MLP.
public typealias TransformerBlock = PreNormBlock<MultiHeadSelfAttention>

extension PreNormBlock where Attention == MultiHeadSelfAttention {
    /// A block of width `dim` with `heads` heads and an MLP `mlpRatio` times as wide.
    public convenience init(dim: Int, heads: Int, mlpRatio: Int = 4, epsilon: Float = 1e-6, rng: inout RandomSource) {
        let attn = MultiHeadSelfAttention(dim: dim, heads: heads, rng: &rng)
        let mlp = TokenMLP(dim: dim, hidden: mlpRatio * dim, rng: &rng)
        self.init(dim: dim, epsilon: epsilon, attn: attn, mlp: mlp)
    }
}

extension TokenMLP: CurvatureModule {
    /// `y` and its tangent through fc1, GELU and fc2, token by token.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        let rows = tokenRows(input.shape, width: fc1.inFeatures)
        var x = fc1.rForward(input.reshaped(rows), tangent: tangent?.reshaped(rows))
        x = act.rForward(x.output, tangent: x.tangent)
        x = fc2.rForward(x.output, tangent: x.tangent)
        return (x.output.reshaped(input.shape), x.tangent?.reshaped(input.shape))
    }

    /// `(g_x, R g_x)` back through fc2, GELU (with its second derivative) and fc1.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let d = tangent.shape
        let rows = tokenRows(d, width: fc2.outFeatures)
        var g = fc2.rBackward(gradient?.reshaped(rows), tangent: tangent.reshaped(rows), inputGradients: true)
        g = rBackwardChained(act, g)
        g = rBackwardChained(fc1, g, inputGradients: inputGradients)
        let inputShape = Array(d.dropLast()) + [fc1.inFeatures]
        return (g.gradient?.reshaped(inputShape), g.tangent?.reshaped(inputShape))
    }

    /// GELU is curved: not piecewise linear.
    public var isPiecewiseLinear: Bool { false }
}

extension PreNormBlock: CurvatureModule where Attention: CurvatureModule {
    /// `h = x + attn(norm1(x))`, `y = h + mlp(norm2(h))` and their tangents.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        let n1 = norm1.rForward(input, tangent: tangent)
        let a = attn.rForward(n1.output, tangent: n1.tangent)
        let h = LayerKit.add(input, a.output, context: "transformer block")
        let rh = addTangents(tangent, a.tangent, context: "transformer block tangent")
        let n2 = norm2.rForward(h, tangent: rh)
        let m = mlp.rForward(n2.output, tangent: n2.tangent)
        return (LayerKit.add(h, m.output, context: "transformer block"), addTangents(rh, m.tangent, context: "transformer block tangent"))
    }

    /// `(g_h, R g_h) = (g_y, R g_y) + norm2ᵀ·mlpᵀ·(g_y, R g_y)`, then the same through attn and
    /// norm1 (attn's R-backward runs even when the caller discards input gradients: its linears
    /// accumulate H·v).
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let m = rBackwardChained(norm2, mlp.rBackward(gradient, tangent: tangent, inputGradients: true))
        let dh = addTangents(gradient, m.gradient, context: "transformer block gradient")
        guard let rdh = addTangents(tangent, m.tangent, context: "transformer block tangent") else {
            preconditionFailure("transformer block: no tangent")
        }
        let a = attn.rBackward(dh, tangent: rdh, inputGradients: inputGradients)
        guard inputGradients else { return (nil, nil) }
        let n = rBackwardChained(norm1, a)
        return (addTangents(dh, n.gradient, context: "transformer block gradient"),
                addTangents(rdh, n.tangent, context: "transformer block tangent"))
    }

    /// Attention, layer norm and GELU: not piecewise linear.
    public var isPiecewiseLinear: Bool { false }
}
