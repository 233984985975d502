/// Which shortcut a residual block uses when its output shape differs from its input's
/// (stride > 1 or a change of channel count). With equal shapes the shortcut is the identity.
public enum ShortcutKind: String, Sendable, CaseIterable {
    /// He et al.'s option A, parameter-free: subsample by the stride (`x[:, :, ::s, ::s]`) and
    /// zero-pad the channels, half before and half after (as the common akamaster CIFAR code).
    case zeroPad
    /// Option B: 1×1 convolution with the stride, then batch norm (torchvision's `downsample`).
    case projection
}

/// Option-A shortcut: `[N, C_in, H, W]` → `[N, C_out, ⌈H/s⌉, ⌈W/s⌉]`, no parameters.
///
/// `y[n, c + ⌊(C_out − C_in)/2⌋, i, j] = x[n, c, s·i, s·j]`; the other channels are zero.
/// Backward scatters the gradient of the copied channels back (`dx[n,c,s·i,s·j] += dy[…]`).
public final class ZeroPadShortcut: Module {
    /// Input channels.
    public let inChannels: Int
    /// Output channels (≥ input channels).
    public let outChannels: Int
    /// Spatial subsampling factor.
    public let stride: Int
    fileprivate var cachedInputShape: [Int]?

    /// A zero-padding shortcut from `inChannels` to `outChannels` channels with the given stride.
    public init(inChannels: Int, outChannels: Int, stride: Int) {
        LayerKit.require(inChannels > 0 && outChannels >= inChannels && stride > 0,
                         "ZeroPadShortcut: needs 0 < inChannels ≤ outChannels and stride > 0 (got \(inChannels)→\(outChannels), stride \(stride))")
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.stride = stride
    }

    private var padBefore: Int { (outChannels - inChannels) / 2 }
    private var layerDescription: String { "ZeroPadShortcut(\(inChannels)→\(outChannels), stride \(stride))" }

    /// Subsamples and zero-pads the channels.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count == 4 && d[1] == inChannels,
                         "\(layerDescription): expected input [N, \(inChannels), H, W], got \(d)")
        let (n, h, w) = (d[0], d[2], d[3])
        let (ho, wo) = ((h + stride - 1) / stride, (w + stride - 1) / stride)
        var y = Tensor(shape: [n, outChannels, ho, wo])
        let (cin, cout, s, before) = (inChannels, outChannels, stride, padBefore)
        input.withUnsafePointer { x in
            y.withUnsafeMutablePointer { yp in
                for b in 0..<n {
                    for c in 0..<cin {
                        let src = x + (b * cin + c) * h * w
                        let dst = yp + (b * cout + c + before) * ho * wo
                        for i in 0..<ho {
                            for j in 0..<wo { dst[i * wo + j] = src[i * s * w + j * s] }
                        }
                    }
                }
            }
        }
        cachedInputShape = d
        return y
    }

    /// Scatters the copied channels' gradient back to the sampled positions.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let d = cachedInputShape else {
            fatalError("\(layerDescription): backward called without a preceding forward")
        }
        let (n, h, w) = (d[0], d[2], d[3])
        let (ho, wo) = ((h + stride - 1) / stride, (w + stride - 1) / stride)
        LayerKit.require(gradOutput.shape == [n, outChannels, ho, wo],
                         "\(layerDescription): gradient shape \(gradOutput.shape) does not match output \([n, outChannels, ho, wo])")
        cachedInputShape = nil
        var dx = Tensor(shape: d)
        let (cin, cout, s, before) = (inChannels, outChannels, stride, padBefore)
        gradOutput.withUnsafePointer { dy in
            dx.withUnsafeMutablePointer { dxp in
                for b in 0..<n {
                    for c in 0..<cin {
                        let src = dy + (b * cout + c + before) * ho * wo
                        let dst = dxp + (b * cin + c) * h * w
                        for i in 0..<ho {
                            for j in 0..<wo { dst[i * s * w + j * s] += src[i * wo + j] }
                        }
                    }
                }
            }
        }
        return dx
    }

    /// No parameters.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
}

