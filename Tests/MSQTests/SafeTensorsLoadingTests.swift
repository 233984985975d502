import Foundation
import MSQ
import Testing

// loadSafeTensors (any Module, by path through a TensorNameMap), loadInitialWeights (`msq train
// --init-from FILE.safetensors`) and PackedModel.safeTensors (`msq export --format safetensors`).

/// The network of Fixtures/tiny-model.safetensors (bench/pytorch/make_tiny_model_fixture.py): not
/// a built-in kind; Sequential's positional names are PyTorch nn.Sequential's.
private func tinyModel(seed: UInt64 = 0) -> any Module {
    var rng = RandomSource(seed: seed)
    return Sequential([
        Conv2d(inChannels: 1, outChannels: 4, kernelSize: 3, padding: 1, bias: false, rng: &rng), BatchNorm2d(channels: 4),
        Activation(.relu),
        Conv2d(inChannels: 4, outChannels: 6, kernelSize: 3, stride: 2, padding: 1, bias: true, rng: &rng), BatchNorm2d(channels: 6),
        Activation(.relu), GlobalAvgPool2d(), Flatten(), Linear(inFeatures: 6, outFeatures: 3, rng: &rng),
    ])
}

private func values(_ model: any Module) -> [[UInt32]] { model.namedParameters().map { $0.parameter.value.scalars.map(\.bitPattern) } }

/// `model`'s tensors under PyTorch names, as a safetensors file (F32 each).
private func stateDictFile(of model: any Module) -> SafeTensors {
    var file = SafeTensors()
    for (path, p) in model.namedParameters() {
        if let name = TensorNameMap.pytorch.fileName(path) { file.add(p.value, named: name) }
    }
    return file
}

