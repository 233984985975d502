import Foundation
import MSQ
import Testing

@Suite("MobileNetV3")
struct MobileNetV3Tests {
    @Test("torchvision's parameter counts and names at 3 channels and 1000 classes",
          arguments: [(MobileNetV3Variant.large, 5_483_032), (.small, 2_542_856)])
    func parameterCounts(variant: MobileNetV3Variant, expected: Int) {
        var rng = RandomSource(seed: 1)
        let model = MobileNetV3(variant, rng: &rng)
        #expect(model.trainableParameterCount == expected)
        let names = Set(model.namedParameters().map(\.name))
        for name in ["features.0.0.weight", "features.0.1.running_var", "features.1.block.0.0.weight",
                     "classifier.0.weight", "classifier.3.bias"] {
            #expect(names.contains(name), "\(variant): \(name)")
        }
        // A block with expansion and squeeze-excitation (torchvision numbers 0 expand, 1 depthwise, 2 SE, 3 project).
        #expect(names.contains(variant == .large ? "features.4.block.2.fc1.weight" : "features.4.block.2.fc2.bias"))
        // Small's first block has no expansion: 0 depthwise, 1 SE, 2 project.
        if variant == .small { #expect(names.contains("features.1.block.1.fc1.weight")) }
    }

    @Test("logits of the right shape at 224² and, with the small-input strides, at 28²; the depthwise layers are grouped convs",
          arguments: MobileNetV3Variant.allCases)
    func shapes(variant: MobileNetV3Variant) {
        var rng = RandomSource(seed: 2)
        let small = MobileNetV3(variant, inputChannels: 1, numClasses: 10, smallInput: true, rng: &rng)
        let x = randomTensor([2, 1, 28, 28], rng: &rng)
        #expect(small.forward(x, mode: .train).shape == [2, 10])
        small.zeroGradients()
        #expect(small.backward(randomTensor([2, 10], rng: &rng)).shape == [2, 1, 28, 28])
        #expect(small.trainableParameters().allSatisfy { $0.grad.scalars.allSatisfy(\.isFinite) })
        let depthwise = quantizableLayers(of: small).compactMap { $0.module as? Conv2d }.filter { $0.groups > 1 }
        #expect(depthwise.count == variant.blockCountForTests && depthwise.allSatisfy { $0.groups == $0.inChannels })
        if variant == .small {
            let big = MobileNetV3(.small, numClasses: 7, rng: &rng)
            #expect(big.forward(randomTensor([1, 3, 224, 224], rng: &rng), mode: .eval).shape == [1, 7])
        }
    }

    @Test("inverted residual blocks: gradients match central differences",
          arguments: [(8, 16, 8, 3, 1, true, ActivationKind.hardswish), (8, 24, 12, 5, 2, true, .relu),
                      (8, 8, 8, 3, 1, false, .hardswish)])
    func invertedResidual(config: (input: Int, expanded: Int, output: Int, kernel: Int, stride: Int, se: Bool, act: ActivationKind)) {
        var rng = RandomSource(seed: 3)
        let block = InvertedResidual(input: config.input, expanded: config.expanded, output: config.output, kernel: config.kernel,
                                     stride: config.stride, squeezeExcite: config.se, activation: config.act, rng: &rng)
        #expect(block.residual == (config.stride == 1 && config.input == config.output))
        let x = randomTensor([2, config.input, 6, 6], rng: &rng)
        gradientCheck(block, input: x, mode: .eval, settings: netSettings(.relu, maxChecked: 40), seed: 4,
                      label: "InvertedResidual \(config)")
    }
}

extension MobileNetV3Variant {
    /// One depthwise convolution per inverted-residual block.
    var blockCountForTests: Int { self == .large ? 15 : 11 }
}
