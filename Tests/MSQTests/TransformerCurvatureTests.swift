import MSQ
import Testing

// The R-operator of the transformer modules (layer norm, attention, token MLP, pre-norm block,
// patch embedding, a tiny DeiT): each module's R-forward and R-backward against the directional
// derivatives they stand for — central differences of its forward and backward along
// (x + h·Rx, W + h·V, g_y + h·R g_y), V a tangent on every conv/linear weight, Richardson-
// extrapolated — and, for the whole network, the exact Hessian-vector product against central
// differences of the loss gradient, its symmetry, and the Gauss-Newton product differing from it.

/// Step of the float32 difference quotients (Richardson: (4·D(h/2) − D(h)) / 3).
private let transformerRStep: Float = 1e-2
/// ‖R-pass − difference quotient‖ / ‖difference quotient‖: float32 round-off of the quotients
/// (~1e-7·|y|/h) plus the h⁴ term.
private let transformerRTolerance = 2e-3
/// The forward inside an R-forward is the forward: ‖y_R − y‖ / ‖y‖.
private let transformerRForwardValueTolerance = 1e-6
/// Symmetry of float32 exact HVPs: |uᵀHv − vᵀHu| / (‖u‖·‖Hv‖).
private let transformerSymmetryTolerance = 1e-4
/// On a network that is not piecewise linear, the Gauss-Newton and exact diagonal blocks must differ
/// by at least this (relative).
private let transformerGaussNewtonFloor = 1e-2

private func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
    let d = a - b
    return (d.squaredNorm() / max(b.squaredNorm(), 1e-300)).squareRoot()
}

/// The weights the R-operator differentiates by: every Conv2d and Linear weight of `module`.
private func curvatureWeights(_ module: any Module) -> [Parameter] {
    quantizableLayers(of: module).compactMap { ($0.module as? Conv2d)?.weight ?? ($0.module as? Linear)?.weight }
}

/// Richardson-extrapolated central difference of each tensor `f` returns, along h.
private func directionalDerivatives(_ f: (Float) throws -> [Tensor]) rethrows -> [Tensor] {
    let h = transformerRStep
    let (p, m, ph, mh) = (try f(h), try f(-h), try f(h / 2), try f(-h / 2))
    return p.indices.map { k in ((ph[k] - mh[k]) * (4 / h) - (p[k] - m[k]) * (1 / (2 * h))) * (1 / Float(3)) }
}

/// Checks `module`'s R-forward and R-backward (input and weight parts) against central differences
/// of its eval-mode forward and backward (the module must be smooth within ±h of the point).
func rOperatorCheck(_ module: any CurvatureModule, input: Tensor, seed: UInt64, label: String,
                            sourceLocation: SourceLocation = #_sourceLocation) {
    var rng = RandomSource(seed: seed)
    let weights = curvatureWeights(module)
    #expect(!weights.isEmpty, "\(label): no weights", sourceLocation: sourceLocation)
    let rx = randomTensor(input.shape, rng: &rng)
    let v = weights.map { randomTensor($0.value.shape, rng: &rng, scale: 0.5) }
    let y0 = module.forward(input, mode: .eval)
    let gy = randomTensor(y0.shape, rng: &rng), rgy = randomTensor(y0.shape, rng: &rng)

    for (p, t) in zip(weights, v) {
        p.tangent = t
        p.hessianVector = Tensor(shape: t.shape)
    }
    let (y, ry) = module.rForward(input, tangent: rx)
    let (gx, rgx) = module.rBackward(gy, tangent: rgy, inputGradients: true)
    let hv = weights.map { $0.hessianVector ?? Tensor(shape: $0.value.shape) }
    for p in weights {
        p.tangent = nil
        p.hessianVector = nil
    }

    let saved = weights.map(\.value)
    let numeric = directionalDerivatives { h in
        for (k, p) in weights.enumerated() { p.value = saved[k] + v[k] * h }
        module.zeroGradients()
        let out = module.forward(input + rx * h, mode: .eval)
        let dx = module.backward(gy + rgy * h)
        return [out, dx] + weights.map(\.grad)
    }
    for (k, p) in weights.enumerated() { p.value = saved[k] }
    module.zeroGradients()
    _ = module.forward(input, mode: .eval)
    let plainGx = module.backward(gy)
    module.zeroGradients()

    #expect(relativeError(y, y0) <= transformerRForwardValueTolerance, "\(label): y", sourceLocation: sourceLocation)
    if let gx {
        #expect(relativeError(gx, plainGx) <= transformerRForwardValueTolerance, "\(label): g_x", sourceLocation: sourceLocation)
    } else {
        Issue.record("\(label): no input gradient", sourceLocation: sourceLocation)
    }
    guard let ry, let rgx else {
        Issue.record("\(label): no tangent returned", sourceLocation: sourceLocation)
        return
    }
    let checks = [("Ry", ry, numeric[0]), ("R g_x", rgx, numeric[1])]
        + zip(weights.indices, hv).map { ("H·v of weight \($0)", $1, numeric[2 + $0]) }
    for (name, analytic, quotient) in checks {
        let err = relativeError(analytic, quotient)
        #expect(err <= transformerRTolerance, "\(label): \(name) relative error \(err)", sourceLocation: sourceLocation)
    }
}

