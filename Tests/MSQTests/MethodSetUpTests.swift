import Foundation
import MSQ
import Testing

// One set-up call per method (issue 15): it quantizes the model, draws the calibration batch, holds
// the activation bits in one place, refuses what the method cannot do before touching the model, and
// gives the fingerprint the CLI used to assemble by hand.

private func calibrationData() throws -> (dataset: any Dataset, normalization: Normalization) {
    (try SyntheticDataset(count: 20, sampleShape: [1, 8, 8], numClasses: 4, seed: 1), Normalization(mean: [0.5], std: [0.3]))
}

/// Whether any conv/linear of `model` carries a weight or input quantizer.
private func hasQuantizers(_ model: any Module) -> Bool {
    quantizableLayers(of: model).contains { _, m in
        if let c = m as? Conv2d { return c.weightTransform != nil || c.inputQuantizer != nil }
        if let l = m as? Linear { return l.weightTransform != nil || l.inputQuantizer != nil }
        return false
    }
}

@Suite("Method set-up calls")
struct MethodSetUpTests {
    @Test("MSQ: every layer at initialBits with the chosen scale, PACT inputs from the context's bits but the first layer's, the method holding the same bits")
    func msqQuantizes() throws {
        let model = makeSmallNet(seed: 1)
        var options = MSQOptions(targetCompression: 8)
        options.initialBits = 6
        options.scaleGranularity = .perChannel
        options.hessianBatch = 12
        let method = try MSQTraining.setUp(model: model, options: options,
                                           context: MethodContext(activationBits: 4, calibrationData: try calibrationData(), seed: 2))
        #expect(method.layers.map(\.path) == ["conv1", "conv2", "fc"])
        #expect(method.layers.allSatisfy { $0.bits == 6 && $0.quantizer.granularity == .perChannel })
        let conv1 = try #require(model["conv1"] as? Conv2d)
        let conv2 = try #require(model["conv2"] as? Conv2d)
        let fc = try #require(model["fc"] as? Linear)
        #expect(conv1.inputQuantizer == nil)
        #expect(conv2.inputQuantizer?.bits == 4 && fc.inputQuantizer?.bits == 4)
        let scheme = try QuantizationScheme.decode(fromMethodState: try method.encodeState())
        #expect(scheme.activationBits == 4 && scheme.activationExcluded == ["conv1"])
        #expect(method.runIdentity["msq.weight_bits"] == "6" && method.runIdentity["msq.act_bits"] == "4")
        #expect(method.runIdentity["msq.scale"] == "per-channel")
        #expect(method.runIdentity.merging(options.identity) { a, _ in a } == method.runIdentity)
    }

    @Test("MSQ with the Hessian and no calibration data names the property and leaves the model float")
    func msqNeedsCalibration() {
        let model = makeSmallNet(seed: 1)
        #expect(throws: MethodSetUpError.missingCalibrationData(method: "MSQ", property: "MSQOptions.hessian")) {
            try MSQTraining.setUp(model: model, options: MSQOptions(targetCompression: 8), context: MethodContext(activationBits: 4))
        }
        #expect(!hasQuantizers(model))
        var off = MSQOptions(targetCompression: 8)
        off.hessian = false
        #expect(throws: Never.self) { try MSQTraining.setUp(model: model, options: off, context: MethodContext()) }
    }

    @Test("an impossible target or bits out of range are refused before the model changes")
    func refusedBeforeChange() {
        let model = makeSmallNet(seed: 1)
        #expect(throws: TrainingError.self) {
            try MSQTraining.setUp(model: model, options: MSQOptions(targetCompression: 40), context: MethodContext(calibrationData: try calibrationData()))
        }
        var bits = MSQOptions(targetCompression: 8)
        bits.initialBits = 17
        #expect(throws: QuantizationError.invalidBits(bits: 17, path: "conv1")) {
            try MSQTraining.setUp(model: model, options: bits, context: MethodContext(calibrationData: try calibrationData()))
        }
        #expect(!hasQuantizers(model))
    }

    @Test("a fixed scheme starts MSQ in finetuning with the scheme's compression as its target and the Hessian off")
    func msqFixedScheme() throws {
        let model = makeSmallNet(seed: 1)
        let scheme: [QuantizationScheme.LayerBits] = [.init(path: "conv1", bits: 8), .init(path: "conv2", bits: 3), .init(path: "fc", bits: 4)]
        let method = try MSQTraining.setUp(model: model, options: MSQOptions(targetCompression: 1), context: MethodContext(bitScheme: scheme))
        #expect(method.fixedScheme && method.isFinetuning)
        #expect(method.layers.map(\.bits) == [8, 3, 4])
        let counts = method.layers.map(\.count)
        #expect(method.options.targetCompression == LSBPruningScheduler.compression(counts: counts, bits: [8, 3, 4]))
        #expect(!method.options.hessian)
        #expect(method.runIdentity["msq.weight_bits"] == nil && method.runIdentity["msq.act_bits"] == "off")
    }

    @Test("HAWQ draws its calibration batch and quantizes at maxBits; BSQ, CSQ, HAWQ and float refuse what they do not take")
    func otherMethods() throws {
        let model = makeSmallNet(seed: 1)
        var hawq = HAWQOptions(targetCompression: 8)
        hawq.hessianBatch = 10
        hawq.scaleGranularity = .perChannel
        let method = try HAWQTraining.setUp(model: model, options: hawq, context: MethodContext(calibrationData: try calibrationData()))
        #expect(method.layers.allSatisfy { $0.bits == 8 && $0.quantizer.granularity == .perChannel })
        #expect(method.runIdentity["hawq.scale"] == "per-channel")

        let fresh = makeSmallNet(seed: 1)
        #expect(throws: MethodSetUpError.activationsUnsupported(method: "HAWQ")) {
            try HAWQTraining.setUp(model: fresh, options: hawq, context: MethodContext(activationBits: 4, calibrationData: try calibrationData()))
        }
        #expect(throws: MethodSetUpError.missingCalibrationData(method: "HAWQ", property: "HAWQOptions.hessianBatch")) {
            try HAWQTraining.setUp(model: fresh, options: hawq, context: MethodContext())
        }
        let scheme: [QuantizationScheme.LayerBits] = [.init(path: "conv1", bits: 4)]
        #expect(throws: MethodSetUpError.bitSchemeUnsupported(method: "BSQ")) {
            try BSQTraining.setUp(model: fresh, options: BSQOptions(targetCompression: 8), context: MethodContext(bitScheme: scheme))
        }
        #expect(throws: MethodSetUpError.bitSchemeUnsupported(method: "CSQ")) {
            try CSQTraining.setUp(model: fresh, options: CSQOptions(targetCompression: 8), context: MethodContext(bitScheme: scheme))
        }
        #expect(throws: MethodSetUpError.activationsUnsupported(method: "float training")) {
            try FloatTraining.setUp(model: fresh, options: FloatOptions(), context: MethodContext(activationBits: 4))
        }
        #expect(!hasQuantizers(fresh))

        let dorefa = try DoReFaTraining.setUp(model: fresh, options: DoReFaOptions(weightBits: 3), context: MethodContext(activationBits: 5))
        #expect(dorefa.runIdentity["dorefa.act_bits"] == "5" && dorefa.runIdentity["dorefa.weight_bits"] == "3")
        #expect(String(describing: MethodSetUpError.missingCalibrationData(method: "MSQ", property: "MSQOptions.hessian")).contains("MethodContext.calibrationData"))
    }
}
