/// The MobileNetV3 variants torchvision builds.
public enum MobileNetV3Variant: String, Sendable, CaseIterable {
    /// MobileNetV3-Large: 15 inverted-residual blocks, last conv 960, classifier 1280.
    case large
    /// MobileNetV3-Small: 11 blocks, last conv 576, classifier 1024.
    case small

    /// One inverted-residual block's configuration (torchvision's `InvertedResidualConfig`).
    struct Block {
        let input, kernel, expanded, output: Int
        let squeezeExcite: Bool
        let activation: ActivationKind
        let stride: Int
    }

    /// torchvision's `_mobilenet_v3_conf` at width multiplier 1, no dilation.
    var blocks: [Block] {
        let RE = ActivationKind.relu, HS = ActivationKind.hardswish
        let rows: [(Int, Int, Int, Int, Bool, ActivationKind, Int)]
        switch self {
        case .large:
            rows = [(16, 3, 16, 16, false, RE, 1), (16, 3, 64, 24, false, RE, 2), (24, 3, 72, 24, false, RE, 1),
                    (24, 5, 72, 40, true, RE, 2), (40, 5, 120, 40, true, RE, 1), (40, 5, 120, 40, true, RE, 1),
                    (40, 3, 240, 80, false, HS, 2), (80, 3, 200, 80, false, HS, 1), (80, 3, 184, 80, false, HS, 1),
                    (80, 3, 184, 80, false, HS, 1), (80, 3, 480, 112, true, HS, 1), (112, 3, 672, 112, true, HS, 1),
                    (112, 5, 672, 160, true, HS, 2), (160, 5, 960, 160, true, HS, 1), (160, 5, 960, 160, true, HS, 1)]
        case .small:
            rows = [(16, 3, 16, 16, true, RE, 2), (16, 3, 72, 24, false, RE, 2), (24, 3, 88, 24, false, RE, 1),
                    (24, 5, 96, 40, true, HS, 2), (40, 5, 240, 40, true, HS, 1), (40, 5, 240, 40, true, HS, 1),
                    (40, 5, 120, 48, true, HS, 1), (48, 5, 144, 48, true, HS, 1), (48, 5, 288, 96, true, HS, 2),
                    (96, 5, 576, 96, true, HS, 1), (96, 5, 576, 96, true, HS, 1)]
        }
        return rows.map { Block(input: $0.0, kernel: $0.1, expanded: $0.2, output: $0.3, squeezeExcite: $0.4, activation: $0.5, stride: $0.6) }
    }

    /// Channels of the classifier's hidden layer.
    var lastChannels: Int { self == .large ? 1280 : 1024 }
}

/// `v` rounded to a multiple of 8, at least 8 and not below 90 % of `v` (torchvision's `_make_divisible`).
func makeDivisible(_ v: Double, divisor: Int = 8) -> Int {
    var rounded = max(divisor, Int(v + Double(divisor) / 2) / divisor * divisor)
    if Double(rounded) < 0.9 * v { rounded += divisor }
    return rounded
}

/// Conv → batch norm (ε = 0.001, torchvision's for MobileNetV3; `momentum` as given) → optional
/// activation, as torchvision's `Conv2dNormActivation` names them (`0`, `1`, `2`).
func convNormActivation(_ input: Int, _ output: Int, kernel: Int, stride: Int = 1, groups: Int = 1,
                        activation: ActivationKind?, momentum: Float, rng: inout RandomSource) -> Sequential {
    var children: [(String, any Module)] = [
        ("0", Conv2d(inChannels: input, outChannels: output, kernelSize: kernel, stride: stride, padding: (kernel - 1) / 2,
                     groups: groups, bias: false, rng: &rng)),
        ("1", BatchNorm2d(channels: output, momentum: momentum, eps: 0.001)),
    ]
    if let activation { children.append(("2", Activation(activation))) }
    return Sequential(named: children)
}

/// MobileNetV3's inverted residual: 1×1 expand (when the width changes) → k×k depthwise with the
/// block's stride → squeeze-excitation (squeeze to `makeDivisible(expanded / 4)`) → 1×1 project
/// (no activation), plus the input when the stride is 1 and the width is kept.
///
/// Input `[N, input, H, W]`, output `[N, output, ⌈H/stride⌉, ⌈W/stride⌉]`. Parameter paths
/// `block.<i>.…` as torchvision numbers the layers it has.
public final class InvertedResidual: Module {
    /// The layers in order: expand (if any), depthwise, squeeze-excitation (if any), project.
    public let block: Sequential
    /// Whether the input is added to the output.
    public let residual: Bool

