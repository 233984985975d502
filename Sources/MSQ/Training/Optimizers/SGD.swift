import CKernels

/// Stochastic gradient descent with momentum, optional Nesterov and decoupled-from-BN weight decay.
///
/// Per parameter, PyTorch's update (dampening 0): g = ∇ + λ·w (λ only where ``Parameter/decays``),
/// b = μ·b + g, w ← w − lr·(Nesterov ? g + μ·b : b). Momentum buffers are keyed by parameter path
/// so checkpoints can store and restore them.
public final class SGD {
    /// Momentum coefficient μ.
    public let momentum: Float
    /// Weight decay λ, applied to parameters with ``Parameter/decays`` set.
    public let weightDecay: Float
    /// Whether the Nesterov form is used.
    public let nesterov: Bool
    /// The trained parameters, by path, in the model's stable order.
    public let parameters: [(name: String, parameter: Parameter)]
    /// Momentum buffers, same order and shapes as ``parameters``.
    public private(set) var momentumBuffers: [Tensor]

    /// Optimizes the trainable parameters of `model`.
    public init(model: Module, momentum: Float, weightDecay: Float, nesterov: Bool) {
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        parameters = model.namedParameters().filter { $0.parameter.trainable }
        momentumBuffers = parameters.map { Tensor(shape: $0.parameter.value.shape) }
    }

    /// Applies one update with learning rate `lr` using the gradients currently in the parameters.
    public func step(learningRate lr: Float) {
        for (i, entry) in parameters.enumerated() {
            let p = entry.parameter
            let decay = p.decays ? weightDecay : 0
            let count = p.value.count
            p.grad.withUnsafePointer { g in
                momentumBuffers[i].withUnsafeMutablePointer { buf in
                    p.value.withUnsafeMutablePointer { w in
                        msq_sgd_step(w, buf, g, count, lr, momentum, decay, nesterov ? 1 : 0)
                    }
                }
            }
        }
    }

    /// Replaces the momentum buffers (checkpoint restore); shapes must match.
    public func restoreMomentum(_ buffers: [Tensor]) {
        precondition(buffers.count == momentumBuffers.count
                     && zip(buffers, momentumBuffers).allSatisfy { $0.shape == $1.shape },
                     "SGD.restoreMomentum: buffer shapes do not match the parameters")
        momentumBuffers = buffers
    }
}