/// Builds the shortcut of a block, or nil for the identity.
private func makeShortcut(_ kind: ShortcutKind, inChannels: Int, outChannels: Int, stride: Int,
                          rng: inout RandomSource) -> (name: String, module: any Module)? {
    if stride == 1 && inChannels == outChannels { return nil }
    switch kind {
    case .zeroPad:
        return ("shortcut", ZeroPadShortcut(inChannels: inChannels, outChannels: outChannels, stride: stride))
    case .projection:
        return ("downsample", Sequential([
            Conv2d(inChannels: inChannels, outChannels: outChannels, kernelSize: 1, stride: stride,
                   bias: false, rng: &rng),
            BatchNorm2d(channels: outChannels),
        ]))
    }
}

/// `act(bn.forward(x))`: with ReLU as one fused pass (``BatchNorm2d/forwardReLU(_:mode:)``), else
/// the two layers. The backward below must be given the same `act`.
private func bnActForward(_ bn: BatchNorm2d, _ act: Activation, _ x: Tensor, mode: ForwardMode) -> Tensor {
    act.kind == .relu ? bn.forwardReLU(x, mode: mode) : act.forward(bn.forward(x, mode: mode), mode: mode)
}

/// The backward of ``bnActForward(_:_:_:mode:)``.
private func bnActBackward(_ bn: BatchNorm2d, _ act: Activation, _ g: Tensor) -> Tensor {
    act.kind == .relu ? bn.backwardReLU(g) : bn.backward(act.backward(g))
}

/// Runs a residual block's tail: `relu(main + shortcut(x))` and its backward.
private func residualBackward(main: Tensor, shortcut: (any Module)?, gradSum: Tensor) -> Tensor {
    var dx = main
    if let shortcut {
        LayerKit.accumulate(&dx, shortcut.backward(gradSum))
    } else {
        LayerKit.accumulate(&dx, gradSum)
    }
    return dx
}

/// R-forward of ``bnActForward(_:_:_:mode:)``.
private func bnActRForward(_ bn: BatchNorm2d, _ act: Activation, _ x: (output: Tensor, tangent: Tensor?)) -> (output: Tensor, tangent: Tensor?) {
    if act.kind == .relu { return bn.rForwardReLU(x.output, tangent: x.tangent) }
    let b = bn.rForward(x.output, tangent: x.tangent)
    return act.rForward(b.output, tangent: b.tangent)
}

/// R-backward of ``bnActRForward(_:_:_:)``.
private func bnActRBackward(_ bn: BatchNorm2d, _ act: Activation, _ g: (gradient: Tensor?, tangent: Tensor?)) -> (gradient: Tensor?, tangent: Tensor?) {
    act.kind == .relu ? rBackwardChained(bn, g) : rBackwardChained(bn, rBackwardChained(act, g))
}

/// R-forward of a residual tail: `act(main + shortcut(x))` with both branches' tangents summed.
private func residualRForward(main: (output: Tensor, tangent: Tensor?), shortcut: (any Module)?,
                              input: (output: Tensor, tangent: Tensor?), act: Activation,
                              context: String) -> (output: Tensor, tangent: Tensor?) {
    let identity = shortcut.map { curvatureChild($0).rForward(input.output, tangent: input.tangent) } ?? input
    let sum = LayerKit.add(main.output, identity.output, context: context)
    return act.rForward(sum, tangent: addTangents(main.tangent, identity.tangent, context: context))
}

/// R-backward of the block input: the main branch's and the shortcut's gradients summed (the
/// shortcut's R-backward runs even when the caller discards input gradients: a projection
/// shortcut has weights of its own).
private func residualRBackward(main: (gradient: Tensor?, tangent: Tensor?), shortcut: (any Module)?,
                               sum: (gradient: Tensor?, tangent: Tensor), inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
    let side: (gradient: Tensor?, tangent: Tensor?) = shortcut.map {
        curvatureChild($0).rBackward(sum.gradient, tangent: sum.tangent, inputGradients: inputGradients)
    } ?? (sum.gradient, sum.tangent)
    guard inputGradients else { return (nil, nil) }
    let g = addTangents(main.gradient, side.gradient, context: "residual gradient")
    return (g, addTangents(main.tangent, side.tangent, context: "residual tangent"))
}

