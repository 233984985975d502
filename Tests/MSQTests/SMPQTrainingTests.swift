import Foundation
import MSQ
import Testing

/// A ResNet-20 on 8×8 synthetic images: SMPQ to 10.67x over 4 epochs of 3 steps (43 training
/// images, 5 held out), search for 6 steps (warm-up 1), Shapley estimates after steps 3 and 6.
private struct TinySMPQRun {
    var setup: TinyTrainingSetup
    var options: SMPQOptions
    let train: DatasetSubset
    let validation: DatasetSubset

    init(selection: SMPQSelection = .shapley, permutations: Int = 2) throws {
        setup = try TinyTrainingSetup(method: "smpq", epochs: 4)
        options = SMPQOptions(targetCompression: 10.67)
        options.selection = selection
        options.searchFraction = 0.5
        options.validationBatchSize = 4
        options.shapleyBatch = 5
        options.shapleyPermutations = permutations
        (train, validation) = try SMPQTraining.split(setup.train, options: options, seed: setup.config.seed)
        setup.config.methodOptions = options.identity
    }

    func make(out: String?, wrap: (SMPQTraining) -> TrainingMethod = { $0 }) throws -> (Trainer, SMPQTraining) {
        let model = setup.makeModel()
        let method = try SMPQTraining.setUp(model: model, options: options, context: MethodContext(
            validationData: (validation, setup.normalization), seed: setup.config.seed))
        let trainer = Trainer(config: setup.config, model: model, method: wrap(method), train: train, test: setup.test,
                              normalization: setup.normalization, outDirectory: out, log: { _ in })
        return (trainer, method)
    }
}

@Suite("SMPQ training", .serialized)
struct SMPQTrainingTests {
    @Test("search, Shapley estimates, a selection meeting the target, then QAT at RoundClamp with α out of the model")
    func searchesThenSelects() throws {
        let run = try TinySMPQRun()
        #expect(run.train.count == 43 && run.validation.count == 5)
        let (trainer, method) = try run.make(out: nil)
        #expect(method.phase == .warmup)
        let summary = try trainer.run(resume: false)
        #expect(method.phase == .qat)
        let c = try #require(summary["compression_ratio"] as? Double)
        #expect(c >= 10.67 - 1e-9)
        #expect(try #require(summary["final_phase_start_step"] as? Int) == 6)
        #expect(try #require(summary["smpq_shapley_estimates"] as? Int) == 2)
        #expect(try #require(summary["smpq_alpha_steps"] as? Int) == 5, "steps 2…6 after a 1-step warm-up")
        let names = trainer.model.namedParameters().map(\.name)
        #expect(!names.contains { $0.hasSuffix("smpq.alpha") }, "α leaves the model at the selection")
        for (path, module) in quantizableLayers(of: trainer.model) {
            let layer = try #require(method.layers.first { $0.path == path })
            let transform = try #require((module as? Conv2d)?.weightTransform ?? (module as? Linear)?.weightTransform)
            #expect(transform === layer.quantizer, "\(path) computes with its RoundClamp quantizer")
            #expect(run.options.candidates.contains(layer.bits))
        }
        let phi = try #require(summary["smpq_phi"] as? [[Double]])
        #expect(phi.count == 20 && phi.allSatisfy { $0.count == 6 })
        let alpha = try #require(summary["smpq_alpha"] as? [[Double]])
        #expect(alpha.count == 20 && alpha.contains { row in row.contains { $0 != 0 } }, "α trained")
        #expect((summary["smpq_spearman_phi_alpha"] as? [Any])?.count == 20)
        #expect(try #require(summary["smpq_search_trainable_params"] as? Int) == summary.trainableParams + 120)
    }

    @Test("the architecture step leaves the weights' gradients and the batch-norm statistics as the training batch left them")
    func alphaStepIsolated() throws {
        let run = try TinySMPQRun()
        let (trainer, method) = try run.make(out: nil)
        let model = trainer.model
        try method.prepare(model: model, plan: TrainingPlan(stepsPerEpoch: 3, epochs: 4, log: { _ in }))
        let loader = try BatchLoader(dataset: run.train, batchSize: 16, shuffle: false, normalization: run.setup.normalization,
                                     seed: 0, epoch: 0)
        let batch = try #require(loader.first { _ in true })
        model.zeroGradients()
        let loss = SoftmaxCrossEntropy(labelSmoothing: 0)
        _ = try loss.forward(logits: model.forward(batch.images, mode: .train), labels: batch.labels)
        model.backwardParameters(loss.backward())
        let before = model.namedParameters().map { ($0.name, $0.parameter.grad.scalars, $0.parameter.value.scalars) }
        let alphaBefore = method.supernets.map(\.alpha.value.scalars)
        _ = try method.afterBackward(model: model, epoch: 1, step: 1)  // step 2: after the 1-step warm-up
        #expect(method.phase == .search)
        for ((name, grad, value), (_, p)) in zip(before, model.namedParameters()) {
            if name.hasSuffix("smpq.alpha") {
                #expect(p.grad.scalars.allSatisfy { $0 == 0 }, "\(name): no α gradient reaches the weights' optimizer")
            } else if p.trainable {
                #expect(p.grad.scalars == grad, "\(name): the training batch's gradient")
            } else {
                #expect(p.value.scalars == value, "\(name): running statistics restored")
            }
        }
        #expect(method.supernets.map(\.alpha.value.scalars) != alphaBefore, "α took its Adam step")
    }

