import CKernels

/// Reusable scratch memory for the convolution kernels (im2col buffers and the like).
///
/// Scratch is only used inside one kernel call, so every ``Conv2d`` of a model can share one
/// workspace (the model builders do this); it grows to the largest request and is then reused.
/// Not thread-safe: share a workspace only among layers that run on the same thread.
public final class ConvWorkspace {
    private var buffer: UnsafeMutableRawPointer?
    private var capacity = 0

    /// An empty workspace; memory is allocated on first use.
    public init() {}

    /// Scratch of at least `bytes` bytes, 64-byte aligned, valid until the next call.
    func pointer(bytes: Int) -> UnsafeMutableRawPointer {
        if bytes > capacity || buffer == nil {
            buffer?.deallocate()
            capacity = max(bytes, 64)
            buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        }
        return buffer!
    }

    deinit { buffer?.deallocate() }
}

/// 2-D convolution over NCHW input: `y = conv(x, effectiveWeight) + bias`.
///
/// Shapes: input `[N, inChannels, H, W]`, weight `[outChannels, inChannels/groups, k, k]`,
/// bias `[outChannels]`, output `[N, outChannels, H', W']` with
/// `H' = (H + 2·padding − k) / stride + 1` (likewise `W'`).
/// `effectiveWeight` is `weightTransform?.forward(weight) ?? weight` (see ``WeightTransform``).
/// With an ``inputQuantizer`` the layer computes `conv(Q_A(x), effectiveWeight) + bias` instead,
/// Q_A being PACT (MSQ-SPEC §5), and the weight gradient is taken w.r.t. the quantized input.
///
/// Initialisation (the project's choice, as torchvision's ResNet): weight ~ Kaiming normal,
/// fan-out mode with ReLU gain, `std = sqrt(2 / (outChannels·k·k))`; bias (if any) PyTorch's
/// default Uniform(±1/sqrt(fanIn)), `fanIn = inChannels/groups·k·k`. The bias does not decay.
public final class Conv2d: Module {
    /// Input channels C_in.
    public let inChannels: Int
    /// Output channels C_out.
    public let outChannels: Int
    /// Square kernel size k.
    public let kernelSize: Int
    /// Stride in both directions.
    public let stride: Int
    /// Zero padding on each side.
    public let padding: Int
    /// Channel groups (C_in and C_out are multiples of it; `groups == C_in == C_out` is depthwise).
    public let groups: Int
    /// Stored weight `[outChannels, inChannels/groups, k, k]`.
    public let weight: Parameter
    /// Bias `[outChannels]`, or nil.
    public let bias: Parameter?
    /// Maps ``weight`` to the weight the layer computes with; nil = float (effective = stored).
    public var weightTransform: (any WeightTransform)?
    /// Kernel scratch memory; models share one among all their convolutions.
    public var workspace = ConvWorkspace()
    /// PACT quantizer applied to the input before the convolution; nil = float input. Its α is
    /// listed by ``visitParameters(prefix:_:)`` as `input_alpha`. See ``quantizeActivations(_:bits:excluded:initialClip:)``.
    public var inputQuantizer: PACTQuantizer?

    private var cachedInput: Tensor?
    // The quantizer the last forward used: backward must undo that forward even if
    // `inputQuantizer` was replaced in between.
    private var cachedQuantizer: PACTQuantizer?
    private var cachedWeight: Tensor?
    private var cachedEffectiveWeight: Tensor?
    private var cachedShape = msq_conv2d_shape()
    // What rBackward needs from rForward: x_q, Rx, the effective weight, its tangent, the geometry.
    private var curvatureCache: (x: Tensor, rx: Tensor?, w: Tensor, v: Tensor?, shape: msq_conv2d_shape)?

