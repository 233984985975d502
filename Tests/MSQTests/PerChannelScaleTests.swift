import CKernels
import Foundation
import MSQ
import Testing

// Per-output-channel scales (MSQ-SPEC §1: s_c = max|W_c| over output channel c, the weight's first
// dimension; every formula holds per channel) for RoundClamp, the LSB regulariser and DoReFa, and
// their granularity through schemes, checkpoints and resume. Export and `msq eval` of per-channel
// models are in PackedModelTests.

/// A weight whose output channels have very different magnitudes (channel c scaled by 0.05 + 0.6·c,
/// channel `zeroChannel` all zeros), so that per-channel and per-tensor scales disagree everywhere.
private func channelSpreadWeight(_ shape: [Int], seed: UInt64, zeroChannel: Int? = nil) -> Tensor {
    var rng = RandomSource(seed: seed)
    var w = randomTensor(shape, rng: &rng)
    let size = w.count / shape[0]
    for c in 0..<shape[0] {
        let factor: Float = c == zeroChannel ? 0 : 0.05 + 0.6 * Float(c)
        for i in (c * size)..<((c + 1) * size) { w[flat: i] *= factor }
    }
    return w
}

/// The spec per channel in plain Swift (no kernel): s_c = max|W_c|, w~ = 1/2 + W/(2 s_c),
/// q = clamp(round(2^n w~), 0, 2^n − 1) half to even, j = q − 2^(n−1), Q = (s_c · j) / 2^(n−1);
/// s_c = 0 gives Q = 0 and j = 0.
private func specPerChannel(_ w: Tensor, bits n: Int) -> (wq: [Float], codes: [Int32], scales: [Float]) {
    let channels = w.shape[0], size = w.count / channels
    let x = w.scalars
    var wq = [Float](repeating: 0, count: w.count), codes = [Int32](repeating: 0, count: w.count), scales: [Float] = []
    let half = Float(1 << (n - 1))
    for c in 0..<channels {
        let slice = x[(c * size)..<((c + 1) * size)]
        let s = slice.reduce(Float(0)) { max($0, abs($1)) }
        scales.append(s)
        guard s > 0 else { continue }
        for i in slice.indices {
            let wt: Float = 0.5 + x[i] / (2 * s)
            let q = min(max((Float(1 << n) * wt).rounded(.toNearestOrEven), 0), Float((1 << n) - 1))
            let j = q - half
            codes[i] = Int32(j)
            wq[i] = (s * j) / half
        }
    }
    return (wq, codes, scales)
}

/// The DoReFa transcription per output channel: M_c = max over the channel of |tanh W|,
/// w_t = tanh(W)/(2 M_c) + 1/2, q = round(L w_t), w_q = 2q/L − 1 (times max|W_c| when scaled);
/// the gradient g·(1 − tanh²W)/M_c (times max|W_c|), passed through where M_c = 0.
private func doReFaPerChannel(_ w: Tensor, grad g: [Float], bits k: Int, scaled: Bool)
    -> (wq: [Float], q: [Int32], dw: [Float]) {
    let channels = w.shape[0], size = w.count / channels
    let x = w.scalars, l = Float((1 << k) - 1)
    var wq = [Float](repeating: 0, count: w.count), q = [Int32](repeating: 0, count: w.count), dw = g
    for c in 0..<channels {
        let range = (c * size)..<((c + 1) * size)
        let m = x[range].map { abs(tanhf($0)) }.max() ?? 0
        guard m > 0 else { continue }
        let s: Float = scaled ? x[range].map(abs).max()! : 1
        for i in range {
            let t = tanhf(x[i])
            let code = (l * (t / (2 * m) + 0.5)).rounded(.toNearestOrEven)
            q[i] = Int32(code)
            wq[i] = (2 * code / l - 1) * s
            dw[i] = g[i] * (1 - t * t) / m * s
        }
    }
    return (wq, q, dw)
}

/// q = clamp(round(2^b · w~), 0, 2^b − 1) in plain Swift (half to even).
private func swiftCode(_ w: Float, scale s: Float, bits b: Int) -> Int {
    let wt: Float = 0.5 + w / (2 * s)
    let x = (Float(1 << b) * wt).rounded(.toNearestOrEven)
    return min(max(Int(x), 0), (1 << b) - 1)
}

/// Odd conv and linear shapes, one with a single output channel, one whose channel slices are
/// longer than the kernels' parallel threshold (16384) and their 1024-element chunks.
private let perChannelShapes: [[Int]] = [[5, 3, 3, 3], [7, 11], [1, 13], [3, 16385]]

