import Foundation
import MSQ
import Testing

/// A ResNet-20 on 8×8 synthetic images, MSQ to 10.67x in 4 epochs of 3 steps: pruning intervals
/// at steps 3, 6 and 9 (the deadline), so the pace forces drops at every interval.
private func scheduledPullRun(pull: Double, hessian: Bool = false, out: String = freshDirectory(),
                              wrap: (MSQTraining) -> TrainingMethod = { $0 }) throws -> (Trainer, MSQTraining) {
    let setup = try TinyTrainingSetup(method: "msq", epochs: 4)
    var options = MSQOptions(targetCompression: 10.67)
    options.hessian = hessian
    options.hessianBatch = 8
    options.hessianProbes = 2
    options.pruneIntervalEpochs = 1
    options.deadlineFraction = 0.75
    options.scheduledPull = pull
    var config = setup.config
    config.methodOptions = options.identity
    let model = setup.makeModel()
    let layers = try quantizeForMSQ(model, initialBits: 8)
    let calibration = try calibrationBatch(from: setup.train, normalization: setup.normalization, count: 8)
    let method = try MSQTraining(layers: layers, options: options, calibration: hessian ? calibration : nil,
                                 seed: config.seed)
    let trainer = Trainer(config: config, model: model, method: wrap(method), train: setup.train, test: setup.test,
                          normalization: setup.normalization, outDirectory: out, log: { _ in })
    return (trainer, method)
}

@Suite("Scheduled pull (MSQOptions.scheduledPull)", .serialized)
struct ScheduledPullTests {
    @Test("a full proximal step leaves only top-clamped LSBs, and a layer at n_min is left alone")
    func proximalStepZeroesLayer() throws {
        let model = MSQ.makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 3)
        let layers = try quantizeForMSQ(model, initialBits: 6)
        let regularizer = LSBRegularizer(layers: layers, lambda: 1)
        regularizer.k = Array(repeating: 2, count: layers.count)
        let before = regularizer.measure()
        let i = 5
        let rate = try #require(before.layers[i].nonzeroRate)
        #expect(rate > 0.5)
        regularizer.proximalStep(layer: i, levels: 2)  // 2^(k−1) levels: the farthest distance
        let after = regularizer.measure()
        let remaining = try #require(after.layers[i].nonzeroRate)
        #expect(remaining * Double(layers[i].count) <= 1, "only the weight at +s keeps its LSBs: \(remaining)")
        // Other layers untouched.
        for j in layers.indices where j != i {
            #expect(after.layers[j].nonzeroRate == before.layers[j].nonzeroRate)
        }
        // At n_min there is no coarser grid: no step.
        layers[7].quantizer.bits = 2
        let w = layers[7].parameter.value.scalars
        regularizer.proximalStep(layer: 7, levels: 2)
        #expect(layers[7].parameter.value.scalars == w)
    }

    @Test("the scheduled layers drop on r ≤ τ: many drops unforced with the pull, none without it")
    func pullMakesDropsUnforced() throws {
        let (plain, plainMethod) = try scheduledPullRun(pull: 0)
        try plain.run(resume: false)
        let plainEvents = plainMethod.events
        #expect(!plainEvents.isEmpty && plainEvents.allSatisfy(\.decision.forced))

        let (pulled, method) = try scheduledPullRun(pull: 4)
        let summary = try pulled.run(resume: false)
        #expect(try #require(summary["compression_ratio"] as? Double) >= 10.67)
        #expect(summary["scheduled_pull"] as? Double == 4)
        let unforced = method.events.filter { !$0.decision.forced }
        // 29 of 78 here: on 8×8 noise at 8 bits, a step of SGD moves weights by several levels.
        #expect(unforced.count * 4 > method.events.count,
                "\(unforced.count) of \(method.events.count) drops unforced")
        #expect(unforced.allSatisfy { ($0.decision.nonzeroRate ?? 1) <= method.options.pruneThreshold })
    }

    @Test("with the Hessian on, an interrupted run with the pull resumes bit for bit")
    func resumeIsBitIdentical() throws {
        let (reference, refMethod) = try scheduledPullRun(pull: 2, hessian: true)
        try reference.run(resume: false)
        let dir = freshDirectory()
        let (crashing, _) = try scheduledPullRun(pull: 2, hessian: true, out: dir,
                                                 wrap: { CrashAfterEpoch($0, crashEpoch: 2) })
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        let (resumed, resumedMethod) = try scheduledPullRun(pull: 2, hessian: true, out: dir)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(reference.model))
        #expect(resumedMethod.events == refMethod.events)
    }

    @Test("a negative or infinite pull is refused by name")
    func badPull() {
        for value in [-1.0, .infinity, .nan] {
            var options = MSQOptions(targetCompression: 10.67)
            options.scheduledPull = value
            #expect(throws: TrainingError.self) { try options.validate(maxCompression: 16) }
            do { try options.validate(maxCompression: 16) } catch {
                #expect("\(error)".contains("scheduledPull"))
            }
        }
    }
}
