import Foundation
import MSQ
import Testing

/// A ResNet-20 on 8×8 synthetic images: HAWQ to 10.67x after a one-epoch float warm-up.
private struct TinyHAWQRun {
    var setup: TinyTrainingSetup
    var options: HAWQOptions

    init(epochs: Int = 3) throws {
        setup = try TinyTrainingSetup(method: "hawq", epochs: epochs)
        options = HAWQOptions(targetCompression: 10.67)
        options.hessianBatch = 8
        options.hessianProbes = 4
        setup.config.methodOptions = options.identity
    }

    func make(out: String, wrap: (HAWQTraining) -> TrainingMethod = { $0 }) throws -> (Trainer, HAWQTraining) {
        let model = setup.makeModel()
        let layers = try quantizeForMSQ(model, initialBits: 8)
        let calibration = try calibrationBatch(from: setup.train, normalization: setup.normalization,
                                               count: options.hessianBatch)
        let method = try HAWQTraining(layers: layers, options: options, calibration: calibration, seed: setup.config.seed)
        return (setup.trainer(model: model, method: wrap(method), out: out, log: { _ in }), method)
    }
}

@Suite("HAWQ", .serialized)
struct HAWQTests {
    @Test("float warm-up, then the least-Ω scheme meeting the target, kept for the rest of the run")
    func allocatesAfterWarmup() throws {
        let run = try TinyHAWQRun()
        let (trainer, method) = try run.make(out: freshDirectory())
        #expect(method.layers.allSatisfy { $0.bits == 8 })
        let summary = try trainer.run(resume: false)
        #expect(method.isAllocated)
        #expect(method.layers.allSatisfy { !$0.quantizer.isBypassed })
        let c = try #require(summary["compression_ratio"] as? Double)
        #expect(c >= 10.67 - 1e-9)
        #expect(try #require(summary["final_phase_start_step"] as? Int) == 3, "one 3-step epoch of warm-up")
        #expect(method.layers.allSatisfy { (2...8).contains($0.bits) })
        #expect(Set(method.layers.map(\.bits)).count > 1, "a mixed scheme")
        let traces = try #require(summary["hawq_traces"] as? [Double])
        #expect(traces.count == 20 && traces.allSatisfy { $0 >= 0 })
    }

    @Test("a HAWQ run interrupted after epoch 1 and resumed matches the uninterrupted run bit for bit")
    func resume() throws {
        let run = try TinyHAWQRun()
        let (reference, refMethod) = try run.make(out: freshDirectory())
        try reference.run(resume: false)
        let dir = freshDirectory()
        let (crashing, _) = try run.make(out: dir, wrap: { CrashAfterEpoch($0, crashEpoch: 2) })
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        let (resumed, resumedMethod) = try run.make(out: dir)
        try resumed.run(resume: true)
        #expect(resumedMethod.layers.map(\.bits) == refMethod.layers.map(\.bits))
        #expect(weights(resumed.model) == weights(reference.model))
    }

    @Test("impossible options are refused with the option's name")
    func badOptions() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 1)
        let layers = try quantizeForMSQ(model)
        let calibration = (Tensor(shape: [1, 1, 8, 8]), [Int32(0)])
        for (edit, flag) in [({ (o: inout HAWQOptions) in o.targetCompression = 17 }, "HAWQOptions.targetCompression"),
                             ({ $0.warmupEpochs = -1 }, "HAWQOptions.warmupEpochs"), ({ $0.maxBits = 1 }, "HAWQOptions.maxBits")] {
            var o = HAWQOptions(targetCompression: 10.67)
            edit(&o)
            #expect { _ = try HAWQTraining(layers: layers, options: o, calibration: calibration, seed: 0) } throws: {
                "\($0)".contains(flag)
            }
        }
    }
}
