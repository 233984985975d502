import MSQ
import Testing

// The Swin layers and a tiny Swin against central differences (as TransformerGradientTests: all
// smooth, every compared element must agree, Richardson extrapolation), and Swin-T's shape.

/// The floor is at least 4 σ of the difference quotient's measured Float rounding noise. The tiny
/// Swin (L ≈ −2.1) jitters by σ_L ≈ 1.6e-7, so its Richardson quotient at h = 1e-2 carries
/// σ ≈ 3e-5 of noise, close to ``gradAbsoluteFloor`` (5e-5): with OpenBLAS's generic (Prescott)
/// sgemm kernels `features.1.0.attn.relative_position_bias_table[2]` came out 0.0011299 against
/// an analytic 0.0011955 (a float64 re-implementation of the network gives 0.00119553 at every
/// step from 1e-2 to 1e-5), with the Haswell/Zen kernels element [0] failed the same way
/// (−0.0033131 vs −0.0032461, float64 −0.0032461), with the SkylakeX ones nothing did. A larger
/// step is no way out: at h = 2e-2 the h⁴ term of the stem's bias (through a 4-wide layer norm)
/// already fails.
private func swinSettings(maxChecked: Int = 40) -> GradCheckSettings {
    var s = settings(transformerGradStep, transformerGradTolerance, maxChecked: maxChecked)
    s.richardson = true
    s.noiseSigmas = 4
    return s
}

/// Linear weights as large as PyTorch's default, bias tables of order 1, and layer norms away from
/// 1 and 0, so attention is far from uniform and no gradient is trivially shaped.
private func randomizeSwin(_ module: any Module, rng: inout RandomSource) {
    module.visitModules(prefix: "") { _, m in
        if let fc = m as? Linear {
            fc.weight.value = randomTensor(fc.weight.value.shape, rng: &rng, scale: 0.6)
            if let bias = fc.bias { bias.value = randomTensor(bias.value.shape, rng: &rng, scale: 0.2) }
        } else if let ln = m as? LayerNorm {
            ln.weight.value = Tensor(shape: [ln.dim], scalars: randomTensor([ln.dim], rng: &rng, scale: 0.5).scalars.map { $0 + 1 })
            ln.bias.value = randomTensor([ln.dim], rng: &rng, scale: 0.5)
        } else if let attn = m as? ShiftedWindowAttention {
            attn.relativePositionBiasTable.value = randomTensor(attn.relativePositionBiasTable.value.shape, rng: &rng)
        }
    }
}

@Suite("Swin")
struct SwinTests {
    /// (height, width, window, shift): no padding; padded and shifted along both axes; padded to a
    /// single window along one axis (its shift drops to 0, torchvision's rule).
    @Test("ShiftedWindowAttention", arguments: [[4, 4, 2, 0], [5, 7, 3, 1], [3, 6, 3, 1]])
    func attention(_ a: [Int]) {
        var rng = RandomSource(seed: 50)
        let attn = ShiftedWindowAttention(dim: 6, heads: 2, window: a[2], shift: a[3], rng: &rng)
        randomizeSwin(attn, rng: &rng)
        gradientCheck(attn, input: randomTensor([2, a[0], a[1], 6], rng: &rng), mode: .train,
                      settings: swinSettings(), seed: 7, label: "window attention \(a)")
    }

    @Test("SwinTransformerBlock (shifted, padded)")
    func block() {
        var rng = RandomSource(seed: 51)
        let block = SwinTransformerBlock(dim: 4, heads: 2, window: 2, shift: 1, mlpRatio: 2, rng: &rng)
        randomizeSwin(block, rng: &rng)
        gradientCheck(block, input: randomTensor([2, 3, 5, 4], rng: &rng), mode: .train,
                      settings: swinSettings(), seed: 8, label: "Swin block")
    }

    @Test("PatchMerging (even and odd sides)", arguments: [[4, 6], [5, 3]])
    func merging(_ a: [Int]) {
        var rng = RandomSource(seed: 52)
        let merge = PatchMerging(dim: 3, rng: &rng)
        randomizeSwin(merge, rng: &rng)
        gradientCheck(merge, input: randomTensor([2, a[0], a[1], 3], rng: &rng), mode: .train,
                      settings: swinSettings(), seed: 9, label: "patch merging \(a)")
    }

    @Test("Tiny Swin (embed 4, depths [2, 1], window 2, patch 1, 2×5×5 images: shifted and padded stage, odd merge)",
          arguments: [ForwardMode.train, .eval])
    func tinySwin(mode: ForwardMode) {
        var rng = RandomSource(seed: 53)
        let swin = SwinTransformer(.init(embedDim: 4, depths: [2, 1], heads: [1, 2], window: 2, patch: 1, mlpRatio: 2),
                                   inputChannels: 2, numClasses: 3, rng: &rng)
        randomizeSwin(swin, rng: &rng)
        gradientCheck(swin, input: randomTensor([2, 2, 5, 5], rng: &rng), mode: mode,
                      settings: swinSettings(maxChecked: 24), seed: 10, label: "tiny Swin \(mode)")
    }

    @Test("Swin-T has torchvision's names and 28,288,354 parameters at 1000 classes; small inputs get patch 2, three stages")
    func swinTiny() throws {
        let model = try #require(makeModel(.swinTiny, inputChannels: 3, numClasses: 1000, seed: 0) as? SwinTransformer)
        #expect(model.namedParameters().reduce(0) { $0 + $1.parameter.value.count } == 28_288_354)
        #expect(model.configuration == .swinTiny)
        let names = Set(model.namedParameters().map(\.name))
        for name in ["features.0.0.weight", "features.0.2.bias", "features.1.1.attn.relative_position_bias_table",
                     "features.5.5.mlp.3.weight", "features.6.reduction.weight", "features.7.1.norm2.weight", "head.bias"] {
            #expect(names.contains(name), "\(name)")
        }
        #expect(model.stages[0][1].attn.shift == 3 && model.stages[0][0].attn.shift == 0)
        let small = try #require(try makeModel(named: "swin-t", inputChannels: 1, numClasses: 10, seed: 0, inputSize: 28) as? SwinTransformer)
        #expect(small.configuration == .swinTinySmallInput)
        let logits = small.forward(Tensor(shape: [2, 1, 28, 28], repeating: 0.5), mode: .eval)
        #expect(logits.shape == [2, 10] && logits.scalars.allSatisfy(\.isFinite))
        #expect(ModelKind.swinTiny.isTransformer && ModelKind.deitTiny.isTransformer && !ModelKind.resnet18.isTransformer)
        // Sizes it cannot take are refused with a message, not a trap.
        #expect(throws: ModelError.self) { try checkImageSize(.swinTiny, height: 27, width: 28) }
        #expect(throws: ModelError.self) { try checkImageSize(.swinTiny, height: 1, width: 1) }
        #expect(throws: ModelError.self) { try checkImageSize(.swinTiny, height: 226, width: 224) }
        #expect(throws: ModelError.self) { try makeModel(named: "swin-t", inputChannels: 1, numClasses: 10, seed: 0, inputSize: 29) }
        try checkImageSize(.swinTiny, height: 28, width: 28)
        try checkImageSize(.swinTiny, height: 32, width: 30)
        try checkImageSize(.swinTiny, height: 224, width: 224)
    }
}
