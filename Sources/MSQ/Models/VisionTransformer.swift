import CKernels

/// A vision transformer's patch embedding, as timm's `PatchEmbed`: a `patch × patch` convolution of
/// stride `patch` (`proj`) whose output planes `[N, dim, h, w]` become tokens `[N, h·w, dim]`.
public final class PatchEmbedding: Module {
    /// The patch convolution (a ``Conv2d``, so quantization methods find it).
    public let proj: Conv2d
    private var gridShape: [Int]?
    private var curvatureGrid: [Int]?

    /// Patches of `patch × patch` pixels of `inChannels`-channel images, embedded in `dim`
    /// dimensions; PyTorch's default convolution initialisation (timm leaves it so):
    /// weight and bias ~ U(±1/sqrt(fan_in)).
    public init(inChannels: Int, dim: Int, patch: Int, rng: inout RandomSource) {
        proj = Conv2d(inChannels: inChannels, outChannels: dim, kernelSize: patch, stride: patch, rng: &rng)
        let bound = 1 / Float(inChannels * patch * patch).squareRoot()
        proj.weight.value = Tensor.randomUniform(proj.weight.value.shape, bound: bound, using: &rng)
        proj.bias?.value = Tensor.randomUniform([dim], bound: bound, using: &rng)
    }

    /// `[N, C, H, W]` → tokens `[N, (H/patch)·(W/patch), dim]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let planes = proj.forward(input, mode: mode)
        gridShape = planes.shape
        return Self.tokens(of: planes)
    }

    /// dx through the token layout and the convolution.
    public func backward(_ gradOutput: Tensor) -> Tensor { proj.backward(planeGradient(gradOutput)) }

    /// The convolution's parameter gradients only.
    public func backwardParameters(_ gradOutput: Tensor) { proj.backwardParameters(planeGradient(gradOutput)) }

    private func planeGradient(_ gradOutput: Tensor) -> Tensor {
        guard let s = gridShape else { fatalError("PatchEmbedding: backward called without a preceding forward") }
        gridShape = nil
        return Self.planes(of: gradOutput, shape: s)
    }

    /// Planes `[N, dim, h, w]` → tokens `[N, h·w, dim]`.
    fileprivate static func tokens(of planes: Tensor) -> Tensor {
        let s = planes.shape
        let (n, dim, hw) = (s[0], s[1], s[2] * s[3])
        var tokens = Tensor(unfilledShape: [n, hw, dim])
        planes.withUnsafePointer { x in
            tokens.withUnsafeMutablePointer { y in msq_transpose_batched(y, x, LayerKit.c(n), LayerKit.c(dim), LayerKit.c(hw), 0) }
        }
        return tokens
    }

    /// Tokens `[N, h·w, dim]` → planes of `shape` `[N, dim, h, w]` (the adjoint of ``tokens(of:)``).
    fileprivate static func planes(of tokens: Tensor, shape s: [Int]) -> Tensor {
        let (n, dim, hw) = (s[0], s[1], s[2] * s[3])
        LayerKit.require(tokens.shape == [n, hw, dim], "PatchEmbedding: gradient shape \(tokens.shape), expected \([n, hw, dim])")
        var planes = Tensor(shape: s)
        tokens.withUnsafePointer { dy in
            planes.withUnsafeMutablePointer { dx in msq_transpose_batched(dx, dy, LayerKit.c(n), LayerKit.c(hw), LayerKit.c(dim), 1) }
        }
        return planes
    }

    /// `proj.*`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        proj.visitParameters(prefix: joinPath(prefix, "proj"), body)
    }

    /// `proj`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("proj", proj)], prefix: prefix, body)
    }
}

