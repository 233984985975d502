import ArgumentParser
import CKernels
import Foundation
import MSQ

/// One model, its training method, optimizer and synthetic batch: the training step `cost` and `step` time.
///
/// Synthetic data of the model's input shape (3×32×32 for ResNet-20, 3×224×224 for ResNet-18/50,
/// MobileNetV3, DeiT and Swin-T),
/// 10 classes; SGD momentum 0.9, Nesterov, weight decay 5e-4, lr 0.01. Set the kernel thread count
/// (`msq_set_num_threads`) before building one.
final class TrainingStepHarness {
    /// The model, with the method's quantizers and extra parameters attached.
    let net: any Module
    /// Image side: 32 (ResNet-20) or 224 (ResNet-18/50, MobileNetV3, DeiT, Swin-T).
    let side: Int
    /// Images per step on this process (its shard of the global batch).
    let batch: Int
    /// This process's fraction of the global batch, `n_r/N`: the weight of its gradient in the sum.
    let share: Double
    /// The quantized layers (msq only; empty otherwise), for the Hessian estimate of `cost`.
    let layers: [QuantizedLayer]
    /// The library's method (dorefa, bsq, csq), nil for fp and msq.
    let libraryMethod: TrainingMethod?
    private let regularizer: LSBRegularizer?
    private let images: Tensor
    private let labels: [Int32]
    private let sgd: SGD
    private let loss = SoftmaxCrossEntropy()
    private var stepIndex = 0

    /// Builds `model` with `method` (one of ``BenchMethods/all``) and draws the batch from `rng`.
    /// `plannedSteps` sizes the library method's training plan (warm-up + timed steps). `batch` is
    /// the global batch; every process draws all of it (the same images whatever the process
    /// count) and keeps its `shard`, as `BatchLoader` does in a data-parallel run.
    init(model kind: ModelKind, method: String, batch: Int, actBits: Int?, targetCompression: Double,
         plannedSteps: Int, rng: inout RandomSource, shard: BatchLoader.Shard = .whole) throws {
        side = kind == .resnet20 ? 32 : 224
        let range = shard.range(in: batch)
        self.batch = range.count
        share = Double(range.count) / Double(batch)
        net = makeModel(kind, inputChannels: 3, numClasses: 10, seed: 0, inputSize: side)
        // The method changes the model (quantizers, extra parameters) before the optimizer collects
        // its parameters, as in `msq train`.
        var regularizer: LSBRegularizer? = nil
        var layers: [QuantizedLayer] = []
        var libraryMethod: TrainingMethod? = nil
        switch method {
        case "fp":
            break
        case "msq":
            let paths = quantizableLayers(of: net).map(\.path)
            let scheme = QuantizationScheme(layers: paths.map { .init(path: $0, bits: 8) }, activationBits: actBits,
                                            activationExcluded: actBits == nil ? [] : defaultActivationExclusions(net).sorted())
            layers = try scheme.apply(to: net)
            regularizer = LSBRegularizer(layers: layers, lambda: 5)
        default:
            let m = try makeLibraryMethod(method, model: net, targetCompression: targetCompression, side: side, batch: batch)
            // A long run's plan, so the timed steps are ordinary early steps of the method.
            try m.prepare(model: net, plan: TrainingPlan(stepsPerEpoch: plannedSteps, epochs: 100, log: { _ in }))
            libraryMethod = m
        }
        self.regularizer = regularizer
        self.layers = layers
        self.libraryMethod = libraryMethod
        let all = Tensor.randomNormal([batch, 3, side, side], std: 1, using: &rng)
        let allLabels = (0..<batch).map { _ in Int32(rng.nextInt(below: 10)) }
        let image = 3 * side * side
        images = range.count == batch ? all
            : Tensor(shape: [range.count, 3, side, side], scalars: Array(all.scalars[(range.lowerBound * image)..<(range.upperBound * image)]))
        labels = Array(allLabels[range])
        sgd = SGD(model: net, momentum: 0.9, weightDecay: 5e-4, nesterov: true)
    }

