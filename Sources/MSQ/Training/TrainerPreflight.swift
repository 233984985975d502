import Foundation

/// The step counts of one run, computed once with overflow checks (``Trainer/makePlan()``).
struct RunPlan: Equatable {
    /// Optimizer steps per epoch: ⌈train images / batch size⌉.
    var stepsPerEpoch: Int
    /// Steps of the whole run: epochs × ``stepsPerEpoch``, at most ``RunLimits/maxTotalSteps``.
    var totalSteps: Int
    /// Steps of the linear warm-up.
    var warmupSteps: Int
}

extension Trainer {
    /// Refuses data this run cannot train or evaluate on, before the first step: an empty split,
    /// a test split whose image shape or class count differs from the training split's, images
    /// smaller than ``RunLimits/minimumImageSize``, or images whose channel count differs from
    /// the model's input. (A test split of 14×14 images once trained against 28×28 training
    /// images and reported accuracy 0.11 with exit status 0; a 0-image one failed only after an
    /// epoch, on a NaN in the JSON writer.)
    func checkData() throws(TrainingError) {
        guard train.count >= 1 else { throw .incompatibleData("the training split \(train.name) has no images") }
        guard test.count >= 1 else {
            throw .incompatibleData("the test split \(test.name) has no images: the run would have nothing to evaluate")
        }
        let shape = train.sampleShape
        guard shape.count == 3, shape.allSatisfy({ $0 >= 1 }) else {
            throw .incompatibleData("the training split \(train.name) has samples of shape \(shape), not [C, H, W]")
        }
        guard test.sampleShape == shape else {
            throw .incompatibleData("the test split \(test.name) has images of shape \(test.sampleShape), the training split \(train.name) \(shape): both splits must have the same image shape")
        }
        guard test.numClasses == train.numClasses else {
            throw .incompatibleData("the test split \(test.name) has \(test.numClasses) classes, the training split \(train.name) \(train.numClasses)")
        }
        let minimum = RunLimits.minimumImageSize
        guard shape[1] >= minimum, shape[2] >= minimum else {
            throw .incompatibleData("\(train.name) has \(shape[1])×\(shape[2]) images; every model needs at least \(minimum)×\(minimum)")
        }
        // Beyond the image size a crop shows only padding; near Int.max its span 2p + 1 overflows.
        guard config.cropPadding <= min(shape[1], shape[2]) else {
            throw .invalidProperty(property: "cropPadding", problem: "must be at most the image size \(min(shape[1], shape[2])) (got \(config.cropPadding))")
        }
        if let vit = model as? VisionTransformer, shape[1] != vit.imageSize || shape[2] != vit.imageSize {
            throw .incompatibleData("\(train.name) has \(shape[1])×\(shape[2]) images, but the vision transformer was built for \(vit.imageSize)×\(vit.imageSize)")
        }
        if let first = quantizableLayers(of: model).first?.module as? Conv2d, first.inChannels != shape[0] {
            throw .incompatibleData("\(train.name) has \(shape[0])-channel images, but the model's first convolution takes \(first.inChannels) channels")
        }
    }

    /// Steps per epoch, total steps and warm-up steps, with every product checked: a batch size,
    /// epoch count or warm-up near `Int.max` is refused naming the property rather than trapping.
    func makePlan() throws(TrainingError) -> RunPlan {
        let perEpoch = RunLimits.ceilDiv(train.count, config.batchSize)
        let (total, overflow) = perEpoch.multipliedReportingOverflow(by: config.epochs)
        guard !overflow, total <= RunLimits.maxTotalSteps else {
            throw .invalidProperty(property: "epochs", problem: "× \(perEpoch) steps per epoch exceeds \(RunLimits.maxTotalSteps) steps, the most a run may plan (got \(config.epochs) epochs)")
        }
        let evalBatches = RunLimits.ceilDiv(test.count, max(config.batchSize, 256))
        guard evalBatches <= RunLimits.maxTotalSteps else {
            throw .invalidProperty(property: "limitTest", problem: "gives \(test.count) test images, more than one evaluation can take")
        }
        return RunPlan(stepsPerEpoch: perEpoch, totalSteps: total,
                       warmupSteps: RunLimits.steps(epochs: config.warmupEpochs, stepsPerEpoch: perEpoch))
    }

    /// After a non-finite loss: the first parameter, in model order, whose weight is not finite,
    /// else (after one backward pass of the loss) the first whose gradient is not finite. Only
    /// run when the loss already failed, so training steps never pay for the scan.
    func nonFiniteCulprit(lossFunction: SoftmaxCrossEntropy) -> String? {
        let parameters = model.namedParameters()
        // Trainable only: running statistics are rewritten by this very forward pass, so a NaN there
        // is a consequence, not a cause.
        if let (name, _) = parameters.first(where: { $0.parameter.trainable && !$0.parameter.value.allFinite }) {
            return "the first parameter with a non-finite weight is \(name)"
        }
        model.backwardParameters(lossFunction.backward())
        if let (name, _) = parameters.first(where: { !$0.parameter.grad.allFinite }) {
            return "every weight is finite; the first parameter with a non-finite gradient is \(name)"
        }
        return nil
    }
}

extension Tensor {
    /// Whether every element is finite (no NaN, no ±infinity).
    public var allFinite: Bool {
        let n = count
        return withUnsafePointer { p in
            for i in 0..<n where !p[i].isFinite { return false }
            return true
        }
    }
}