@Suite("Per-channel scales")
struct PerChannelScaleTests {
    @Test("RoundClamp per channel equals the spec per channel in plain Swift (Q, codes, scales), and each channel slice equals the per-tensor quantizer on that slice",
          arguments: [2, 3, 4, 8])
    func roundClampMatchesSpec(bits: Int) {
        for (k, shape) in perChannelShapes.enumerated() {
            let w = channelSpreadWeight(shape, seed: 40 + UInt64(k), zeroChannel: shape[0] > 2 ? 1 : nil)
            let quantizer = RoundClampQuantizer(bits: bits, granularity: .perChannel)
            let spec = specPerChannel(w, bits: bits)
            #expect(quantizer.forward(w).scalars.map(\.bitPattern) == spec.wq.map(\.bitPattern), "\(shape)")
            #expect(quantizer.lastScales == spec.scales)
            #expect(quantizer.lastScale == spec.scales.max())
            #expect(quantizer.scales(of: w) == spec.scales)
            let (scales, codes) = quantizer.codes(of: w)
            #expect(scales == spec.scales)
            #expect(codes == spec.codes, "\(shape)")

            // Each channel slice, alone, through the per-tensor quantizer: the same bits.
            let channels = shape[0], size = w.count / channels
            let perTensor = RoundClampQuantizer(bits: bits)
            let out = quantizer.forward(w).scalars
            for c in 0..<channels {
                let slice = Tensor(shape: [size], scalars: Array(w.scalars[(c * size)..<((c + 1) * size)]))
                #expect(perTensor.forward(slice).scalars.map(\.bitPattern)
                        == out[(c * size)..<((c + 1) * size)].map(\.bitPattern))
            }
            // With several channels of different magnitudes the per-tensor result differs.
            if channels > 1 {
                #expect(RoundClampQuantizer(bits: bits).forward(w).scalars != out)
            }
        }
    }

    @Test("the per-channel grids nest: Q_{n−k} is an n-bit level with k zero LSBs, and the n-bit code is within 2^(k−1) of it (2^k − 1 at the top clamp)",
          arguments: [3, 5, 8])
    func nestingPerChannel(bits n: Int) {
        let w = channelSpreadWeight([6, 4, 3, 3], seed: 51, zeroChannel: 2)
        for k in 1...min(2, n - 1) {
            let fine = RoundClampQuantizer(bits: n, granularity: .perChannel)
            let coarse = RoundClampQuantizer(bits: n - k, granularity: .perChannel)
            let (fineScales, fineCodes) = fine.codes(of: w)
            let (coarseScales, coarseCodes) = coarse.codes(of: w)
            #expect(fineScales == coarseScales)  // s_c does not depend on n
            let coarseQ = coarse.forward(w).scalars
            let size = w.count / 6, half = Float(1 << (n - 1))
            let top = Int32((1 << (n - 1)) - 1)
            for i in 0..<w.count {
                let s = fineScales[i / size]
                // The coarse level, written as an n-bit code with k zero LSBs, dequantizes to the same weight.
                let asFine = coarseCodes[i] * Int32(1 << k)
                #expect(asFine >= -Int32(half) && asFine <= top)
                #expect((s * Float(asFine)) / half == coarseQ[i])
                let tail = abs(fineCodes[i] - asFine)
                #expect(tail <= Int32(1 << (k - 1)) || (fineCodes[i] == top && tail <= Int32((1 << k) - 1)),
                        "element \(i): j_n \(fineCodes[i]), 2^k·j_{n−k} \(asFine)")
            }
        }
    }

    @Test("squaredErrors per channel is ||Q_b(W) − W||² with the channel scales, at every b")
    func squaredErrorsPerChannel() {
        let w = channelSpreadWeight([5, 3, 3, 3], seed: 52, zeroChannel: 4)
        let quantizer = RoundClampQuantizer(bits: 4, granularity: .perChannel)
        let errors = quantizer.squaredErrors(of: w, bits: [2, 3, 8])
        for (b, err) in zip([2, 3, 8], errors) {
            let q = specPerChannel(w, bits: b).wq
            var ref = 0.0
            for (x, y) in zip(q, w.scalars) { ref += (Double(x) - Double(y)) * (Double(x) - Double(y)) }
            #expect(err == ref, "bits \(b)")
        }
        #expect(quantizer.bits == 4)
        #expect(quantizer.lastScales.isEmpty)  // untouched
        // Per channel the error is smaller than per tensor on this weight (its small channels get a fine grid).
        #expect(errors[1] < RoundClampQuantizer(bits: 4).squaredErrors(of: w, bits: [3])[0])
    }

    @Test("STE per channel: the clamp mask uses each channel's own scale")
    func steMaskPerChannel() {
        // Channel 0: s = 1, the +s weight is clamped at 3 bits; channel 1: s = 0.5, its 0.49 rounds to 8 (clamped).
        let w = Tensor(shape: [2, 2], scalars: [1.0, 0.3, 0.49, -0.5])
        let g = Tensor(shape: [2, 2], scalars: [1, 2, 3, 4])
        let q = RoundClampQuantizer(bits: 3, granularity: .perChannel, zeroGradientOutsideClamp: true)
        #expect(q.backward(gradEffective: g, weight: w).scalars == [0, 2, 0, 4])
        // With the tensor scale s = 1 channel 1's 0.49 would be inside.
        let perTensor = RoundClampQuantizer(bits: 3, zeroGradientOutsideClamp: true)
        #expect(perTensor.backward(gradEffective: g, weight: w).scalars == [0, 2, 3, 4])
    }

    @Test("LSB regulariser per channel: gradient, |lsb| sum and nonzero count match the reference kernel and a Swift count per channel")
    func regulariserPerChannel() throws {
        var rng = RandomSource(seed: 53)
        let model = Sequential(named: [
            ("fc1", Linear(inFeatures: 9, outFeatures: 7, rng: &rng)),
            ("act", Activation(.relu)),
            ("fc2", Linear(inFeatures: 7, outFeatures: 3, rng: &rng)),
        ])
        let layers = try quantizeForMSQ(model, initialBits: 5, overrides: ["fc2": 4], scaleGranularity: .perChannel)
        #expect(layers.allSatisfy { $0.quantizer.granularity == .perChannel })
        // Spread the channel magnitudes so that per-tensor statistics would differ.
        for layer in layers { layer.parameter.value = channelSpreadWeight(layer.parameter.value.shape, seed: 54) }
        let lambda = 1.5
        let reg = LSBRegularizer(layers: layers, lambda: lambda)
        reg.setK(["fc1": 2])
        model.zeroGradients()
        let report = reg.apply()

        let coeff = Float(lambda / Double(reg.totalCount))
        var refTotal = 0.0
        for (i, layer) in layers.enumerated() {
            let w = layer.parameter.value
            let n = layer.bits, k = reg.effectiveK(i)
            let channels = w.shape[0], size = w.count / channels
            var expected = Tensor(shape: w.shape)
            var layerAbs = 0.0, layerNonzero = 0, swiftNonzero = 0
            for c in 0..<channels {
                let slice = Array(w.scalars[(c * size)..<((c + 1) * size)])
                let s = slice.reduce(Float(0)) { max($0, abs($1)) }
                var absSum = 0.0
                var nonzero: Int64 = 0
                var g = [Float](repeating: 0, count: size)
                msq_lsb_forward_backward_ref(nil, &absSum, &nonzero, &g, slice, size, s, Int32(n), Int32(k), coeff)
                for j in 0..<size { expected[flat: c * size + j] = g[j] }
                layerAbs += absSum
                layerNonzero += Int(nonzero)
                swiftNonzero += slice.filter { swiftCode($0, scale: s, bits: n) - (1 << k) * swiftCode($0, scale: s, bits: n - k) != 0 }.count
                // Eq. 7 per channel: each entry is ±λ/N · 2^n/(2 s_c) or 0.
                let step = coeff * (Float(1 << n) / (2 * s))
                #expect(g.allSatisfy { $0 == 0 || abs(abs($0) - step) <= 1e-6 * step })
            }
            #expect(layer.parameter.grad.scalars == expected.scalars, "\(layer.path)")
            #expect(abs(report.layers[i].absSum - layerAbs) <= 1e-9 * max(1, layerAbs))
            #expect(layerNonzero == swiftNonzero)
            #expect(report.layers[i].nonzeroRate == Double(layerNonzero) / Double(w.count))
            refTotal += layerAbs
        }
        #expect(abs(report.regularizer - refTotal / Double(reg.totalCount)) <= 1e-12)

        // The per-tensor regulariser on the same weights measures something else.
        let tensorLayers = try quantizeForMSQ(model, initialBits: 5, overrides: ["fc2": 4])
        let tensorReg = LSBRegularizer(layers: tensorLayers, lambda: lambda)
        tensorReg.setK(["fc1": 2])
        #expect(tensorReg.measure().layers.map(\.absSum) != report.layers.map(\.absSum))
    }

    @Test("DoReFa per channel equals the per-channel transcription: forward, codes and gradient, plain and scaled",
          arguments: [false, true])
    func doReFaPerChannelMatches(scaled: Bool) {
        for (k, shape) in [[6, 3, 3, 3], [5, 8], [1, 7]].enumerated() {
            let w = channelSpreadWeight(shape, seed: 60 + UInt64(k), zeroChannel: shape[0] > 2 ? 2 : nil)
            var rng = RandomSource(seed: 70 + UInt64(k))
            let g = randomTensor(shape, rng: &rng)
            let q = DoReFaQuantizer(bits: 3, scaled: scaled, granularity: .perChannel)
            let ref = doReFaPerChannel(w, grad: g.scalars, bits: 3, scaled: scaled)
            #expect(q.forward(w).scalars == ref.wq, "\(shape)")
            #expect(q.codes(of: w) == ref.q)
            #expect(q.backward(gradEffective: g, weight: w).scalars == ref.dw)
            if shape[0] > 1 {
                let perTensor = DoReFaQuantizer(bits: 3, scaled: scaled)
                #expect(perTensor.forward(w).scalars != ref.wq)
            }
        }
    }

    @Test("a scheme's granularity survives JSON; per-tensor JSON is unchanged and old JSON decodes as per tensor")
    func schemeJSON() throws {
        let layers: [QuantizationScheme.LayerBits] = [.init(path: "conv1", bits: 8), .init(path: "fc", bits: 3)]
        let perChannel = QuantizationScheme(layers: layers, scaleGranularity: .perChannel)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(perChannel), as: UTF8.self)
        #expect(json.contains("\"scaleGranularity\":\"per-channel\""))
        #expect(try JSONDecoder().decode(QuantizationScheme.self, from: Data(json.utf8)) == perChannel)
        #expect(try QuantizationScheme.decode(fromMethodState: "{\"scheme\": \(json)}").scaleGranularity == .perChannel)

        // Per tensor: exactly the JSON written before the option existed.
        let perTensor = QuantizationScheme(layers: layers)
        #expect(String(decoding: try encoder.encode(perTensor), as: UTF8.self)
                == #"{"activationExcluded":[],"layers":[{"bits":8,"path":"conv1"},{"bits":3,"path":"fc"}]}"#)
        let old = #"{"scheme":{"layers":[{"path":"conv1","bits":8},{"path":"fc","bits":3}],"activationExcluded":[]}}"#
        #expect(try QuantizationScheme.decode(fromMethodState: old) == perTensor)

        // apply(to:) attaches quantizers of the scheme's granularity, and the scheme of those layers records it.
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let all = quantizableLayers(of: model).map { QuantizationScheme.LayerBits(path: $0.path, bits: 4) }
        let attached = try QuantizationScheme(layers: all, scaleGranularity: .perChannel).apply(to: model)
        #expect(attached.allSatisfy { $0.quantizer.granularity == .perChannel })
        #expect(QuantizationScheme(quantizedLayers: attached).scaleGranularity == .perChannel)
    }

    @Test("fingerprint entries: msq.scale / dorefa.scale only when per channel")
    func identities() {
        #expect(ScaleGranularity.perTensor.identity(method: "msq").isEmpty)
        #expect(ScaleGranularity.perChannel.identity(method: "msq") == ["msq.scale": "per-channel"])
        var o = DoReFaOptions(weightBits: 3)
        #expect(o.identity["dorefa.scale"] == nil)
        o.scaleGranularity = .perChannel
        #expect(o.identity == ["dorefa.weight_bits": "3", "dorefa.scaled": "false", "dorefa.scale": "per-channel"])
        #expect(ScaleGranularity(rawValue: "per-channel") == .perChannel && ScaleGranularity(rawValue: "per-tensor") == .perTensor)
    }
}