    /// The input shape as "3xHxW".
    var input: String { "3x\(side)x\(side)" }

    /// One training step: forward, loss, backward, the method's extra gradient pass, SGD step.
    ///
    /// With `buckets`, the data-parallel step in `Trainer`'s order: the buckets start as the
    /// backward finishes their parameters and are waited for before the method and the optimizer,
    /// which then see the gradient summed over the processes. Returns the seconds of forward and
    /// backward (the compute the all-reduce can hide behind).
    @discardableResult
    func step(buckets: GradientBuckets? = nil) throws -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        net.zeroGradients()
        let logits = net.forward(images, mode: .train)
        _ = try loss.forward(logits: logits, labels: labels)
        buckets?.beginStep(share: share)
        net.backwardParameters(loss.backward())
        let compute = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        try buckets?.finish()
        regularizer?.apply()
        if let libraryMethod { _ = try libraryMethod.afterBackward(model: net, epoch: 1, step: stepIndex) }
        sgd.step(learningRate: 0.01)
        if let libraryMethod { try libraryMethod.afterStep(model: net, step: stepIndex) }
        stepIndex += 1
        return compute
    }

    /// Runs `warmup` untimed steps, then `steps` timed ones, each timed on its own.
    func time(warmup: Int, steps: Int) throws -> StepTimes {
        for _ in 0..<warmup { try step() }
        var ms: [Double] = []
        ms.reserveCapacity(steps)
        for _ in 0..<steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try step()
            ms.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        return StepTimes(milliseconds: ms)
    }
}

/// Wall-clock milliseconds of each timed step, with their mean and median.
struct StepTimes {
    /// One entry per timed step, in order.
    var milliseconds: [Double]

    /// Mean ms/step (total time / steps).
    var mean: Double { milliseconds.reduce(0, +) / Double(max(milliseconds.count, 1)) }

    /// Median ms/step: robust to the odd step a busy machine slows down.
    var median: Double { medianOf(milliseconds) }
}

/// The median of `values` (mean of the middle two for an even count; 0 when empty).
func medianOf(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let s = values.sorted()
    let mid = s.count / 2
    return s.count % 2 == 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

/// The options every training-step benchmark takes (`cost`, `step`): which model, batch and
/// thread count, how many steps.
struct StepOptions: ParsableArguments {
    @Option(help: "resnet20 (3×32×32), resnet18, resnet50, mobilenetv3-large, mobilenetv3-small, deit-tiny, deit-small or swin-t (3×224×224).")
    var model: String = "resnet20"
    @Option(help: "Images per step.")
    var batch: Int = 128
    @Option(help: "Timed steps (after --warmup untimed ones).")
    var steps: Int = 10
    @Option(help: "Untimed warm-up steps.")
    var warmup: Int = 2
    @Option(help: "Kernel threads (0 = all cores).")
    var threads: Int = 0
    @Option(help: "PACT activation bits for msq (default: float activations).")
    var actBits: Int?

    /// The models the step benchmarks build (each has a PyTorch twin in bench/pytorch/models.py).
    static let models: [ModelKind] = [.resnet20, .resnet18, .resnet50, .mobilenetv3Large, .mobilenetv3Small, .deitTiny, .deitSmall, .swinTiny]

    /// The model, if it is one the step benchmarks build.
    var kind: ModelKind? {
        guard let k = ModelKind(rawValue: model), Self.models.contains(k) else { return nil }
        return k
    }

    /// Refuses other models and counts out of range.
    func validate() throws {
        guard kind != nil else {
            throw ValidationError("--model must be one of \(Self.models.map(\.rawValue).joined(separator: ", ")) (got '\(model)')")
        }
        guard batch >= 1, steps >= 1, warmup >= 0, threads >= 0 else {
            throw ValidationError("--batch and --steps must be ≥ 1, --warmup and --threads ≥ 0")
        }
    }
}