/// ResNet basic block (two 3×3 convolutions):
/// `y = act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`, act = ReLU unless configured.
///
/// Input `[N, inChannels, H, W]`, output `[N, outChannels, ⌈H/stride⌉, ⌈W/stride⌉]`; `conv1` carries
/// the stride. The shortcut is the identity when shapes match, else per ``ShortcutKind``.
/// Backward sends the gradient of the sum into both branches and adds their input gradients.
/// Parameter paths: `conv1`, `bn1`, `conv2`, `bn2`, and `downsample.0`/`downsample.1` (projection).
public final class BasicBlock: Module {
    /// Channel expansion of the block's output relative to its width (1).
    public static let expansion = 1
    /// 3×3 convolution with the block's stride.
    public let conv1: Conv2d
    /// Batch norm after `conv1`.
    public let bn1: BatchNorm2d
    /// 3×3 convolution, stride 1.
    public let conv2: Conv2d
    /// Batch norm after `conv2`.
    public let bn2: BatchNorm2d
    /// The shortcut branch, or nil for the identity.
    public let shortcut: (any Module)?
    /// The nonlinearity after `bn1` and after the residual sum (ReLU in ResNets).
    public let activation: ActivationKind
    private let shortcutName: String
    let act1: Activation
    let act2: Activation

    /// A basic block from `inChannels` to `outChannels` with the given stride; parameters from `rng`
    /// in the order conv1, conv2, shortcut.
    public init(inChannels: Int, outChannels: Int, stride: Int = 1, shortcut: ShortcutKind = .projection,
                activation: ActivationKind = .relu, rng: inout RandomSource) {
        self.activation = activation
        act1 = Activation(activation)
        act2 = Activation(activation)
        conv1 = Conv2d(inChannels: inChannels, outChannels: outChannels, kernelSize: 3, stride: stride,
                       padding: 1, bias: false, rng: &rng)
        bn1 = BatchNorm2d(channels: outChannels)
        conv2 = Conv2d(inChannels: outChannels, outChannels: outChannels, kernelSize: 3, stride: 1,
                       padding: 1, bias: false, rng: &rng)
        bn2 = BatchNorm2d(channels: outChannels)
        let sc = makeShortcut(shortcut, inChannels: inChannels, outChannels: outChannels, stride: stride, rng: &rng)
        self.shortcut = sc?.module
        shortcutName = sc?.name ?? "shortcut"
    }

    /// `act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        var out = conv1.forward(input, mode: mode)
        out = bnActForward(bn1, act1, out, mode: mode)
        out = conv2.forward(out, mode: mode)
        out = bn2.forward(out, mode: mode)
        let identity = shortcut?.forward(input, mode: mode) ?? input
        return act2.forward(LayerKit.add(out, identity, context: "BasicBlock residual add"), mode: mode)
    }

    /// Gradient through both branches, summed.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        let gradSum = act2.backward(gradOutput)
        var g = bn2.backward(gradSum)
        g = conv2.backward(g)
        g = bnActBackward(bn1, act1, g)
        g = conv1.backward(g)
        return residualBackward(main: g, shortcut: shortcut, gradSum: gradSum)
    }

    /// conv1, bn1, conv2, bn2, then the shortcut's parameters (torchvision's order).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        conv1.visitParameters(prefix: joinPath(prefix, "conv1"), body)
        bn1.visitParameters(prefix: joinPath(prefix, "bn1"), body)
        conv2.visitParameters(prefix: joinPath(prefix, "conv2"), body)
        bn2.visitParameters(prefix: joinPath(prefix, "bn2"), body)
        shortcut?.visitParameters(prefix: joinPath(prefix, shortcutName), body)
    }

    /// The children in execution order (`act1`, `act2` are the activations).
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        var children: [(String, any Module)] = [("conv1", conv1), ("bn1", bn1), ("act1", act1),
                                                ("conv2", conv2), ("bn2", bn2)]
        if let shortcut { children.append((shortcutName, shortcut)) }
        children.append(("act2", act2))
        LayerKit.visitChildren(children, prefix: prefix, body)
    }
}

