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
