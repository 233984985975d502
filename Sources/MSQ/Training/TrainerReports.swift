/// One optimizer step as the ``Trainer`` reports it to ``Trainer/onStep``.
public struct StepReport: Sendable, Equatable {
    /// The epoch, counted from 1.
    public var epoch: Int
    /// The step within the epoch, counted from 1.
    public var step: Int
    /// Steps in this epoch.
    public var stepsInEpoch: Int
    /// Steps done in the whole run, this one included (so 1 after the first).
    public var globalStep: Int
    /// The batch's task loss (mean cross-entropy, label smoothing included).
    public var loss: Double
    /// The method's extra loss term (``TrainingMethod/afterBackward(model:epoch:step:)``), 0 if none.
    public var methodLoss: Double
    /// The learning rate this step used.
    public var learningRate: Double
    /// Images in the batch.
    public var batchSize: Int
}

/// One finished epoch: the ``Trainer`` passes it to ``Trainer/onEpoch`` and, with an output
/// directory, writes it as a line of `metrics.jsonl`.
public struct EpochReport: Sendable, Equatable {
    /// The epoch, counted from 1.
    public var epoch: Int
    /// Mean training loss over the epoch's batches, weighted by batch size.
    public var trainLoss: Double
    /// Training accuracy over the epoch (on the augmented batches, in train mode), 0–1.
    public var trainAccuracy: Double
    /// Test-set loss after the epoch.
    public var testLoss: Double
    /// Test-set accuracy after the epoch, 0–1.
    public var testAccuracy: Double
    /// The learning rate of the epoch's last step.
    public var learningRate: Double
    /// Training seconds of the epoch (evaluation excluded).
    public var trainSeconds: Double
    /// Training images per second.
    public var imagesPerSecond: Double
    /// Steps done in the whole run after this epoch.
    public var globalStep: Int

    /// The `metrics.jsonl` object, with its historical keys.
    var metricsObject: [String: Any] {
        ["epoch": epoch, "train_loss": trainLoss, "train_accuracy": trainAccuracy, "test_loss": testLoss,
         "test_accuracy": testAccuracy, "lr": learningRate, "epoch_train_seconds": trainSeconds,
         "images_per_second": imagesPerSecond, "global_step": globalStep]
    }
}