/// The load error `body` throws (records an issue and returns nil otherwise).
private func loadError(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> SafeTensorsLoadError? {
    do {
        try body()
        Issue.record("expected a SafeTensorsLoadError", sourceLocation: sourceLocation)
    } catch let error as SafeTensorsLoadError {
        return error
    } catch {
        Issue.record("expected a SafeTensorsLoadError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

@Suite("SafeTensors loading and export")
struct SafeTensorsLoadingTests {
    @Test("a model PyTorch saved loads into the same network built here and gives PyTorch's logits")
    func loadsPyTorchModel() throws {
        let model = tinyModel()
        let result = try loadSafeTensors(from: fixturePath("tiny-model.safetensors"), into: model)
        #expect(result.tensorCount == 13)
        #expect(result.skipped == ["1.num_batches_tracked", "4.num_batches_tracked"])
        #expect(result.unused.isEmpty)
        let io = try SafeTensors.read(from: fixturePath("tiny-model-io.safetensors"))
        let logits = model.forward(try io.tensor(named: "input"), mode: .eval)
        let expected = try io.tensor(named: "logits")
        #expect(logits.shape == expected.shape)
        let scale = expected.scalars.map(abs).max() ?? 1
        let error = zip(logits.scalars, expected.scalars).map { abs($0 - $1) }.max() ?? .infinity
        #expect(error / scale < 1e-5, "max relative error \(error / scale)")
        // The running statistics were taken, not left at their initial 0 and 1.
        let file = try SafeTensors.read(from: fixturePath("tiny-model.safetensors"))
        let runningVar = try #require(model.namedParameters().first { $0.name == "4.running_var" }).parameter.value
        #expect(runningVar.scalars == (try file.tensor(named: "4.running_var")).scalars)
    }

    @Test("save then load into a freshly built model gives every tensor back bit for bit (ResNet-20, BN statistics included)")
    func roundTrip() throws {
        let source = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 1)
        // Move the running statistics off their initial values.
        var rng = RandomSource(seed: 9)
        _ = source.forward(Tensor.randomNormal([4, 1, 12, 12], std: 1, using: &rng), mode: .train)
        let path = NSTemporaryDirectory() + "msq-st-\(UUID().uuidString).safetensors"
        try stateDictFile(of: source).write(to: path)
        let target = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 2)
        #expect(values(target) != values(source))
        let result = try loadSafeTensors(from: path, into: target)
        #expect(values(target) == values(source))
        #expect(result.tensorCount == source.namedParameters().count)
        // The hash is the checkpoint loader's: the same weights are the same --init-from identity.
        let again = try loadSafeTensors(from: path, into: makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 3))
        #expect(again.weightsHash == result.weightsHash)
    }

    @Test("a renaming map loads a file whose names differ, and refuses the old name as an extra tensor")
    func renaming() throws {
        var file = try SafeTensors.read(from: fixturePath("tiny-model.safetensors"))
        let fc = try #require(file.tensors["8.weight"])
        file.tensors["8.weight"] = nil
        file.tensors["classifier.weight"] = fc
        let map = TensorNameMap.pytorch.renaming(["8.weight": "classifier.weight"])
        let model = tinyModel()
        try loadSafeTensors(file, into: model, names: map)
        let loaded = try #require(model.namedParameters().first { $0.name == "8.weight" }).parameter.value
        #expect(loaded.scalars == fc.tensor()?.scalars)
        file.tensors["8.weight"] = fc
        let error = loadError { try loadSafeTensors(file, into: tinyModel(), names: map) }
        #expect(error?.problem == .unexpectedTensors(["8.weight"]))
    }

    @Test("missing, extra, reshaped, non-float and non-finite tensors are refused naming the tensor; the model is untouched")
    func refusals() throws {
        let good = try SafeTensors.read(from: fixturePath("tiny-model.safetensors"))
        let model = tinyModel(seed: 5)
        let before = values(model)
        func refuse(_ file: SafeTensors, _ expected: SafeTensorsLoadError.Problem, mentioning name: String,
                    allowExtra: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
            let error = loadError(sourceLocation: sourceLocation) {
                try loadSafeTensors(file, into: model, allowExtraTensors: allowExtra, source: "w.safetensors")
            }
            #expect(error?.problem == expected, sourceLocation: sourceLocation)
            #expect(error?.description.contains(name) == true, "\(String(describing: error))", sourceLocation: sourceLocation)
            #expect(error?.description.contains("w.safetensors") == true, sourceLocation: sourceLocation)
            #expect(values(model) == before, "the model changed on a refused load", sourceLocation: sourceLocation)
        }
        var missing = good
        missing.tensors["4.running_mean"] = nil
        refuse(missing, .missingTensor(tensor: "4.running_mean", parameter: "4.running_mean"), mentioning: "'4.running_mean'")

        var extra = good
        extra.tensors["9.weight"] = try SafeTensor(shape: [1], float32: [1])
        refuse(extra, .unexpectedTensors(["9.weight"]), mentioning: "'9.weight'")
        let allowed = try loadSafeTensors(extra, into: tinyModel(), allowExtraTensors: true)
        #expect(allowed.unused == ["9.weight"])

        var reshaped = good
        reshaped.tensors["3.weight"] = try SafeTensor(shape: [6, 4, 1, 9], float32: Array(repeating: 0, count: 216))
        refuse(reshaped, .shapeMismatch(tensor: "3.weight", parameter: "3.weight", fileShape: [6, 4, 1, 9], modelShape: [6, 4, 3, 3]),
               mentioning: "'3.weight'")

        var integer = good
        integer.tensors["8.bias"] = try SafeTensor(shape: [3], int64: [1, 2, 3])
        refuse(integer, .wrongDType(tensor: "8.bias", dtype: .int64), mentioning: "'8.bias'")

        var nan = good
        nan.tensors["1.weight"] = try SafeTensor(shape: [4], float32: [1, .nan, 1, 1])
        refuse(nan, .nonFinite(tensor: "1.weight"), mentioning: "'1.weight'")

        // F64 and BF16 are converted, not refused.
        var wide = good
        wide.tensors["8.bias"] = try SafeTensor(shape: [3], float64: [0.5, -1, 2])
        try loadSafeTensors(wide, into: tinyModel())

        // A map giving two parameters one name cannot load either of them reliably.
        let collapsing = TensorNameMap(fileName: { $0.hasSuffix(".bias") ? "bias" : $0 }, parameterPath: { $0 })
        let ambiguous = loadError { try loadSafeTensors(good, into: tinyModel(), names: collapsing) }
        #expect(ambiguous?.problem == .ambiguousName(tensor: "bias", parameters: ["1.bias", "3.bias"]))
    }

    @Test("a corrupt file is refused through the header validation, naming the file")
    func corruptFile() throws {
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixturePath("tiny-model.safetensors"))))
        bytes.removeLast(4)
        let path = NSTemporaryDirectory() + "msq-st-\(UUID().uuidString).safetensors"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let error = loadError { try loadSafeTensors(from: path, into: tinyModel()) }
        guard case .unreadable(.truncated) = error?.problem else {
            Issue.record("expected a truncation, got \(String(describing: error))")
            return
        }
        #expect(error?.description.contains(path) == true)
    }
}