/// A vision transformer as timm builds DeiT (Touvron et al. 2021; no distillation token):
/// `patch_embed`, a class token prepended, `pos_embed` added, `blocks` (pre-norm
/// ``TransformerBlock``s), `norm` on the class token, `head`.
///
/// Input `[N, C, H, W]` with H and W multiples of `patch`; output `[N, numClasses]`. Parameter names
/// are timm's (`blocks.0.attn.qkv.weight`), so its weights load unchanged. DeiT-Tiny (dim 192,
/// 3 heads) and DeiT-Small (dim 384, 6 heads) are depth 12, patch 16, MLP ratio 4 at 224²: 5,717,416
/// and 22,050,664 parameters at 1000 classes. Initialisation as timm's: `pos_embed` ~ N(0, 0.02²),
/// `cls_token` ~ N(0, 1e-12), linears ~ N(0, 0.02²) with zero biases, layer norms 1 and 0.
public final class VisionTransformer: Module {
    /// The shape of a vision transformer.
    public struct Configuration: Equatable, Sendable {
        /// Token width.
        public var dim: Int
        /// Number of blocks.
        public var depth: Int
        /// Attention heads per block.
        public var heads: Int
        /// Side of a square patch, in pixels.
        public var patch: Int
        /// Hidden width of the MLPs over `dim`.
        public var mlpRatio: Int = 4

        /// A configuration; see the stored properties.
        public init(dim: Int, depth: Int, heads: Int, patch: Int, mlpRatio: Int = 4) {
            self.dim = dim
            self.depth = depth
            self.heads = heads
            self.patch = patch
            self.mlpRatio = mlpRatio
        }

        /// DeiT-Tiny: dim 192, depth 12, 3 heads, patch 16.
        public static let deitTiny = Configuration(dim: 192, depth: 12, heads: 3, patch: 16)
        /// DeiT-Small: dim 384, depth 12, 6 heads, patch 16.
        public static let deitSmall = Configuration(dim: 384, depth: 12, heads: 6, patch: 16)
    }

    /// The shape this network was built with.
    public let configuration: Configuration
    /// Image side the position embedding was built for.
    public let imageSize: Int
    /// Patches to tokens.
    public let patchEmbed: PatchEmbedding
    /// The class token `[1, 1, dim]`, not decayed.
    public let classToken: Parameter
    /// The position embedding `[1, 1 + tokens, dim]`, not decayed.
    public let positionEmbedding: Parameter
    /// The transformer blocks.
    public let blocks: [TransformerBlock]
    /// Normalises the class token before the head.
    public let norm: LayerNorm
    /// Dim → classes.
    public let head: Linear

    private var batch = 0

    /// Patches per image: `(imageSize / patch)²`.
    public var patchCount: Int { (imageSize / configuration.patch) * (imageSize / configuration.patch) }

    /// A vision transformer of the given shape for `imageSize × imageSize` images.
    public init(_ configuration: Configuration, inputChannels: Int, numClasses: Int, imageSize: Int, rng: inout RandomSource) {
        let c = configuration
        LayerKit.require(c.patch > 0 && imageSize >= c.patch && imageSize % c.patch == 0,
                         "VisionTransformer: image size \(imageSize) is not a multiple of the patch size \(c.patch)")
        LayerKit.require(c.depth > 0 && c.heads > 0 && c.dim % c.heads == 0 && c.mlpRatio > 0,
                         "VisionTransformer: invalid configuration \(c)")
        self.configuration = c
        self.imageSize = imageSize
        patchEmbed = PatchEmbedding(inChannels: inputChannels, dim: c.dim, patch: c.patch, rng: &rng)
        let tokens = 1 + (imageSize / c.patch) * (imageSize / c.patch)
        classToken = Parameter(Tensor.randomNormal([1, 1, c.dim], std: 1e-6, using: &rng), decays: false)
        positionEmbedding = Parameter(Tensor.randomNormal([1, tokens, c.dim], std: 0.02, using: &rng), decays: false)
        blocks = (0..<c.depth).map { _ in TransformerBlock(dim: c.dim, heads: c.heads, mlpRatio: c.mlpRatio, rng: &rng) }
        norm = LayerNorm(dim: c.dim)
        head = Linear(inFeatures: c.dim, outFeatures: numClasses, rng: &rng)
        initTransformerLinear(head, rng: &rng)
    }

