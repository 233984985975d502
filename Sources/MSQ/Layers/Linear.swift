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
