import CKernels
import MSQ
import Testing

// Step sizes and tolerances of the gradient checks, per operation. Linear operations (conv,
// linear, pooling) have no truncation error, so a large step only shrinks Float rounding noise;
// nonlinear ones use smaller steps. Tolerances are relative, with a floor of
// `gradFloorFraction` × the largest gradient entry of the same tensor.
let gradFloorFraction = 2e-3
/// Absolute floor: a gradient that is zero in exact arithmetic (a conv bias before train-mode BN)
/// comes out as Float noise of this order.
let gradAbsoluteFloor = 5e-5
let conv2dGradStep: Float = 1e-2
let conv2dGradTolerance = 2e-3
let linearGradStep: Float = 1e-2
let linearGradTolerance = 2e-3
let batchNormGradStep: Float = 1e-2
let batchNormGradTolerance = 5e-3
let activationGradStep: Float = 1e-2
let activationGradTolerance = 2e-3
/// Inputs of ReLU-family activations keep this distance from their kinks (> the step).
let activationKinkMargin: Float = 0.05
let poolGradStep: Float = 1e-2
let poolGradTolerance = 2e-3
let lossGradStep: Float = 1e-2
let lossGradTolerance = 5e-3
/// Composite networks are checked twice. With GELU they are smooth, so every compared element
/// must agree, in train and eval mode: this checks the wiring (residual sums, BN coupling,
/// shortcuts, pooling, fc). Richardson extrapolation removes the h² error that the strong
/// curvature of train-mode BN on small batches would otherwise cause.
let smoothNetGradStep: Float = 1e-2
let smoothNetGradTolerance = 5e-3
/// With ReLU (the real models) they are checked in eval mode, where the network is piecewise
/// linear along any one coordinate: an element whose difference quotients over
/// [−h, −h/2, 0, h/2, h] differ has a kink within ±h and is skipped; the others must agree.
/// (In train mode, batch statistics couple all units of a channel and add curvature, so kinks
/// cannot be told from curvature.)
let reluNetGradStep: Float = 2e-3
let reluNetGradTolerance = 1e-2
/// Relative agreement of the difference quotients over [−h, −h/2, 0, h/2, h] below which an
/// element counts as kink-free.
let reluNetKinkTolerance = 5e-3
/// Fraction of sampled elements that may be skipped as kinks in ReLU networks (a BN parameter
/// moves a whole channel, so its elements often have a kink within ±h).
let reluNetMaxKinkFraction = 0.4
/// Fraction of compared ReLU-network elements that must agree: kinks on both sides of the point
/// can, rarely (about 1 in 2,000 in a sweep over seeds), leave the five values collinear.
let reluNetMinAgreeFraction = 0.98

func settings(_ step: Float, _ tolerance: Double, maxChecked: Int = 64) -> GradCheckSettings {
    GradCheckSettings(step: step, tolerance: tolerance, floorFraction: gradFloorFraction,
                      absoluteFloor: gradAbsoluteFloor, maxChecked: maxChecked)
}

/// Settings for a composite network with the given activation (see the constants above).
func netSettings(_ activation: ActivationKind, maxChecked: Int) -> GradCheckSettings {
    if activation == .relu {
        var s = settings(reluNetGradStep, reluNetGradTolerance, maxChecked: maxChecked)
        s.skipKinks = true
        s.kinkTolerance = reluNetKinkTolerance
        s.maxKinkFraction = reluNetMaxKinkFraction
        s.minAgreeFraction = reluNetMinAgreeFraction
        return s
    }
    var s = settings(smoothNetGradStep, smoothNetGradTolerance, maxChecked: maxChecked)
    s.richardson = true
    return s
}

/// The modes a composite network is checked in: eval first (train forwards move the running
/// statistics), and train only for the smooth variant (see the constants above).
func modes(_ activation: ActivationKind) -> [ForwardMode] { activation == .relu ? [.eval] : [.eval, .train] }

