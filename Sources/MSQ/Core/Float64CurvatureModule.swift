import CKernels
import Foundation

/// The floating-point precision of an R-operator Hessian-vector product.
///
/// ``float32`` runs the R-pass on the float kernels every other pass uses. ``float64`` converts the
/// model's weights, batch-norm statistics and the calibration batch to double (exactly) and runs the
/// forward, R-forward, loss Hessian and R-backward in double: what it takes to match a float64
/// reference to 1e-3 on a block whose sum cancels, such as the stem of an image network whose inputs
/// have a constant background (a float32 R-pass, ours or PyTorch's, is off by about 1e-2 there). It
/// costs several times the float32 pass and is available for networks built from ``Conv2d``,
/// ``Linear``, ``BatchNorm2d``, ReLU / ReLU6 ``Activation``s, pooling, ``Flatten``, residual blocks
/// and ``Sequential`` (the ResNets); other modules make it throw ``CurvatureError/noFloat64Path(path:type:reason:)``.
public enum HessianPrecision: String, CaseIterable, Codable, Sendable {
    /// Float kernels (the default: what training uses).
    case float32
    /// Double precision throughout the R-pass (a reference; see the type's documentation).
    case float64
}

/// A dense row-major Double tensor: the values of the float64 R-pass.
struct Float64Tensor {
    /// Extent of each dimension, outermost first.
    var shape: [Int]
    /// The elements, row-major.
    var scalars: [Double]

    /// Zeros of `shape`.
    init(zeros shape: [Int]) {
        self.shape = shape
        scalars = [Double](repeating: 0, count: shape.reduce(1, *))
    }

    /// `scalars` viewed as `shape` (counts must agree).
    init(shape: [Int], scalars: [Double]) {
        precondition(shape.reduce(1, *) == scalars.count, "Float64Tensor: \(scalars.count) scalars for shape \(shape)")
        self.shape = shape
        self.scalars = scalars
    }

    /// A float tensor's values, exactly.
    init(_ t: Tensor) {
        self.init(shape: t.shape, scalars: t.withUnsafePointer { p in (0..<t.count).map { Double(p[$0]) } })
    }

    /// The same elements under another shape of equal count.
    func reshaped(_ newShape: [Int]) -> Float64Tensor { Float64Tensor(shape: newShape, scalars: scalars) }

    /// Elementwise `self + other` (equal shapes).
    static func + (a: Float64Tensor, b: Float64Tensor) -> Float64Tensor {
        precondition(a.shape == b.shape, "Float64Tensor: adding \(a.shape) and \(b.shape)")
        var out = a
        for i in out.scalars.indices { out.scalars[i] += b.scalars[i] }
        return out
    }
}

/// `a + b` for tangents or gradients, nil meaning zero.
func addFloat64(_ a: Float64Tensor?, _ b: Float64Tensor?) -> Float64Tensor? {
    guard let a else { return b }
    guard let b else { return a }
    return a + b
}

/// The probe and the accumulators of one float64 R-pass: the tangent V_θ of each probed parameter
/// and (H v)_θ, both keyed by the parameter's identity.
final class Float64CurvatureContext {
    private(set) var tangents: [ObjectIdentifier: Float64Tensor] = [:]
    private(set) var hessianVectors: [ObjectIdentifier: [Double]] = [:]

    /// Probes `parameter` with `tangent` (its shape) and starts its (H v) at zero.
    func probe(_ parameter: Parameter, tangent: Float64Tensor) {
        precondition(tangent.shape == parameter.value.shape,
                     "Float64CurvatureContext: tangent \(tangent.shape) for a parameter of shape \(parameter.value.shape)")
        tangents[ObjectIdentifier(parameter)] = tangent
        hessianVectors[ObjectIdentifier(parameter)] = [Double](repeating: 0, count: parameter.value.count)
    }

    /// V_θ for `parameter`, nil if it is not probed (zero).
    func tangent(of parameter: Parameter) -> Float64Tensor? { tangents[ObjectIdentifier(parameter)] }

    /// Runs `body` on (H v)_θ of `parameter`, in place, if it is wanted (the parameter is probed);
    /// `body` adds its terms.
    func accumulateHessianVector(of parameter: Parameter, _ body: (inout [Double]) -> Void) {
        let key = ObjectIdentifier(parameter)
        guard hessianVectors[key] != nil else { return }
        body(&hessianVectors[key]!)
    }

    /// (H v)_θ so far (zeros if `parameter` is probed and nothing reached it).
    func hessianVector(of parameter: Parameter) -> [Double]? { hessianVectors[ObjectIdentifier(parameter)] }
}