/// γ and β away from 1 and 0; linear weights as large as PyTorch's default (timm's N(0, 0.02²)
/// makes attention nearly uniform and the curvature tiny).
private func roughen(_ module: any Module, rng: inout RandomSource) {
    module.visitModules(prefix: "") { _, m in
        if let ln = m as? LayerNorm {
            ln.weight.value = randomTensor([ln.dim], rng: &rng, scale: 0.5) + 1
            ln.bias.value = randomTensor([ln.dim], rng: &rng, scale: 0.5)
        } else if let fc = m as? Linear {
            fc.weight.value = randomTensor(fc.weight.value.shape, rng: &rng, scale: 0.6)
            if let bias = fc.bias { bias.value = randomTensor(bias.value.shape, rng: &rng, scale: 0.2) }
        }
    }
}

/// A tiny DeiT (dim 8, depth 2, 2 heads, patch 2, MLP ratio 2) on 2×4×4 images, 3 classes.
private func tinyViT(seed: UInt64) -> VisionTransformer {
    var rng = RandomSource(seed: seed)
    let vit = VisionTransformer(.init(dim: 8, depth: 2, heads: 2, patch: 2, mlpRatio: 2),
                                inputChannels: 2, numClasses: 3, imageSize: 4, rng: &rng)
    roughen(vit, rng: &rng)
    vit.classToken.value = randomTensor([1, 1, 8], rng: &rng, scale: 0.5)
    return vit
}

@Suite("Transformer R-operator")
struct TransformerCurvatureTests {
    @Test("MultiHeadSelfAttention R-passes are the directional derivatives of its forward and backward", arguments: [1, 2])
    func attention(heads: Int) {
        var rng = RandomSource(seed: 61)
        let attn = MultiHeadSelfAttention(dim: 6, heads: heads, rng: &rng)
        roughen(attn, rng: &rng)
        rOperatorCheck(attn, input: randomTensor([2, 5, 6], rng: &rng), seed: 1, label: "attention heads \(heads)")
    }

    @Test("TokenMLP R-passes (GELU's second derivative included)")
    func mlp() {
        var rng = RandomSource(seed: 62)
        let mlp = TokenMLP(dim: 4, hidden: 8, rng: &rng)
        roughen(mlp, rng: &rng)
        rOperatorCheck(mlp, input: randomTensor([2, 3, 4], rng: &rng, scale: 1.5), seed: 2, label: "TokenMLP")
    }

    @Test("TransformerBlock R-passes (layer norm, attention, MLP, residual sums)")
    func block() {
        var rng = RandomSource(seed: 63)
        let block = TransformerBlock(dim: 6, heads: 2, mlpRatio: 2, rng: &rng)
        roughen(block, rng: &rng)
        rOperatorCheck(block, input: randomTensor([2, 4, 6], rng: &rng, scale: 2), seed: 3, label: "TransformerBlock")
    }

