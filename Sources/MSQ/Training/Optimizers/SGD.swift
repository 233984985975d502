import CKernels

/// Stochastic gradient descent with momentum, optional Nesterov, and weight decay on the
/// parameters that take it.
///
/// Per parameter, PyTorch's update (dampening 0): g = ∇ + λ·w (λ only where ``Parameter/decays``),
/// b = μ·b + g, w ← w − lr·(Nesterov ? g + μ·b : b). Momentum buffers are keyed by parameter path
/// so checkpoints can store and restore them. Hyper-parameters are Double like the schedules;
/// the kernel computes in Float.
public final class SGD: Optimizer {
    /// Momentum coefficient μ.
    public let momentum: Double
    /// Weight decay λ, applied to parameters with ``Parameter/decays`` set.
    public let weightDecay: Double
    /// Whether the Nesterov form is used.
    public let nesterov: Bool
    /// The trained parameters, by path, in the model's stable order.
    public let parameters: [(name: String, parameter: Parameter)]
    /// Momentum buffers, same order and shapes as ``parameters``.
    public private(set) var momentumBuffers: [Tensor]

    /// Optimizes the trainable parameters of `model`.
    public init(model: Module, momentum: Double, weightDecay: Double, nesterov: Bool) {
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        parameters = trainableParameters(of: model)
        momentumBuffers = parameters.map { Tensor(shape: $0.parameter.value.shape) }
    }

    /// `sgd`.
    public var name: String { OptimizerKind.sgd.rawValue }

    /// Applies one update with learning rate `lr` using the gradients currently in the parameters.
    public func step(learningRate lr: Double) {
        let (lr, mu, lambda) = (Float(lr), Float(momentum), Float(weightDecay))
        for (i, entry) in parameters.enumerated() {
            let p = entry.parameter
            let decay = p.decays ? lambda : 0
            let count = p.value.count
            p.grad.withUnsafePointer { g in
                momentumBuffers[i].withUnsafeMutablePointer { buf in
                    p.value.withUnsafeMutablePointer { w in
                        msq_sgd_step(w, buf, g, count, lr, mu, decay, nesterov ? 1 : 0)
                    }
                }
            }
        }
    }

    /// The momentum buffers as `optimizer.momentum.<parameter path>`; no step count.
    public var state: OptimizerState {
        OptimizerState(tensors: zip(parameters, momentumBuffers).map { ("optimizer.momentum." + $0.name, $1) }, steps: nil)
    }

    /// Replaces the momentum buffers (checkpoint restore).
    public func restore(_ saved: OptimizerState) throws(CheckpointError) {
        try checkedStateTensors(saved.tensors, against: state.tensors)
        momentumBuffers = saved.tensors.map(\.tensor)
    }
}
