import Foundation
import MSQ
import Testing

/// A ResNet-20 on 8×8 synthetic images trained for a few 3-step epochs with one of the baselines.
private struct TinyBaselineRun {
    var setup: TinyTrainingSetup
    var bsq = BSQOptions(targetCompression: 10.67)
    var csq = CSQOptions(targetCompression: 10.67)
    var doReFa = DoReFaOptions(weightBits: 3)

    init(method: String, epochs: Int = 4) throws {
        setup = try TinyTrainingSetup(method: method, epochs: epochs)
        bsq.pruneIntervalEpochs = 1
        csq.pruneIntervalEpochs = 1
        refreshIdentity()
    }

    mutating func refreshIdentity() {
        switch setup.config.method {
        case "bsq": setup.config.methodOptions = bsq.identity
        case "csq": setup.config.methodOptions = csq.identity
        default: setup.config.methodOptions = doReFa.identity
        }
    }

    func make(out: String, activationBits: Int? = nil, log: @escaping (String) -> Void = { _ in },
              wrap: (TrainingMethod) -> TrainingMethod = { $0 }) throws -> (Trainer, TrainingMethod) {
        let model = setup.makeModel()
        let method: TrainingMethod
        switch setup.config.method {
        case "bsq": method = try BSQTraining(model: model, options: bsq, activationBits: activationBits)
        case "csq": method = try CSQTraining(model: model, options: csq, activationBits: activationBits)
        default: method = try DoReFaTraining(model: model, options: doReFa, activationBits: activationBits)
        }
        return (setup.trainer(model: model, method: wrap(method), out: out, log: log), method)
    }
}


/// The summary fields every quantized method shares with MSQ, checked for consistency.
private func expectPrecisionFields(_ summary: TrainingSummary, layerCount: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let c = try #require(summary["compression_ratio"] as? Double, sourceLocation: sourceLocation)
    let cp = try #require(summary["compression_ratio_paper"] as? Double, sourceLocation: sourceLocation)
    let avg = try #require(summary["average_weight_bits"] as? Double, sourceLocation: sourceLocation)
    #expect(abs(c - 32 / avg) < 1e-9, sourceLocation: sourceLocation)
    #expect(abs(cp - 32 / (avg - 1)) < 1e-9, sourceLocation: sourceLocation)
    let layers = try #require(summary["layers"] as? [[String: Any]], sourceLocation: sourceLocation)
    #expect(layers.count == layerCount, sourceLocation: sourceLocation)
    let scheme = try #require(summary["bit_scheme"] as? String, sourceLocation: sourceLocation)
    #expect(scheme == layers.map { "\($0["name"] as! String):\($0["bits"] as! Int)" }.joined(separator: " "),
            sourceLocation: sourceLocation)
    let keys = summary.jsonObject.keys
    #expect(keys.contains("final_phase_start_epoch"), sourceLocation: sourceLocation)
    #expect(keys.contains("pruning_events") && keys.contains("activation_bits"), sourceLocation: sourceLocation)
    let accuracy = try #require(summary["test_accuracy"] as? Double, sourceLocation: sourceLocation)
    #expect(accuracy.isFinite, sourceLocation: sourceLocation)
}

@Suite("Baseline training", .serialized)
struct BaselineTrainingTests {
    @Test("DoReFa trains end to end at k bits; summary carries MSQ's precision fields")
    func doReFa() throws {
        let run = try TinyBaselineRun(method: "dorefa", epochs: 2)
        let (trainer, _) = try run.make(out: freshDirectory(), activationBits: 4)
        let summary = try trainer.run(resume: false)
        try expectPrecisionFields(summary, layerCount: 20)
        #expect(summary["compression_ratio"] as? Double == 32.0 / 3)
        #expect(summary["method"] as? String == "dorefa")
        #expect(summary["activation_bits"] as? Int == 4)
        #expect(weights(trainer.model).allSatisfy { $0.allSatisfy(\.isFinite) })
    }