/// ResNet bottleneck block (1×1 reduce, 3×3, 1×1 expand by 4):
/// `y = act(bn3(conv3(act(bn2(conv2(act(bn1(conv1(x)))))))) + shortcut(x))`, act = ReLU unless configured.
///
/// Input `[N, inChannels, H, W]`, output `[N, 4·width, ⌈H/stride⌉, ⌈W/stride⌉]`; the stride sits on
/// the 3×3 `conv2` (torchvision's "ResNet v1.5"). The shortcut is the identity when shapes match,
/// else per ``ShortcutKind``. Parameter paths: `conv1`…`bn3`, `downsample.0`/`downsample.1`.
public final class Bottleneck: Module {
    /// Output channels per unit of width (4).
    public static let expansion = 4
    /// 1×1 reduction to `width` channels.
    public let conv1: Conv2d
    /// Batch norm after `conv1`.
    public let bn1: BatchNorm2d
    /// 3×3 convolution with the block's stride.
    public let conv2: Conv2d
    /// Batch norm after `conv2`.
    public let bn2: BatchNorm2d
    /// 1×1 expansion to `4·width` channels.
    public let conv3: Conv2d
    /// Batch norm after `conv3`.
    public let bn3: BatchNorm2d
    /// The shortcut branch, or nil for the identity.
    public let shortcut: (any Module)?
    /// The nonlinearity after `bn1`, `bn2` and the residual sum (ReLU in ResNets).
    public let activation: ActivationKind
    private let shortcutName: String
    let act1: Activation
    let act2: Activation
    let act3: Activation

    /// A bottleneck block from `inChannels` to `4·width` channels; parameters from `rng` in the
    /// order conv1, conv2, conv3, shortcut.
    public init(inChannels: Int, width: Int, stride: Int = 1, shortcut: ShortcutKind = .projection,
                activation: ActivationKind = .relu, rng: inout RandomSource) {
        self.activation = activation
        act1 = Activation(activation)
        act2 = Activation(activation)
        act3 = Activation(activation)
        let outChannels = width * Bottleneck.expansion
        conv1 = Conv2d(inChannels: inChannels, outChannels: width, kernelSize: 1, bias: false, rng: &rng)
        bn1 = BatchNorm2d(channels: width)
        conv2 = Conv2d(inChannels: width, outChannels: width, kernelSize: 3, stride: stride, padding: 1,
                       bias: false, rng: &rng)
        bn2 = BatchNorm2d(channels: width)
        conv3 = Conv2d(inChannels: width, outChannels: outChannels, kernelSize: 1, bias: false, rng: &rng)
        bn3 = BatchNorm2d(channels: outChannels)
        let sc = makeShortcut(shortcut, inChannels: inChannels, outChannels: outChannels, stride: stride, rng: &rng)
        self.shortcut = sc?.module
        shortcutName = sc?.name ?? "shortcut"
    }

    /// `act(bn3(conv3(act(bn2(conv2(act(bn1(conv1(x)))))))) + shortcut(x))`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        var out = bnActForward(bn1, act1, conv1.forward(input, mode: mode), mode: mode)
        out = bnActForward(bn2, act2, conv2.forward(out, mode: mode), mode: mode)
        out = bn3.forward(conv3.forward(out, mode: mode), mode: mode)
        let identity = shortcut?.forward(input, mode: mode) ?? input
        return act3.forward(LayerKit.add(out, identity, context: "Bottleneck residual add"), mode: mode)
    }

    /// Gradient through both branches, summed.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        let gradSum = act3.backward(gradOutput)
        var g = conv3.backward(bn3.backward(gradSum))
        g = conv2.backward(bnActBackward(bn2, act2, g))
        g = conv1.backward(bnActBackward(bn1, act1, g))
        return residualBackward(main: g, shortcut: shortcut, gradSum: gradSum)
    }

    /// conv1, bn1, conv2, bn2, conv3, bn3, then the shortcut's parameters (torchvision's order).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        conv1.visitParameters(prefix: joinPath(prefix, "conv1"), body)
        bn1.visitParameters(prefix: joinPath(prefix, "bn1"), body)
        conv2.visitParameters(prefix: joinPath(prefix, "conv2"), body)
        bn2.visitParameters(prefix: joinPath(prefix, "bn2"), body)
        conv3.visitParameters(prefix: joinPath(prefix, "conv3"), body)
        bn3.visitParameters(prefix: joinPath(prefix, "bn3"), body)
        shortcut?.visitParameters(prefix: joinPath(prefix, shortcutName), body)
    }

    /// The children in execution order (`act1`…`act3` are the activations).
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        var children: [(String, any Module)] = [("conv1", conv1), ("bn1", bn1), ("act1", act1),
                                                ("conv2", conv2), ("bn2", bn2), ("act2", act2),
                                                ("conv3", conv3), ("bn3", bn3)]
        if let shortcut { children.append((shortcutName, shortcut)) }
        children.append(("act3", act3))
        LayerKit.visitChildren(children, prefix: prefix, body)
    }
}

