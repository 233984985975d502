import Foundation
import MSQ
import Testing

// Issue 15's acceptance test and the code of the DocC article "Quantize your own model"
// (Sources/MSQ/MSQ.docc/QuantizeYourOwnModel.md): a network not in the catalog goes through float
// training, MSQ, export and load into a freshly built instance, which evaluates to exactly the
// in-memory accuracy and loss.

/// What the article's walk-through produces.
struct CustomModelRun {
    var inMemory: Evaluation
    var reloaded: Evaluation
    var packed: PackedModel
    var bitScheme: String
}

/// The article's code: `makeNetwork` builds the float model; `train`/`test` are any datasets.
func quantizeYourOwnModel(makeNetwork: () -> any Module, train: any Dataset, test: any Dataset,
                          normalization: Normalization, workDirectory: String) throws -> CustomModelRun {
    // 1. Float training. No output directory: the run writes no file.
    let model = makeNetwork()
    var config = TrainingConfig(model: "smallnet", dataset: train.name, epochs: 2, batchSize: 16, learningRate: 0.05)
    let float = Trainer(config: config, model: model, method: FloatTraining(), train: train, test: test,
                        normalization: normalization, outDirectory: nil, log: { _ in })
    let floatSummary = try float.run(resume: false)
    print("float: test accuracy \(floatSummary.testAccuracy)")

    // 2. MSQ from the float weights. One set-up call quantizes the model (every conv/linear at 8 bits,
    //    PACT inputs at 8 bits) and draws the Hessian's calibration batch from the training set.
    var options = MSQOptions(targetCompression: 8)
    options.hessianBatch = 16
    let context = MethodContext(activationBits: 8, calibrationData: (train, normalization), seed: 0)
    let msq = try MSQTraining.setUp(model: model, options: options, context: context)
    config.epochs = 3
    config.method = msq.name
    config.methodOptions = msq.runIdentity
    let quantized = Trainer(config: config, model: model, method: msq, train: train, test: test,
                            normalization: normalization, outDirectory: nil, log: { _ in })
    quantized.onEpoch = { report in print("epoch \(report.epoch): \(msq.bitScheme)") }
    try quantized.run(resume: false)
    let inMemory = evaluate(model, on: test, normalization: normalization)

    // 3. Pack the live model, write it, and load it into a freshly built float instance.
    let packed = try PackedModel.export(model: model, name: "smallnet", data: DatasetInfo(train, normalization: normalization))
    let path = workDirectory + "/smallnet.msqmodel"
    try packed.write(to: path)
    let fresh = makeNetwork()
    try PackedModel.read(from: path).load(into: fresh)
    let reloaded = evaluate(fresh, on: test, normalization: normalization)
    return CustomModelRun(inMemory: inMemory, reloaded: reloaded, packed: packed, bitScheme: msq.bitScheme)
}

@Suite("A model of the user's own")
struct CustomModelTests {
    @Test("conv-BN-ReLU ×2, pooling, linear: float training → MSQ → export → load into a fresh instance evaluates to exactly the in-memory accuracy and loss")
    func endToEnd() throws {
        let train = try SyntheticDataset(count: 96, sampleShape: [1, 8, 8], numClasses: 4, seed: 1)
        let test = try SyntheticDataset(count: 48, sampleShape: [1, 8, 8], numClasses: 4, seed: 2)
        let directory = freshDirectory()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let run = try quantizeYourOwnModel(makeNetwork: { makeSmallNet(seed: 7) }, train: train, test: test,
                                           normalization: Normalization(mean: [0.5], std: [0.3]), workDirectory: directory)
        #expect(run.reloaded.accuracy == run.inMemory.accuracy)
        #expect(run.reloaded.loss == run.inMemory.loss)
        #expect(run.reloaded.count == 48)
        // The trainers had no output directory: the packed model is the only file.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["smallnet.msqmodel"])
        #expect(run.packed.header.model == "smallnet")
        #expect(run.packed.header.activationBits == 8 && run.packed.header.activationExcluded == ["conv1"])
        #expect(run.packed.scheme.layers.map { "\($0.path):\($0.bits)" }.joined(separator: " ") == run.bitScheme)
        // Not a built-in network: makeModule says what to do instead of guessing.
        #expect(throws: PackedModelError.notBuiltIn(model: "smallnet")) { try run.packed.makeModule() }
    }

