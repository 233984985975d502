import MSQ
import Testing

// Central-difference gradient checks of the transformer layers and a tiny DeiT: layer norm,
// attention, the token MLP, a pre-norm block, the patch embedding, the whole network. All are
// smooth (GELU, softmax, layer norm), so every compared element must agree; Richardson
// extrapolation removes the h² error of layer norm's and softmax's curvature on small widths.

/// Step and relative tolerance of the transformer checks.
let transformerGradStep: Float = 1e-2
let transformerGradTolerance = 5e-3

private func transformerSettings(maxChecked: Int = 48) -> GradCheckSettings {
    var s = settings(transformerGradStep, transformerGradTolerance, maxChecked: maxChecked)
    s.richardson = true
    return s
}

/// γ and β away from 1 and 0, so their gradients are not trivially shaped.
private func randomizeLayerNorms(_ module: any Module, rng: inout RandomSource) {
    module.visitModules(prefix: "") { _, m in
        guard let ln = m as? LayerNorm else { return }
        ln.weight.value = Tensor(shape: [ln.dim], scalars: randomTensor([ln.dim], rng: &rng, scale: 0.5).scalars.map { $0 + 1 })
        ln.bias.value = randomTensor([ln.dim], rng: &rng, scale: 0.5)
    }
}

/// Linear weights as large as PyTorch's default (timm's N(0, 0.02²) makes attention nearly uniform).
private func enlargeLinears(_ module: any Module, rng: inout RandomSource) {
    module.visitModules(prefix: "") { _, m in
        guard let fc = m as? Linear else { return }
        fc.weight.value = randomTensor(fc.weight.value.shape, rng: &rng, scale: 0.6)
        if let bias = fc.bias { bias.value = randomTensor(bias.value.shape, rng: &rng, scale: 0.2) }
    }
}

@Suite("Transformer gradient checks")
struct TransformerGradientTests {
    @Test("LayerNorm")
    func layerNorm() {
        var rng = RandomSource(seed: 41)
        let ln = LayerNorm(dim: 5)
        randomizeLayerNorms(ln, rng: &rng)
        gradientCheck(ln, input: randomTensor([2, 3, 5], rng: &rng, scale: 2), mode: .train,
                      settings: transformerSettings(), seed: 1, label: "LayerNorm")
    }

    @Test("MultiHeadSelfAttention", arguments: [1, 2])
    func attention(heads: Int) {
        var rng = RandomSource(seed: 42)
        let attn = MultiHeadSelfAttention(dim: 6, heads: heads, rng: &rng)
        enlargeLinears(attn, rng: &rng)
        gradientCheck(attn, input: randomTensor([2, 4, 6], rng: &rng), mode: .train,
                      settings: transformerSettings(), seed: 2, label: "attention heads \(heads)")
    }

    @Test("TokenMLP")
    func mlp() {
        var rng = RandomSource(seed: 43)
        let mlp = TokenMLP(dim: 4, hidden: 8, rng: &rng)
        enlargeLinears(mlp, rng: &rng)
        gradientCheck(mlp, input: randomTensor([2, 3, 4], rng: &rng), mode: .train,
                      settings: transformerSettings(), seed: 3, label: "TokenMLP")
    }

    @Test("TransformerBlock")
    func block() {
        var rng = RandomSource(seed: 44)
        let block = TransformerBlock(dim: 6, heads: 2, mlpRatio: 2, rng: &rng)
        enlargeLinears(block, rng: &rng)
        randomizeLayerNorms(block, rng: &rng)
        gradientCheck(block, input: randomTensor([2, 4, 6], rng: &rng), mode: .train,
                      settings: transformerSettings(), seed: 4, label: "TransformerBlock")
    }

    @Test("PatchEmbedding")
    func patchEmbedding() {
        var rng = RandomSource(seed: 45)
        let embed = PatchEmbedding(inChannels: 2, dim: 5, patch: 2, rng: &rng)
        gradientCheck(embed, input: randomTensor([2, 2, 4, 6], rng: &rng), mode: .train,
                      settings: settings(conv2dGradStep, conv2dGradTolerance), seed: 5, label: "PatchEmbedding")
    }

    @Test("Tiny vision transformer (dim 8, depth 2, 2 heads, patch 2, 2×4×4 images, batch 2)", arguments: [ForwardMode.train, .eval])
    func tinyViT(mode: ForwardMode) {
        var rng = RandomSource(seed: 46)
        let vit = VisionTransformer(.init(dim: 8, depth: 2, heads: 2, patch: 2, mlpRatio: 2),
                                    inputChannels: 2, numClasses: 3, imageSize: 4, rng: &rng)
        enlargeLinears(vit, rng: &rng)
        randomizeLayerNorms(vit, rng: &rng)
        vit.classToken.value = randomTensor([1, 1, 8], rng: &rng, scale: 0.5)
        gradientCheck(vit, input: randomTensor([2, 2, 4, 4], rng: &rng), mode: mode,
                      settings: transformerSettings(maxChecked: 32), seed: 6, label: "tiny ViT \(mode)")
    }
}