/// A tiny per-channel MSQ run (ResNet-20 on 8×8 synthetic images, Hessian off, one interval per epoch).
private struct TinyPerChannelMSQRun {
    var setup: TinyTrainingSetup
    var options: MSQOptions
    var granularity: ScaleGranularity = .perChannel

    init(epochs: Int) throws {
        setup = try TinyTrainingSetup(method: "msq", epochs: epochs)
        options = MSQOptions(targetCompression: 10.67)
        options.hessian = false
        options.pruneIntervalEpochs = 1
        refreshIdentity()
    }

    mutating func refreshIdentity() {
        setup.config.methodOptions = options.identity.merging(granularity.identity(method: "msq")) { a, _ in a }
    }

    func make(out: String, granularity: ScaleGranularity? = nil,
              wrap: (MSQTraining) -> TrainingMethod = { $0 }) throws -> (Trainer, MSQTraining) {
        let model = setup.makeModel()
        let layers = try quantizeForMSQ(model, initialBits: 8, scaleGranularity: granularity ?? self.granularity)
        let method = try MSQTraining(layers: layers, options: options, calibration: nil, seed: setup.config.seed)
        return (setup.trainer(model: model, method: wrap(method), out: out, log: { _ in }), method)
    }
}

@Suite("Per-channel training", .serialized)
struct PerChannelTrainingTests {
    @Test("a per-channel MSQ run checkpoints its granularity, resumes bit for bit, and refuses a per-tensor resume")
    func msqCheckpointRoundTrip() throws {
        var run = try TinyPerChannelMSQRun(epochs: 3)
        let (reference, refMethod) = try run.make(out: freshDirectory())
        let summary = try reference.run(resume: false)
        #expect(summary["scale_granularity"] as? String == "per-channel")
        #expect(refMethod.scaleGranularity == .perChannel)

        let dir = freshDirectory()
        let (crashing, _) = try run.make(out: dir, wrap: { CrashAfterEpoch($0, crashEpoch: 2) })
        #expect(throws: CrashAfterEpoch.Crash.self) { try crashing.run(resume: false) }
        let ckpt = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        let scheme = try QuantizationScheme.decode(fromMethodState: ckpt.header.methodState)
        #expect(scheme.scaleGranularity == .perChannel)
        #expect(ckpt.header.runDescription["msq.scale"] == "per-channel")

        let (resumed, resumedMethod) = try run.make(out: dir)
        try resumed.run(resume: true)
        #expect(resumedMethod.layers.allSatisfy { $0.quantizer.granularity == .perChannel })
        #expect(weights(resumed.model) == weights(reference.model))
        #expect(resumedMethod.bitScheme == refMethod.bitScheme)
        #expect(resumedMethod.events == refMethod.events)

        // The fingerprint names the option when a per-tensor run tries to resume it...
        run.granularity = .perTensor
        run.refreshIdentity()
        try expectResumeRefused(try run.make(out: dir).0, naming: "msq.scale")
        // ...and the method state refuses per-tensor quantizers even when the fingerprint matches.
        let (_, perTensorMethod) = try TinyPerChannelMSQRun(epochs: 3).make(out: freshDirectory(), granularity: .perTensor)
        #expect(throws: CheckpointError.self) { try perTensorMethod.restoreState(ckpt.header.methodState) }
        let (_, perChannelMethod) = try TinyPerChannelMSQRun(epochs: 3).make(out: freshDirectory())
        try perChannelMethod.restoreState(ckpt.header.methodState)
    }

