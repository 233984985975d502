import Foundation
import MSQ
import Testing

// `msq train --init-from` (loadWeights) and `--bit-scheme` (BitSchemeSpec, MSQTraining's fixedScheme,
// DoReFaTraining's bitScheme), and the fingerprint entries of both (issue 13, item 5).

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

/// The tiny ResNet-20's quantized layer paths, in walk order.
private let tinyPaths: [String] = quantizableLayers(of: makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)).map(\.path)

/// A mixed scheme over the tiny ResNet-20 touching 2…8 bits.
private let mixedScheme: [QuantizationScheme.LayerBits] = tinyPaths.enumerated().map { i, path in
    .init(path: path, bits: [8, 3, 2, 5, 4, 6][i % 6])
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

@Suite("Bit schemes", .serialized)
struct BitSchemeTests {
    @Test("inline, one-per-line file, bit_scheme line and summary.json forms parse alike; * is the default")
    func parsing() throws {
        let inline = try BitSchemeSpec.load("conv1:8,fc:4,*:3")
        #expect(inline.entries == [.init(path: "conv1", bits: 8), .init(path: "fc", bits: 4)])
        #expect(inline.defaultBits == 3)
        let resolved = try inline.resolve(layerPaths: tinyPaths)
        #expect(resolved.map(\.path) == tinyPaths)
        #expect(resolved.map(\.bits) == tinyPaths.map { $0 == "conv1" ? 8 : $0 == "fc" ? 4 : 3 })

        let line = bitSchemeLine(mixedScheme)
        #expect(try BitSchemeSpec.parse(line, origin: "log").resolve(layerPaths: tinyPaths) == mixedScheme)

        let dir = freshDirectory()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let file = dir + "/scheme.txt"
        try ("# seed 0's scheme\n\n" + mixedScheme.map { "\($0.path):\($0.bits)  # layer" }.joined(separator: "\n") + "\n")
            .write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try BitSchemeSpec.load(file).resolve(layerPaths: tinyPaths) == mixedScheme)
        let summary = dir + "/summary.json"
        let json = try JSONSerialization.data(withJSONObject: ["bit_scheme": line, "compression_ratio": 9.1])
        try json.write(to: URL(fileURLWithPath: summary))
        #expect(try BitSchemeSpec.load(summary).resolve(layerPaths: tinyPaths) == mixedScheme)

        let bad = dir + "/bad.txt"
        try "conv1:8\nfc 3\n".write(toFile: bad, atomically: true, encoding: .utf8)
        expectError(BitSchemeError.syntax(origin: bad, line: 2, entry: "fc", reason: "no ':'")) { _ = try BitSchemeSpec.load(bad) }
    }

    @Test("unknown paths, bits outside 2...16, duplicates, unnamed layers and bad syntax are refused with typed errors")
    func errors() throws {
        expectError(BitSchemeError.bitsOutOfRange(path: "conv1", bits: 1)) { _ = try BitSchemeSpec.load("conv1:1,fc:4") }
        expectError(BitSchemeError.bitsOutOfRange(path: "fc", bits: 17)) { _ = try BitSchemeSpec.load("conv1:8,fc:17") }
        expectError(BitSchemeError.bitsOutOfRange(path: "*", bits: 0)) { _ = try BitSchemeSpec.load("*:0") }
        expectError(BitSchemeError.duplicate(path: "conv1")) { _ = try BitSchemeSpec.load("conv1:8,fc:4,conv1:4") }
        expectError(BitSchemeError.duplicate(path: "*")) { _ = try BitSchemeSpec.load("*:4,*:3") }
        expectError(BitSchemeError.syntax(origin: "\"conv1:8:2\"", line: 0, entry: "conv1:8:2", reason: "more than one ':'")) {
            _ = try BitSchemeSpec.load("conv1:8:2")
        }
        expectError(BitSchemeError.syntax(origin: "\"conv1:x\"", line: 0, entry: "conv1:x", reason: "bits must be an integer")) {
            _ = try BitSchemeSpec.load("conv1:x")
        }
        expectError(BitSchemeError.noSuchFile("/nonexistent/scheme.txt")) { _ = try BitSchemeSpec.load("/nonexistent/scheme.txt") }
        expectError(BitSchemeError.empty(origin: "\",\"")) { _ = try BitSchemeSpec.parse(",", origin: "\",\"") }

        let unknown = try BitSchemeSpec.load("conv1:8,layer9.0.conv1:3,*:4")
        expectError(BitSchemeError.unknownLayers(["layer9.0.conv1"], valid: tinyPaths)) { _ = try unknown.resolve(layerPaths: tinyPaths) }
        let message = BitSchemeError.unknownLayers(["layer9.0.conv1"], valid: tinyPaths).description
        #expect(message.contains("layer9.0.conv1") && message.contains("layer3.2.conv2") && message.contains("fc"))
        let partial = try BitSchemeSpec.load("conv1:8,fc:4")
        expectError(BitSchemeError.missingLayers(Array(tinyPaths.dropFirst().dropLast()), valid: tinyPaths)) {
            _ = try partial.resolve(layerPaths: tinyPaths)
        }
        // Entries built in code are checked by resolve too.
        expectError(BitSchemeError.duplicate(path: "fc")) {
            _ = try BitSchemeSpec(entries: [.init(path: "fc", bits: 3), .init(path: "fc", bits: 4)], defaultBits: 4)
                .resolve(layerPaths: tinyPaths)
        }
    }

    /// The tiny MSQ run at `scheme`, fixed from step 0, as `msq train --method msq --bit-scheme`
    /// builds it: TinyTrainingSetup's, or with `exportable` Fashion-MNIST-shaped synthetic images
    /// (1×28×28, 10 classes, 32 training images: 2-step epochs) recorded as `fashion-mnist`, so that
    /// `msq export` rebuilds the network from the run description.
    private struct FixedSchemeRun {
        var config: TrainingConfig
        let train: SyntheticDataset
        let test: SyntheticDataset
        let normalization = Normalization(mean: [0.5], std: [0.3])
        let classes: Int
        var scheme: [QuantizationScheme.LayerBits]

        init(scheme: [QuantizationScheme.LayerBits], epochs: Int, exportable: Bool = false) throws {
            self.scheme = scheme
            let setup = try TinyTrainingSetup(method: "msq", epochs: epochs)
            config = setup.config
            config.bitScheme = bitSchemeLine(scheme)
            if exportable {
                train = try SyntheticDataset(count: 32, sampleShape: [1, 28, 28], numClasses: 10, seed: 1)
                test = try SyntheticDataset(count: 16, sampleShape: [1, 28, 28], numClasses: 10, seed: 2)
                config.dataset = "fashion-mnist"
                classes = 10
            } else {
                train = setup.train
                test = setup.test
                classes = 4
            }
        }

        func make(out: String, wrap: (MSQTraining) -> TrainingMethod = { $0 }) throws -> (Trainer, MSQTraining, [QuantizedLayer]) {
            let model = MSQ.makeModel(.resnet20, inputChannels: 1, numClasses: classes, seed: config.seed)
            let layers = try QuantizationScheme(layers: scheme).apply(to: model)
            var options = MSQOptions(targetCompression: compressionRatio(layers))
            options.hessian = false
            var c = config
            c.methodOptions = options.identity
            let method = try MSQTraining(layers: layers, options: options, calibration: nil, seed: config.seed,
                                         fixedScheme: true)
            let trainer = Trainer(config: c, model: model, method: wrap(method), train: train, test: test,
                                  normalization: normalization, outDirectory: out, log: { _ in })
            return (trainer, method, layers)
        }
    }

    /// Checks at every step that the precisions are the scheme's and that the method adds nothing
    /// to the loss or the gradients (no LSB regulariser, no pruning).
    private final class SchemeWatcher: TrainingMethod {
        let inner: MSQTraining
        let layers: [QuantizedLayer]
        let scheme: [Int]
        var steps = 0
        init(_ inner: MSQTraining, scheme: [Int]) {
            self.inner = inner
            self.layers = inner.layers
            self.scheme = scheme
        }
        var name: String { inner.name }
        func prepare(model: Module, plan: TrainingPlan) throws {
            try inner.prepare(model: model, plan: plan)
            #expect(layers.map(\.bits) == scheme)
        }
        func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
            let grads = model.trainableParameters().map { bitPatterns($0.grad) }
            #expect(layers.map(\.bits) == scheme)
            let extra = try inner.afterBackward(model: model, epoch: epoch, step: step)
            #expect(extra == 0)
            #expect(model.trainableParameters().map { bitPatterns($0.grad) } == grads)
            #expect(layers.map(\.bits) == scheme)
            steps += 1
            return extra
        }
        func afterStep(model: Module, step: Int) throws { try inner.afterStep(model: model, step: step) }
        func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {
            try inner.endOfEpoch(model: model, epoch: epoch, log: log)
            #expect(layers.map(\.bits) == scheme)
        }
        func encodeState() throws -> String { try inner.encodeState() }
        func restoreState(_ json: String) throws { try inner.restoreState(json) }
        func summaryFields() -> [String: Any] { inner.summaryFields() }
    }

    @Test("a fixed-scheme MSQ run keeps exactly that scheme at every step and never regularises or prunes")
    func fixedSchemeIsPlainQAT() throws {
        let run = try FixedSchemeRun(scheme: mixedScheme, epochs: 3)
        var watcher: SchemeWatcher?
        let (trainer, method, layers) = try run.make(out: freshDirectory()) { m in
            let w = SchemeWatcher(m, scheme: mixedScheme.map(\.bits))
            watcher = w
            return w
        }
        #expect(method.isFinetuning && method.fixedScheme)
        let summary = try trainer.run(resume: false)
        #expect(watcher?.steps == 9)
        #expect(method.events.isEmpty)
        #expect(summary["bit_scheme"] as? String == bitSchemeLine(mixedScheme))
        #expect(summary["given_bit_scheme"] as? String == bitSchemeLine(mixedScheme))
        #expect(summary["fixed_scheme"] as? Bool == true)
        #expect(summary["pruning_intervals"] as? Int == 0)
        #expect(summary["hessian_estimates"] as? Int == 0)
        #expect(summary["final_phase_start_step"] as? Int == 0)
        let c = try #require(summary["compression_ratio"] as? Double)
        let cp = try #require(summary["compression_ratio_paper"] as? Double)
        #expect(c == compressionRatio(layers) && cp == compressionRatioPaper(layers))
        #expect(c > 5 && c < 16 && cp > c)
    }

    @Test("a fixed-scheme MSQ run resumes bit for bit, refuses another --bit-scheme, and exports and evaluates as an MSQ run")
    func fixedSchemeResumeAndExport() throws {
        let run = try FixedSchemeRun(scheme: mixedScheme, epochs: 2, exportable: true)
        let (reference, _, _) = try run.make(out: freshDirectory())
        let summary = try reference.run(resume: false)

        let dir = freshDirectory()
        #expect(throws: CrashAfterEpoch.Crash.self) {
            try run.make(out: dir, wrap: { CrashAfterEpoch($0, crashEpoch: 2) }).0.run(resume: false)
        }
        var other = mixedScheme
        other[1].bits = 4
        try expectResumeRefused(try FixedSchemeRun(scheme: other, epochs: 2, exportable: true).make(out: dir).0,
                                naming: "bit_scheme")
        let (resumed, resumedMethod, _) = try run.make(out: dir)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(reference.model))
        #expect(resumedMethod.bitScheme == bitSchemeLine(mixedScheme))

        let ckpt = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        let packed = try PackedModel.export(checkpoint: ckpt)
        #expect(packed.scheme.layers == mixedScheme)
        let deployed = try packed.makeModule()
        let eval = evaluate(deployed, on: run.test, normalization: run.normalization, batchSize: 256)
        #expect(eval.accuracy == summary["test_accuracy"] as? Double)
    }

    @Test("DoReFa takes a per-layer scheme; one naming an unknown layer is refused before anything is attached")
    func doReFaScheme() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        let method = try DoReFaTraining(model: model, options: DoReFaOptions(weightBits: 8), bitScheme: mixedScheme)
        #expect(method.quantizers.map(\.bits) == mixedScheme.map(\.bits))
        #expect(method.summaryFields()["bit_scheme"] as? String == bitSchemeLine(mixedScheme))

        let fresh = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        let bad = mixedScheme + [.init(path: "layer9.0.conv1", bits: 3)]
        expectError(BitSchemeError.unknownLayers(["layer9.0.conv1"], valid: tinyPaths)) {
            _ = try DoReFaTraining(model: fresh, options: DoReFaOptions(weightBits: 8), bitScheme: bad)
        }
        #expect(quantizableLayers(of: fresh).allSatisfy { _, m in (m as? Conv2d)?.weightTransform == nil && (m as? Linear)?.weightTransform == nil })
    }
}