    /// Logits `[N, numClasses]` for images `[N, C, imageSize, imageSize]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count == 4 && d[2] == imageSize && d[3] == imageSize,
                         "VisionTransformer: expected input [N, C, \(imageSize), \(imageSize)], got \(d)")
        batch = d[0]
        var x = sequence(patchEmbed.forward(input, mode: mode))
        for block in blocks { x = block.forward(x, mode: mode) }
        // Only the class token reaches the head, and layer norm is per token: normalise it alone.
        return head.forward(norm.forward(classTokens(x), mode: mode), mode: mode)
    }

    /// `[cls; patches[b]] + pos` per image `[N, 1 + patches, dim]`; with `tangent`, the tangent of
    /// that sequence for patch tangents `patches` (a zero class row, no position term: the class
    /// token and position embedding are held fixed).
    private func sequence(_ patches: Tensor, tangent: Bool = false) -> Tensor {
        let (n, dim, t) = (patches.shape[0], configuration.dim, patchCount + 1)
        var x = Tensor(unfilledShape: [n, t, dim])
        patches.withUnsafePointer { p in
            classToken.value.withUnsafePointer { cls in
                positionEmbedding.value.withUnsafePointer { pos in
                    x.withUnsafeMutablePointer { xp in
                        for b in 0..<n {
                            let row = xp + b * t * dim, patchRows = p + b * (t - 1) * dim
                            if tangent {
                                row.update(repeating: 0, count: dim)
                                (row + dim).update(from: patchRows, count: (t - 1) * dim)
                            } else {
                                msq_add_forward(row, cls, pos, dim)
                                msq_add_forward(row + dim, patchRows, pos + dim, (t - 1) * dim)
                            }
                        }
                    }
                }
            }
        }
        return x
    }

    /// Row 0 of each image's sequence `[N, T, dim]` → `[N, dim]`.
    private func classTokens(_ x: Tensor) -> Tensor {
        let (n, t, dim) = (x.shape[0], x.shape[1], x.shape[2])
        var cls = Tensor(unfilledShape: [n, dim])
        x.withUnsafePointer { xp in
            cls.withUnsafeMutablePointer { c in
                for b in 0..<n { (c + b * dim).update(from: xp + b * t * dim, count: dim) }
            }
        }
        return cls
    }

    /// The adjoint of ``classTokens(_:)``: `[N, dim]` into row 0 of zeros `[N, T, dim]`.
    private func scatterClassTokens(_ g: Tensor) -> Tensor {
        let (n, dim, t) = (batch, configuration.dim, patchCount + 1)
        var dx = Tensor(shape: [n, t, dim])
        g.withUnsafePointer { gp in
            dx.withUnsafeMutablePointer { dxp in
                for b in 0..<n { (dxp + b * t * dim).update(from: gp + b * dim, count: dim) }
            }
        }
        return dx
    }

    /// Rows 1… of each image's sequence gradient `[N, T, dim]` → `[N, T − 1, dim]`.
    private func patchRows(_ g: Tensor) -> Tensor {
        let (n, dim, t) = (batch, configuration.dim, patchCount + 1)
        var out = Tensor(unfilledShape: [n, t - 1, dim])
        g.withUnsafePointer { gp in
            out.withUnsafeMutablePointer { o in
                for b in 0..<n { (o + b * (t - 1) * dim).update(from: gp + b * t * dim + dim, count: (t - 1) * dim) }
            }
        }
        return out
    }

    /// dImages, with every parameter gradient accumulated.
    public func backward(_ gradOutput: Tensor) -> Tensor { patchEmbed.backward(tokenGradient(gradOutput)) }

    /// Every parameter gradient, without dImages.
    public func backwardParameters(_ gradOutput: Tensor) { patchEmbed.backwardParameters(tokenGradient(gradOutput)) }

    /// The gradient w.r.t. the patch tokens `[N, patches, dim]`; accumulates everything above them.
    private func tokenGradient(_ gradOutput: Tensor) -> Tensor {
        let (n, dim, t) = (batch, configuration.dim, patchCount + 1)
        var dx = scatterClassTokens(norm.backward(head.backward(gradOutput)))
        for block in blocks.reversed() { dx = block.backward(dx) }
        dx.withUnsafePointer { g in
            if classToken.trainable {
                classToken.grad.withUnsafeMutablePointer { dc in
                    for b in 0..<n { msq_accumulate(dc, g + b * t * dim, dim) }
                }
            }
            if positionEmbedding.trainable {
                positionEmbedding.grad.withUnsafeMutablePointer { dp in
                    for b in 0..<n { msq_accumulate(dp, g + b * t * dim, t * dim) }
                }
            }
        }
        return patchRows(dx)
    }

    /// `cls_token`, `pos_embed`, `patch_embed.*`, `blocks.i.*`, `norm.*`, `head.*` (timm's order).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        body(joinPath(prefix, "cls_token"), classToken)
        body(joinPath(prefix, "pos_embed"), positionEmbedding)
        patchEmbed.visitParameters(prefix: joinPath(prefix, "patch_embed"), body)
        for (i, block) in blocks.enumerated() { block.visitParameters(prefix: joinPath(prefix, "blocks.\(i)"), body) }
        norm.visitParameters(prefix: joinPath(prefix, "norm"), body)
        head.visitParameters(prefix: joinPath(prefix, "head"), body)
    }

    /// `patch_embed`, `blocks.i`, `norm`, `head`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        var children: [(String, any Module)] = [("patch_embed", patchEmbed)]
        for (i, block) in blocks.enumerated() { children.append(("blocks.\(i)", block)) }
        children += [("norm", norm), ("head", head)]
        LayerKit.visitChildren(children, prefix: prefix, body)
    }
}

