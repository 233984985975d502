import CKernels
import MSQ
import Testing

/// RoundClamp forward through the `_ref` kernel: (Q_n(W), codes) with s = max|W|.
private func refQuantize(_ w: Tensor, bits: Int) -> (wq: Tensor, codes: [Int32], scale: Float) {
    let s = w.withUnsafePointer { msq_absmax_ref($0, w.count) }
    var wq = Tensor(shape: w.shape)
    var codes = [Int32](repeating: 0, count: w.count)
    w.withUnsafePointer { wp in
        wq.withUnsafeMutablePointer { q in
            codes.withUnsafeMutableBufferPointer { c in msq_roundclamp_forward_ref(q, c.baseAddress, wp, w.count, s, Int32(bits)) }
        }
    }
    return (wq, codes, s)
}

/// q = clamp(round(2^b · w~), 0, 2^b − 1) in plain Swift (half to even, float in spec order).
private func swiftCode(_ w: Float, scale s: Float, bits b: Int) -> Int {
    let wt: Float = 0.5 + w / (2 * s)
    let x = (Float(1 << b) * wt).rounded(.toNearestOrEven)
    return min(max(Int(x), 0), (1 << b) - 1)
}

private func tinyModel(seed: UInt64) -> Sequential {
    var rng = RandomSource(seed: seed)
    return Sequential(named: [
        ("fc1", Linear(inFeatures: 8, outFeatures: 16, rng: &rng)),
        ("act", Activation(.relu)),
        ("fc2", Linear(inFeatures: 16, outFeatures: 4, rng: &rng)),
    ])
}

@Suite("Quantization") struct QuantizationTests {
    @Test("Quantized Conv2d forward equals a float Conv2d holding the reference-quantized weight", arguments: [2, 3, 4, 8])
    func quantizedConvForward(bits: Int) {
        var rng = RandomSource(seed: 7)
        let q = Conv2d(inChannels: 3, outChannels: 5, kernelSize: 3, stride: 1, padding: 1, rng: &rng)
        rng = RandomSource(seed: 7)
        let f = Conv2d(inChannels: 3, outChannels: 5, kernelSize: 3, stride: 1, padding: 1, rng: &rng)
        let quantizer = RoundClampQuantizer(bits: bits)
        q.weightTransform = quantizer
        let ref = refQuantize(q.weight.value, bits: bits)
        f.weight.value = ref.wq
        let x = randomTensor([2, 3, 6, 6], rng: &rng)
        let yq = q.forward(x, mode: .train)
        let yf = f.forward(x, mode: .train)
        #expect(yq.shape == yf.shape)
        #expect(yq.scalars == yf.scalars)
        #expect(quantizer.lastScale == ref.scale)
        #expect(q.effectiveWeight.scalars == ref.wq.scalars)

        // codes(of:) gives the deployable form: Q = s · j / 2^(n−1), j in n-bit two's complement.
        let (scales, codes) = quantizer.codes(of: q.weight.value)
        #expect(scales == [ref.scale])
        let s = scales[0]
        #expect(codes == ref.codes)
        let half = Float(1 << (bits - 1))
        #expect(codes.allSatisfy { $0 >= -Int32(half) && $0 < Int32(half) })
        #expect(codes.map { s * Float($0) / half } == ref.wq.scalars)
    }

    @Test("STE: quantized weight gradient equals the float layer's gradient w.r.t. its effective weight")
    func steGradient() {
        var rng = RandomSource(seed: 11)
        let q = Conv2d(inChannels: 4, outChannels: 6, kernelSize: 3, stride: 2, padding: 1, rng: &rng)
        rng = RandomSource(seed: 11)
        let f = Conv2d(inChannels: 4, outChannels: 6, kernelSize: 3, stride: 2, padding: 1, rng: &rng)
        q.weightTransform = RoundClampQuantizer(bits: 3)
        f.weight.value = refQuantize(q.weight.value, bits: 3).wq
        let x = randomTensor([2, 4, 7, 7], rng: &rng)
        let yq = q.forward(x, mode: .train)
        _ = f.forward(x, mode: .train)
        let dy = randomTensor(yq.shape, rng: &rng)
        let dxq = q.backward(dy)
        let dxf = f.backward(dy)
        #expect(dxq.scalars == dxf.scalars)
        #expect(q.weight.grad.scalars == f.weight.grad.scalars)
        #expect(q.bias!.grad.scalars == f.bias!.grad.scalars)

        // Linear too.
        rng = RandomSource(seed: 12)
        let lq = Linear(inFeatures: 10, outFeatures: 5, rng: &rng)
        rng = RandomSource(seed: 12)
        let lf = Linear(inFeatures: 10, outFeatures: 5, rng: &rng)
        lq.weightTransform = RoundClampQuantizer(bits: 4)
        lf.weight.value = refQuantize(lq.weight.value, bits: 4).wq
        let xl = randomTensor([3, 10], rng: &rng)
        let ylq = lq.forward(xl, mode: .train)
        #expect(ylq.scalars == lf.forward(xl, mode: .train).scalars)
        let dyl = randomTensor(ylq.shape, rng: &rng)
        _ = lq.backward(dyl); _ = lf.backward(dyl)
        #expect(lq.weight.grad.scalars == lf.weight.grad.scalars)
    }

