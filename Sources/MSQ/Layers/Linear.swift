import CKernels

/// Fully connected layer: `y = x · effectiveWeightᵀ + bias`.
///
/// Shapes: input `[N, inFeatures]`, weight `[outFeatures, inFeatures]`, bias `[outFeatures]`,
/// output `[N, outFeatures]`. `effectiveWeight` is `weightTransform?.forward(weight) ?? weight`.
/// With an ``inputQuantizer`` the layer computes `Q_A(x) · effectiveWeightᵀ + bias` instead, Q_A
/// being PACT (MSQ-SPEC §5), and the weight gradient is taken w.r.t. the quantized input.
/// Initialisation is PyTorch's default: weight and bias ~ Uniform(±1/sqrt(inFeatures)).
/// The bias does not decay.
public final class Linear: Module {
    /// Input features.
    public let inFeatures: Int
    /// Output features.
    public let outFeatures: Int
    /// Stored weight `[outFeatures, inFeatures]`.
    public let weight: Parameter
    /// Bias `[outFeatures]`, or nil.
    public let bias: Parameter?
    /// Maps ``weight`` to the weight the layer computes with; nil = float (effective = stored).
    public var weightTransform: (any WeightTransform)?
    /// PACT quantizer applied to the input before the product; nil = float input. Its α is listed
    /// by ``visitParameters(prefix:_:)`` as `input_alpha`. See ``quantizeActivations(_:bits:excluded:initialClip:)``.
    public var inputQuantizer: PACTQuantizer?

    private var cachedInput: Tensor?
    // The quantizer the last forward used: backward must undo that forward even if
    // `inputQuantizer` was replaced in between.
    private var cachedQuantizer: PACTQuantizer?
    private var cachedWeight: Tensor?
    private var cachedEffectiveWeight: Tensor?
    // What rBackward needs from rForward: x_q, Rx, the effective weight and its tangent.
    private var curvatureCache: (x: Tensor, rx: Tensor?, w: Tensor, v: Tensor?)?

    /// A linear layer with freshly initialised parameters drawn from `rng` (weight first, then bias).
    public init(inFeatures: Int, outFeatures: Int, bias: Bool = true, rng: inout RandomSource) {
        LayerKit.require(inFeatures > 0 && outFeatures > 0, "Linear: invalid sizes \(inFeatures)→\(outFeatures)")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        let bound = 1 / Float(inFeatures).squareRoot()
        weight = Parameter(Tensor.randomUniform([outFeatures, inFeatures], bound: bound, using: &rng))
        self.bias = bias ? Parameter(Tensor.randomUniform([outFeatures], bound: bound, using: &rng), decays: false) : nil
    }

    /// The weight the layer computes with: `weightTransform?.forward(weight.value) ?? weight.value`.
    public var effectiveWeight: Tensor { weightTransform?.forward(weight.value) ?? weight.value }

    var layerDescription: String { "Linear(\(inFeatures)→\(outFeatures))" }

    /// `y = x_q · effectiveWeightᵀ + bias` with `x_q = inputQuantizer?.forward(x) ?? x` (both modes
    /// quantize alike); caches x_q and the weights for ``backward(_:)``.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        cachedInput = nil; cachedWeight = nil; cachedEffectiveWeight = nil; cachedQuantizer = nil
        let d = input.shape
        LayerKit.require(d.count == 2 && d[1] == inFeatures,
                         "\(layerDescription): expected input [N, \(inFeatures)], got \(d)")
        // The weight gradient needs the input the product actually used: cache x_q, not x.
        let input = inputQuantizer?.forward(input) ?? input
        let w = weight.value
        let we = effectiveWeight
        LayerKit.require(we.shape == w.shape,
                         "\(layerDescription): weightTransform returned shape \(we.shape), expected \(w.shape)")
        let n = d[0]
        var y = Tensor(unfilledShape: [n, outFeatures])
        input.withUnsafePointer { x in
            we.withUnsafePointer { wp in
                LayerKit.withOptionalPointer(bias?.value) { b in
                    y.withUnsafeMutablePointer { yp in
                        msq_linear_forward(yp, x, wp, b, LayerKit.c(n), LayerKit.c(inFeatures), LayerKit.c(outFeatures))
                    }
                }
            }
        }
        cachedInput = input
        cachedWeight = w
        cachedEffectiveWeight = we
        cachedQuantizer = inputQuantizer
        return y
    }

    /// dx = dy · effectiveWeight, passed back through the input quantizer if any (which accumulates
    /// dα); accumulates dW = dyᵀ·x_q (through the transform) and dBias = Σₙ dy.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let x = cachedInput, let w = cachedWeight, let we = cachedEffectiveWeight else {
            fatalError("\(layerDescription): backward called without a preceding forward")
        }
        let n = x.shape[0]
        LayerKit.require(gradOutput.shape == [n, outFeatures],
                         "\(layerDescription): gradient shape \(gradOutput.shape) does not match output \([n, outFeatures])")
        cachedInput = nil; cachedWeight = nil; cachedEffectiveWeight = nil
        let quantizer = cachedQuantizer
        cachedQuantizer = nil
        var dx = Tensor(shape: x.shape)
        let (cn, ci, co) = (LayerKit.c(n), LayerKit.c(inFeatures), LayerKit.c(outFeatures))
        gradOutput.withUnsafePointer { dy in
            x.withUnsafePointer { xp in
                we.withUnsafePointer { wp in
                    dx.withUnsafeMutablePointer { dxp in
                        LayerKit.withGradPointer(bias) { db in
                            if let transform = weightTransform {
                                var dwe = Tensor(shape: w.shape)
                                dwe.withUnsafeMutablePointer { dw in msq_linear_backward(dxp, dw, db, dy, xp, wp, cn, ci, co) }
                                let dw = transform.backward(gradEffective: dwe, weight: w)
                                if transform.usesLayerWeight {
                                    LayerKit.require(dw.shape == w.shape,
                                                     "\(layerDescription): weightTransform.backward returned shape \(dw.shape), expected \(w.shape)")
                                    LayerKit.accumulate(&weight.grad, dw)
                                }
                            } else {
                                LayerKit.withGradPointer(weight) { dw in msq_linear_backward(dxp, dw, db, dy, xp, wp, cn, ci, co) }
                            }
                        }
                    }
                }
            }
        }
        // dx so far is dL/dx_q; the quantizer's straight-through estimator maps it to dL/dx.
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