extension LayerKit {
    /// Depth-first visit of named children: each child, then its descendants.
    static func visitChildren(_ children: [(String, any Module)], prefix: String, _ body: (String, any Module) -> Void) {
        for (name, module) in children {
            let path = joinPath(prefix, name)
            body(path, module)
            module.visitModules(prefix: path, body)
        }
    }
}

extension ZeroPadShortcut: CurvatureModule {
    /// Subsamples and pads the input and its tangent alike (a linear map).
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        linearRForward(input, tangent: tangent) { forward($0, mode: .eval) }
    }

    /// Both gradients through the (linear) backward.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let cache = cachedInputShape
        return linearRBackward(gradient, tangent: tangent, backward: backward) { cachedInputShape = cache }
    }
}

extension BasicBlock: CurvatureModule {
    /// R-forward of `act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        var out = conv1.rForward(input, tangent: tangent)
        out = bnActRForward(bn1, act1, out)
        out = conv2.rForward(out.output, tangent: out.tangent)
        out = bn2.rForward(out.output, tangent: out.tangent)
        return residualRForward(main: out, shortcut: shortcut, input: (input, tangent), act: act2,
                                context: "BasicBlock residual add")
    }

    /// R-backward through both branches, summed.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let sum = act2.rBackward(gradient, tangent: tangent, inputGradients: true)
        guard let rsum = sum.tangent else { return (nil, nil) }
        var g = bn2.rBackward(sum.gradient, tangent: rsum, inputGradients: true)
        g = rBackwardChained(conv2, g)
        g = bnActRBackward(bn1, act1, g)
        g = rBackwardChained(conv1, g, inputGradients: inputGradients)
        return residualRBackward(main: g, shortcut: shortcut, sum: (sum.gradient, rsum), inputGradients: inputGradients)
    }

    /// Piecewise linear when its activation is.
    public var isPiecewiseLinear: Bool { act1.isPiecewiseLinear }
}

extension Bottleneck: CurvatureModule {
    /// R-forward of `act(bn3(conv3(act(bn2(conv2(act(bn1(conv1(x)))))))) + shortcut(x))`.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        var out = bnActRForward(bn1, act1, conv1.rForward(input, tangent: tangent))
        out = bnActRForward(bn2, act2, conv2.rForward(out.output, tangent: out.tangent))
        out = conv3.rForward(out.output, tangent: out.tangent)
        out = bn3.rForward(out.output, tangent: out.tangent)
        return residualRForward(main: out, shortcut: shortcut, input: (input, tangent), act: act3,
                                context: "Bottleneck residual add")
    }

    /// R-backward through both branches, summed.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let sum = act3.rBackward(gradient, tangent: tangent, inputGradients: true)
        guard let rsum = sum.tangent else { return (nil, nil) }
        var g = bn3.rBackward(sum.gradient, tangent: rsum, inputGradients: true)
        g = rBackwardChained(conv3, g)
        g = bnActRBackward(bn2, act2, g)
        g = rBackwardChained(conv2, g)
        g = bnActRBackward(bn1, act1, g)
        g = rBackwardChained(conv1, g, inputGradients: inputGradients)
        return residualRBackward(main: g, shortcut: shortcut, sum: (sum.gradient, rsum), inputGradients: inputGradients)
    }

    /// Piecewise linear when its activation is.
    public var isPiecewiseLinear: Bool { act1.isPiecewiseLinear }
}