/// A parameter-free weight transform `effective = c · w` (so dL/dw = c · dL/dEffective).
final class ScalingTransform: WeightTransform {
    let factor: Float
    init(factor: Float) { self.factor = factor }
    func forward(_ weight: Tensor) -> Tensor {
        Tensor(shape: weight.shape, scalars: weight.scalars.map { $0 * factor })
    }
    func backward(gradEffective: Tensor, weight: Tensor) -> Tensor {
        Tensor(shape: gradEffective.shape, scalars: gradEffective.scalars.map { $0 * factor })
    }
}

/// One convolution configuration: channels, kernel, stride, padding, groups, bias, input size.
struct ConvCase: Sendable, CustomTestStringConvertible {
    var cin, cout, k, stride, pad, groups: Int
    var bias: Bool
    var h, w: Int
    var testDescription: String {
        "\(cin)→\(cout) k\(k) s\(stride) p\(pad) g\(groups)\(bias ? " bias" : "") on \(h)×\(w)"
    }
}

@Suite("GradientCheck") struct GradientCheckTests {
    static let convCases: [ConvCase] = [
        ConvCase(cin: 3, cout: 4, k: 3, stride: 1, pad: 1, groups: 1, bias: true, h: 6, w: 5),
        ConvCase(cin: 4, cout: 6, k: 3, stride: 2, pad: 1, groups: 1, bias: false, h: 7, w: 7),
        ConvCase(cin: 4, cout: 6, k: 3, stride: 1, pad: 0, groups: 2, bias: true, h: 5, w: 6),
        ConvCase(cin: 4, cout: 4, k: 3, stride: 2, pad: 1, groups: 4, bias: false, h: 6, w: 6),
        // depthwise 5×5 (MobileNetV3), rows wider than a vector so depthwise.c's vector path runs
        ConvCase(cin: 3, cout: 3, k: 5, stride: 1, pad: 2, groups: 3, bias: true, h: 7, w: 11),
        ConvCase(cin: 2, cout: 2, k: 5, stride: 2, pad: 2, groups: 2, bias: false, h: 9, w: 19),
        ConvCase(cin: 5, cout: 3, k: 1, stride: 2, pad: 0, groups: 1, bias: true, h: 5, w: 5),
        ConvCase(cin: 2, cout: 3, k: 5, stride: 1, pad: 2, groups: 1, bias: false, h: 4, w: 4),
    ]

    @Test("Conv2d", arguments: convCases)
    func conv2d(_ c: ConvCase) {
        var rng = RandomSource(seed: 11)
        let conv = Conv2d(inChannels: c.cin, outChannels: c.cout, kernelSize: c.k, stride: c.stride,
                          padding: c.pad, groups: c.groups, bias: c.bias, rng: &rng)
        let x = randomTensor([2, c.cin, c.h, c.w], rng: &rng)
        gradientCheck(conv, input: x, mode: .train, settings: settings(conv2dGradStep, conv2dGradTolerance),
                      seed: 1, label: "Conv2d \(c.testDescription)")
    }