extension PatchEmbedding: CurvatureModule {
    /// The convolution's R-forward (`conv(Rx, W) + conv(x, V)`), both laid out as tokens.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        let p = proj.rForward(input, tangent: tangent)
        curvatureGrid = p.output.shape
        return (Self.tokens(of: p.output), p.tangent.map(Self.tokens(of:)))
    }

    /// Both gradients back to planes, then the convolution's R-backward (which accumulates its H·v).
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let s = curvatureGrid else { fatalError("PatchEmbedding: rBackward called without a preceding rForward") }
        curvatureGrid = nil
        return proj.rBackward(gradient.map { Self.planes(of: $0, shape: s) }, tangent: Self.planes(of: tangent, shape: s),
                              inputGradients: inputGradients)
    }
}

extension VisionTransformer: CurvatureModule {
    /// Logits and their tangent: the patch embedding's, a zero class-token row (the class token and
    /// position embedding are held fixed), the blocks', the class token's norm and the head's.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        let d = input.shape
        LayerKit.require(d.count == 4 && d[2] == imageSize && d[3] == imageSize,
                         "VisionTransformer: expected input [N, C, \(imageSize), \(imageSize)], got \(d)")
        batch = d[0]
        let p = patchEmbed.rForward(input, tangent: tangent)
        var x = (output: sequence(p.output), tangent: p.tangent.map { sequence($0, tangent: true) })
        for block in blocks { x = block.rForward(x.output, tangent: x.tangent) }
        let c = norm.rForward(classTokens(x.output), tangent: x.tangent.map(classTokens))
        return head.rForward(c.output, tangent: c.tangent)
    }

    /// `(g, R g)` back through the head, the class token's norm, the blocks and the patch embedding.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let c = rBackwardChained(norm, head.rBackward(gradient, tangent: tangent, inputGradients: true))
        var x = (gradient: c.gradient.map(scatterClassTokens), tangent: c.tangent.map(scatterClassTokens))
        for block in blocks.reversed() { x = rBackwardChained(block, x) }
        return rBackwardChained(patchEmbed, (x.gradient.map(patchRows), x.tangent.map(patchRows)), inputGradients: inputGradients)
    }

    /// Attention, layer norm and GELU: not piecewise linear.
    public var isPiecewiseLinear: Bool { false }
}

extension VisionTransformer: SignedActivationInputs {
    /// Every linear: qkv and fc1 read layer-norm outputs, proj the attention's, fc2 GELU's, the head
    /// a layer norm's (the patch embedding reads the image and stays float by default).
    public var signedActivationInputs: Set<String> { linearLayerPaths(self) }
}