/// A quantized ResNet-20 for Fashion-MNIST (mixed 2/3/5/8 bits, the classifier float), its BN
/// statistics and PACT clip levels moved off their initial values, and its packed model.
private func packedResNet20(activationBits: Int?, granularity: ScaleGranularity) throws -> (model: any Module, packed: PackedModel) {
    let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 7)
    let paths = quantizableLayers(of: model).map(\.path)
    let scheme = QuantizationScheme(
        layers: paths.dropLast().enumerated().map { .init(path: $1, bits: [2, 3, 5, 8][$0 % 4]) },
        activationBits: activationBits, activationExcluded: activationBits == nil ? [] : [paths[0]],
        scaleGranularity: granularity)
    _ = try scheme.apply(to: model)
    var rng = RandomSource(seed: 11)
    _ = model.forward(Tensor.randomNormal([4, 1, 28, 28], std: 1, using: &rng), mode: .train)
    for (i, (name, p)) in model.namedParameters().enumerated() where name.hasSuffix(".input_alpha") {
        p.value = Tensor(shape: [1], repeating: 2.5 + Float(i) * 0.01)
    }
    let params = model.namedParameters()
    let header = Checkpoint.Header(
        runFingerprint: "test", runDescription: ["model": "resnet20", "dataset": "fashion-mnist", "method": "msq", "seed": "7"],
        epochsCompleted: 1, globalStep: 1, trainSeconds: 0, trainImagesSeen: 4, rngState: [1, 2, 3, 4],
        methodState: "{\"scheme\": \(String(decoding: try JSONEncoder().encode(scheme), as: UTF8.self))}",
        tensors: params.map { CheckpointTensor(name: $0.name, shape: $0.parameter.value.shape) })
    let packed = try PackedModel.export(checkpoint: Checkpoint(header: header, tensorData: params.map(\.parameter.value)))
    return (model, packed)
}

