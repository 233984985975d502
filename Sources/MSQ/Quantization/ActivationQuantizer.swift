import CKernels

/// Why an activation-quantization request was refused (besides the ``QuantizationError`` cases).
public enum ActivationQuantizationError: Error, Equatable, CustomStringConvertible {
    /// The initial clipping level α must be positive and finite; `clip` was requested.
    case invalidClip(Float)

    /// A one-line message for the CLI and logs.
    public var description: String {
        switch self {
        case let .invalidClip(clip):
            return "activation clipping level \(clip) must be positive and finite"
        }
    }
}

/// PACT activation quantizer (MSQ-SPEC §5; Choi et al., "PACT: Parameterized Clipping Activation
/// for Quantized Neural Networks"), unsigned, with a learned clipping level α; or, for signed
/// inputs, LSQ's symmetric learned step (below).
///
/// Shapes: any input tensor; the output has the input's shape. With A = ``bits`` and
/// L = 2^A − 1 levels above zero:
///
///     y   = clip(x, 0, α)
///     y_q = round(y · L / α) · α / L                 round half to even
///
/// Backward is PACT's straight-through estimator (the rounding is invisible):
///
///     dy_q/dx = 1[0 ≤ x < α]        dy_q/dα = 1[x ≥ α]
///
/// so dL/dα = Σ_i dL/dy_q,i · 1[x_i ≥ α]. Note that this is PACT's definition, not the derivative
/// of the rounded function: inside (0, α) the true dy_q/dα is round(y·L/α)/L, which PACT drops.
///
/// **Signed inputs** (``signed``; a transformer's linears read layer-norm, attention and GELU outputs,
/// which are negative as often as not, and PACT would zero them) use LSQ's symmetric learned step
/// (Esser et al., "Learned Step Size Quantization", 2020), written for the clip level α = L·s with
/// L = 2^(A−1) − 1 levels on each side:
///
///     y_q = round(clip(x, −α, α) · L / α) · α / L                      codes −L…L
///     dy_q/dx = 1[−α < x < α]
///     dy_q/dα = (round(x·L/α) − x·L/α) / L  inside,   sign(x)  outside
///
/// and dL/dα is scaled by LSQ's g = 1/sqrt(F·L), F the elements of one row of the input (one token's
/// or one image's features), so α's step stays comparable to the weights'. The signed α does not decay
/// (LSQ's in-range term keeps it from drifting; decay would only shrink it). Which layers get a signed
/// quantizer is the model's say: ``SignedActivationInputs`` (the vision transformers: all linears).
///
/// Training and evaluation quantize identically (there is no mode switch): the network is trained
/// with the quantization it is deployed with. α is a trainable ``Parameter`` of shape `[1]` that
/// DOES decay with weight decay, as in the PACT paper, where the L2 penalty on α is what keeps the
/// clipping level from drifting up to the largest activation. The arithmetic is the C kernels'
/// (`msq_pact_forward`, `msq_pact_backward`; signed: `msq_lsq_forward`, `msq_lsq_backward`), bit for bit. Give each layer its own quantizer: it
/// caches the input of its last forward for the backward that follows.
public final class PACTQuantizer {
    /// A, the number of bits per quantized activation (unsigned: codes 0…2^A − 1; signed: −L…L,
    /// L = 2^(A−1) − 1).
    public let bits: Int
    /// Whether inputs are quantized symmetrically around 0 (LSQ) instead of clipped at 0 (PACT).
    public let signed: Bool
    /// The learned clipping level α, shape `[1]`, trainable, decays.
    public let alpha: Parameter

    /// The smallest clipping level forward and backward use: an SGD step (weight decay, or a large
    /// negative gradient) may drive α to 0 or below, and the formula divides by α. With the floor a
    /// collapsed α clips (almost) everything to 0 instead of producing NaN or infinity; a NaN α still
    /// propagates as NaN, so divergence stays visible.
    public static let minimumClip: Float = 1e-6

    /// When true, forward and backward are the identity (the layer sees float activations). MSQ's
    /// Hessian traces are taken so: finite differences across the rounding would measure its jumps.
    public var isBypassed = false

