import Foundation
import MSQ
import Testing

/// A ResNet-20 on 8×8 synthetic images, quantized at 8 bits, MSQ to 10.67x in a few short epochs.
private struct TinyMSQRun {
    var setup: TinyTrainingSetup
    var options: MSQOptions

    init(hessian: Bool, epochs: Int = 4) throws {
        setup = try TinyTrainingSetup(method: "msq", epochs: epochs)
        options = MSQOptions(targetCompression: 10.67)
        options.hessian = hessian
        options.hessianBatch = 8
        options.hessianProbes = 2
        options.pruneIntervalEpochs = 1
        setup.config.methodOptions = options.identity
    }

    func make(out: String, log: @escaping (String) -> Void = { _ in },
              wrap: (MSQTraining) -> TrainingMethod = { $0 }) throws -> (Trainer, MSQTraining) {
        let model = setup.makeModel()
        let layers = try quantizeForMSQ(model, initialBits: 8)
        let calibration = try calibrationBatch(from: setup.train, normalization: setup.normalization,
                                               count: options.hessianBatch)
        let method = try MSQTraining(layers: layers, options: options, calibration: options.hessian ? calibration : nil,
                                     seed: setup.config.seed)
        return (setup.trainer(model: model, method: wrap(method), out: out, log: log), method)
    }
}


@Suite("MSQ training", .serialized)
struct MSQTrainingTests {
    @Test("reaches the target by the deadline, then finetunes; summary fields and events are consistent",
          arguments: [true, false])
    func reachesTarget(hessian: Bool) throws {
        let run = try TinyMSQRun(hessian: hessian)
        var lines: [String] = []
        let (trainer, method) = try run.make(out: freshDirectory(), log: { lines.append($0) })
        let summary = try trainer.run(resume: false)
        let c = try #require(summary["compression_ratio"] as? Double)
        #expect(c >= 10.67)
        #expect(method.isFinetuning)
        let cp = try #require(summary["compression_ratio_paper"] as? Double)
        let avg = try #require(summary["average_weight_bits"] as? Double)
        #expect(abs(c - 32 / avg) < 1e-9)
        #expect(abs(cp - 32 / (avg - 1)) < 1e-9)
        let layers = try #require(summary["layers"] as? [[String: Any]])
        #expect(layers.count == 20)
        #expect(layers.allSatisfy { ($0["bits"] as? Int).map { (2...8).contains($0) } ?? false })
        // The deadline is step round(0.6 · 12) = 7 of 3-step epochs.
        let start = try #require(summary["final_phase_start_epoch"] as? Double)
        #expect(start <= 7.0 / 3 + 1e-9)
        // Replaying the events from 8 bits gives the final scheme.
        var bits = [String: Int]()
        for e in method.events {
            #expect((bits[e.decision.path] ?? 8) == e.decision.fromBits)
            #expect(e.decision.toBits < e.decision.fromBits)
            bits[e.decision.path] = e.decision.toBits
        }
        for l in method.layers { #expect((bits[l.path] ?? 8) == l.bits) }
        // The per-interval table names every layer.
        #expect(lines.contains { $0.hasPrefix("pruning interval 1 ") })
        #expect(lines.contains { $0.contains("layer3.2.conv2") && $0.contains("36864") })
        let estimates = try #require(summary["hessian_estimates"] as? Int)
        #expect(hessian ? estimates > 0 : estimates == 0)
    }

    @Test("an MSQ run interrupted after epoch 1 and resumed matches the uninterrupted run bit for bit")
    func resumeIsBitIdentical() throws {
        let run = try TinyMSQRun(hessian: true)
        let (reference, refMethod) = try run.make(out: freshDirectory())
        try reference.run(resume: false)

        let dir = freshDirectory()
        let (crashing, _) = try run.make(out: dir, wrap: { CrashAfterEpoch($0, crashEpoch: 2) })
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        let (resumed, resumedMethod) = try run.make(out: dir)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(reference.model))
        #expect(resumedMethod.bitScheme == refMethod.bitScheme)
        #expect(resumedMethod.events == refMethod.events)
    }

    @Test("the checkpoint's method state carries the scheme, and resuming with other MSQ options is refused")
    func stateAndMismatch() throws {
        var run = try TinyMSQRun(hessian: false, epochs: 1)
        let dir = freshDirectory()
        let (trainer, method) = try run.make(out: dir)
        try trainer.run(resume: false)
        let ckpt = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        let scheme = try QuantizationScheme.decode(fromMethodState: ckpt.header.methodState)
        #expect(scheme.layers.map(\.bits) == method.layers.map(\.bits))
        run.options.lambda = 3
        run.setup.config.methodOptions = run.options.identity
        try expectResumeRefused(try run.make(out: dir).0, naming: "msq.lambda")
    }

    @Test("impossible or malformed options are refused with the option's name")
    func badOptions() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        let layers = try quantizeForMSQ(model)
        func refuse(_ edit: (inout MSQOptions) -> Void, mentions: String) {
            var o = MSQOptions(targetCompression: 10.67)
            o.hessian = false
            edit(&o)
            do {
                _ = try MSQTraining(layers: layers, options: o, calibration: nil, seed: 0)
                Issue.record("expected \(mentions) to be refused")
            } catch let error as TrainingError {
                #expect(error.description.contains(mentions), "\(error)")
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
        refuse({ $0.targetCompression = 20 }, mentions: "MSQOptions.targetCompression")
        refuse({ $0.targetCompression = 0.5 }, mentions: "MSQOptions.targetCompression")
        refuse({ $0.lambda = -1 }, mentions: "MSQOptions.lambda ")
        refuse({ $0.pruneIntervalEpochs = 0 }, mentions: "MSQOptions.pruneIntervalEpochs")
        refuse({ $0.deadlineFraction = 1.5 }, mentions: "MSQOptions.deadlineFraction")
        refuse({ $0.hessian = true }, mentions: "calibration")
    }

    @Test("an interval longer than the run is refused before training")
    func intervalLongerThanRun() throws {
        var run = try TinyMSQRun(hessian: false, epochs: 2)
        run.options.pruneIntervalEpochs = 3
        run.setup.config.methodOptions = run.options.identity
        let (trainer, _) = try run.make(out: freshDirectory())
        do {
            try trainer.run(resume: false)
            Issue.record("an interval of 3 epochs in a 2-epoch run should be refused")
        } catch let error as TrainingError {
            #expect(error.description.contains("MSQOptions.pruneIntervalEpochs"))
        }
    }
}