/// One module's float64 R-forward: its output, the output's tangent (nil = 0) and its R-backward.
struct Float64RPass {
    /// The eval-mode output.
    var output: Float64Tensor
    /// Ry (nil when identically zero).
    var tangent: Float64Tensor?
    /// `(g_y, R g_y) → (g_x, R g_x)`, accumulating R g_θ into the context; `g_y == nil` drops the
    /// first-order terms (Gauss-Newton). Returns nils when the pass was asked for no input gradients.
    var backward: (_ gradient: Float64Tensor?, _ tangent: Float64Tensor) -> (gradient: Float64Tensor?, tangent: Float64Tensor?)
}

/// A module with a double-precision R-operator (``HessianPrecision/float64``): the same maps as
/// ``CurvatureModule`` in double, written as one call that returns the backward as a closure over
/// what it needs (so no state is kept in the module).
protocol Float64CurvatureModule: CurvatureModule {
    /// Why this module, as configured, has no float64 R-pass (e.g. an input quantizer), or nil.
    var float64Unsupported: String? { get }
    /// The eval-mode output, its tangent and the R-backward for input `x`, tangent `rx` (nil = 0).
    /// `inputGradients` false lets the backward skip g_x and R g_x (the caller discards them).
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass
}

extension Float64CurvatureModule {
    var float64Unsupported: String? { nil }
}

/// Checks that `model` and every module in it have a float64 R-pass.
/// - Throws: ``CurvatureError/noFloat64Path(path:type:reason:)`` for the first that has none.
func checkFloat64Curvature(of model: any Module) throws(CurvatureError) {
    var modules: [(String, any Module)] = [("", model)]
    model.visitModules(prefix: "") { modules.append(($0, $1)) }
    for (path, m) in modules {
        let type = String(describing: Swift.type(of: m))
        guard let c = m as? any Float64CurvatureModule else {
            throw .noFloat64Path(path: path, type: type, reason: "no float64 R-operator for this module type")
        }
        if let reason = c.float64Unsupported { throw .noFloat64Path(path: path, type: type, reason: reason) }
    }
}

/// `module` as a ``Float64CurvatureModule`` (checked by ``checkFloat64Curvature(of:)`` first).
func float64Child(_ module: any Module) -> any Float64CurvatureModule {
    guard let c = module as? any Float64CurvatureModule else {
        preconditionFailure("\(type(of: module)) has no float64 R-operator: check the model with checkFloat64Curvature(of:) first")
    }
    return c
}

/// Mean softmax cross-entropy over a `[B, C]` batch of logits in double: its gradient
/// `g = (p − onehot)/B` and its Hessian product on a logits tangent `H_L·Rz = (p ⊙ Rz − p·(pᵀRz))/B`.
struct Float64SoftmaxCrossEntropy {
    let probabilities: [Double]
    let labels: [Int32]
    let batch: Int, classes: Int

    /// The softmax of `logits` (max-shifted); labels must be in `0..<C` (checked by the caller).
    init(logits: Float64Tensor, labels: [Int32]) {
        precondition(logits.shape.count == 2 && logits.shape[0] == labels.count,
                     "Float64SoftmaxCrossEntropy: logits \(logits.shape) for \(labels.count) labels")
        batch = logits.shape[0]
        classes = logits.shape[1]
        self.labels = labels
        var p = logits.scalars
        for b in 0..<batch {
            let row = (b * classes)..<((b + 1) * classes)
            let m = p[row].max() ?? 0
            var sum = 0.0
            for i in row { p[i] = Foundation.exp(p[i] - m); sum += p[i] }
            for i in row { p[i] /= sum }
        }
        probabilities = p
    }

    /// dL/dz.
    func gradient() -> Float64Tensor {
        var g = probabilities
        for b in 0..<batch { g[b * classes + Int(labels[b])] -= 1 }
        let inv = 1 / Double(batch)
        return Float64Tensor(shape: [batch, classes], scalars: g.map { $0 * inv })
    }

    /// H_L · rz.
    func hessianProduct(_ rz: Float64Tensor) -> Float64Tensor {
        var out = [Double](repeating: 0, count: batch * classes)
        let inv = 1 / Double(batch)
        for b in 0..<batch {
            let base = b * classes
            var dot = 0.0
            for i in 0..<classes { dot += probabilities[base + i] * rz.scalars[base + i] }
            for i in 0..<classes { out[base + i] = probabilities[base + i] * (rz.scalars[base + i] - dot) * inv }
        }
        return Float64Tensor(shape: rz.shape, scalars: out)
    }
}
