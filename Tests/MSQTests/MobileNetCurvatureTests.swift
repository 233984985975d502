import MSQ
import Testing

// The R-operator of MobileNetV3's blocks (squeeze-excitation, inverted residual) against central
// differences of their forward and backward (rOperatorCheck, TransformerCurvatureTests.swift), at
// points where no ReLU, hard-sigmoid or hard-swish kink lies within the stencil (checked).

/// Pre-activations must stay this far from a kink (relative to the stencil's reach, which is
/// 1e-2 × |tangent| ≤ 1e-2 here).
private let kinkMargin: Float = 0.05

/// Whether every element of `t` is at least `kinkMargin` from each of `kinks`.
private func clearOfKinks(_ t: Tensor, _ kinks: [Float]) -> Bool {
    t.scalars.allSatisfy { v in kinks.allSatisfy { abs(v - $0) >= kinkMargin } }
}

@Suite("MobileNetV3 R-operator")
struct MobileNetCurvatureTests {
    @Test("SqueezeExcitation R-passes: the gate's tangent and the x ⊙ s product rule")
    func squeezeExcitation() throws {
        var rng = RandomSource(seed: 71)
        let se = SqueezeExcitation(channels: 6, squeezeChannels: 4, rng: &rng)
        // fc1 positive (ReLU open), fc2 small (hard-sigmoid inside (−3, 3)): smooth around the point.
        se.fc1.weight.value = randomTensor(se.fc1.weight.value.shape, rng: &rng, scale: 0.3)
        se.fc1.bias?.value = Tensor(shape: [4], repeating: 1.5)
        se.fc2.weight.value = randomTensor(se.fc2.weight.value.shape, rng: &rng, scale: 0.8)
        let x = randomTensor([2, 6, 3, 3], rng: &rng)
        _ = se.forward(x, mode: .eval)
        let hidden = se.fc1.forward(GlobalAvgPool2d().forward(x, mode: .eval).reshaped([2, 6, 1, 1]), mode: .eval)
        #expect(clearOfKinks(hidden, [0]), "a ReLU input sits near 0")
        #expect(clearOfKinks(se.fc2.forward(hidden.map { max($0, 0) }, mode: .eval), [-3, 3]), "a gate input sits near ±3")
        rOperatorCheck(se, input: x, seed: 7, label: "SqueezeExcitation")
    }

    @Test("InvertedResidual R-passes (expand, depthwise, squeeze-excitation, project, residual), hard-swish")
    func invertedResidual() throws {
        var rng = RandomSource(seed: 72)
        let block = InvertedResidual(input: 4, expanded: 8, output: 4, kernel: 3, stride: 1, squeezeExcite: true,
                                     activation: .hardswish, rng: &rng)
        #expect(block.residual)
        let se = try #require(block.block["2"] as? SqueezeExcitation)
        se.fc1.bias?.value = Tensor(shape: se.fc1.bias?.value.shape ?? [], repeating: 2)
        let x = randomTensor([2, 4, 5, 5], rng: &rng, scale: 0.5)
        rOperatorCheck(block, input: x, seed: 8, label: "InvertedResidual")
    }

    @Test("MobileNetV3 has an R-operator: the automatic mode is exact, not central differences")
    func automaticMode() {
        #expect(HessianMode.automatic(for: makeModel(.mobilenetv3Small, inputChannels: 1, numClasses: 10, seed: 0, inputSize: 28)) == .exact)
        #expect(HessianMode.automatic(for: makeModel(.mobilenetv3Large, inputChannels: 1, numClasses: 10, seed: 0, inputSize: 28)) == .exact)
    }
}