    /// A convolution with freshly initialised parameters drawn from `rng`.
    public init(inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
                groups: Int = 1, bias: Bool = true, rng: inout RandomSource) {
        LayerKit.require(inChannels > 0 && outChannels > 0 && kernelSize > 0 && stride > 0 && padding >= 0 && groups > 0,
                         "Conv2d: invalid configuration in \(inChannels) out \(outChannels) k \(kernelSize) stride \(stride) padding \(padding) groups \(groups)")
        LayerKit.require(inChannels % groups == 0 && outChannels % groups == 0,
                         "Conv2d: channels \(inChannels)→\(outChannels) are not multiples of groups \(groups)")
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        self.groups = groups
        let fanOut = outChannels * kernelSize * kernelSize
        let fanIn = inChannels / groups * kernelSize * kernelSize
        weight = Parameter(Tensor.randomNormal([outChannels, inChannels / groups, kernelSize, kernelSize],
                                               std: (2 / Float(fanOut)).squareRoot(), using: &rng))
        if bias {
            self.bias = Parameter(Tensor.randomUniform([outChannels], bound: 1 / Float(fanIn).squareRoot(), using: &rng),
                                  decays: false)
        } else {
            self.bias = nil
        }
    }

    /// The weight the layer computes with: `weightTransform?.forward(weight.value) ?? weight.value`.
    public var effectiveWeight: Tensor { weightTransform?.forward(weight.value) ?? weight.value }

    /// A short description of the layer for error messages.
    var layerDescription: String {
        "Conv2d(\(inChannels)→\(outChannels), k\(kernelSize), stride \(stride), padding \(padding)\(groups > 1 ? ", groups \(groups)" : ""))"
    }

    /// The output shape for an input of shape `[N, C_in, H, W]`.
    public func outputShape(for inputShape: [Int]) -> [Int] {
        let s = makeShape(inputShape)
        return [Int(s.n), Int(s.c_out), Int(s.h_out), Int(s.w_out)]
    }