    private var cachedInput: Tensor?
    private var cachedClip: Float = 0
    private var cachedBypass = false

    /// A quantizer at `bits` (A in 2…16) with α initialised to `initialClip`, unsigned (PACT) or
    /// `signed` (LSQ).
    /// - Throws: ``QuantizationError/invalidBits(bits:path:)`` for bits outside 2…16;
    ///   ``ActivationQuantizationError/invalidClip(_:)`` unless `initialClip` is positive and finite.
    public init(bits: Int, initialClip: Float = 6, signed: Bool = false) throws {
        guard msqBitRange.contains(bits) else { throw QuantizationError.invalidBits(bits: bits, path: nil) }
        guard initialClip > 0 && initialClip.isFinite else { throw ActivationQuantizationError.invalidClip(initialClip) }
        self.bits = bits
        self.signed = signed
        // PACT's α is L2-regularised like the weights (PACT paper); LSQ's step is not.
        alpha = Parameter(Tensor(shape: [1], repeating: initialClip), trainable: true, decays: !signed)
    }

    /// The clipping level the next forward uses: max(α, ``minimumClip``) (NaN stays NaN).
    public var clip: Float {
        let a = alpha.value[flat: 0]
        return a.isNaN ? a : max(a, Self.minimumClip)
    }

    /// y_q = round(clip(x, 0, α) · L / α) · α / L, shape of `x`; caches x and α for ``backward(_:)``.
    public func forward(_ x: Tensor) -> Tensor {
        cachedBypass = isBypassed
        if isBypassed {
            cachedInput = x
            return x
        }
        let a = clip
        var y = Tensor(shape: x.shape)
        let n = x.count, b = Int32(bits)
        x.withUnsafePointer { xp in
            y.withUnsafeMutablePointer { yp in
                if signed { msq_lsq_forward(yp, xp, n, a, b) } else { msq_pact_forward(yp, xp, n, a, b) }
            }
        }
        cachedInput = x
        cachedClip = a
        return y
    }

    /// dL/dx = dL/dy_q · 1[0 ≤ x < α] (shape of `gradOutput`), and ACCUMULATES
    /// Σ_i dL/dy_q,i · 1[x_i ≥ α] into `alpha.grad` (signed: the LSQ forms in the type's
    /// documentation). x and α are those of the last ``forward(_:)``.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let x = cachedInput else {
            fatalError("PACTQuantizer: backward called without a preceding forward")
        }
        LayerKit.require(gradOutput.shape == x.shape,
                         "PACTQuantizer: gradient shape \(gradOutput.shape) does not match input \(x.shape)")
        cachedInput = nil
        if cachedBypass { return gradOutput }
        var dx = Tensor(shape: x.shape)
        let n = x.count, a = cachedClip
        // LSQ's gradient scale 1/sqrt(F·L), F the features of one input row.
        let rowFeatures = Float(n / max(x.shape.first ?? 1, 1))
        let gradScale = 1 / (rowFeatures * Float((1 << (bits - 1)) - 1)).squareRoot()
        gradOutput.withUnsafePointer { dy in
            x.withUnsafePointer { xp in
                dx.withUnsafeMutablePointer { dxp in
                    alpha.grad.withUnsafeMutablePointer { da in
                        if signed {
                            msq_lsq_backward(dxp, da, dy, xp, n, a, Int32(bits), gradScale)
                        } else {
                            msq_pact_backward(dxp, da, dy, xp, n, a)
                        }
                    }
                }
            }
        }
        return dx
    }
}

