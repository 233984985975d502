/// The residual block type of an ImageNet-style ResNet.
public enum ResNetBlock: String, Sendable, CaseIterable {
    /// ``BasicBlock`` (two 3×3 convolutions, expansion 1): ResNet-18/34.
    case basic
    /// ``Bottleneck`` (1×1, 3×3, 1×1, expansion 4): ResNet-50/101/152.
    case bottleneck

    /// Output channels per unit of stage width.
    public var expansion: Int { self == .basic ? BasicBlock.expansion : Bottleneck.expansion }
}

/// ImageNet-style ResNet (He et al. 2016, torchvision layout): ResNet-18 is `.basic` with
/// `[2, 2, 2, 2]`, ResNet-50 `.bottleneck` with `[3, 4, 6, 3]`.
///
/// `conv1` 7×7/2 (64) → `bn1` → ReLU → `maxpool` 3×3/2 → `layer1…layer4` (widths 64, 128, 256, 512;
/// stride 2 from `layer2` on) → global average pool → `fc` Linear(512·expansion, classes).
/// Shortcuts that change shape are projections (1×1 conv + BN, `layerS.0.downsample.{0,1}`).
/// With 3 input channels and 1000 classes: ResNet-18 has 11,689,512 and ResNet-50 25,557,032
/// trainable parameters, as torchvision. Input `[N, inputChannels, H, W]` (H, W ≥ 32 keeps every
/// stage non-empty), output `[N, numClasses]`.
/// Initialisation: see ``Conv2d`` (Kaiming normal, fan-out, as torchvision) and ``Linear``;
/// batch norm γ = 1, β = 0. Parameters are drawn from `rng` in module order.
public final class ImageNetResNet: Module {
    /// Block type.
    public let block: ResNetBlock
    /// Blocks per stage.
    public let layers: [Int]
    /// Stem convolution 7×7, stride 2, 64 channels.
    public let conv1: Conv2d
    /// Stem batch norm.
    public let bn1: BatchNorm2d
    /// The four stages (children `0`…).
    public let stages: [Sequential]
    /// Classifier Linear(512·expansion, numClasses).
    public let fc: Linear
    let body: Sequential

    /// A ResNet with `layers[i]` blocks in stage i+1 (exactly four stages).
    public init(block: ResNetBlock, layers: [Int], inputChannels: Int = 3, numClasses: Int = 1000,
                rng: inout RandomSource) {
        LayerKit.require(layers.count == 4 && layers.allSatisfy { $0 > 0 },
                         "ImageNetResNet: layers must list four positive block counts (got \(layers))")
        LayerKit.require(inputChannels > 0 && numClasses > 0,
                         "ImageNetResNet: inputChannels and numClasses must be positive (got \(inputChannels), \(numClasses))")
        self.block = block
        self.layers = layers
        conv1 = Conv2d(inChannels: inputChannels, outChannels: 64, kernelSize: 7, stride: 2, padding: 3,
                       bias: false, rng: &rng)
        bn1 = BatchNorm2d(channels: 64)
        var inPlanes = 64
        var stages: [Sequential] = []
        for (s, count) in layers.enumerated() {
            let width = 64 << s
            let seq = Sequential([])
            for i in 0..<count {
                let stride = (i == 0 && s > 0) ? 2 : 1
                switch block {
                case .basic:
                    seq.append(BasicBlock(inChannels: inPlanes, outChannels: width, stride: stride,
                                          shortcut: .projection, rng: &rng))
                case .bottleneck:
                    seq.append(Bottleneck(inChannels: inPlanes, width: width, stride: stride,
                                          shortcut: .projection, rng: &rng))
                }
                inPlanes = width * block.expansion
            }
            stages.append(seq)
        }
        self.stages = stages
        fc = Linear(inFeatures: 512 * block.expansion, outFeatures: numClasses, rng: &rng)
        var children: [(String, any Module)] = [
            ("conv1", conv1), ("bn1", bn1), ("relu", Activation(.relu)),
            ("maxpool", MaxPool2d(kernelSize: 3, stride: 2, padding: 1)),
        ]
        for (s, seq) in stages.enumerated() { children.append(("layer\(s + 1)", seq)) }
        children.append(("avgpool", GlobalAvgPool2d()))
        children.append(("fc", fc))
        body = Sequential(named: children)
        shareConvWorkspace(in: self)
    }

    private var modelName: String {
        "ResNet-\(layers.reduce(0, +) * (block == .basic ? 2 : 3) + 2)"
    }

    /// Logits `[N, numClasses]` for images `[N, inputChannels, H, W]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count == 4 && d[1] == conv1.inChannels,
                         "\(modelName): expected images [N, \(conv1.inChannels), H, W], got \(d)")
        return body.forward(input, mode: mode)
    }

    /// dLoss/dImages; accumulates every parameter's gradient.
    public func backward(_ gradOutput: Tensor) -> Tensor { body.backward(gradOutput) }

    /// The parameter gradients of ``backward(_:)``; the stem convolution skips dLoss/dImages.
    public func backwardParameters(_ gradOutput: Tensor) { body.backwardParameters(gradOutput) }

    /// `conv1.*`, `bn1.*`, `layerS.B.*`, `fc.*` (torchvision's names).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        self.body.visitParameters(prefix: prefix, body)
    }

    /// Every submodule, depth first.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        self.body.visitModules(prefix: prefix, body)
    }
}

extension ImageNetResNet: CurvatureModule {
    /// The body's R-forward (eval mode).
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        body.rForward(input, tangent: tangent)
    }

    /// The body's R-backward.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        body.rBackward(gradient, tangent: tangent, inputGradients: inputGradients)
    }
}
