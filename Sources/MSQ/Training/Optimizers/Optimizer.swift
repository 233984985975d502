/// A first-order optimizer over a model's trainable parameters: one update per call of
/// ``step(learningRate:)`` from the gradients the backward pass left in them.
///
/// The ``Trainer`` drives it once per optimizer step with the schedule's learning rate, stores
/// ``state`` in every checkpoint and hands it back through ``restore(_:)`` on resume, so a killed
/// run continues bit for bit. ``SGD`` and ``AdamW`` are the built-in ones.
public protocol Optimizer: AnyObject {
    /// Short name recorded in the summary: `sgd`, `adamw` (``OptimizerKind``'s raw values) or a
    /// custom optimizer's own.
    var name: String { get }
    /// The trained parameters, by path, in the model's stable order.
    var parameters: [(name: String, parameter: Parameter)] { get }
    /// Applies one update with learning rate `learningRate` to every parameter in ``parameters``.
    func step(learningRate: Double)
    /// Everything a checkpoint must hold to continue the run exactly.
    var state: OptimizerState { get }
    /// Replaces the state with one saved from ``state`` (same names and shapes).
    /// - Throws: ``CheckpointError`` naming the first tensor or counter that does not fit, with
    ///   the path placeholder "optimizer state" (the ``Trainer`` substitutes the file).
    func restore(_ state: OptimizerState) throws(CheckpointError)
}

/// An optimizer's checkpointed state: named tensors and, for optimizers that count their steps,
/// the count.
public struct OptimizerState: @unchecked Sendable {
    /// Buffers with their checkpoint names (`optimizer.momentum.fc.weight`, …), in parameter order.
    /// The `optimizer.` prefix keeps them out of ``Checkpoint/weightsHash()``.
    public var tensors: [(name: String, tensor: Tensor)]
    /// Updates applied so far, for optimizers whose update depends on it (AdamW's bias
    /// correction); nil for those whose does not (SGD).
    public var steps: Int?

    /// Bundles tensors and a step count.
    public init(tensors: [(name: String, tensor: Tensor)], steps: Int?) {
        self.tensors = tensors
        self.steps = steps
    }
}

/// The built-in optimizers, as ``TrainingConfig/optimizer`` selects them.
public enum OptimizerKind: String, Codable, Sendable, CaseIterable {
    /// ``SGD`` with ``TrainingConfig/momentum`` and ``TrainingConfig/nesterov``.
    case sgd
    /// ``AdamW`` with ``TrainingConfig/beta1``, ``TrainingConfig/beta2`` and ``TrainingConfig/epsilon``.
    case adamw
}

/// The trainable parameters of `model` with their paths, the set every optimizer updates.
func trainableParameters(of model: Module) -> [(name: String, parameter: Parameter)] {
    model.namedParameters().filter { $0.parameter.trainable }
}

/// `tensors` checked against the names and shapes of `expected` (an optimizer's current state).
func checkedStateTensors(_ tensors: [(name: String, tensor: Tensor)],
                         against expected: [(name: String, tensor: Tensor)]) throws(CheckpointError) {
    guard tensors.count == expected.count else {
        throw .mismatch(path: "optimizer state", reason: "it has \(tensors.count) tensors, this optimizer \(expected.count)")
    }
    for (given, wanted) in zip(tensors, expected) where given.name != wanted.name || given.tensor.shape != wanted.tensor.shape {
        throw .mismatch(path: "optimizer state", reason: "\(given.name) \(given.tensor.shape) where \(wanted.name) \(wanted.tensor.shape) belongs")
    }
}