    @Test("Conv2d through a WeightTransform")
    func conv2dWithTransform() {
        var rng = RandomSource(seed: 12)
        let conv = Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, stride: 1, padding: 1, bias: true, rng: &rng)
        conv.weightTransform = ScalingTransform(factor: 2.5)
        let x = randomTensor([2, 3, 5, 5], rng: &rng)
        gradientCheck(conv, input: x, mode: .train, settings: settings(conv2dGradStep, conv2dGradTolerance),
                      seed: 2, label: "Conv2d with ScalingTransform")
    }

    @Test("Linear", arguments: [true, false])
    func linear(bias: Bool) {
        var rng = RandomSource(seed: 13)
        let fc = Linear(inFeatures: 7, outFeatures: 5, bias: bias, rng: &rng)
        let x = randomTensor([3, 7], rng: &rng)
        gradientCheck(fc, input: x, mode: .train, settings: settings(linearGradStep, linearGradTolerance),
                      seed: 3, label: "Linear bias=\(bias)")
    }

    @Test("Linear through a WeightTransform")
    func linearWithTransform() {
        var rng = RandomSource(seed: 14)
        let fc = Linear(inFeatures: 6, outFeatures: 4, rng: &rng)
        fc.weightTransform = ScalingTransform(factor: -0.75)
        let x = randomTensor([3, 6], rng: &rng)
        gradientCheck(fc, input: x, mode: .train, settings: settings(linearGradStep, linearGradTolerance),
                      seed: 4, label: "Linear with ScalingTransform")
    }

    /// γ and β away from their initial values so that their gradients are not trivially shaped.
    static func randomizedBatchNorm(channels: Int, rng: inout RandomSource) -> BatchNorm2d {
        let bn = BatchNorm2d(channels: channels)
        bn.weight.value = randomTensor([channels], rng: &rng, scale: 1.5, avoiding: [0], margin: 0.3)
        bn.bias.value = randomTensor([channels], rng: &rng)
        bn.runningMean.value = randomTensor([channels], rng: &rng, scale: 0.5)
        bn.runningVar.value = Tensor(shape: [channels], scalars: (0..<channels).map { _ in 0.5 + rng.nextUnitFloat() })
        return bn
    }

    @Test("BatchNorm2d, train mode (batch statistics)", arguments: [[2, 3, 4, 5], [4, 3]])
    func batchNormTrain(shape: [Int]) {
        var rng = RandomSource(seed: 15)
        let bn = Self.randomizedBatchNorm(channels: 3, rng: &rng)
        let x = randomTensor(shape, rng: &rng, scale: 2)
        gradientCheck(bn, input: x, mode: .train, settings: settings(batchNormGradStep, batchNormGradTolerance),
                      seed: 5, label: "BatchNorm2d train \(shape)")
    }

    @Test("BatchNorm2d, eval mode (running statistics)", arguments: [[2, 3, 4, 5], [4, 3]])
    func batchNormEval(shape: [Int]) {
        var rng = RandomSource(seed: 16)
        let bn = Self.randomizedBatchNorm(channels: 3, rng: &rng)
        let x = randomTensor(shape, rng: &rng, scale: 2)
        gradientCheck(bn, input: x, mode: .eval, settings: settings(batchNormGradStep, batchNormGradTolerance),
                      seed: 6, label: "BatchNorm2d eval \(shape)")
    }

    @Test("Activation", arguments: ActivationKind.allCases)
    func activation(kind: ActivationKind) {
        var rng = RandomSource(seed: 17)
        let kinks: [Float] = switch kind {
        case .relu: [0]
        case .relu6: [0, 6]
        case .hardswish, .hardsigmoid: [-3, 3]
        case .gelu: []
        }
        let x = randomTensor([2, 3, 4, 4], rng: &rng, scale: 8, avoiding: kinks, margin: activationKinkMargin)
        gradientCheck(Activation(kind), input: x, mode: .train,
                      settings: settings(activationGradStep, activationGradTolerance, maxChecked: 96),
                      seed: 7, label: "Activation \(kind)")
    }

    @Test("MaxPool2d", arguments: [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
    func maxPool(k: Int, stride: Int, pad: Int) {
        var rng = RandomSource(seed: 18)
        let x = distinctTensor([2, 2, 7, 6], rng: &rng)
        gradientCheck(MaxPool2d(kernelSize: k, stride: stride, padding: pad), input: x, mode: .train,
                      settings: settings(poolGradStep, poolGradTolerance, maxChecked: 200),
                      seed: 8, label: "MaxPool2d k\(k) s\(stride) p\(pad)")
    }

    @Test("AvgPool2d", arguments: [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
    func avgPool(k: Int, stride: Int, pad: Int) {
        var rng = RandomSource(seed: 19)
        let x = randomTensor([2, 2, 7, 6], rng: &rng)
        gradientCheck(AvgPool2d(kernelSize: k, stride: stride, padding: pad), input: x, mode: .train,
                      settings: settings(poolGradStep, poolGradTolerance, maxChecked: 200),
                      seed: 9, label: "AvgPool2d k\(k) s\(stride) p\(pad)")
    }

    @Test("GlobalAvgPool2d and Flatten")
    func globalPoolAndFlatten() {
        var rng = RandomSource(seed: 20)
        let x = randomTensor([2, 3, 4, 5], rng: &rng)
        gradientCheck(GlobalAvgPool2d(), input: x, mode: .train, settings: settings(poolGradStep, poolGradTolerance),
                      seed: 10, label: "GlobalAvgPool2d")
        gradientCheck(Flatten(), input: x, mode: .train, settings: settings(poolGradStep, poolGradTolerance),
                      seed: 11, label: "Flatten")
    }

    @Test("ZeroPadShortcut (option A)", arguments: [(4, 8, 2), (3, 6, 1), (2, 5, 2)])
    func zeroPadShortcut(cin: Int, cout: Int, stride: Int) {
        var rng = RandomSource(seed: 21)
        let x = randomTensor([2, cin, 5, 6], rng: &rng)
        gradientCheck(ZeroPadShortcut(inChannels: cin, outChannels: cout, stride: stride), input: x, mode: .train,
                      settings: settings(poolGradStep, poolGradTolerance, maxChecked: 200),
                      seed: 12, label: "ZeroPadShortcut \(cin)→\(cout) s\(stride)")
    }

    @Test("Sequential of conv, BN, GELU, pooling, linear")
    func sequential() {
        var rng = RandomSource(seed: 22)
        let net = Sequential([
            Conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, padding: 1, rng: &rng),
            Self.randomizedBatchNorm(channels: 3, rng: &rng),
            Activation(.gelu),
            AvgPool2d(kernelSize: 2),
            Flatten(),
            Linear(inFeatures: 12, outFeatures: 4, rng: &rng),
        ])
        let x = randomTensor([3, 2, 4, 4], rng: &rng)
        gradientCheck(net, input: x, mode: .train, settings: netSettings(.gelu, maxChecked: 64),
                      seed: 13, label: "Sequential")
    }

    @Test("SoftmaxCrossEntropy", arguments: [Float(0), 0.1])
    func softmaxCrossEntropy(labelSmoothing: Float) throws {
        var rng = RandomSource(seed: 23)
        let loss = SoftmaxCrossEntropy(labelSmoothing: labelSmoothing)
        let labels: [Int32] = [2, 0, 4, 4]
        var logits = randomTensor([4, 5], rng: &rng, scale: 3)
        _ = try loss.forward(logits: logits, labels: labels)
        let scale: Float = 1.7
        let grad = loss.backward(scale: scale)
        #expect(grad.shape == [4, 5])
        let check = checkTensor(name: "logits", analytic: grad, settings: settings(lossGradStep, lossGradTolerance),
                                rng: &rng, value: { logits[flat: $0] }, set: { logits[flat: $0] = $1 },
                                evaluate: { Double(scale) * Double((try? loss.forward(logits: logits, labels: labels)) ?? .nan) })
        expectPassed([check], label: "SoftmaxCrossEntropy ε=\(labelSmoothing)",
                     settings: settings(lossGradStep, lossGradTolerance))
        #expect(check.checked == 20)
    }

    /// Gives every batch norm inside `module` random γ (away from 0), β and running statistics
    /// (variance in [0.5, 1.5], so eval mode is well conditioned), so the checks see general
    /// values rather than the initial 1, 0, 0, 1.
    static func randomizeBatchNorms(_ module: any Module, rng: inout RandomSource) {
        var norms: [BatchNorm2d] = []
        module.visitModules(prefix: "") { _, m in if let bn = m as? BatchNorm2d { norms.append(bn) } }
        #expect(!norms.isEmpty)
        for bn in norms {
            let shape = bn.weight.value.shape
            bn.weight.value = randomTensor(shape, rng: &rng, scale: 1.5, avoiding: [0], margin: 0.3)
            bn.bias.value = randomTensor(shape, rng: &rng, scale: 0.5)
            bn.runningMean.value = randomTensor(shape, rng: &rng, scale: 0.5)
            bn.runningVar.value = Tensor(shape: shape, scalars: (0..<bn.channels).map { _ in 0.5 + rng.nextUnitFloat() })
        }
    }

    @Test("BasicBlock", arguments: [ActivationKind.gelu, .relu],
          [(4, 4, 1, ShortcutKind.zeroPad), (4, 8, 2, .zeroPad), (4, 6, 2, .projection)])
    func basicBlock(activation: ActivationKind, config: (cin: Int, cout: Int, stride: Int, shortcut: ShortcutKind)) {
        var rng = RandomSource(seed: 24)
        let block = BasicBlock(inChannels: config.cin, outChannels: config.cout, stride: config.stride,
                               shortcut: config.shortcut, activation: activation, rng: &rng)
        Self.randomizeBatchNorms(block, rng: &rng)
        let x = randomTensor([2, config.cin, 5, 5], rng: &rng)
        for mode in modes(activation) {
            gradientCheck(block, input: x, mode: mode, settings: netSettings(activation, maxChecked: 40), seed: 14,
                          label: "BasicBlock \(config.cin)→\(config.cout) s\(config.stride) \(config.shortcut) \(activation) \(mode)")
        }
    }

    @Test("Bottleneck", arguments: [ActivationKind.gelu, .relu], [(8, 2, 1), (4, 2, 2), (6, 3, 1)])
    func bottleneck(activation: ActivationKind, config: (cin: Int, width: Int, stride: Int)) {
        var rng = RandomSource(seed: 25)
        let block = Bottleneck(inChannels: config.cin, width: config.width, stride: config.stride,
                               shortcut: .projection, activation: activation, rng: &rng)
        #expect((block.shortcut == nil) == (config.cin == 4 * config.width && config.stride == 1))
        Self.randomizeBatchNorms(block, rng: &rng)
        let x = randomTensor([2, config.cin, 6, 6], rng: &rng)
        for mode in modes(activation) {
            gradientCheck(block, input: x, mode: mode, settings: netSettings(activation, maxChecked: 40), seed: 15,
                          label: "Bottleneck \(config.cin)→\(4 * config.width) s\(config.stride) \(activation) \(mode)")
        }
    }

    /// ResNet-8 with 3 input channels on 8×8 images, batch 2, BN parameters and statistics randomised.
    static func tinyResNet(activation: ActivationKind) -> (CIFARResNet, Tensor) {
        var rng = RandomSource(seed: 26)
        let net = CIFARResNet(depth: 8, inputChannels: 3, numClasses: 10, activation: activation, rng: &rng)
        randomizeBatchNorms(net, rng: &rng)
        return (net, randomTensor([2, 3, 8, 8], rng: &rng))
    }

    /// GELU: train and eval mode; ReLU: eval mode (see the constants at the top).
    @Test("Tiny CIFAR ResNet (depth 8, 3×8×8, batch 2)", arguments: [ActivationKind.gelu, .relu])
    func tinyResNet(activation: ActivationKind) {
        let (net, x) = Self.tinyResNet(activation: activation)
        for mode in modes(activation) {
            gradientCheck(net, input: x, mode: mode, settings: netSettings(activation, maxChecked: 12), seed: 16,
                          label: "CIFARResNet-8 \(activation) \(mode)")
        }
    }
}
