import Foundation
import MSQ
import Testing

// `msq train --init-from` (loadWeights) and its fingerprint entry (issue 13, item 5).

/// Float32 bit patterns, for bitwise comparisons.
private func bitPatterns(_ t: Tensor) -> [UInt32] { t.scalars.map(\.bitPattern) }

/// A 1-epoch float run of the tiny setup; returns its checkpoint path.
private func floatCheckpoint(seed: UInt64 = 4) throws -> String {
    var setup = try TinyTrainingSetup(method: "fp", epochs: 1)
    setup.config.seed = seed
    let dir = freshDirectory()
    try setup.trainer(model: setup.makeModel(), method: FloatTraining(), out: dir, log: { _ in }).run(resume: false)
    return dir + "/" + Trainer.checkpointName
}

/// Writes a checkpoint holding `model`'s current tensors as a `modelName` run's (no training).
private func writeModelCheckpoint(_ model: any Module, modelName: String, to path: String) throws {
    let params = model.namedParameters()
    let header = Checkpoint.Header(runFingerprint: "test", runDescription: ["model": modelName, "method": "fp"],
                                   epochsCompleted: 0, globalStep: 0, trainSeconds: 0, trainImagesSeen: 0,
                                   rngState: [1, 2, 3, 4], methodState: "{}",
                                   tensors: params.map { CheckpointTensor(name: $0.name, shape: $0.parameter.value.shape) })
    try Checkpoint(header: header, tensorData: params.map(\.parameter.value)).write(to: path)
}