    @Test("a per-channel DoReFa run resumes bit for bit; its state and fingerprint refuse a per-tensor run")
    func doReFaCheckpointRoundTrip() throws {
        var setup = try TinyTrainingSetup(method: "dorefa", epochs: 3)
        var options = DoReFaOptions(weightBits: 3)
        options.scaled = true
        options.scaleGranularity = .perChannel
        setup.config.methodOptions = options.identity
        func make(_ out: String, _ options: DoReFaOptions, crash: Bool = false) throws -> (Trainer, DoReFaTraining) {
            let model = setup.makeModel()
            let method = try DoReFaTraining(model: model, options: options)
            let wrapped: TrainingMethod = crash ? CrashAfterEpoch(method, crashEpoch: 2) : method
            return (setup.trainer(model: model, method: wrapped, out: out, log: { _ in }), method)
        }
        let (reference, refMethod) = try make(freshDirectory(), options)
        let summary = try reference.run(resume: false)
        #expect(summary["scale_granularity"] as? String == "per-channel")
        #expect(refMethod.quantizers.allSatisfy { $0.granularity == .perChannel })

        let dir = freshDirectory()
        #expect(throws: CrashAfterEpoch.Crash.self) { try make(dir, options, crash: true).0.run(resume: false) }
        let (resumed, _) = try make(dir, options)
        try resumed.run(resume: true)
        #expect(weights(resumed.model) == weights(reference.model))

        let ckpt = try Checkpoint.read(from: dir + "/" + Trainer.checkpointName)
        var perTensor = options
        perTensor.scaleGranularity = .perTensor
        #expect(throws: CheckpointError.self) { try make(freshDirectory(), perTensor).1.restoreState(ckpt.header.methodState) }
        setup.config.methodOptions = perTensor.identity
        try expectResumeRefused(try make(dir, perTensor).0, naming: "dorefa.scale")
    }
}
