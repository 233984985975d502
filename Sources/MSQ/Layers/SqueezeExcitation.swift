import CKernels

/// Squeeze-and-excitation as torchvision's MobileNetV3 builds it: a per-channel gate computed from
/// the channel means, multiplied into the input.
///
///     s = hardsigmoid(fc2(relu(fc1(avgpool(x)))))   (fc1, fc2: 1×1 convolutions with bias)
///     y[n,c,h,w] = x[n,c,h,w] · s[n,c]
///
/// Input and output `[N, C, H, W]`; `fc1` maps C to `squeezeChannels`, `fc2` back. Parameter
/// paths `fc1.weight`, `fc1.bias`, `fc2.weight`, `fc2.bias` (torchvision's). Both convolutions are
/// conv layers like any other, so quantized methods see them.
public final class SqueezeExcitation: Module {
    /// 1×1 convolution C → squeeze, with bias.
    public let fc1: Conv2d
    /// 1×1 convolution squeeze → C, with bias.
    public let fc2: Conv2d
    private let pool = GlobalAvgPool2d()
    private let relu = Activation(.relu)
    private let gate = Activation(.hardsigmoid)
    private var cached: (x: Tensor, s: Tensor)?
    // What rBackward needs from rForward: x, Rx, the gate s and its tangent Rs.
    private var curvatureCache: (x: Tensor, rx: Tensor?, s: Tensor, rs: Tensor?)?

    /// A block over `channels` channels squeezed to `squeezeChannels`; parameters from `rng`
    /// in the order fc1, fc2.
    public init(channels: Int, squeezeChannels: Int, rng: inout RandomSource) {
        fc1 = Conv2d(inChannels: channels, outChannels: squeezeChannels, kernelSize: 1, bias: true, rng: &rng)
        fc2 = Conv2d(inChannels: squeezeChannels, outChannels: channels, kernelSize: 1, bias: true, rng: &rng)
    }

    /// `x · s`, s from the channel means; caches x and s.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count == 4, "SqueezeExcitation: expected input [N, C, H, W], got \(d)")
        let means = pool.forward(input, mode: mode).reshaped([d[0], d[1], 1, 1])
        let s = gate.forward(fc2.forward(relu.forward(fc1.forward(means, mode: mode), mode: mode), mode: mode), mode: mode)
        var y = Tensor(unfilledShape: d)
        input.withUnsafePointer { x in
            s.withUnsafePointer { sp in
                y.withUnsafeMutablePointer { yp in
                    msq_channel_scale_forward(yp, x, sp, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2] * d[3]))
                }
            }
        }
        cached = (input, s)
        return y
    }

    /// `dx = dy · s + avgpool'(fc1'(relu'(fc2'(hardsigmoid'(Σ_hw dy · x)))))`.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let (x, s) = cached else { fatalError("SqueezeExcitation: backward called without a preceding forward") }
        let d = x.shape
        LayerKit.require(gradOutput.shape == d, "SqueezeExcitation: gradient shape \(gradOutput.shape) does not match output \(d)")
        cached = nil
        var dx = Tensor(shape: d), ds = Tensor(shape: [d[0], d[1], 1, 1])
        gradOutput.withUnsafePointer { dy in
            x.withUnsafePointer { xp in
                s.withUnsafePointer { sp in
                    dx.withUnsafeMutablePointer { dxp in
                        ds.withUnsafeMutablePointer { dsp in
                            msq_channel_scale_backward(dxp, dsp, dy, xp, sp, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2] * d[3]))
                        }
                    }
                }
            }
        }
        let dMeans = fc1.backward(relu.backward(fc2.backward(gate.backward(ds))))
        dx += pool.backward(dMeans.reshaped([d[0], d[1]]))
        return dx
    }

    /// fc1, then fc2.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        fc1.visitParameters(prefix: joinPath(prefix, "fc1"), body)
        fc2.visitParameters(prefix: joinPath(prefix, "fc2"), body)
    }

    /// The children in execution order (`avgpool`, `fc1`, `activation`, `fc2`, `scale_activation`: torchvision's names).
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("avgpool", pool), ("fc1", fc1), ("activation", relu), ("fc2", fc2),
                                ("scale_activation", gate)], prefix: prefix, body)
    }
}