extension Linear: CurvatureModule {
    /// `y = x_q·Wᵀ + bias` and `Ry = Rx·Wᵀ + x_q·Vᵀ`, V = `weight.tangent` (`msq_linear_rforward`);
    /// the input quantizer passes tangents through unchanged.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        curvatureCache = nil
        let d = input.shape
        LayerKit.require(d.count == 2 && d[1] == inFeatures,
                         "\(layerDescription): expected input [N, \(inFeatures)], got \(d)")
        LayerKit.require(tangent == nil || tangent?.shape == d,
                         "\(layerDescription): input tangent shape \(tangent?.shape ?? []), expected \(d)")
        let v = weight.tangent
        LayerKit.require(v == nil || v?.shape == weight.value.shape,
                         "\(layerDescription): weight tangent shape \(v?.shape ?? []), expected \(weight.value.shape)")
        let x = inputQuantizer?.forward(input) ?? input
        let w = effectiveWeight
        let (n, ci, co) = (LayerKit.c(d[0]), LayerKit.c(inFeatures), LayerKit.c(outFeatures))
        var y = Tensor(unfilledShape: [d[0], outFeatures])
        x.withUnsafePointer { xp in
            w.withUnsafePointer { wp in
                LayerKit.withOptionalPointer(bias?.value) { b in
                    y.withUnsafeMutablePointer { yp in msq_linear_forward(yp, xp, wp, b, n, ci, co) }
                }
            }
        }
        var ry: Tensor? = nil
        if tangent != nil || v != nil {
            var out = Tensor(unfilledShape: [d[0], outFeatures])
            x.withUnsafePointer { xp in
                w.withUnsafePointer { wp in
                    LayerKit.withOptionalPointer(tangent) { rx in
                        LayerKit.withOptionalPointer(v) { vp in
                            out.withUnsafeMutablePointer { rp in msq_linear_rforward(rp, xp, rx, wp, vp, n, ci, co) }
                        }
                    }
                }
            }
            ry = out
        }
        curvatureCache = (x, tangent, w, v)
        return (y, ry)
    }

    /// `g_x = g_y·W`, `R g_x = R g_y·W + g_y·V`, and into `weight.hessianVector`:
    /// `R g_yᵀ·x_q + g_yᵀ·Rx` (`msq_linear_rbackward`).
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let c = curvatureCache else {
            fatalError("\(layerDescription): rBackward called without a preceding rForward")
        }
        curvatureCache = nil
        let n = c.x.shape[0]
        LayerKit.require(tangent.shape == [n, outFeatures] && (gradient?.shape ?? tangent.shape) == tangent.shape,
                         "\(layerDescription): gradient shapes do not match output \([n, outFeatures])")
        LayerKit.require(weight.hessianVector == nil || weight.hessianVector?.shape == weight.value.shape,
                         "\(layerDescription): hessianVector shape \(weight.hessianVector?.shape ?? []), expected \(weight.value.shape)")
        let (cn, ci, co) = (LayerKit.c(n), LayerKit.c(inFeatures), LayerKit.c(outFeatures))
        var gx: Tensor? = nil
        if inputGradients, let gradient {
            var g = Tensor(shape: c.x.shape)
            gradient.withUnsafePointer { dy in
                c.x.withUnsafePointer { xp in
                    c.w.withUnsafePointer { wp in
                        g.withUnsafeMutablePointer { dxp in msq_linear_backward(dxp, nil, nil, dy, xp, wp, cn, ci, co) }
                    }
                }
            }
            gx = g
        }
        var rgx = Tensor(shape: inputGradients ? c.x.shape : [0])
        tangent.withUnsafePointer { rdy in
            LayerKit.withOptionalPointer(gradient) { dy in
                c.x.withUnsafePointer { xp in
                    LayerKit.withOptionalPointer(c.rx) { rx in
                        c.w.withUnsafePointer { wp in
                            LayerKit.withOptionalPointer(c.v) { vp in
                                rgx.withUnsafeMutablePointer { rdx in
                                    let rdxp = inputGradients ? rdx : nil
                                    if weight.hessianVector != nil {
                                        weight.hessianVector!.withUnsafeMutablePointer { hv in
                                            msq_linear_rbackward(rdxp, hv, rdy, dy, xp, rx, wp, vp, cn, ci, co)
                                        }
                                    } else if inputGradients {
                                        msq_linear_rbackward(rdxp, nil, rdy, dy, xp, rx, wp, vp, cn, ci, co)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return inputGradients ? (gx, rgx) : (nil, nil)
    }
}

