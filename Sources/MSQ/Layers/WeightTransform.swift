/// A differentiable map from a layer's stored weight to the weight it computes with.
///
/// The extension point for quantization: ``Conv2d`` and ``Linear`` compute with
/// `effectiveWeight = transform.forward(weight)` (same shape as `weight`), and in backward pass
/// dL/dEffective through ``backward(gradEffective:weight:)`` to obtain dL/dWeight, which the layer
/// accumulates into ``Parameter/grad``. A transform with state of its own (step sizes, bit masks)
/// keeps and updates that state itself. `nil` in a layer means "float": effective = weight.
///
/// **Transforms that own parameters.** A transform may hold trainable tensors of its own (bit
/// planes, scales, mask logits: BSQ and CSQ). It lists them in ``visitParameters(prefix:_:)``,
/// which the layer calls with the LAYER's path as prefix (so a transform naming a tensor
/// `bsq.planes` appears as `layer1.0.conv1.bsq.planes`), and it ACCUMULATES their gradients in
/// ``backward(gradEffective:weight:)``. The optimizer, checkpoints and
/// ``Module/trainableParameterCount`` all see them through the layer's `visitParameters`, so the
/// transform must be attached before the optimizer is built. A transform that computes the effective
/// weight from its own parameters alone sets ``usesLayerWeight`` to false: the layer then no longer
/// lists, trains or checkpoints its stored `weight` (it stays in memory, unused) and ignores what
/// `backward` returns. Both members have defaults (no parameters; the layer weight is used), so a
/// plain quantizer implements only `forward` and `backward`.
public protocol WeightTransform: AnyObject {
    /// The effective weight for `weight`; must have `weight`'s shape.
    func forward(_ weight: Tensor) -> Tensor
    /// dL/dWeight given dL/dEffective (`gradEffective`, shape of `weight`) and the stored weight
    /// the matching forward saw. Returns a tensor of `weight`'s shape (not accumulated: the layer adds it).
    /// A transform with parameters of its own accumulates their gradients here; when
    /// ``usesLayerWeight`` is false the result is ignored (return an empty tensor).
    func backward(gradEffective: Tensor, weight: Tensor) -> Tensor
    /// Calls `body` with every parameter the transform owns, each under `joinPath(prefix, name)`;
    /// `prefix` is the layer's path. Default: none.
    func visitParameters(prefix: String, _ body: (String, Parameter) -> Void)
    /// Whether the effective weight is a function of the layer's stored weight (true, default) or of
    /// the transform's own parameters only (false: the layer's `weight` is then not a parameter).
    var usesLayerWeight: Bool { get }
}

extension WeightTransform {
    /// No parameters of its own.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
    /// The effective weight is computed from the layer's stored weight.
    public var usesLayerWeight: Bool { true }
}