    @Test("SMPQ and DMPQ of one seed run the same search: the same α, different selections")
    func sameSearch() throws {
        let (smpq, smpqMethod) = try TinySMPQRun().make(out: nil)
        let (dmpq, dmpqMethod) = try TinySMPQRun(selection: .alpha, permutations: 0).make(out: nil)
        let a = try smpq.run(resume: false)
        let b = try dmpq.run(resume: false)
        #expect(a["smpq_alpha"] as? [[Double]] == b["smpq_alpha"] as? [[Double]])
        #expect((b["smpq_phi"] as? [[Double]])?.isEmpty == true)
        #expect(dmpqMethod.options.selection == .alpha && smpqMethod.options.selection == .shapley)
    }

    @Test("interrupted in the search or in QAT and resumed: the uninterrupted run's weights and scheme, bit for bit",
          arguments: [2, 4])
    func resume(crashEpoch: Int) throws {
        let run = try TinySMPQRun()
        let (reference, refMethod) = try run.make(out: freshDirectory())
        try reference.run(resume: false)
        let dir = freshDirectory()
        let (crashing, _) = try run.make(out: dir, wrap: { CrashAfterEpoch($0, crashEpoch: crashEpoch) })
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        let (resumed, resumedMethod) = try run.make(out: dir)
        let summary = try resumed.run(resume: true)
        #expect(resumedMethod.layers.map(\.bits) == refMethod.layers.map(\.bits))
        #expect(weights(resumed.model) == weights(reference.model))
        #expect(summary["smpq_phi"] as? [[Double]] == refMethod.summaryFields()["smpq_phi"] as? [[Double]])
        #expect(summary["smpq_alpha"] as? [[Double]] == refMethod.summaryFields()["smpq_alpha"] as? [[Double]])
        // The QAT checkpoint carries the scheme under `scheme`, as MSQ's (what `msq export` reads),
        // and the trained model packs.
        let checkpoint = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        #expect(try QuantizationScheme.decode(fromMethodState: checkpoint.header.methodState).layers.map(\.bits)
                == refMethod.layers.map(\.bits))
        let packed = try PackedModel.export(model: resumed.model, name: "tiny-resnet20",
                                            data: DatasetInfo(run.train, normalization: run.setup.normalization))
        #expect(packed.scheme.layers.map(\.bits) == refMethod.layers.map(\.bits))
    }

    @Test("a resume with another validation split is refused")
    func otherSplitRefused() throws {
        let run = try TinySMPQRun()
        let dir = freshDirectory()
        let (crashing, _) = try run.make(out: dir, wrap: { CrashAfterEpoch($0, crashEpoch: 2) })
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        var other = run
        other.options.validationFraction = 0.2
        let parts = try SMPQTraining.split(run.setup.train, options: other.options, seed: 9)
        let model = run.setup.makeModel()
        let method = try SMPQTraining.setUp(model: model, options: run.options, context: MethodContext(
            validationData: (parts.validation, run.setup.normalization), seed: run.setup.config.seed))
        let trainer = Trainer(config: run.setup.config, model: model, method: method, train: run.train, test: run.setup.test,
                              normalization: run.setup.normalization, outDirectory: dir, log: { _ in })
        try expectResumeRefused(trainer, naming: "validation split")
    }

    @Test("options a user can get wrong are refused by name, and a missing validation set is asked for")
    func refusals() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 1)
        let data = try SyntheticDataset(count: 8, sampleShape: [1, 8, 8], numClasses: 4, seed: 3)
        let context = MethodContext(validationData: (data, Normalization(mean: [0.5], std: [0.3])))
        let edits: [(String, (inout SMPQOptions) -> Void)] = [
            ("SMPQOptions.targetCompression", { $0.targetCompression = 17 }),
            ("SMPQOptions.candidates", { $0.candidates = [2, 2, 4] }),
            ("SMPQOptions.searchFraction", { $0.searchFraction = 1 }),
            ("SMPQOptions.shapleyPermutations", { $0.shapleyPermutations = 0 }),
            ("SMPQOptions.budgetWeight", { $0.budgetWeight = -1 }),
        ]
        for (name, edit) in edits {
            var o = SMPQOptions(targetCompression: 10.67)
            edit(&o)
            #expect { _ = try SMPQTraining.setUp(model: model, options: o, context: context) } throws: { "\($0)".contains(name) }
        }
        let error = #expect(throws: MethodSetUpError.self) {
            _ = try SMPQTraining.setUp(model: model, options: SMPQOptions(targetCompression: 10.67), context: MethodContext())
        }
        #expect(error == .missingValidationData(method: "SMPQ"))
        #expect(quantizableLayers(of: model).allSatisfy { ($0.module as? Conv2d)?.weightTransform == nil && ($0.module as? Linear)?.weightTransform == nil },
                "nothing attached on a refusal")
    }

    @Test("Spearman's rank correlation: ranks with ties averaged, ±1 for monotone samples, NaN for a constant one")
    func spearman() {
        #expect(spearmanCorrelation([1, 2, 3, 4], [10, 20, 30, 40]) == 1)
        #expect(spearmanCorrelation([1, 2, 3, 4], [4, 3, 2, 1]) == -1)
        // Ranks x: 1, 2.5, 2.5, 4; y: 1, 2, 3, 4 → r = 4.5 / √(4.5 · 5).
        #expect(abs(spearmanCorrelation([0, 1, 1, 2], [5, 6, 7, 8]) - 4.5 / (4.5 * 5).squareRoot()) < 1e-12)
        #expect(spearmanCorrelation([1, 1, 1], [1, 2, 3]).isNaN)
    }
}