    /// A block from `input` to `output` channels through `expanded`, with a `kernel`×`kernel`
    /// depthwise convolution of stride `stride`; parameters from `rng` in layer order. Batch norms
    /// update their running statistics with `batchNormMomentum` (torchvision's 0.01 by default).
    public convenience init(input: Int, expanded: Int, output: Int, kernel: Int, stride: Int, squeezeExcite: Bool,
                            activation: ActivationKind, batchNormMomentum: Float = MobileNetV3.torchvisionBatchNormMomentum,
                            rng: inout RandomSource) {
        self.init(MobileNetV3Variant.Block(input: input, kernel: kernel, expanded: expanded, output: output,
                                           squeezeExcite: squeezeExcite, activation: activation, stride: stride),
                  stride: stride, momentum: batchNormMomentum, rng: &rng)
    }

    init(_ c: MobileNetV3Variant.Block, stride: Int, momentum: Float, rng: inout RandomSource) {
        var layers: [any Module] = []
        if c.expanded != c.input {
            layers.append(convNormActivation(c.input, c.expanded, kernel: 1, activation: c.activation, momentum: momentum, rng: &rng))
        }
        layers.append(convNormActivation(c.expanded, c.expanded, kernel: c.kernel, stride: stride, groups: c.expanded,
                                         activation: c.activation, momentum: momentum, rng: &rng))
        if c.squeezeExcite {
            layers.append(SqueezeExcitation(channels: c.expanded, squeezeChannels: makeDivisible(Double(c.expanded) / 4), rng: &rng))
        }
        layers.append(convNormActivation(c.expanded, c.output, kernel: 1, activation: nil, momentum: momentum, rng: &rng))
        block = Sequential(named: layers.enumerated().map { (String($0.offset), $0.element) })
        residual = stride == 1 && c.input == c.output
    }

    /// `block(x)`, plus x when ``residual``.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let y = block.forward(input, mode: mode)
        return residual ? LayerKit.add(y, input, context: "InvertedResidual residual add") : y
    }

    /// The block's input gradient, plus the output gradient when ``residual``.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        let g = block.backward(gradOutput)
        return residual ? LayerKit.add(g, gradOutput, context: "InvertedResidual residual gradient") : g
    }

    /// The block's parameters under `block`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        block.visitParameters(prefix: joinPath(prefix, "block"), body)
    }

    /// The block, as `block`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("block", block)], prefix: prefix, body)
    }
}

/// MobileNetV3 (Howard et al. 2019) as torchvision builds it: `features` (stem 3×3/2 conv → BN →
/// hard-swish, the inverted-residual blocks, a 1×1 conv to 6× the last width → BN → hard-swish),
/// global average pool, `classifier` (Linear → hard-swish → Linear; torchvision's dropout at
/// index 2 is not applied here). With 3 input channels and 1000 classes: 5,483,032 (Large) and
/// 2,542,856 (Small) trainable parameters, as torchvision.
///
/// `smallInput` adapts the strides to images like Fashion-MNIST's 28×28: the stem and the first
/// stride-2 block run at stride 1, so the network downsamples 8× instead of 32× (28×28 ends at 4×4,
/// not below 1×1). Same layers and parameters either way.
///
/// `batchNormMomentum` is the running statistics' update rate, `running = (1 − m)·running + m·batch`.
/// torchvision's 0.01 (the default) suits ImageNet's long schedules; in a run of a few hundred
/// steps the running statistics still lag the weights at the end, and eval-mode accuracy collapses
/// (MobileNetV3-Small, 28×28, 10k Fashion-MNIST images, 3 epochs: 10 % in eval mode at 87 % train
/// accuracy, in PyTorch too). ``makeModel(_:inputChannels:numClasses:seed:inputSize:)`` therefore
/// builds the small-input network with ``shortRunBatchNormMomentum``.
///
/// Input `[N, inputChannels, H, W]`, output `[N, numClasses]`. Initialisation: ``Conv2d``'s
/// (Kaiming normal, fan-out, as torchvision), ``Linear``'s; batch norm γ = 1, β = 0.
public final class MobileNetV3: Module {
    /// Which network.
    public let variant: MobileNetV3Variant
    /// Whether the strides are adapted to small images.
    public let smallInput: Bool
    /// Stem, blocks and last conv, as torchvision's `features.0` … `features.N`.
    public let features: Sequential
    /// Linear → hard-swish → Linear, as `classifier.0` and `classifier.3`.
    public let classifier: Sequential
    private let pool = GlobalAvgPool2d()

