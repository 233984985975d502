import CKernels

/// Swin's stem, torchvision's `features.0`: a `patch × patch` convolution of stride `patch`
/// (`0`), its planes `[N, dim, h, w]` permuted to NHWC tokens `[N, h, w, dim]` (`1`, no
/// parameters), and a layer norm (`2`, ε = 1e-5).
public final class SwinStem: Module {
    /// The patch convolution (a ``Conv2d``, so quantization methods find it).
    public let conv: Conv2d
    /// Layer norm over the embedding.
    public let norm: LayerNorm
    private var planeShape: [Int]?

    /// `inChannels`-channel images to `dim`-wide tokens; PyTorch's default convolution
    /// initialisation (torchvision leaves it so): weight and bias ~ U(±1/sqrt(fan_in)).
    public init(inChannels: Int, dim: Int, patch: Int, rng: inout RandomSource) {
        conv = Conv2d(inChannels: inChannels, outChannels: dim, kernelSize: patch, stride: patch, rng: &rng)
        let bound = 1 / Float(inChannels * patch * patch).squareRoot()
        conv.weight.value = Tensor.randomUniform(conv.weight.value.shape, bound: bound, using: &rng)
        conv.bias?.value = Tensor.randomUniform([dim], bound: bound, using: &rng)
        norm = LayerNorm(dim: dim, epsilon: 1e-5)
    }

    /// `[N, C, H, W]` → `[N, H/patch, W/patch, dim]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let planes = conv.forward(input, mode: mode)
        let s = planes.shape
        planeShape = s
        var tokens = Tensor(unfilledShape: [s[0], s[2], s[3], s[1]])
        planes.withUnsafePointer { x in
            tokens.withUnsafeMutablePointer { y in
                msq_transpose_batched(y, x, LayerKit.c(s[0]), LayerKit.c(s[1]), LayerKit.c(s[2] * s[3]), 0)
            }
        }
        return norm.forward(tokens, mode: mode)
    }

    /// dImages.
    public func backward(_ gradOutput: Tensor) -> Tensor { conv.backward(planeGradient(gradOutput)) }

    /// The parameter gradients only (the convolution skips its input gradient).
    public func backwardParameters(_ gradOutput: Tensor) { conv.backwardParameters(planeGradient(gradOutput)) }

    private func planeGradient(_ gradOutput: Tensor) -> Tensor {
        guard let s = planeShape else { fatalError("SwinStem: backward called without a preceding forward") }
        planeShape = nil
        let dTokens = norm.backward(gradOutput)
        var planes = Tensor(shape: s)
        dTokens.withUnsafePointer { dy in
            planes.withUnsafeMutablePointer { dx in
                msq_transpose_batched(dx, dy, LayerKit.c(s[0]), LayerKit.c(s[2] * s[3]), LayerKit.c(s[1]), 1)
            }
        }
        return planes
    }

    /// `0.*` (the convolution), `2.*` (the norm): torchvision's indices.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        conv.visitParameters(prefix: joinPath(prefix, "0"), body)
        norm.visitParameters(prefix: joinPath(prefix, "2"), body)
    }

    /// `0`, `2`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("0", conv), ("2", norm)], prefix: prefix, body)
    }
}