    @Test("BSQ reaches the target by the deadline, then finetunes; events replay to the final scheme")
    func bsqReachesTarget() throws {
        let run = try TinyBaselineRun(method: "bsq")
        var lines: [String] = []
        let (trainer, m) = try run.make(out: freshDirectory(), log: { lines.append($0) })
        let method = try #require(m as? BSQTraining)
        let summary = try trainer.run(resume: false)
        try expectPrecisionFields(summary, layerCount: 20)
        let c = try #require(summary["compression_ratio"] as? Double)
        #expect(c >= 10.67 - 1e-9)
        #expect(method.isFinetuning)
        #expect(method.bits.allSatisfy { (2...9).contains($0) })
        // The deadline is the last interval boundary at or before step round(0.6 · 12) = 7: step 6.
        let start = try #require(summary["final_phase_start_epoch"] as? Double)
        #expect(start <= 2 + 1e-9)
        var bits = [String: Int]()
        for e in method.events {
            #expect((bits[e.decision.path] ?? 9) == e.decision.fromBits)
            #expect(e.decision.toBits == e.decision.fromBits - 1)
            #expect(e.plane == "msb" || e.plane == "lsb")
            bits[e.decision.path] = e.decision.toBits
        }
        for (path, b) in zip(method.paths, method.bits) { #expect((bits[path] ?? 9) == b) }
        // The per-interval table names every layer; the planes remain 8 per weight, and the inactive
        // rows (which leftover momentum may still move) do not affect the layer.
        #expect(lines.contains { $0.hasPrefix("bsq interval 1 ") })
        #expect(lines.contains { $0.contains("layer3.2.conv2") && $0.contains("36864") })
        for q in method.quantizers {
            #expect(q.planes.value.shape == [8, q.count])
            let before = q.forward(Tensor(shape: [0])).scalars
            var rng = RandomSource(seed: 5)
            for b in 0..<q.maxPlanes where !(q.lowestPlane..<(q.lowestPlane + q.planeCount)).contains(b) {
                for i in 0..<q.count { q.planes.value[flat: b * q.count + i] = rng.nextUnitFloat() }
            }
            #expect(q.forward(Tensor(shape: [0])).scalars == before)
        }
        #expect(summary["trainable_params"] as? Int == trainer.model.trainableParameterCount)
    }

    @Test("a BSQ run interrupted after epoch 2 and resumed matches the uninterrupted run bit for bit")
    func bsqResumeIsBitIdentical() throws {
        let run = try TinyBaselineRun(method: "bsq")
        let (reference, refMethod) = try run.make(out: freshDirectory())
        try reference.run(resume: false)

        let dir = freshDirectory()
        let (crashing, _) = try run.make(out: dir, wrap: { CrashAfterEpoch($0, crashEpoch: 3) })
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        // The checkpoint of epoch 2 holds the planes, the scales and the precisions.
        let ckpt = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        #expect(ckpt.tensor(named: "layer3.2.conv2.bsq.planes")?.shape == [8, 36864])
        #expect(ckpt.tensor(named: "layer3.2.conv2.bsq.scale") != nil)
        #expect(ckpt.tensor(named: "layer3.2.conv2.weight") == nil)
        #expect(ckpt.header.methodState.contains("\"precisions\""))
        let (resumed, resumedMethod) = try run.make(out: dir)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(reference.model))
        let a = try #require(resumedMethod as? BSQTraining), b = try #require(refMethod as? BSQTraining)
        #expect(a.bitScheme == b.bitScheme)
        #expect(a.events == b.events)
        #expect(a.quantizers.map(\.lowestPlane) == b.quantizers.map(\.lowestPlane))
    }

    @Test("resuming a BSQ run with another λ is refused naming the option; msq export refuses the checkpoint")
    func bsqMismatchAndExport() throws {
        var run = try TinyBaselineRun(method: "bsq", epochs: 1)
        let dir = freshDirectory()
        let (trainer, _) = try run.make(out: dir)
        try trainer.run(resume: false)
        let ckpt = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        #expect(throws: PackedModelError.self) { try PackedModel.export(checkpoint: ckpt) }
        run.bsq.lambda = 0.5
        run.refreshIdentity()
        try expectResumeRefused(try run.make(out: dir).0, naming: "bsq.lambda")
    }

