/// What a training method adds to plain float training: extra loss terms and gradients,
/// decisions between epochs, and state that checkpoints must carry.
///
/// The ``Trainer`` owns the loop; a method hooks into it. Float training is the identity method.
public protocol TrainingMethod: AnyObject {
    /// Name recorded in `summary.json` (`fp`, `msq`, …).
    var name: String { get }
    /// Called once before the first step (after a checkpoint restore, when resuming).
    func prepare(model: Module, plan: TrainingPlan) throws
    /// Called after the task loss's backward and before the optimizer step; may add gradient
    /// terms into the parameters and change the model between steps. `step` is the 0-based global
    /// step. Returns the value of any extra loss term (0 if none).
    func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double
    /// Called after the optimizer step of global step `step` (0-based), before the next forward
    /// pass; may change the parameters (a proximal step). The default does nothing.
    func afterStep(model: Module, step: Int) throws
    /// Called after each epoch's evaluation; may change the model (e.g. its precisions).
    func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws
    /// Method state as JSON, stored in checkpoints.
    func encodeState() throws -> String
    /// Restores state saved by ``encodeState()``.
    func restoreState(_ json: String) throws
    /// Extra fields for `summary.json`.
    func summaryFields() -> [String: Any]
    /// Whether the method's weight quantizers scale per tensor or per output channel; nil when it
    /// has no such choice (float, BSQ, CSQ). `summary.json` records it as `scale_granularity`.
    var scaleGranularity: ScaleGranularity? { get }
}

extension TrainingMethod {
    /// Nothing after the optimizer step.
    public func afterStep(model: Module, step: Int) throws {}
    /// No scale choice.
    public var scaleGranularity: ScaleGranularity? { nil }
}

/// The shape of a run, as a method sees it in ``TrainingMethod/prepare(model:plan:)``.
public struct TrainingPlan {
    /// Optimizer steps per epoch.
    public var stepsPerEpoch: Int
    /// Number of epochs.
    public var epochs: Int
    /// Where progress lines go.
    public var log: (String) -> Void
    /// The run's processes: a method that estimates something from data (Hessian probes, Shapley
    /// samples) may split that work over the ranks and sum it here; whatever it decides must be the
    /// same on every rank.
    public var collective: any Collective

    /// Bundles a run's shape, its log and its processes.
    public init(stepsPerEpoch: Int, epochs: Int, log: @escaping (String) -> Void,
                collective: any Collective = SingleProcess()) {
        self.stepsPerEpoch = stepsPerEpoch
        self.epochs = epochs
        self.log = log
        self.collective = collective
    }

    /// Total optimizer steps of the run.
    public var totalSteps: Int { stepsPerEpoch * epochs }
}