/// The conv/linear layers of `model` and their paths, after checking a request to quantize their
/// inputs: bits in 2…16, every excluded path a conv/linear layer, the clip positive and finite.
/// Shared by ``quantizeActivations(_:bits:excluded:initialClip:)`` and
/// ``QuantizationScheme/apply(to:)`` so that both can refuse before changing anything.
func validateActivationRequest(_ model: any Module, bits: Int, excluded: Set<String>,
                               initialClip: Float) throws -> [(path: String, module: any Module)] {
    guard msqBitRange.contains(bits) else { throw QuantizationError.invalidBits(bits: bits, path: nil) }
    guard initialClip > 0 && initialClip.isFinite else { throw ActivationQuantizationError.invalidClip(initialClip) }
    let candidates = quantizableLayers(of: model)
    let valid = candidates.map(\.path)
    let validSet = Set(valid)
    for path in excluded.sorted() where !validSet.contains(path) {
        throw QuantizationError.unknownLayer(path: path, valid: valid)
    }
    return candidates
}

/// Attaches a ``PACTQuantizer`` at `bits` to the input of every Conv2d and Linear of `model` whose
/// module path is not in `excluded` (MSQ-SPEC §5), each with α = `initialClip`; signed (LSQ) on the
/// layers ``signedActivationInputs(of:)`` names, unsigned (PACT) on the others.
///
/// The quantizer becomes the layer's ``Conv2d/inputQuantizer`` / ``Linear/inputQuantizer`` (replacing
/// any previous one), and its α appears among the model's parameters as `<path>.input_alpha`, so
/// checkpoints and ``Module/namedParameters()`` pick it up. An optimizer built before this call does not
/// know the new parameters: quantize first, then build the optimizer.
/// Use ``defaultActivationExclusions(_:)`` to keep the network input in float.
///
/// - Returns: the attached quantizers with their layer paths, in walk order.
/// - Throws: ``QuantizationError/invalidBits(bits:path:)`` for bits outside 2…16,
///   ``QuantizationError/unknownLayer(path:valid:)`` for an excluded path that is no conv/linear
///   layer, ``ActivationQuantizationError/invalidClip(_:)`` for a non-positive or non-finite clip.
///   Nothing in the model changes when it throws.
@discardableResult
public func quantizeActivations(_ model: any Module, bits: Int, excluded: Set<String>,
                                initialClip: Float = 6) throws -> [(path: String, quantizer: PACTQuantizer)] {
    let candidates = try validateActivationRequest(model, bits: bits, excluded: excluded, initialClip: initialClip)
    let signed = signedActivationInputs(of: model)
    var out: [(path: String, quantizer: PACTQuantizer)] = []
    for (path, module) in candidates where !excluded.contains(path) {
        let quantizer = try PACTQuantizer(bits: bits, initialClip: initialClip, signed: signed.contains(path))
        if let conv = module as? Conv2d {
            conv.inputQuantizer = quantizer
        } else if let linear = module as? Linear {
            linear.inputQuantizer = quantizer
        } else {
            continue
        }
        out.append((path, quantizer))
    }
    return out
}

/// The layers whose input stays float by default when activations are quantized: the path of the
/// FIRST Conv2d/Linear in walk order, which reads the network input (normalised images, signed, not
/// post-ReLU). Empty when the model has no conv/linear layer.
public func defaultActivationExclusions(_ model: any Module) -> Set<String> {
    guard let first = quantizableLayers(of: model).first else { return [] }
    return [first.path]
}

/// A model whose quantizable layers' inputs can be negative (not post-ReLU), so that quantizing them
/// needs a signed quantizer (``PACTQuantizer/signed``). Conform your own model to say which.
public protocol SignedActivationInputs: Module {
    /// Module paths of the conv/linear layers whose inputs are signed (e.g. `blocks.0.attn.qkv`).
    var signedActivationInputs: Set<String> { get }
}

/// The layers of `model` whose inputs get a signed activation quantizer: what the model declares
/// through ``SignedActivationInputs``, none for a model that does not conform (post-ReLU inputs).
public func signedActivationInputs(of model: any Module) -> Set<String> {
    (model as? any SignedActivationInputs)?.signedActivationInputs ?? []
}

/// The paths of `model`'s Linear layers: a transformer's signed inputs (every linear reads a layer
/// norm's, an attention's or GELU's output; its convolutions read images).
func linearLayerPaths(_ model: any Module) -> Set<String> {
    Set(quantizableLayers(of: model).filter { $0.module is Linear }.map(\.path))
}