    @Test("load(into:) refuses a model that already carries quantizers or does not fit, and leaves it unchanged")
    func loadRefusals() throws {
        let model = makeSmallNet(seed: 3)
        var options = MSQOptions(targetCompression: 8)
        options.hessian = false
        _ = try MSQTraining.setUp(model: model, options: options, context: MethodContext(activationBits: 6))
        let packed = try PackedModel.export(model: model, name: "smallnet",
                                            data: DatasetInfo(name: "synthetic", sampleShape: [1, 8, 8], numClasses: 4,
                                                              normalization: Normalization(mean: [0.5], std: [0.3])))
        // The natural wrong order: the scheme applied first, then the file.
        let quantizedFirst = makeSmallNet(seed: 3)
        _ = try packed.scheme.apply(to: quantizedFirst)
        #expect(throws: PackedModelError.self) { try packed.load(into: quantizedFirst) }

        // Another width of the last layer: fails on that tensor, after the scheme was attached, and is rolled back.
        let other = makeSmallNet(classes: 5, seed: 3)
        let before = other.namedParameters().map(\.parameter.value.scalars)
        let mismatch = #expect(throws: PackedModelError.self) { try packed.load(into: other) }
        #expect(mismatch.map { "\($0)" }?.contains("fc.weight") == true)
        #expect(other.namedParameters().map(\.parameter.value.scalars) == before)
        #expect(other.namedParameters().allSatisfy { !$0.name.hasSuffix("input_alpha") })
        #expect(quantizableLayers(of: other).allSatisfy { _, m in (m as? Conv2d)?.weightTransform == nil && (m as? Linear)?.weightTransform == nil })
    }

    @Test("export(model:) refuses a float model and other weight transforms, naming the layer")
    func exportRefusals() throws {
        let data = DatasetInfo(name: "synthetic", sampleShape: [1, 8, 8], numClasses: 4, normalization: Normalization(mean: [0.5], std: [0.3]))
        #expect(throws: PackedModelError.self) { try PackedModel.export(model: makeSmallNet(seed: 1), name: "smallnet", data: data) }
        let dorefa = makeSmallNet(seed: 1)
        _ = try DoReFaTraining.setUp(model: dorefa, options: DoReFaOptions(weightBits: 3), context: MethodContext())
        let refusal = #expect(throws: PackedModelError.self) { try PackedModel.export(model: dorefa, name: "smallnet", data: data) }
        #expect(refusal.map { "\($0)" }.map { $0.contains("conv1") && $0.contains("DoReFaQuantizer") } == true)
    }

    @Test("every code block of the article \"Quantize your own model\" is code of this file (so it compiles and runs here)")
    func articleMatchesTest() throws {
        let here = URL(fileURLWithPath: #filePath)
        let root = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let article = try String(contentsOf: root.appendingPathComponent("Sources/MSQ/MSQ.docc/QuantizeYourOwnModel.md"), encoding: .utf8)
        let source = try String(contentsOf: here, encoding: .utf8) + "\n"
            + String(contentsOf: here.deletingLastPathComponent().appendingPathComponent("SmallNet.swift"), encoding: .utf8)
        let sourceLines = source.split(separator: "\n", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        let blocks = article.components(separatedBy: "```swift\n").dropFirst().map { $0.components(separatedBy: "```")[0] }
        #expect(blocks.count >= 4)
        for block in blocks {
            let lines = block.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            let found = sourceLines.indices.contains { start in
                start + lines.count <= sourceLines.count && Array(sourceLines[start..<(start + lines.count)]) == lines
            }
            #expect(found, "article block not in CustomModelTests.swift or SmallNet.swift:\n\(block)")
        }
    }
}