/// A Swin transformer as torchvision builds `swin_t` (Liu et al. 2021, v1), with torchvision's
/// parameter names, so its weights load unchanged: `features.0` the stem (``SwinStem``), then for
/// stage i `features.(2i+1).j` its ``SwinTransformerBlock``s (odd j shifted by window/2) and,
/// between stages, `features.(2i+2)` a ``PatchMerging``; `norm` (ε = 1e-5), the average over the
/// map, `head`.
///
/// Input `[N, C, H, W]` (any H, W at least `patch`; the stem drops a remainder as a strided
/// convolution does); tokens stay NHWC `[N, h, w, dim]` throughout, as torchvision keeps them;
/// output `[N, numClasses]`. Swin-T (``Configuration/swinTiny``): 28,288,354 parameters at 1000
/// classes. Initialisation as torchvision's: linears and bias tables ~ N(0, 0.02²) (its truncation
/// at ±2 never binds), zero biases, layer norms 1 and 0, the stem convolution PyTorch's default.
/// No stochastic depth (see ``SwinTransformerBlock``).
public final class SwinTransformer: Module {
    /// The shape of a Swin transformer.
    public struct Configuration: Equatable, Sendable {
        /// Token width of the first stage (doubled by every merge).
        public var embedDim: Int
        /// Blocks per stage.
        public var depths: [Int]
        /// Attention heads per stage.
        public var heads: [Int]
        /// Side of a square attention window, in tokens.
        public var window: Int
        /// Side of a square patch, in pixels.
        public var patch: Int
        /// Hidden width of the MLPs over the token width.
        public var mlpRatio: Int

        /// A configuration; see the stored properties.
        public init(embedDim: Int, depths: [Int], heads: [Int], window: Int, patch: Int, mlpRatio: Int = 4) {
            self.embedDim = embedDim
            self.depths = depths
            self.heads = heads
            self.window = window
            self.patch = patch
            self.mlpRatio = mlpRatio
        }

        /// torchvision's swin_t: embed 96, depths [2, 2, 6, 2], heads [3, 6, 12, 24], window 7, patch 4.
        public static let swinTiny = Configuration(embedDim: 96, depths: [2, 2, 6, 2], heads: [3, 6, 12, 24], window: 7, patch: 4)
        /// Swin-T's widths for small images (28×28 Fashion-MNIST): patch 2 (14 × 14 tokens, two
        /// windows of 7 a side, so shifted blocks mask), three stages of two blocks (14², 7², 4²
        /// tokens; the odd 7 × 7 map is zero-padded by the merge and the 4 × 4 one by the window).
        public static let swinTinySmallInput = Configuration(embedDim: 96, depths: [2, 2, 2], heads: [3, 6, 12], window: 7, patch: 2)

        /// Token width of stage `i`: `embedDim · 2^i`.
        public func width(ofStage i: Int) -> Int { embedDim << i }
    }

    /// The shape this network was built with.
    public let configuration: Configuration
    /// Patches to normalised NHWC tokens (`features.0`).
    public let stem: SwinStem
    /// The blocks of every stage (`features.1`, `features.3`, …).
    public let stages: [[SwinTransformerBlock]]
    /// The merges between stages (`features.2`, `features.4`, …).
    public let merges: [PatchMerging]
    /// Normalises the last stage's tokens.
    public let norm: LayerNorm
    /// Last width → classes.
    public let head: Linear

    private var finalShape: [Int]?

    /// A Swin transformer of the given shape.
    public init(_ configuration: Configuration, inputChannels: Int, numClasses: Int, rng: inout RandomSource) {
        let c = configuration
        LayerKit.require(!c.depths.isEmpty && c.depths.count == c.heads.count && c.depths.allSatisfy { $0 > 0 }
                            && c.window > 0 && c.patch > 0 && c.mlpRatio > 0
                            && c.heads.indices.allSatisfy { c.heads[$0] > 0 && c.width(ofStage: $0) % c.heads[$0] == 0 },
                         "SwinTransformer: invalid configuration \(c)")
        self.configuration = c
        stem = SwinStem(inChannels: inputChannels, dim: c.embedDim, patch: c.patch, rng: &rng)
        var stages: [[SwinTransformerBlock]] = [], merges: [PatchMerging] = []
        for (i, depth) in c.depths.enumerated() {
            let dim = c.width(ofStage: i)
            stages.append((0..<depth).map { j in
                SwinTransformerBlock(dim: dim, heads: c.heads[i], window: c.window, shift: j % 2 == 0 ? 0 : c.window / 2,
                                     mlpRatio: c.mlpRatio, rng: &rng)
            })
            if i < c.depths.count - 1 { merges.append(PatchMerging(dim: dim, rng: &rng)) }
        }
        self.stages = stages
        self.merges = merges
        let last = c.width(ofStage: c.depths.count - 1)
        norm = LayerNorm(dim: last, epsilon: 1e-5)
        head = Linear(inFeatures: last, outFeatures: numClasses, rng: &rng)
        initTransformerLinear(head, rng: &rng)
    }