    @Test("CSQ anneals β, hardens the masks at the deadline meeting the target, then finetunes with hard bits")
    func csqReachesTarget() throws {
        let run = try TinyBaselineRun(method: "csq")
        var lines: [String] = []
        let (trainer, m) = try run.make(out: freshDirectory(), log: { lines.append($0) })
        let method = try #require(m as? CSQTraining)
        let summary = try trainer.run(resume: false)
        try expectPrecisionFields(summary, layerCount: 20)
        #expect(try #require(summary["compression_ratio"] as? Double) >= 10.67 - 1e-9)
        #expect(method.isFinetuning)
        #expect(method.quantizers.allSatisfy { $0.hardMask != nil && $0.beta == 200 })
        #expect(lines.contains { $0.hasPrefix("csq masks hardened") })
        #expect(method.temperature(afterSteps: 0) == 1)
        // The events replay from 9 bits to the final scheme.
        var bits = [String: Int]()
        for e in method.events {
            #expect((bits[e.decision.path] ?? 9) == e.decision.fromBits)
            bits[e.decision.path] = e.decision.toBits
        }
        for (path, b) in zip(method.paths, method.bits) { #expect((bits[path] ?? 9) == b) }
    }

    @Test("malformed or impossible baseline options are refused with the option's name")
    func badOptions() throws {
        func refuse(_ mentions: String, _ build: (any Module) throws -> TrainingMethod) {
            do {
                _ = try build(makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0))
                Issue.record("expected \(mentions) to be refused")
            } catch let error as TrainingError {
                #expect(error.description.contains(mentions), "\(error)")
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
        refuse("BSQOptions.targetCompression") { try BSQTraining(model: $0, options: BSQOptions(targetCompression: 20)) }
        refuse("CSQOptions.targetCompression") { try CSQTraining(model: $0, options: CSQOptions(targetCompression: 0.5)) }
        refuse("BSQOptions.lambda ") { var o = BSQOptions(targetCompression: 8); o.lambda = -1; return try BSQTraining(model: $0, options: o) }
        refuse("BSQOptions.pruneIntervalEpochs") { var o = BSQOptions(targetCompression: 8); o.pruneIntervalEpochs = 0; return try BSQTraining(model: $0, options: o) }
        refuse("BSQOptions.pruneThreshold") { var o = BSQOptions(targetCompression: 8); o.pruneThreshold = 2; return try BSQTraining(model: $0, options: o) }
        refuse("BSQOptions.initialBits") { var o = BSQOptions(targetCompression: 8); o.initialBits = 17; return try BSQTraining(model: $0, options: o) }
        refuse("CSQOptions.minBits") { var o = CSQOptions(targetCompression: 3); o.minBits = 10; return try CSQTraining(model: $0, options: o) }
        refuse("CSQOptions.deadlineFraction") { var o = CSQOptions(targetCompression: 8); o.deadlineFraction = 0; return try CSQTraining(model: $0, options: o) }
        refuse("MethodContext.activationBits") { try DoReFaTraining(model: $0, options: DoReFaOptions(weightBits: 4), activationBits: 1) }
        refuse("DoReFaOptions.weightBits") { try DoReFaTraining(model: $0, options: DoReFaOptions(weightBits: 17)) }
        // A requantization interval longer than the run is refused when the run's length is known.
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        var long = BSQOptions(targetCompression: 8)
        long.pruneIntervalEpochs = 3
        let method = try BSQTraining(model: model, options: long)
        do {
            try method.prepare(model: model, plan: TrainingPlan(stepsPerEpoch: 2, epochs: 2, log: { _ in }))
            Issue.record("an interval longer than the run should be refused")
        } catch let error as TrainingError {
            #expect(error.description.contains("BSQOptions.pruneIntervalEpochs"))
        }
    }

    @Test("makeBenchmarkMethod sets every method up for a plain training loop", arguments: benchmarkMethodNames)
    func benchmarkMethod(name: String) throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        let method = try makeBenchmarkMethod(name, model: model, sampleShape: [1, 8, 8], classes: 4, batch: 8)
        #expect(method.name == name)
        let sgd = SGD(model: model, momentum: 0.9, weightDecay: 5e-4, nesterov: true)
        let data = try SyntheticDataset(count: 8, sampleShape: [1, 8, 8], numClasses: 4, seed: 3)
        let loader = try BatchLoader(dataset: data, batchSize: 8, shuffle: false,
                                     augmentation: Augmentation(randomCropPadding: 0, horizontalFlip: false),
                                     normalization: Normalization(mean: [0.5], std: [0.3]), seed: 0, epoch: 0, dropLast: false)
        let loss = SoftmaxCrossEntropy()
        for batch in loader {
            for step in 0..<2 {
                model.zeroGradients()
                let value = try loss.forward(logits: model.forward(batch.images, mode: .train), labels: batch.labels)
                #expect(value.isFinite)
                _ = model.backward(loss.backward())
                _ = try method.afterBackward(model: model, epoch: 1, step: step)
                sgd.step(learningRate: 0.01)
            }
        }
        if let bsq = method as? BSQTraining { #expect(bsq.bits.allSatisfy { $0 == 9 } && !bsq.isFinetuning) }
        if let csq = method as? CSQTraining { #expect(!csq.isFinetuning) }
        if let smpq = method as? SMPQTraining { #expect(smpq.phase == .search, "every benchmark step a search step") }
        #expect(throws: TrainingError.self) { _ = try makeBenchmarkMethod("nope", model: model) }
    }
}