@Suite("SafeTensors export of a packed model")
struct SafeTensorsExportTests {
    @Test("every tensor read back equals PackedModel's dequantized tensor bit for bit; bits, scales and clip levels are in the metadata",
          arguments: [(nil, ScaleGranularity.perTensor), (4, .perChannel)] as [(Int?, ScaleGranularity)])
    func exportReadBack(activationBits: Int?, granularity: ScaleGranularity) throws {
        let (_, packed) = try packedResNet20(activationBits: activationBits, granularity: granularity)
        let bytes = try packed.safeTensors().serialized()
        let file = try SafeTensors(serialized: bytes, source: "export.safetensors")
        let meta = file.metadata
        var floatCount = 0
        for e in packed.header.tensors {
            if e.name.hasSuffix(".input_alpha") {
                #expect(file.tensors[e.name] == nil, "PACT clip levels are metadata, not tensors")
                let layer = String(e.name.dropLast(".input_alpha".count))
                #expect(meta["msq.input_alpha." + layer].flatMap(Float.init) == (try packed.tensor(named: e.name)).scalars[0])
                continue
            }
            let stored = try #require(file.tensors[e.name], "no tensor \(e.name)")
            #expect(stored.dtype == .float32 && stored.shape == e.shape)
            #expect(stored.floats()?.map(\.bitPattern) == (try packed.tensor(named: e.name)).scalars.map(\.bitPattern), "\(e.name)")
            floatCount += 1
            if e.kind == .packed {
                let (scales, bits, _) = try packed.codes(named: e.name)
                #expect(meta["msq.weight_bits." + e.name] == String(bits))
                let listed = try JSONDecoder().decode([Float].self, from: Data((meta["msq.weight_scales." + e.name] ?? "").utf8))
                #expect(listed.map(\.bitPattern) == scales.map(\.bitPattern), "\(e.name)")
                #expect(listed.count == (granularity == .perChannel ? e.shape[0] : 1))
            }
            if e.name.hasSuffix(".running_mean") {
                let counter = String(e.name.dropLast("running_mean".count)) + "num_batches_tracked"
                #expect(file.tensors[counter]?.dtype == .int64 && file.tensors[counter]?.shape == [])
            }
        }
        let alphas = packed.header.tensors.filter { $0.name.hasSuffix(".input_alpha") }.count
        #expect(file.tensors.values.filter { $0.dtype == .float32 }.count == floatCount)
        #expect(meta.keys.filter { $0.hasPrefix("msq.weight_bits.") }.count == packed.scheme.layers.count)
        #expect(meta["msq.activation_bits"] == activationBits.map(String.init))
        #expect(meta.keys.filter { $0.hasPrefix("msq.input_alpha.") }.count == alphas)
        #expect((activationBits == nil) == (alphas == 0))
        #expect(meta["msq.model"] == "resnet20" && meta["msq.dataset"] == "fashion-mnist" && meta["msq.source.method"] == "msq")
        #expect(meta["msq.scale_granularity"] == granularity.rawValue)
        #expect(meta["msq.input_shape"] == "[1,28,28]" && meta["msq.num_classes"] == "10")
    }

    @Test("the exported file, loaded into a float model with the metadata's PACT clip levels, computes the packed model's logits bit for bit",
          arguments: [nil, 3] as [Int?])
    func exportComputesPackedLogits(activationBits: Int?) throws {
        let (_, packed) = try packedResNet20(activationBits: activationBits, granularity: .perTensor)
        let file = try packed.safeTensors()
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        // PyTorch's strict load_state_dict: every float tensor used, num_batches_tracked skipped.
        let result = try loadSafeTensors(file, into: model)
        #expect(result.unused.isEmpty && result.skipped.allSatisfy { $0.hasSuffix(".num_batches_tracked") } && result.skipped.count == 19)
        if let bits = file.metadata["msq.activation_bits"].flatMap(Int.init) {
            for (layer, quantizer) in try quantizeActivations(model, bits: bits, excluded: []) {
                guard let alpha = file.metadata["msq.input_alpha." + layer].flatMap(Float.init) else {
                    quantizer.isBypassed = true  // the network input stays float
                    continue
                }
                quantizer.alpha.value = Tensor(shape: [1], repeating: alpha)
            }
        }
        var rng = RandomSource(seed: 12)
        let x = Tensor.randomNormal([3, 1, 28, 28], std: 1, using: &rng)
        let expected = try packed.makeModule().forward(x, mode: .eval)
        #expect(model.forward(x, mode: .eval).scalars.map(\.bitPattern) == expected.scalars.map(\.bitPattern))
    }
}

