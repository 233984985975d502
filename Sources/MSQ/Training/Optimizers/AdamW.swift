import CKernels
import Foundation

/// Adam with decoupled weight decay (Loshchilov & Hutter), as `torch.optim.AdamW` computes it.
///
/// Per parameter at update t = 1, 2, … with gradient g:
/// w ← w·(1 − lr·λ) (λ only where ``Parameter/decays``), m ← m + (1 − β1)(g − m),
/// v ← β2·v + (1 − β2)·g², w ← w − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε).
/// The decay multiplies the weight directly instead of entering the gradient, so it is not
/// rescaled by √v; ε is added outside the square root. The bias-correction scalars are
/// computed in Double, as PyTorch computes them in Python, and the per-element work in Float in
/// PyTorch's order of operations (`msq_adamw_step`).
public final class AdamW: Optimizer {
    /// Decay rate β1 of the first moment m.
    public let beta1: Double
    /// Decay rate β2 of the second moment v.
    public let beta2: Double
    /// ε, added to √v / √(1 − β2^t).
    public let epsilon: Double
    /// Decoupled weight decay λ, applied to parameters with ``Parameter/decays`` set.
    public let weightDecay: Double
    /// The trained parameters, by path, in the model's stable order.
    public let parameters: [(name: String, parameter: Parameter)]
    /// First moments m (`exp_avg`), same order and shapes as ``parameters``.
    public private(set) var firstMoments: [Tensor]
    /// Second moments v (`exp_avg_sq`), same order and shapes as ``parameters``.
    public private(set) var secondMoments: [Tensor]
    /// Updates applied so far (t of the last update; 0 before the first).
    public private(set) var steps = 0

    /// Optimizes the trainable parameters of `model`; m and v start at zero.
    public convenience init(model: Module, beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8,
                            weightDecay: Double = 0.01) {
        self.init(parameters: trainableParameters(of: model), beta1: beta1, beta2: beta2, epsilon: epsilon,
                  weightDecay: weightDecay)
    }

    /// Optimizes the given parameters only (e.g. SMPQ's architecture logits α, apart from the
    /// weights); m and v start at zero. Each must be trainable (it needs a gradient).
    public init(parameters: [(name: String, parameter: Parameter)], beta1: Double = 0.9, beta2: Double = 0.999,
                epsilon: Double = 1e-8, weightDecay: Double = 0.01) {
        precondition(parameters.allSatisfy { $0.parameter.trainable }, "AdamW: every parameter must be trainable")
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.parameters = parameters
        firstMoments = parameters.map { Tensor(shape: $0.parameter.value.shape) }
        secondMoments = parameters.map { Tensor(shape: $0.parameter.value.shape) }
    }

    /// `adamw`.
    public var name: String { OptimizerKind.adamw.rawValue }

    /// Applies update t = ``steps`` + 1 with learning rate `lr`.
    public func step(learningRate lr: Double) {
        steps += 1
        let t = Double(steps)
        let stepSize = Float(lr / (1 - pow(beta1, t)))
        let bc2Sqrt = Float((1 - pow(beta2, t)).squareRoot())
        let decayed = Float(1 - lr * weightDecay)
        // 1 − β in Double, as PyTorch computes it in Python: 1 − Float(0.99) is 1e-6 off 0.01.
        let (omb1, b2, omb2, eps) = (Float(1 - beta1), Float(beta2), Float(1 - beta2), Float(epsilon))
        for (i, entry) in parameters.enumerated() {
            let p = entry.parameter
            let count = p.value.count
            p.grad.withUnsafePointer { g in
                firstMoments[i].withUnsafeMutablePointer { m in
                    secondMoments[i].withUnsafeMutablePointer { v in
                        p.value.withUnsafeMutablePointer { w in
                            msq_adamw_step(w, m, v, g, count, p.decays ? decayed : 1, omb1, b2, omb2, stepSize, bc2Sqrt, eps)
                        }
                    }
                }
            }
        }
    }

    /// m and v as `optimizer.exp_avg.<path>` and `optimizer.exp_avg_sq.<path>` (PyTorch's names),
    /// and the update count.
    public var state: OptimizerState {
        OptimizerState(tensors: zip(parameters, firstMoments).map { ("optimizer.exp_avg." + $0.name, $1) }
                           + zip(parameters, secondMoments).map { ("optimizer.exp_avg_sq." + $0.name, $1) },
                       steps: steps)
    }

    /// Replaces m, v and the update count; v must be ≥ 0 everywhere (its square root is taken).
    public func restore(_ saved: OptimizerState) throws(CheckpointError) {
        try checkedStateTensors(saved.tensors, against: state.tensors)
        guard let count = saved.steps, count >= 0 else {
            throw .invalidField(path: "optimizer state", field: "optimizerSteps",
                                problem: "is \(saved.steps.map(String.init) ?? "missing"); AdamW needs its update count ≥ 0")
        }
        let n = parameters.count
        for (name, v) in saved.tensors[n...] where !v.allNonNegative {
            throw .invalidField(path: "optimizer state", field: name, problem: "holds a negative second moment")
        }
        firstMoments = saved.tensors[..<n].map(\.tensor)
        secondMoments = saved.tensors[n...].map(\.tensor)
        steps = count
    }
}

extension Tensor {
    /// Whether no element is negative (NaN counts as negative).
    var allNonNegative: Bool {
        let n = count
        return withUnsafePointer { p in !(0..<n).contains { !(p[$0] >= 0) } }
    }
}