    /// Logits `[N, numClasses]` for images `[N, C, H, W]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count == 4 && d[2] >= configuration.patch && d[3] >= configuration.patch,
                         "SwinTransformer: expected input [N, C, H, W] with H, W ≥ \(configuration.patch), got \(d)")
        var x = stem.forward(input, mode: mode)
        for (i, blocks) in stages.enumerated() {
            for block in blocks { x = block.forward(x, mode: mode) }
            if i < merges.count { x = merges[i].forward(x, mode: mode) }
        }
        let y = norm.forward(x, mode: mode)
        let s = y.shape
        finalShape = s
        // The mean over the h·w tokens of each image.
        let (n, hw, dim) = (s[0], s[1] * s[2], s[3])
        var pooled = Tensor(shape: [n, dim])
        y.withUnsafePointer { yp in
            pooled.withUnsafeMutablePointer { p in
                for b in 0..<n {
                    for t in 0..<hw { msq_accumulate(p + b * dim, yp + (b * hw + t) * dim, dim) }
                    for j in 0..<dim { p[b * dim + j] /= Float(hw) }
                }
            }
        }
        return head.forward(pooled, mode: mode)
    }

    /// dImages, with every parameter gradient accumulated.
    public func backward(_ gradOutput: Tensor) -> Tensor { stem.backward(tokenGradient(gradOutput)) }

    /// Every parameter gradient, without dImages.
    public func backwardParameters(_ gradOutput: Tensor) { stem.backwardParameters(tokenGradient(gradOutput)) }

    /// The gradient w.r.t. the stem's tokens; accumulates everything above them.
    private func tokenGradient(_ gradOutput: Tensor) -> Tensor {
        guard let s = finalShape else { fatalError("SwinTransformer: backward called without a preceding forward") }
        finalShape = nil
        let dPooled = head.backward(gradOutput)
        let (n, hw, dim) = (s[0], s[1] * s[2], s[3])
        var dy = Tensor(unfilledShape: s)
        dPooled.withUnsafePointer { g in
            dy.withUnsafeMutablePointer { d in
                for b in 0..<n {
                    for j in 0..<dim {
                        let v = g[b * dim + j] / Float(hw)
                        for t in 0..<hw { d[(b * hw + t) * dim + j] = v }
                    }
                }
            }
        }
        var dx = norm.backward(dy)
        for i in stages.indices.reversed() {
            if i < merges.count { dx = merges[i].backward(dx) }
            for block in stages[i].reversed() { dx = block.backward(dx) }
        }
        return dx
    }

    /// `features.0.*`, `features.1.j.*`, `features.2.*`, …, `norm.*`, `head.*` (torchvision's order).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        for (name, module) in children { module.visitParameters(prefix: joinPath(prefix, name), body) }
    }

    /// `features.0`, `features.1.j`, `features.2`, …, `norm`, `head`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren(children, prefix: prefix, body)
    }

    private var children: [(String, any Module)] {
        var out: [(String, any Module)] = [("features.0", stem)]
        for (i, blocks) in stages.enumerated() {
            for (j, block) in blocks.enumerated() { out.append(("features.\(2 * i + 1).\(j)", block)) }
            if i < merges.count { out.append(("features.\(2 * i + 2)", merges[i])) }
        }
        return out + [("norm", norm), ("head", head)]
    }
}

extension SwinTransformer: SignedActivationInputs {
    /// Every linear: qkv, fc1, the merges' reductions and the head read layer-norm outputs, proj the
    /// attention's, fc2 GELU's (the stem convolution reads the image and stays float by default).
    public var signedActivationInputs: Set<String> { linearLayerPaths(self) }
}
