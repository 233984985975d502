/// A differentiable map from a layer's stored weight to the weight it computes with.
///
/// The extension point for quantization: ``Conv2d`` and ``Linear`` compute with
/// `effectiveWeight = transform.forward(weight)` (same shape as `weight`), and in backward pass
/// dL/dEffective through ``backward(gradEffective:weight:)`` to obtain dL/dWeight, which the layer
/// accumulates into ``Parameter/grad``. A transform with state of its own (step sizes, bit masks)
/// keeps and updates that state itself. `nil` in a layer means "float": effective = weight.
public protocol WeightTransform: AnyObject {
    /// The effective weight for `weight`; must have `weight`'s shape.
    func forward(_ weight: Tensor) -> Tensor
    /// dL/dWeight given dL/dEffective (`gradEffective`, shape of `weight`) and the stored weight
    /// the matching forward saw. Returns a tensor of `weight`'s shape (not accumulated: the layer adds it).
    func backward(gradEffective: Tensor, weight: Tensor) -> Tensor
}
