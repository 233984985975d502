/// CIFAR-style ResNet of depth 6n+2 (He et al. 2016, Sec. 4.2): ResNet-20/32/56/110.
///
/// `conv1` 3×3 (16) → `bn1` → ReLU → `layer1` (n BasicBlocks, 16 ch) → `layer2` (n, 32 ch, first
/// stride 2) → `layer3` (n, 64 ch, first stride 2) → global average pool → `fc` Linear(64, classes).
/// Shortcuts that change shape use option A (``ShortcutKind/zeroPad``), so the shortcuts have no
/// parameters: ResNet-20 with 3 input channels and 10 classes has 269,722 trainable parameters.
/// Input `[N, inputChannels, H, W]` with H, W ≥ 8 (any size: global pooling), output `[N, numClasses]`.
/// Initialisation: see ``Conv2d`` (Kaiming normal, fan-out) and ``Linear`` (PyTorch default);
/// batch norm γ = 1, β = 0. Parameters are drawn from `rng` in module order.
public final class CIFARResNet: Module {
    /// Total depth 6n + 2.
    public let depth: Int
    /// Blocks per stage, n = (depth − 2) / 6.
    public let blocksPerStage: Int
    /// Stem convolution, 3×3, 16 channels.
    public let conv1: Conv2d
    /// Stem batch norm.
    public let bn1: BatchNorm2d
    /// The three stages of ``BasicBlock``s (children `0`…`n−1`).
    public let layer1: Sequential, layer2: Sequential, layer3: Sequential
    /// Classifier Linear(64, numClasses).
    public let fc: Linear
    let body: Sequential

    /// The network's nonlinearity (ReLU for the paper's ResNets; a smooth one is useful for
    /// gradient checks, which ReLU kinks make noisy).
    public let activation: ActivationKind

    /// A ResNet of the given depth (8, 14, 20, 32, 44, 56, 110, …).
    public init(depth: Int, inputChannels: Int = 3, numClasses: Int = 10, activation: ActivationKind = .relu,
                rng: inout RandomSource) {
        LayerKit.require(depth >= 8 && (depth - 2) % 6 == 0, "CIFARResNet: depth must be 6n+2 with n ≥ 1 (got \(depth))")
        LayerKit.require(inputChannels > 0 && numClasses > 0,
                         "CIFARResNet: inputChannels and numClasses must be positive (got \(inputChannels), \(numClasses))")
        self.depth = depth
        self.activation = activation
        let n = (depth - 2) / 6
        blocksPerStage = n
        conv1 = Conv2d(inChannels: inputChannels, outChannels: 16, kernelSize: 3, stride: 1, padding: 1,
                       bias: false, rng: &rng)
        bn1 = BatchNorm2d(channels: 16)
        var inPlanes = 16
        func stage(_ planes: Int, stride: Int) -> Sequential {
            let blocks = Sequential([])
            for i in 0..<n {
                blocks.append(BasicBlock(inChannels: inPlanes, outChannels: planes, stride: i == 0 ? stride : 1,
                                         shortcut: .zeroPad, activation: activation, rng: &rng))
                inPlanes = planes
            }
            return blocks
        }
        layer1 = stage(16, stride: 1)
        layer2 = stage(32, stride: 2)
        layer3 = stage(64, stride: 2)
        fc = Linear(inFeatures: 64, outFeatures: numClasses, rng: &rng)
        body = Sequential(named: [
            ("conv1", conv1), ("bn1", bn1), ("act", Activation(activation)),
            ("layer1", layer1), ("layer2", layer2), ("layer3", layer3),
            ("avgpool", GlobalAvgPool2d()), ("fc", fc),
        ])
        shareConvWorkspace(in: self)
    }

    private var modelName: String { "CIFARResNet-\(depth)" }

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

    /// `conv1.*`, `bn1.*`, `layerS.B.*`, `fc.*`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        self.body.visitParameters(prefix: prefix, body)
    }

    /// Every submodule, depth first.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        self.body.visitModules(prefix: prefix, body)
    }
}

extension CIFARResNet: CurvatureModule {
    /// The body's R-forward (eval mode).
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        body.rForward(input, tangent: tangent)
    }

    /// The body's R-backward.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        body.rBackward(gradient, tangent: tangent, inputGradients: inputGradients)
    }
}

/// Makes every ``Conv2d`` inside `module` use one shared ``ConvWorkspace`` (scratch is only live
/// within a kernel call, so sequential layers can share it). Returns the shared workspace.
@discardableResult
public func shareConvWorkspace(in module: any Module) -> ConvWorkspace {
    let workspace = ConvWorkspace()
    if let conv = module as? Conv2d { conv.workspace = workspace }
    module.visitModules(prefix: "") { _, m in
        if let conv = m as? Conv2d { conv.workspace = workspace }
    }
    return workspace
}