    @Test("PatchEmbedding R-passes")
    func patchEmbedding() {
        var rng = RandomSource(seed: 64)
        let embed = PatchEmbedding(inChannels: 2, dim: 5, patch: 2, rng: &rng)
        rOperatorCheck(embed, input: randomTensor([2, 2, 4, 6], rng: &rng), seed: 4, label: "PatchEmbedding")
    }

    @Test("tiny DeiT R-passes, end to end")
    func vit() {
        var rng = RandomSource(seed: 65)
        rOperatorCheck(tinyViT(seed: 66), input: randomTensor([2, 2, 4, 4], rng: &rng), seed: 5, label: "tiny ViT")
    }

    @Test("tiny DeiT: the automatic mode is exact; exact H·v equals central differences of the loss gradient and is symmetric; Gauss-Newton differs on the qkv block")
    func vitHessianVectorProduct() throws {
        let vit = tinyViT(seed: 67)
        #expect(HessianMode.automatic(for: vit) == .exact)
        #expect(HessianMode.automatic(for: makeModel(.deitTiny, inputChannels: 1, numClasses: 10, seed: 0, inputSize: 28)) == .exact)
        var rng = RandomSource(seed: 68)
        let images = randomTensor([3, 2, 4, 4], rng: &rng)
        let labels: [Int32] = [0, 2, 1]
        let layers = quantizableLayers(of: vit).map { entry -> QuantizedLayer in
            let w = (entry.module as? Conv2d)?.weight ?? (entry.module as! Linear).weight
            return QuantizedLayer(path: entry.path, parameter: w, quantizer: RoundClampQuantizer(bits: 8), count: w.value.count)
        }
        let exact = HessianVectorProduct(model: vit, layers: layers, images: images, labels: labels, mode: .exact)
        let gn = HessianVectorProduct(model: vit, layers: layers, images: images, labels: labels, mode: .gaussNewton)
        let u = layers.map { randomTensor($0.parameter.value.shape, rng: &rng) }
        let v = layers.map { randomTensor($0.parameter.value.shape, rng: &rng, scale: 0.25) }
        let hv = try exact.apply(tensors: v), hu = try exact.apply(tensors: u)

        // Central differences of ∇L along v (Richardson), in float32.
        let saved = layers.map(\.parameter.value)
        let numeric = try directionalDerivatives { h in
            for (k, layer) in layers.enumerated() { layer.parameter.value = saved[k] + v[k] * h }
            return try exact.gradient().enumerated().map { k, g in
                Tensor(shape: saved[k].shape, scalars: g.map(Float.init))
            }
        }
        for (k, layer) in layers.enumerated() { layer.parameter.value = saved[k] }
        let all = { (t: [Tensor]) in Tensor(shape: [t.reduce(0) { $0 + $1.count }], scalars: t.flatMap(\.scalars)) }
        let err = relativeError(all(hv), all(numeric))
        #expect(err <= transformerRTolerance, "exact H·v vs central differences of the gradient: \(err)")

        func dot(_ a: [Tensor], _ b: [Tensor]) -> Double { zip(a, b).reduce(0) { $0 + $1.0.dot($1.1) } }
        let asymmetry = abs(dot(u, hv) - dot(v, hu)) / (all(u).squaredNorm().squareRoot() * all(hv).squaredNorm().squareRoot())
        #expect(asymmetry <= transformerSymmetryTolerance, "uᵀHv vs vᵀHu: \(asymmetry)")

        // The first block's qkv: attention is bilinear in its weights, so its own block has a
        // second-derivative term the Gauss-Newton product leaves out.
        let l = try #require(layers.firstIndex { $0.path == "blocks.0.attn.qkv" })
        let probe = layers.indices.map { $0 == l ? v[$0] : Tensor(shape: v[$0].shape) }
        let blockError = relativeError(try gn.apply(tensors: probe)[l], try exact.apply(tensors: probe)[l])
        #expect(blockError > transformerGaussNewtonFloor, "GN vs exact on blocks.0.attn.qkv: \(blockError)")
    }
}
