import CKernels

/// A vision transformer's patch embedding, as timm's `PatchEmbed`: a `patch × patch` convolution of
/// stride `patch` (`proj`) whose output planes `[N, dim, h, w]` become tokens `[N, h·w, dim]`.
public final class PatchEmbedding: Module {
    /// The patch convolution (a ``Conv2d``, so quantization methods find it).
    public let proj: Conv2d
    private var gridShape: [Int]?

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
        let s = planes.shape
        gridShape = s
        let (n, dim, hw) = (s[0], s[1], s[2] * s[3])
        var tokens = Tensor(unfilledShape: [n, hw, dim])
        planes.withUnsafePointer { x in
            tokens.withUnsafeMutablePointer { y in msq_transpose_batched(y, x, LayerKit.c(n), LayerKit.c(dim), LayerKit.c(hw), 0) }
        }
        return tokens
    }

    /// dx through the token layout and the convolution.
    public func backward(_ gradOutput: Tensor) -> Tensor { proj.backward(planeGradient(gradOutput)) }

    /// The convolution's parameter gradients only.
    public func backwardParameters(_ gradOutput: Tensor) { proj.backwardParameters(planeGradient(gradOutput)) }

    private func planeGradient(_ gradOutput: Tensor) -> Tensor {
        guard let s = gridShape else { fatalError("PatchEmbedding: backward called without a preceding forward") }
        let (n, dim, hw) = (s[0], s[1], s[2] * s[3])
        LayerKit.require(gradOutput.shape == [n, hw, dim], "PatchEmbedding: gradient shape \(gradOutput.shape), expected \([n, hw, dim])")
        gridShape = nil
        var planes = Tensor(shape: s)
        gradOutput.withUnsafePointer { dy in
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
        let patches = patchEmbed.forward(input, mode: mode)
        let (n, dim, t) = (d[0], configuration.dim, patchCount + 1)
        batch = n
        // tokens[b] = [cls; patches[b]] + pos
        var x = Tensor(unfilledShape: [n, t, dim])
        patches.withUnsafePointer { p in
            classToken.value.withUnsafePointer { cls in
                positionEmbedding.value.withUnsafePointer { pos in
                    x.withUnsafeMutablePointer { xp in
                        for b in 0..<n {
                            let row = xp + b * t * dim
                            msq_add_forward(row, cls, pos, dim)
                            msq_add_forward(row + dim, p + b * (t - 1) * dim, pos + dim, (t - 1) * dim)
                        }
                    }
                }
            }
        }
        for block in blocks { x = block.forward(x, mode: mode) }
        // Only the class token reaches the head, and layer norm is per token: normalise it alone.
        var cls = Tensor(unfilledShape: [n, dim])
        x.withUnsafePointer { xp in
            cls.withUnsafeMutablePointer { c in
                for b in 0..<n { (c + b * dim).update(from: xp + b * t * dim, count: dim) }
            }
        }
        return head.forward(norm.forward(cls, mode: mode), mode: mode)
    }

    /// dImages, with every parameter gradient accumulated.
    public func backward(_ gradOutput: Tensor) -> Tensor { patchEmbed.backward(tokenGradient(gradOutput)) }

    /// Every parameter gradient, without dImages.
    public func backwardParameters(_ gradOutput: Tensor) { patchEmbed.backwardParameters(tokenGradient(gradOutput)) }

    /// The gradient w.r.t. the patch tokens `[N, patches, dim]`; accumulates everything above them.
    private func tokenGradient(_ gradOutput: Tensor) -> Tensor {
        let (n, dim, t) = (batch, configuration.dim, patchCount + 1)
        let dcls = norm.backward(head.backward(gradOutput))
        var dx = Tensor(shape: [n, t, dim])
        dcls.withUnsafePointer { g in
            dx.withUnsafeMutablePointer { dxp in
                for b in 0..<n { (dxp + b * t * dim).update(from: g + b * dim, count: dim) }
            }
        }
        for block in blocks.reversed() { dx = block.backward(dx) }
        var dPatches = Tensor(unfilledShape: [n, t - 1, dim])
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
            dPatches.withUnsafeMutablePointer { dpp in
                for b in 0..<n { (dpp + b * (t - 1) * dim).update(from: g + b * t * dim + dim, count: (t - 1) * dim) }
            }
        }
        return dPatches
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