    func makeShape(_ d: [Int]) -> msq_conv2d_shape {
        LayerKit.require(d.count == 4 && d[1] == inChannels,
                         "\(layerDescription): expected input [N, \(inChannels), H, W], got \(d)")
        var s = msq_conv2d_shape()
        let rc = msq_conv2d_make_shape(&s, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2]), LayerKit.c(d[3]),
                                       LayerKit.c(outChannels), LayerKit.c(kernelSize), LayerKit.c(kernelSize),
                                       LayerKit.c(stride), LayerKit.c(padding), LayerKit.c(groups))
        LayerKit.require(rc == 0, "\(layerDescription): invalid geometry for input \(d) (input smaller than the kernel?)")
        return s
    }

    /// `y = conv(x_q, effectiveWeight) + bias` with `x_q = inputQuantizer?.forward(x) ?? x` (both
    /// modes quantize alike); caches x_q and the weights for ``backward(_:)``.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        cachedInput = nil; cachedWeight = nil; cachedEffectiveWeight = nil; cachedQuantizer = nil
        var s = makeShape(input.shape)
        // The weight gradient needs the input the convolution actually multiplied: cache x_q, not x.
        let input = inputQuantizer?.forward(input) ?? input
        let w = weight.value
        let we = effectiveWeight
        LayerKit.require(we.shape == w.shape,
                         "\(layerDescription): weightTransform returned shape \(we.shape), expected \(w.shape)")
        var y = Tensor(unfilledShape: [Int(s.n), Int(s.c_out), Int(s.h_out), Int(s.w_out)])
        let ws = workspace.pointer(bytes: msq_conv2d_workspace_size(&s))
        input.withUnsafePointer { x in
            we.withUnsafePointer { wp in
                LayerKit.withOptionalPointer(bias?.value) { b in
                    y.withUnsafeMutablePointer { yp in msq_conv2d_forward(yp, x, wp, b, &s, ws) }
                }
            }
        }
        cachedInput = input
        cachedWeight = w
        cachedEffectiveWeight = we
        cachedShape = s
        cachedQuantizer = inputQuantizer
        return y
    }

    /// dx = conv_transpose(dy, effectiveWeight), passed back through the input quantizer if any
    /// (which accumulates dα); accumulates dW (through the transform) and dBias.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let dx = backwardCore(gradOutput, inputGradient: true) else {
            preconditionFailure("\(layerDescription): the backward core returns dx whenever it is asked for it")
        }
        return dx
    }

    /// dW (through the transform) and dBias as in ``backward(_:)``, without dx unless an input
    /// quantizer needs it for dα.
    public func backwardParameters(_ gradOutput: Tensor) {
        _ = backwardCore(gradOutput, inputGradient: inputQuantizer != nil)
    }

    private func backwardCore(_ gradOutput: Tensor, inputGradient: Bool) -> Tensor? {
        guard let x = cachedInput, let w = cachedWeight, let we = cachedEffectiveWeight else {
            fatalError("\(layerDescription): backward called without a preceding forward")
        }
        var s = cachedShape
        let expected = [Int(s.n), Int(s.c_out), Int(s.h_out), Int(s.w_out)]
        LayerKit.require(gradOutput.shape == expected,
                         "\(layerDescription): gradient shape \(gradOutput.shape) does not match output \(expected)")
        // Release the caches first: the optimizer then updates the weight without a copy-on-write.
        cachedInput = nil; cachedWeight = nil; cachedEffectiveWeight = nil
        let quantizer = cachedQuantizer
        cachedQuantizer = nil
        let ws = workspace.pointer(bytes: msq_conv2d_workspace_size(&s))
        var dx: Tensor? = nil
        if inputGradient {
            var g = Tensor(shape: x.shape)
            gradOutput.withUnsafePointer { dy in
                we.withUnsafePointer { wp in
                    g.withUnsafeMutablePointer { dxp in msq_conv2d_backward_input(dxp, dy, wp, &s, ws) }
                }
            }
            dx = g
        }
        gradOutput.withUnsafePointer { dy in
            x.withUnsafePointer { xp in
                LayerKit.withGradPointer(bias) { db in
                    if let transform = weightTransform {
                        var dwe = Tensor(shape: w.shape)
                        dwe.withUnsafeMutablePointer { dw in msq_conv2d_backward_weight(dw, db, dy, xp, &s, ws) }
                        let dw = transform.backward(gradEffective: dwe, weight: w)
                        if transform.usesLayerWeight {
                            LayerKit.require(dw.shape == w.shape,
                                             "\(layerDescription): weightTransform.backward returned shape \(dw.shape), expected \(w.shape)")
                            LayerKit.accumulate(&weight.grad, dw)
                        }
                    } else {
                        LayerKit.withGradPointer(weight) { dw in msq_conv2d_backward_weight(dw, db, dy, xp, &s, ws) }
                    }
                }
            }
        }
        // dx so far is dL/dx_q; the quantizer's straight-through estimator maps it to dL/dx.
        guard let dx else { return nil }
        return quantizer?.backward(dx) ?? dx
    }

    /// `weight` (unless the weight transform replaces it, ``WeightTransform/usesLayerWeight``), then
    /// `bias` if present, then `input_alpha` (the input quantizer's α) if present, then the weight
    /// transform's own parameters (e.g. `bsq.planes`, ``WeightTransform/visitParameters(prefix:_:)``).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        if weightTransform?.usesLayerWeight ?? true { body(joinPath(prefix, "weight"), weight) }
        if let bias { body(joinPath(prefix, "bias"), bias) }
        if let inputQuantizer { body(joinPath(prefix, "input_alpha"), inputQuantizer.alpha) }
        weightTransform?.visitParameters(prefix: prefix, body)
    }
}