extension SqueezeExcitation: CurvatureModule {
    /// `y = x ⊙ s` and `Ry = Rx ⊙ s + x ⊙ Rs`, Rs through the pool, fc1, ReLU, fc2 and the gate.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        curvatureCache = nil
        let d = input.shape
        LayerKit.require(d.count == 4, "SqueezeExcitation: expected input [N, C, H, W], got \(d)")
        LayerKit.require(tangent == nil || tangent?.shape == d,
                         "SqueezeExcitation: input tangent shape \(tangent?.shape ?? []), expected \(d)")
        var g = pool.rForward(input, tangent: tangent)
        let gate4 = [d[0], d[1], 1, 1]
        g = fc1.rForward(g.output.reshaped(gate4), tangent: g.tangent?.reshaped(gate4))
        g = relu.rForward(g.output, tangent: g.tangent)
        g = fc2.rForward(g.output, tangent: g.tangent)
        g = gate.rForward(g.output, tangent: g.tangent)
        let (s, rs) = (g.output, g.tangent)
        let y = scaled(input, by: s)
        var ry: Tensor? = tangent.map { scaled($0, by: s) }
        if let rs { ry = addTangents(ry, scaled(input, by: rs), context: "SqueezeExcitation tangent") }
        curvatureCache = (input, tangent, s, rs)
        return (y, ry)
    }

    /// `g_x = g ⊙ s + pool′(…(Σ_hw g ⊙ x))` and its R: `R g ⊙ s + g ⊙ Rs` directly, and
    /// `Σ_hw (R g ⊙ x + g ⊙ Rx)` back through the gate's chain (whose convolutions accumulate H·v).
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let c = curvatureCache else { fatalError("SqueezeExcitation: rBackward called without a preceding rForward") }
        curvatureCache = nil
        let d = c.x.shape
        LayerKit.require(tangent.shape == d && (gradient?.shape ?? d) == d, "SqueezeExcitation: gradient shapes do not match output \(d)")
        let gate4 = [d[0], d[1], 1, 1]
        var gx: Tensor? = nil, gs: Tensor? = nil
        if let gradient {
            var (x, s) = (Tensor(shape: d), Tensor(shape: gate4))
            channelScaleBackward(dx: &x, ds: &s, dy: gradient, x: c.x, s: c.s)
            (gx, gs) = (x, s)
        }
        var rgx = Tensor(shape: d), rgs = Tensor(shape: gate4)
        channelScaleBackward(dx: &rgx, ds: &rgs, dy: tangent, x: c.x, s: c.s)
        if let gradient {
            if let rs = c.rs { channelScaleBackward(dx: &rgx, ds: nil, dy: gradient, x: c.x, s: rs) }
            if let rx = c.rx { channelScaleBackward(dx: nil, ds: &rgs, dy: gradient, x: rx, s: c.s) }
        }
        var g = rBackwardChained(gate, (gs, rgs))
        g = rBackwardChained(fc2, g)
        g = rBackwardChained(relu, g)
        g = rBackwardChained(fc1, g)
        g = rBackwardChained(pool, (g.gradient?.reshaped([d[0], d[1]]), g.tangent?.reshaped([d[0], d[1]])),
                             inputGradients: inputGradients)
        guard inputGradients else { return (nil, nil) }
        return (addTangents(gx, g.gradient, context: "SqueezeExcitation gradient"),
                addTangents(rgx, g.tangent, context: "SqueezeExcitation tangent"))
    }

    /// The gate multiplies the input: not piecewise linear.
    public var isPiecewiseLinear: Bool { false }

    /// `x ⊙ s`, s `[N, C, 1, 1]` broadcast over the plane.
    private func scaled(_ x: Tensor, by s: Tensor) -> Tensor {
        let d = x.shape
        var y = Tensor(unfilledShape: d)
        x.withUnsafePointer { xp in
            s.withUnsafePointer { sp in
                y.withUnsafeMutablePointer { yp in
                    msq_channel_scale_forward(yp, xp, sp, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2] * d[3]))
                }
            }
        }
        return y
    }

    /// `dx += dy ⊙ s`, `ds += Σ_hw dy ⊙ x` (either may be skipped).
    private func channelScaleBackward(dx: UnsafeMutablePointer<Tensor>?, ds: UnsafeMutablePointer<Tensor>?,
                                      dy: Tensor, x: Tensor, s: Tensor) {
        let d = x.shape
        dy.withUnsafePointer { dyp in
            x.withUnsafePointer { xp in
                s.withUnsafePointer { sp in
                    func withOut(_ t: UnsafeMutablePointer<Tensor>?, _ body: (UnsafeMutablePointer<Float>?) -> Void) {
                        if let t { t.pointee.withUnsafeMutablePointer { body($0) } } else { body(nil) }
                    }
                    withOut(dx) { dxp in
                        withOut(ds) { dsp in
                            msq_channel_scale_backward(dxp, dsp, dyp, xp, sp, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2] * d[3]))
                        }
                    }
                }
            }
        }
    }
}