    /// torchvision's batch-norm momentum for MobileNetV3.
    public static let torchvisionBatchNormMomentum: Float = 0.01
    /// PyTorch's default batch-norm momentum, which short runs need (see ``MobileNetV3``).
    public static let shortRunBatchNormMomentum: Float = 0.1

    /// A freshly initialised network; parameters drawn from `rng` in module order.
    public init(_ variant: MobileNetV3Variant, inputChannels: Int = 3, numClasses: Int = 1000, smallInput: Bool = false,
                batchNormMomentum: Float = MobileNetV3.torchvisionBatchNormMomentum, rng: inout RandomSource) {
        self.variant = variant
        self.smallInput = smallInput
        let configs = variant.blocks
        var layers: [any Module] = [convNormActivation(inputChannels, configs[0].input, kernel: 3, stride: smallInput ? 1 : 2,
                                                       activation: .hardswish, momentum: batchNormMomentum, rng: &rng)]
        var keptFirstStride = !smallInput
        for c in configs {
            var stride = c.stride
            if stride == 2 && !keptFirstStride {
                stride = 1
                keptFirstStride = true
            }
            layers.append(InvertedResidual(c, stride: stride, momentum: batchNormMomentum, rng: &rng))
        }
        let last = configs[configs.count - 1].output
        layers.append(convNormActivation(last, 6 * last, kernel: 1, activation: .hardswish, momentum: batchNormMomentum, rng: &rng))
        features = Sequential(named: layers.enumerated().map { (String($0.offset), $0.element) })
        classifier = Sequential(named: [
            ("0", Linear(inFeatures: 6 * last, outFeatures: variant.lastChannels, rng: &rng)),
            ("1", Activation(.hardswish)),
            ("3", Linear(inFeatures: variant.lastChannels, outFeatures: numClasses, rng: &rng)),
        ])
    }

    /// Logits `[N, numClasses]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        classifier.forward(pool.forward(features.forward(input, mode: mode), mode: mode), mode: mode)
    }

    /// The input gradient.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        features.backward(pool.backward(classifier.backward(gradOutput)))
    }

    /// Parameter gradients only (the stem skips its input gradient).
    public func backwardParameters(_ gradOutput: Tensor) {
        features.backwardParameters(pool.backward(classifier.backward(gradOutput)))
    }

    /// `features`, then `classifier` (torchvision's order).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        features.visitParameters(prefix: joinPath(prefix, "features"), body)
        classifier.visitParameters(prefix: joinPath(prefix, "classifier"), body)
    }

    /// `features`, `avgpool`, `classifier`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("features", features), ("avgpool", pool), ("classifier", classifier)], prefix: prefix, body)
    }
}

extension InvertedResidual: CurvatureModule {
    /// The block's R-forward, plus the input and its tangent when ``residual``.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        let y = block.rForward(input, tangent: tangent)
        guard residual else { return y }
        return (LayerKit.add(y.output, input, context: "InvertedResidual residual add"),
                addTangents(y.tangent, tangent, context: "InvertedResidual residual tangent"))
    }

    /// The block's R-backward, plus the output's pair when ``residual``.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let g = block.rBackward(gradient, tangent: tangent, inputGradients: inputGradients)
        guard residual, inputGradients else { return g }
        return (addTangents(g.gradient, gradient, context: "InvertedResidual residual gradient"),
                addTangents(g.tangent, tangent, context: "InvertedResidual residual tangent"))
    }
}

extension MobileNetV3: CurvatureModule {
    /// Logits and their tangent through `features`, the pool and `classifier`.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        var x = features.rForward(input, tangent: tangent)
        x = pool.rForward(x.output, tangent: x.tangent)
        return classifier.rForward(x.output, tangent: x.tangent)
    }

    /// `(g, R g)` back through `classifier`, the pool and `features`.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let g = rBackwardChained(pool, classifier.rBackward(gradient, tangent: tangent, inputGradients: true))
        return rBackwardChained(features, g, inputGradients: inputGradients)
    }

    /// Hard-swish and squeeze-excitation: not piecewise linear.
    public var isPiecewiseLinear: Bool { false }
}