extension Conv2d: CurvatureModule {
    /// `y = conv(x_q, W) + bias` and `Ry = conv(Rx, W) + conv(x_q, V)`, V = `weight.tangent`
    /// (`msq_conv2d_rforward`); the input quantizer passes tangents through unchanged.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        curvatureCache = nil
        var s = makeShape(input.shape)
        let x = inputQuantizer?.forward(input) ?? input
        let w = effectiveWeight
        let v = weight.tangent
        if let v {
            LayerKit.require(v.shape == weight.value.shape,
                             "\(layerDescription): weight tangent shape \(v.shape), expected \(weight.value.shape)")
        }
        if let tangent {
            LayerKit.require(tangent.shape == input.shape,
                             "\(layerDescription): input tangent shape \(tangent.shape), expected \(input.shape)")
        }
        let outShape = [Int(s.n), Int(s.c_out), Int(s.h_out), Int(s.w_out)]
        var y = Tensor(unfilledShape: outShape)
        let ws = workspace.pointer(bytes: msq_conv2d_workspace_size(&s))
        x.withUnsafePointer { xp in
            w.withUnsafePointer { wp in
                LayerKit.withOptionalPointer(bias?.value) { b in
                    y.withUnsafeMutablePointer { yp in msq_conv2d_forward(yp, xp, wp, b, &s, ws) }
                }
            }
        }
        var ry: Tensor? = nil
        if tangent != nil || v != nil {
            var out = Tensor(unfilledShape: outShape)
            var scratch = Tensor(unfilledShape: tangent != nil && v != nil ? outShape : [0])
            x.withUnsafePointer { xp in
                w.withUnsafePointer { wp in
                    LayerKit.withOptionalPointer(tangent) { rx in
                        LayerKit.withOptionalPointer(v) { vp in
                            scratch.withUnsafeMutablePointer { sp in
                                out.withUnsafeMutablePointer { rp in
                                    msq_conv2d_rforward(rp, sp, xp, rx, wp, vp, &s, ws)
                                }
                            }
                        }
                    }
                }
            }
            ry = out
        }
        curvatureCache = (x, tangent, w, v, s)
        return (y, ry)
    }

    /// `g_x = convᵀ(g_y, W)`, `R g_x = convᵀ(R g_y, W) + convᵀ(g_y, V)`, and into
    /// `weight.hessianVector`: `corr(x_q, R g_y) + corr(Rx, g_y)` (`msq_conv2d_rbackward_weight`).
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let c = curvatureCache else {
            fatalError("\(layerDescription): rBackward called without a preceding rForward")
        }
        curvatureCache = nil
        var s = c.shape
        let expected = [Int(s.n), Int(s.c_out), Int(s.h_out), Int(s.w_out)]
        LayerKit.require(tangent.shape == expected && (gradient?.shape ?? expected) == expected,
                         "\(layerDescription): gradient shapes \(gradient?.shape ?? []) / \(tangent.shape) do not match output \(expected)")
        let ws = workspace.pointer(bytes: msq_conv2d_workspace_size(&s))
        if weight.hessianVector != nil {
            LayerKit.require(weight.hessianVector?.shape == weight.value.shape,
                             "\(layerDescription): hessianVector shape \(weight.hessianVector?.shape ?? []), expected \(weight.value.shape)")
            tangent.withUnsafePointer { rdy in
                LayerKit.withOptionalPointer(gradient) { dy in
                    c.x.withUnsafePointer { xp in
                        LayerKit.withOptionalPointer(c.rx) { rx in
                            weight.hessianVector!.withUnsafeMutablePointer { hv in
                                msq_conv2d_rbackward_weight(hv, rdy, dy, xp, rx, &s, ws)
                            }
                        }
                    }
                }
            }
        }
        guard inputGradients else { return (nil, nil) }
        var gx: Tensor? = nil
        if let gradient {
            var g = Tensor(shape: c.x.shape)
            gradient.withUnsafePointer { dy in
                c.w.withUnsafePointer { wp in
                    g.withUnsafeMutablePointer { dxp in msq_conv2d_backward_input(dxp, dy, wp, &s, ws) }
                }
            }
            gx = g
        }
        var rgx = Tensor(shape: c.x.shape)
        tangent.withUnsafePointer { rdy in
            LayerKit.withOptionalPointer(gradient) { dy in
                c.w.withUnsafePointer { wp in
                    LayerKit.withOptionalPointer(c.v) { vp in
                        rgx.withUnsafeMutablePointer { rdx in msq_conv2d_rbackward_input(rdx, rdy, dy, wp, vp, &s, ws) }
                    }
                }
            }
        }
        return (gx, rgx)
    }
}

