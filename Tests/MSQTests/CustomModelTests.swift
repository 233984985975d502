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
    // 1. Float training.
    let model = makeNetwork()
    var config = TrainingConfig(model: "smallnet", dataset: train.name, epochs: 2, batchSize: 16, learningRate: 0.05)
    config.threads = 2
    try Trainer(config: config, model: model, method: FloatTraining(), train: train, test: test,
                normalization: normalization, outDirectory: workDirectory + "/float", log: { _ in }).run(resume: false)

    // 2. MSQ from the float weights: one set-up call quantizes the model and draws the Hessian's
    //    calibration batch; then the same Trainer, with the method.
    var options = MSQOptions(targetCompression: 8)
    options.hessianBatch = 16
    let msq = try MSQTraining.setUp(model: model, options: options,
                                    context: MethodContext(activationBits: 8, calibrationData: (train, normalization), seed: 0))
    config.epochs = 3
    config.method = msq.name
    config.methodOptions = msq.runIdentity
    try Trainer(config: config, model: model, method: msq, train: train, test: test,
                normalization: normalization, outDirectory: workDirectory + "/msq", log: { _ in }).run(resume: false)
    let inMemory = evaluate(model, on: test, normalization: normalization)

    // 3. Export the live model, write it, read it back into a freshly built float instance.
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
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let run = try quantizeYourOwnModel(makeNetwork: { makeSmallNet(seed: 7) }, train: train, test: test,
                                           normalization: Normalization(mean: [0.5], std: [0.3]), workDirectory: directory)
        #expect(run.reloaded.accuracy == run.inMemory.accuracy)
        #expect(run.reloaded.loss == run.inMemory.loss)
        #expect(run.reloaded.count == 48)
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
}