@Suite("--init-from a safetensors file")
struct SafeTensorsInitFromTests {
    @Test("a safetensors file is recognised by extension or by its first bytes; a checkpoint is not")
    func detection() throws {
        let dir = NSTemporaryDirectory() + "msq-st-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: fixturePath("tiny-model.safetensors")))
        try bytes.write(to: URL(fileURLWithPath: dir + "/weights.bin"))
        #expect(SafeTensors.isSafeTensorsFile(atPath: dir + "/weights.bin"))
        #expect(SafeTensors.isSafeTensorsFile(atPath: dir + "/missing.safetensors"))
        #expect(!SafeTensors.isSafeTensorsFile(atPath: dir + "/missing.msqckpt"))
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        let params = model.namedParameters()
        let header = Checkpoint.Header(runFingerprint: "t", runDescription: ["model": "resnet20", "method": "fp"], epochsCompleted: 1,
                                       globalStep: 1, trainSeconds: 0, trainImagesSeen: 0, rngState: [1, 2, 3, 4], methodState: "{}",
                                       tensors: params.map { CheckpointTensor(name: $0.name, shape: $0.parameter.value.shape) })
        try Checkpoint(header: header, tensorData: params.map(\.parameter.value)).write(to: dir + "/checkpoint.msqckpt")
        #expect(!SafeTensors.isSafeTensorsFile(atPath: dir + "/checkpoint.msqckpt"))

        // The same weights from a checkpoint and from safetensors are the same run start.
        let fromCheckpoint = try loadInitialWeights(from: dir + "/checkpoint.msqckpt",
                                                    into: makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 1), expectedModel: "resnet20")
        try stateDictFile(of: model).write(to: dir + "/weights.safetensors")
        let target = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 2)
        let fromSafeTensors = try loadInitialWeights(from: dir + "/weights.safetensors", into: target, expectedModel: "resnet20")
        #expect(values(target) == values(model))
        #expect(fromSafeTensors.identity == fromCheckpoint.identity)
        #expect(fromSafeTensors.tensorCount == params.count && fromSafeTensors.path == dir + "/weights.safetensors")
        var a = TrainingConfig(model: "resnet20", dataset: "synthetic", epochs: 1, batchSize: 8, learningRate: 0.1)
        var b = a
        a.initFrom = fromCheckpoint
        b.initFrom = fromSafeTensors
        #expect(a.fingerprint == b.fingerprint)
    }

    @Test("an exported file of another model, or of wrong shapes, is refused naming the file and the tensor")
    func refusals() throws {
        let (_, packed) = try packedResNet20(activationBits: nil, granularity: .perTensor)
        let path = NSTemporaryDirectory() + "msq-st-\(UUID().uuidString).safetensors"
        try packed.safeTensors().write(to: path)
        let other = makeModel(.resnet32, inputChannels: 1, numClasses: 10, seed: 0)
        let mismatch = loadError { try loadInitialWeights(from: path, into: other, expectedModel: "resnet32") }
        #expect(mismatch?.problem == .modelMismatch(fileModel: "resnet20", model: "resnet32"))
        // Without the name check the shapes and names still decide: resnet32 has more blocks.
        let missing = loadError { try loadInitialWeights(from: path, into: other) }
        guard case .missingTensor(let tensor, _) = missing?.problem else {
            Issue.record("expected a missing tensor, got \(String(describing: missing))")
            return
        }
        #expect(missing?.description.contains(tensor) == true && missing?.description.contains(path) == true)
        let classes = loadError { try loadInitialWeights(from: path, into: makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)) }
        #expect(classes?.problem == .shapeMismatch(tensor: "fc.weight", parameter: "fc.weight", fileShape: [10, 64], modelShape: [4, 64]))
        // Loading the dequantized export into a float model is the QAT-from-QAT start.
        let float = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let loaded = try loadInitialWeights(from: path, into: float, expectedModel: "resnet20")
        #expect(loaded.sourceModel == "resnet20" && loaded.sourceMethod == "msq")
        let conv = try #require(float.namedParameters().first { $0.name == "layer1.0.conv1.weight" }).parameter.value
        #expect(conv.scalars.map(\.bitPattern) == (try packed.tensor(named: "layer1.0.conv1.weight")).scalars.map(\.bitPattern))
    }
}
