/// A module that propagates Pearlmutter's R-operator, so exact Hessian-vector products can be
/// taken through it (MSQ-SPEC §4; see ``HessianVectorProduct``).
///
/// For `y = f(x; θ)` the R-forward returns `y` and its directional derivative
/// `Ry = ∂f/∂x·Rx + Σ_θ ∂f/∂θ·θ.tangent`, where each ``Parameter/tangent`` is the probe's block for
/// that parameter (nil = 0) and `Rx` the incoming tangent (nil = 0). The R-backward maps the pair
/// `(g_y, R g_y)` to `(g_x, R g_x)` and ACCUMULATES `R g_θ = (H v)_θ` into every parameter whose
/// ``Parameter/hessianVector`` is non-nil. With `gradient == nil` every term that multiplies the
/// first-order gradient is dropped: what is left is the generalized Gauss-Newton product J^T H_L J v.
///
/// Both passes are eval-mode (batch norm uses its running statistics). Weight transforms and input
/// quantizers are used as in ``Module/forward(_:mode:)`` for the values, and are the identity for
/// tangents: the Hessian is w.r.t. the weight the layer computes with. (Quantizers are piecewise
/// constant, so their own curvature is zero almost everywhere; MSQ bypasses them while it probes.)
/// `rBackward` must follow the `rForward` whose products it computes.
public protocol CurvatureModule: Module {
    /// The eval-mode output for `input` and its tangent for the incoming `tangent` (nil = 0) and
    /// the parameters' tangents; the returned tangent is nil only when it is identically zero.
    func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?)
    /// `(g_x, R g_x)` from `(g_y, R g_y)`; accumulates `R g_θ` into the parameters' ``Parameter/hessianVector``.
    /// `gradient == nil` gives the Gauss-Newton product (and `g_x == nil`). With `inputGradients`
    /// false the module may skip both input gradients (the caller discards them) and return nils.
    func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?)
    /// Whether the output is piecewise linear in the input and in each parameter with the others
    /// held fixed (conv, linear, eval batch norm, ReLU, pooling, sums). Then every diagonal block of
    /// the Hessian w.r.t. one layer's weights equals the Gauss-Newton block almost everywhere.
    var isPiecewiseLinear: Bool { get }
}

extension CurvatureModule {
    /// Parameter-free linear maps and sums: piecewise linear unless the module says otherwise.
    public var isPiecewiseLinear: Bool { true }
}

/// Why a model cannot give R-operator Hessian-vector products.
public enum CurvatureError: Error, Equatable, CustomStringConvertible {
    /// The module at `path` (its type `type`) does not conform to ``CurvatureModule``.
    case unsupportedModule(path: String, type: String)
    /// ``HessianPrecision/float64`` was asked for and the module at `path` (its type `type`) has no
    /// double-precision R-pass, for `reason`.
    case noFloat64Path(path: String, type: String, reason: String)
    /// ``HessianPrecision/float64`` was asked for with ``HessianMode/centralDifference``, which only runs in float32.
    case float64NeedsROperator

    /// Names the module and what to do.
    public var description: String {
        switch self {
        case let .unsupportedModule(path, type):
            return "module '\(path.isEmpty ? "(model)" : path)' of type \(type) has no R-operator (CurvatureModule): "
                + "use the central-difference Hessian mode for this model, or make the module conform to CurvatureModule"
        case let .noFloat64Path(path, type, reason):
            return "module '\(path.isEmpty ? "(model)" : path)' of type \(type) cannot take a float64 Hessian-vector product "
                + "(\(reason)): use precision float32 for this model"
        case .float64NeedsROperator:
            return "float64 precision needs an R-operator mode (exact or gauss-newton); central differences run in float32 only"
        }
    }
}

/// What the R-operator can do for a model.
public enum CurvatureSupport: Equatable, Sendable {
    /// Every module propagates the R-operator and all are piecewise linear: Gauss-Newton blocks are exact.
    case piecewiseLinear
    /// Every module propagates the R-operator, some are not piecewise linear: the full R-operator is needed.
    case general
}

/// Checks that `model` and every module inside it conform to ``CurvatureModule``.
/// - Throws: ``CurvatureError/unsupportedModule(path:type:)`` for the first that does not.
public func curvatureSupport(of model: any Module) throws(CurvatureError) -> CurvatureSupport {
    var modules: [(String, any Module)] = [("", model)]
    model.visitModules(prefix: "") { modules.append(($0, $1)) }
    var linear = true
    for (path, m) in modules {
        guard let c = m as? any CurvatureModule else {
            throw .unsupportedModule(path: path, type: String(describing: type(of: m)))
        }
        linear = linear && c.isPiecewiseLinear
    }
    return linear ? .piecewiseLinear : .general
}

/// `module` as a ``CurvatureModule``: containers call this on children that ``curvatureSupport(of:)``
/// has checked, so a failure is a programming error (a container built after the check).
@inline(__always)
func curvatureChild(_ module: any Module) -> any CurvatureModule {
    guard let c = module as? any CurvatureModule else {
        preconditionFailure("\(type(of: module)) has no R-operator: check the model with curvatureSupport(of:) first")
    }
    return c
}

/// `a + b` for tangents, nil meaning zero.
func addTangents(_ a: Tensor?, _ b: Tensor?, context: @autoclosure () -> String) -> Tensor? {
    guard let a else { return b }
    guard let b else { return a }
    return LayerKit.add(a, b, context: context())
}

/// R-forward of a parameter-free module linear in its input: the tangent goes through the same map
/// (first, so that the caches left behind are the input's).
func linearRForward(_ input: Tensor, tangent: Tensor?, forward: (Tensor) -> Tensor) -> (output: Tensor, tangent: Tensor?) {
    let ry = tangent.map(forward)
    return (forward(input), ry)
}

/// R-backward of a parameter-free module linear in its input: both gradients through its backward,
/// which releases its cache, so `restore` puts it back between the two calls.
func linearRBackward(_ gradient: Tensor?, tangent: Tensor, backward: (Tensor) -> Tensor,
                     restore: () -> Void) -> (gradient: Tensor?, tangent: Tensor?) {
    let rgx = backward(tangent)
    guard let gradient else { return (nil, rgx) }
    restore()
    return (backward(gradient), rgx)
}

/// `module`'s R-backward on the pair the module after it returned: a module asked for input
/// gradients always returns their tangent.
func rBackwardChained(_ module: any CurvatureModule, _ g: (gradient: Tensor?, tangent: Tensor?),
                      inputGradients: Bool = true) -> (gradient: Tensor?, tangent: Tensor?) {
    guard let rg = g.tangent else {
        preconditionFailure("\(type(of: module)): R-backward after a module that returned no input tangent")
    }
    return module.rBackward(g.gradient, tangent: rg, inputGradients: inputGradients)
}