/// Expects `body` to throw exactly `expected`.
private func expectError<E: Error & Equatable>(_ expected: E, sourceLocation: SourceLocation = #_sourceLocation,
                                               _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(expected)", sourceLocation: sourceLocation)
    } catch let error as E {
        #expect(error == expected, sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(expected), got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Init from a checkpoint", .serialized)
struct InitFromTests {
    @Test("loads every parameter and batch-norm running statistic bit for bit, and nothing of the optimizer")
    func loadsExactly() throws {
        let path = try floatCheckpoint()
        let ckpt = try Checkpoint.read(from: path)
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 99)
        let loaded = try loadWeights(from: path, into: model, expectedModel: "resnet20")
        let params = model.namedParameters()
        #expect(loaded.tensorCount == params.count)
        for (name, p) in params {
            let stored = try #require(ckpt.tensor(named: name))
            #expect(bitPatterns(p.value) == bitPatterns(stored), "\(name)")
        }
        // The running statistics were trained (not their 0/1 initial values) and were loaded.
        let buffers = params.filter { !$0.parameter.trainable }
        #expect(buffers.count == 2 * 19)
        let mean = try #require(params.first { $0.name == "bn1.running_mean" }).parameter.value
        #expect(mean.scalars.contains { $0 != 0 })
        // For a float checkpoint the content hash is `msq inspect`'s weights_fnv1a64.
        #expect(loaded.weightsHash == ckpt.weightsHash())
        #expect(loaded.identity == "fnv1a64:" + loaded.weightsHashHex && loaded.weightsHashHex.count == 16)
        #expect(loaded.sourceMethod == "fp" && loaded.sourceEpochs == 1 && loaded.ignored.isEmpty)
    }

    @Test("another architecture, shape, missing file or non-checkpoint is refused with a typed error; the model is untouched")
    func refusals() throws {
        let dir = freshDirectory()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let r20 = dir + "/r20.msqckpt"
        let source = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 1)
        try writeModelCheckpoint(source, modelName: "resnet20", to: r20)

        // Ten classes instead of four: fc.weight is the first tensor whose shape differs.
        let tenClasses = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 2)
        let before = weights(tenClasses)
        let fcModel = try #require(tenClasses.namedParameters().first { $0.name == "fc.weight" }).parameter.value.shape
        let fcCheckpoint = try #require(source.namedParameters().first { $0.name == "fc.weight" }).parameter.value.shape
        #expect(fcModel != fcCheckpoint)
        expectError(WeightLoadError.shapeMismatch(path: r20, name: "fc.weight", checkpointShape: fcCheckpoint,
                                                  modelShape: fcModel)) {
            try loadWeights(from: r20, into: tenClasses, expectedModel: "resnet20")
        }
        #expect(weights(tenClasses) == before)
        let message = WeightLoadError.shapeMismatch(path: r20, name: "fc.weight", checkpointShape: fcCheckpoint,
                                                    modelShape: fcModel).description
        #expect(message.contains("fc.weight") && message.contains("\(fcCheckpoint)") && message.contains("\(fcModel)"))

        // Another model: named by the run description, or found by the tensors when not checked.
        let r32 = makeModel(.resnet32, inputChannels: 1, numClasses: 4, seed: 3)
        expectError(WeightLoadError.modelMismatch(path: r20, checkpointModel: "resnet20", model: "resnet32")) {
            try loadWeights(from: r20, into: r32, expectedModel: "resnet32")
        }
        expectError(WeightLoadError.missingTensor(path: r20, name: "layer1.3.conv1.weight", hint: nil)) {
            try loadWeights(from: r20, into: r32)
        }
        let r32Path = dir + "/r32.msqckpt"
        try writeModelCheckpoint(r32, modelName: "resnet32", to: r32Path)
        let r20Target = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 5)
        let r20Before = weights(r20Target)
        let extra = r32.namedParameters().map(\.name).filter { name in !r20Target.namedParameters().contains { $0.name == name } }
        #expect(extra.contains("layer1.3.conv1.weight"))
        expectError(WeightLoadError.unexpectedTensors(path: r32Path, names: extra)) {
            try loadWeights(from: r32Path, into: r20Target)
        }
        #expect(weights(r20Target) == r20Before)

        expectError(WeightLoadError.unreadable(path: dir + "/none.msqckpt", reason: "no such file")) {
            try loadWeights(from: dir + "/none.msqckpt", into: r20Target)
        }
        let text = dir + "/notes.txt"
        try "not a checkpoint".write(toFile: text, atomically: true, encoding: .utf8)
        expectError(WeightLoadError.notACheckpoint(path: text)) { try loadWeights(from: text, into: r20Target) }
        #expect(weights(r20Target) == r20Before)
    }

    @Test("BSQ and CSQ build their bit variables from the loaded float weights; MSQ's latent weights are them")
    func bitLevelMethodsStartFromLoadedWeights() throws {
        let path = try floatCheckpoint()
        let ckpt = try Checkpoint.read(from: path)
        func expectDerived(_ model: any Module, _ reference: (Tensor) -> any WeightTransform) throws {
            for (layerPath, module) in quantizableLayers(of: model) {
                let transform = try #require((module as? Conv2d)?.weightTransform ?? (module as? Linear)?.weightTransform)
                let expected = reference(try #require(ckpt.tensor(named: layerPath + ".weight")))
                var got: [[UInt32]] = [], want: [[UInt32]] = []
                transform.visitParameters(prefix: "") { _, p in got.append(bitPatterns(p.value)) }
                expected.visitParameters(prefix: "") { _, p in want.append(bitPatterns(p.value)) }
                #expect(!got.isEmpty && got == want, "\(layerPath)")
            }
        }
        let bsqModel = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 11)
        try loadWeights(from: path, into: bsqModel)
        let bsqOptions = BSQOptions(targetCompression: 10.67)
        _ = try BSQTraining(model: bsqModel, options: bsqOptions)
        try expectDerived(bsqModel) { BitPlaneQuantizer(weight: $0, planes: bsqOptions.initialBits - 1) }

        let csqModel = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 12)
        try loadWeights(from: path, into: csqModel)
        let csqOptions = CSQOptions(targetCompression: 10.67)
        _ = try CSQTraining(model: csqModel, options: csqOptions)
        try expectDerived(csqModel) {
            CSQQuantizer(weight: $0, planes: csqOptions.initialBits - 1, bitLogit: Float(csqOptions.bitLogitInit),
                         maskLogit: Float(csqOptions.maskLogitInit))
        }

        let msqModel = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 13)
        try loadWeights(from: path, into: msqModel)
        for layer in try quantizeForMSQ(msqModel, initialBits: 4) {
            #expect(bitPatterns(layer.parameter.value) == bitPatterns(try #require(ckpt.tensor(named: layer.path + ".weight"))))
        }
    }

    @Test("a resumed --init-from run continues from its own checkpoint; another or no --init-from is refused")
    func resumeAndFingerprint() throws {
        let dir = freshDirectory()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let a = dir + "/a.msqckpt", b = dir + "/b.msqckpt"
        try writeModelCheckpoint(makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 21), modelName: "resnet20", to: a)
        try writeModelCheckpoint(makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 22), modelName: "resnet20", to: b)
        let setup = try TinyTrainingSetup(method: "fp", epochs: 2)
        /// What `msq train --init-from` does: load into the fresh model, record it in the config.
        func trainer(initFrom: String?, out: String, crashEpoch: Int? = nil) throws -> Trainer {
            let model = setup.makeModel()
            var s = setup
            if let initFrom { s.config.initFrom = try loadWeights(from: initFrom, into: model, expectedModel: "resnet20") }
            let method: TrainingMethod = crashEpoch.map { CrashAfterEpoch(FloatTraining(), crashEpoch: $0) } ?? FloatTraining()
            return s.trainer(model: model, method: method, out: out, log: { _ in })
        }
        let straight = try trainer(initFrom: a, out: freshDirectory())
        let summary = try straight.run(resume: false)
        let initObject = try #require(summary["init_from"] as? [String: Any])
        #expect(initObject["path"] as? String == a)
        let fromScratch = try trainer(initFrom: nil, out: freshDirectory())
        try fromScratch.run(resume: false)
        #expect(weights(fromScratch.model) != weights(straight.model))

        let out = freshDirectory()
        #expect(throws: CrashAfterEpoch.Crash.self) { try trainer(initFrom: a, out: out, crashEpoch: 2).run(resume: false) }
        try expectResumeRefused(try trainer(initFrom: b, out: out), naming: "init_from")
        try expectResumeRefused(try trainer(initFrom: nil, out: out), naming: "init_from")
        let resumed = try trainer(initFrom: a, out: out)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(straight.model))
    }
}