    @Test("zeroGradientOutsideClamp masks exactly the clamped elements")
    func steMask() {
        let w = Tensor(shape: [4], scalars: [1.0, -1.0, 0.3, 0.97])   // s = 1; +s is clamped at the top
        let quantizer = RoundClampQuantizer(bits: 3, zeroGradientOutsideClamp: true)
        _ = quantizer.forward(w)
        let g = Tensor(shape: [4], scalars: [1, 2, 3, 4])
        let masked = quantizer.backward(gradEffective: g, weight: w).scalars
        // 2^3 · w~ = 8, 0, 5.2, 7.88 → round 8 (clamped), 0, 5, 8 (clamped).
        #expect(masked == [0, 2, 3, 0])
        quantizer.zeroGradientOutsideClamp = false
        #expect(quantizer.backward(gradEffective: g, weight: w).scalars == [1, 2, 3, 4])
    }

    @Test("Regulariser gradient and value match msq_lsb_forward_backward_ref; rates match a Swift count")
    func regulariserMatchesReference() throws {
        let model = tinyModel(seed: 3)
        let layers = try quantizeForMSQ(model, initialBits: 5, overrides: ["fc2": 3])
        #expect(layers.map(\.path) == ["fc1", "fc2"])
        let lambda = 2.5
        let reg = LSBRegularizer(layers: layers, lambda: lambda)
        reg.setK(["fc1": 2])
        #expect(reg.k == [2, 1])
        #expect(reg.totalCount == 8 * 16 + 16 * 4)
        model.zeroGradients()
        // Pre-existing gradient must be accumulated into, not overwritten.
        layers[1].parameter.grad = Tensor(shape: layers[1].parameter.value.shape, repeating: 0.25)
        let report = reg.apply()

        let coeff = Float(lambda / Double(reg.totalCount))
        var refTotal = 0.0
        for (i, layer) in layers.enumerated() {
            let w = layer.parameter.value
            let n = layer.bits, k = reg.k[i]
            let s = msq_absmax_ref(w.scalars, w.count)
            var expected = Tensor(shape: w.shape, repeating: i == 1 ? 0.25 : 0)
            var absSum = 0.0
            var nonzero: Int64 = 0
            w.withUnsafePointer { wp in
                expected.withUnsafeMutablePointer { g in
                    msq_lsb_forward_backward_ref(nil, &absSum, &nonzero, g, wp, w.count, s, Int32(n), Int32(k), coeff)
                }
            }
            #expect(layer.parameter.grad.scalars == expected.scalars)
            refTotal += absSum
            #expect(abs(report.layers[i].absSum - absSum) <= 1e-9 * max(1, absSum))

            // Swift count of q_n − 2^k·q_{n−k} ≠ 0.
            var count = 0
            for v in w.scalars where swiftCode(v, scale: s, bits: n) - (1 << k) * swiftCode(v, scale: s, bits: n - k) != 0 {
                count += 1
            }
            #expect(Int64(count) == nonzero)
            #expect(report.layers[i].nonzeroRate == Double(count) / Double(w.count))
            #expect(report.layers[i].path == layer.path)
            // Sanity: the gradient really is ±coeff · 2^n / (2s) or 0.
            let g = coeff * (Float(1 << n) / (2 * s))
            #expect(zip(layer.parameter.grad.scalars, expected.scalars).allSatisfy { _, e in
                let d = e - (i == 1 ? 0.25 : 0)
                return d == 0 || abs(abs(d) - g) <= 1e-6 * g
            })
        }
        #expect(abs(report.regularizer - refTotal / Double(reg.totalCount)) <= 1e-12)
        #expect(report.regularizer > 0)

        // measure() gives the same statistics and leaves gradients alone.
        let before = layers.map(\.parameter.grad.scalars)
        let measured = reg.measure()
        #expect(layers.map(\.parameter.grad.scalars) == before)
        #expect(measured.regularizer == report.regularizer)
        #expect(measured.layers.map(\.nonzeroRate) == report.layers.map(\.nonzeroRate))
    }

    @Test("k(forPath:) names layers; k_eff never exceeds n − n_min")
    func effectiveK() throws {
        let model = tinyModel(seed: 4)
        let layers = try quantizeForMSQ(model, initialBits: 4)
        let reg = LSBRegularizer(layers: layers, lambda: 1)
        reg.k = [2, 2]
        #expect(reg.effectiveK(0) == 2 && reg.effectiveK(1) == 2)
        layers[1].quantizer.bits = 3
        #expect(reg.effectiveK(1) == 1)
        #expect(reg.k(forPath: "fc2") == 2)
        #expect(reg.k(forPath: "nope") == nil)
        _ = reg.measure()
    }

    @Test("quantizeForMSQ on ResNet-20: 20 layers, overrides, compression")
    func resnet20() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let layers = try quantizeForMSQ(model, initialBits: 4, overrides: ["conv1": 8])
        #expect(layers.count == 20)
        #expect(layers.filter { $0.path != "fc" }.count == 19)
        #expect(layers.first?.path == "conv1")
        #expect(layers.last?.path == "fc")
        #expect(layers[0].bits == 8)
        #expect(layers.dropFirst().allSatisfy { $0.bits == 4 })
        // Every conv/linear carries its quantizer, and counts are the weights' sizes.
        var seen = 0
        model.visitModules(prefix: "") { path, m in
            if let c = m as? Conv2d { seen += 1; #expect(c.weightTransform != nil, "\(path)") }
            if let l = m as? Linear { seen += 1; #expect(l.weightTransform != nil, "\(path)") }
        }
        #expect(seen == 20)
        #expect(layers[0].count == 16 * 1 * 3 * 3)
        #expect(layers.last!.count == 64 * 10)
        let total = Double(layers.reduce(0) { $0 + $1.count })
        let n1 = Double(layers[0].count)
        let expected = 32 * total / (8 * n1 + 4 * (total - n1))
        #expect(abs(compressionRatio(layers) - expected) < 1e-12)
        #expect(abs(compressionRatioPaper(layers) - 32 * total / (7 * n1 + 3 * (total - n1))) < 1e-12)
        #expect(abs(averageWeightBits(layers) - (8 * n1 + 4 * (total - n1)) / total) < 1e-12)
        #expect(compressionRatio(layers) < 8 && compressionRatio(layers) > 7.9)

        // All at 3 bits: 32/3 = 10.67 with the sign, 16 counting magnitude bits.
        for l in layers { l.quantizer.bits = 3 }
        #expect(abs(compressionRatio(layers) - 32.0 / 3) < 1e-12)
        #expect(abs(compressionRatioPaper(layers) - 16) < 1e-12)
        #expect(averageWeightBits(layers) == 3)

        // A quantized ResNet-20 still runs forward and backward.
        var rng = RandomSource(seed: 1)
        let x = randomTensor([2, 1, 8, 8], rng: &rng)
        let y = model.forward(x, mode: .train)
        #expect(y.shape == [2, 10])
        _ = model.backward(Tensor(shape: y.shape, repeating: 0.1))
        #expect(layers[0].parameter.grad.squaredNorm() > 0)
    }

    @Test("quantizeForMSQ rejects unknown paths and bad bit widths; exclusions stay float")
    func badConfigurations() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        #expect {
            try quantizeForMSQ(model, overrides: ["conv9": 8])
        } throws: { error in
            guard case let QuantizationError.unknownLayer(path, valid)? = error as? QuantizationError else { return false }
            return path == "conv9" && valid.count == 20 && valid.contains("layer3.2.conv2")
        }
        #expect(throws: QuantizationError.self) { try quantizeForMSQ(model, excluded: ["layer1.0.bn1"]) }
        #expect(throws: QuantizationError.invalidBits(bits: 1, path: nil)) { try quantizeForMSQ(model, initialBits: 1) }
        #expect(throws: QuantizationError.invalidBits(bits: 17, path: "fc")) { try quantizeForMSQ(model, overrides: ["fc": 17]) }
        // Nothing was attached by the failed calls.
        var attached = 0
        model.visitModules(prefix: "") { _, m in
            if let c = m as? Conv2d, c.weightTransform != nil { attached += 1 }
            if let l = m as? Linear, l.weightTransform != nil { attached += 1 }
        }
        #expect(attached == 0)
        #expect(String(describing: QuantizationError.unknownLayer(path: "x", valid: ["a", "b"])).contains("a, b"))

        let layers = try quantizeForMSQ(model, excluded: ["conv1", "fc"])
        #expect(layers.count == 18)
        #expect(layers.allSatisfy { $0.bits == 8 })
        #expect(!layers.contains { $0.path == "conv1" || $0.path == "fc" })
    }

    @Test("SGD steps with the regulariser lower R")
    func trainingLowersR() throws {
        let model = tinyModel(seed: 9)
        let layers = try quantizeForMSQ(model, initialBits: 4)
        let reg = LSBRegularizer(layers: layers, lambda: 2)
        let opt = SGD(model: model, momentum: 0, weightDecay: 0, nesterov: false)
        let loss = SoftmaxCrossEntropy()
        var rng = RandomSource(seed: 10)
        let x = randomTensor([16, 8], rng: &rng)
        let labels = (0..<16).map { _ in Int32(rng.nextInt(below: 4)) }
        let before = reg.measure()
        for _ in 0..<20 {
            model.zeroGradients()
            let logits = model.forward(x, mode: .train)
            _ = try loss.forward(logits: logits, labels: labels)
            _ = model.backward(loss.backward())
            reg.apply()
            opt.step(learningRate: 0.1)
        }
        let after = reg.measure()
        #expect(after.regularizer < before.regularizer)
        let meanRate = { (r: LSBReport) in r.layers.compactMap(\.nonzeroRate).reduce(0, +) / Double(r.layers.count) }
        #expect(meanRate(after) < meanRate(before))
    }
}
