import Foundation
import MSQ
import Testing

// Tolerances (named so a reader can see what each check allows).
/// dα from the kernel (double sum, then one float add) vs a Double sum in another order, relative.
private let alphaSumTolerance = 1e-6
/// Central differences of the Float32 layers (weights, bias, the quantized input) vs the analytic gradient.
private let layerGradientTolerance = 2e-3
/// Absolute floor under `layerGradientTolerance` (Float rounding of the loss divided by 2h).
private let layerGradientFloor = 1e-4
/// Central difference in α vs PACT's dα plus the rounding's own derivative (see `alphaGradientMatchesFiniteDifferences`).
private let alphaFiniteDifferenceTolerance = 1e-3
/// Central-difference step for weights, bias and the quantized input.
private let layerStep: Float = 1e-2
/// Central-difference step in α: small enough that no input in the linear region crosses a rounding
/// boundary (inputs keep ≥ 0.15 code units from every half-integer; α ± h moves them ≤ 0.04).
private let alphaStep: Float = 1e-2

/// PACT in plain Swift, transcribed from MSQ-SPEC §5 in the kernel header's operation order:
/// c = min(max(x, 0), α); y = ((round_half_even((c · L) / α)) · α) / L with L = 2^A − 1.
/// `Float.maximum` / `Float.minimum` treat a quiet NaN as missing data, like C's fmaxf / fminf.
private func pactReference(_ x: Float, alpha: Float, bits: Int) -> Float {
    let levels = Float(1 << bits) - 1
    let c = Float.minimum(Float.maximum(x, 0), alpha)
    return (((c * levels) / alpha).rounded(.toNearestOrEven) * alpha) / levels
}

/// The two layer types that take an input quantizer, for tests that treat them alike.
private protocol InputQuantizedLayer: Module {
    var inputQuantizer: PACTQuantizer? { get set }
    var weight: Parameter { get }
    var bias: Parameter? { get }
}
extension Conv2d: InputQuantizedLayer {}
extension Linear: InputQuantizedLayer {}

/// A small layer, its twin with identical parameters and no quantizer, and an input shape.
private func makeLayerPair(conv: Bool, seed: UInt64) -> (quantized: any InputQuantizedLayer,
                                                         float: any InputQuantizedLayer, inputShape: [Int]) {
    func build() -> any InputQuantizedLayer {
        var rng = RandomSource(seed: seed)
        return conv
            ? Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, stride: 2, padding: 1, rng: &rng)
            : Linear(inFeatures: 12, outFeatures: 5, rng: &rng)
    }
    return (build(), build(), conv ? [2, 3, 5, 5] : [4, 12])
}

/// Inputs for a quantizer with clip `alpha` and `bits` bits: a third negative, a third clipped
/// (≥ α + 0.2), a third inside (0, α) at (k + u)·α/L with k in 1…L−1 and |u| ≤ 0.35, so every value
/// is at least 0.15 code units from a rounding boundary and 0.2 from 0 and α.
private func regionInputs(_ shape: [Int], alpha: Float, bits: Int, rng: inout RandomSource) -> Tensor {
    let levels = (1 << bits) - 1
    var t = Tensor(shape: shape)
    for i in 0..<t.count {
        switch rng.nextInt(below: 3) {
        case 0: t[flat: i] = -0.2 - rng.nextUnitFloat() * 2
        case 1: t[flat: i] = alpha + 0.2 + rng.nextUnitFloat() * 2
        default:
            let k = 1 + rng.nextInt(below: levels - 1)
            let u = (rng.nextUnitFloat() * 2 - 1) * 0.35
            t[flat: i] = (Float(k) + u) * alpha / Float(levels)
        }
    }
    return t
}

@Suite("PACT activation quantization") struct ActivationQuantizerTests {
    @Test("Forward equals a Swift transcription of the PACT formula bit for bit",
          arguments: [2, 3, 4, 8, 16], [6, 1, 0.37, 10.5] as [Float])
    func forwardMatchesFormula(bits: Int, alpha: Float) throws {
        let q = try PACTQuantizer(bits: bits, initialClip: alpha)
        let levels = Float(1 << bits) - 1
        var rng = RandomSource(seed: UInt64(bits) &* 31 &+ UInt64(alpha.bitPattern))
        // Random values over (−2, α + 2), then the interesting points: grid levels, half-way points
        // (round-half-even ties), α and its neighbours, 0, infinities and NaN.
        var values: [Float] = (0..<500).map { _ in -2 + rng.nextUnitFloat() * (alpha + 4) }
        for k in 0...min(Int(levels), 40) {
            values.append(Float(k) * alpha / levels)
            values.append((Float(k) + 0.5) * alpha / levels)
        }
        values += [0, alpha, alpha.nextUp, alpha.nextDown, 1e30, -1e30, .infinity, -.infinity, .nan]
        // More than the kernel's parallel threshold (16384), so the threaded path is covered too.
        while values.count < 20_000 { values.append(-1 + rng.nextUnitFloat() * (alpha + 2)) }
        let x = Tensor(shape: [4, values.count / 4], scalars: Array(values.prefix(values.count / 4 * 4)))
        let y = q.forward(x)
        #expect(y.shape == x.shape)
        let expected = x.scalars.map { pactReference($0, alpha: alpha, bits: bits).bitPattern }
        #expect(y.scalars.map(\.bitPattern) == expected)
    }

    @Test("Forward on hand values: 2 bits, α = 3 gives the grid {0, 1, 2, 3}, ties to even")
    func forwardHandValues() throws {
        let q = try PACTQuantizer(bits: 2, initialClip: 3)
        let x = Tensor(shape: [8], scalars: [-1, 0.4, 0.5, 0.6, 1.5, 2.5, 3, 7])
        #expect(q.forward(x).scalars == [0, 0, 0, 1, 2, 2, 3, 3])
    }

    @Test("Backward on hand values: dx masked to 0 ≤ x < α, dα = Σ dy over x ≥ α, accumulated")
    func backwardHandValues() throws {
        let q = try PACTQuantizer(bits: 2, initialClip: 3)
        let x = Tensor(shape: [7], scalars: [-1, 0, 0.5, 2.9, 3, 3.5, 10])
        let dy = Tensor(shape: [7], scalars: [1, 2, 3, 4, 5, 6, 7])
        q.alpha.grad = Tensor(shape: [1], scalars: [0.5])
        _ = q.forward(x)
        #expect(q.backward(dy).scalars == [0, 2, 3, 4, 0, 0, 0])
        #expect(q.alpha.grad.scalars == [0.5 + 18])
        _ = q.forward(x)
        _ = q.backward(dy)
        #expect(q.alpha.grad.scalars == [0.5 + 36])
    }

    @Test("dα is Σ dy over x ≥ α on a large random tensor; inputs inside (0, α) contribute nothing")
    func alphaGradientDefinition() throws {
        let alpha: Float = 2
        let q = try PACTQuantizer(bits: 4, initialClip: alpha)
        var rng = RandomSource(seed: 5)
        let x = regionInputs([20_000], alpha: alpha, bits: 4, rng: &rng)
        let dy = randomTensor([20_000], rng: &rng)
        _ = q.forward(x)
        let dx = q.backward(dy)
        var expected = 0.0
        for i in 0..<x.count where x[flat: i] >= alpha { expected += Double(dy[flat: i]) }
        let got = Double(q.alpha.grad[flat: 0])
        #expect(abs(got - expected) <= alphaSumTolerance * abs(expected))
        let wrong = (0..<x.count).filter { i in
            let inside = x[flat: i] >= 0 && x[flat: i] < alpha
            return dx[flat: i] != (inside ? dy[flat: i] : 0)
        }
        #expect(wrong.isEmpty, "dx differs from the masked dy at \(wrong.prefix(8))")

        // Only linear-region inputs: PACT's dα is exactly 0 (the rounding's derivative k/L is dropped).
        let inner = Tensor(shape: [3], scalars: [0.3, 1.0, 1.9])
        let q2 = try PACTQuantizer(bits: 4, initialClip: alpha)
        _ = q2.forward(inner)
        _ = q2.backward(Tensor(shape: [3], scalars: [1, -2, 3]))
        #expect(q2.alpha.grad.scalars == [0])
    }

    @Test("Layer with an input quantizer equals the float layer applied to the quantized input",
          arguments: [true, false])
    func layerMatchesFloatLayerOnQuantizedInput(conv: Bool) throws {
        let (layer, twin, shape) = makeLayerPair(conv: conv, seed: 21)
        let alpha: Float = 1.5
        let q = try PACTQuantizer(bits: 3, initialClip: alpha)
        layer.inputQuantizer = q
        var rng = RandomSource(seed: 22)
        let x = regionInputs(shape, alpha: alpha, bits: 3, rng: &rng)
        let xq = Tensor(shape: shape, scalars: x.scalars.map { pactReference($0, alpha: alpha, bits: 3) })
        for mode in [ForwardMode.train, .eval] {
            let y = layer.forward(x, mode: mode)
            let yf = twin.forward(xq, mode: mode)
            #expect(y.scalars == yf.scalars)
            layer.zeroGradients()
            twin.zeroGradients()
            let dy = randomTensor(y.shape, rng: &rng)
            let dx = layer.backward(dy)
            let dxq = twin.backward(dy)
            // The weight gradient is taken w.r.t. the quantized input: same kernel, same data.
            #expect(layer.weight.grad.scalars == twin.weight.grad.scalars)
            #expect(layer.bias?.grad.scalars == twin.bias?.grad.scalars)
            var expectedAlpha = 0.0
            for i in 0..<x.count {
                let xi = x[flat: i]
                #expect(dx[flat: i] == (xi >= 0 && xi < alpha ? dxq[flat: i] : 0))
                if xi >= alpha { expectedAlpha += Double(dxq[flat: i]) }
            }
            #expect(abs(Double(q.alpha.grad[flat: 0]) - expectedAlpha) <= alphaSumTolerance * abs(expectedAlpha))
        }
    }

    @Test("Central differences: weight and bias with the quantizer attached, dL/dx = mask · dL/dx_q",
          arguments: [true, false])
    func layerGradientCheck(conv: Bool) throws {
        let (layer, _, shape) = makeLayerPair(conv: conv, seed: 31)
        let alpha: Float = 2
        let q = try PACTQuantizer(bits: 4, initialClip: alpha)
        layer.inputQuantizer = q
        var rng = RandomSource(seed: 32)
        let x = regionInputs(shape, alpha: alpha, bits: 4, rng: &rng)
        let y = layer.forward(x, mode: .train)
        let r = randomTensor(y.shape, rng: &rng)
        layer.zeroGradients()
        let dx = layer.backward(r)
        let settings = GradCheckSettings(step: layerStep, tolerance: layerGradientTolerance,
                                         floorFraction: 1e-3, absoluteFloor: layerGradientFloor)
        // Weights and bias: x_q does not move when they do, so L is smooth (linear) in them and the
        // central difference is the true derivative, quantizer attached.
        let evaluate = { objective(layer.forward(x, mode: .train), r) }
        var checks: [TensorCheck] = []
        for p in [layer.weight] + (layer.bias.map { [$0] } ?? []) {
            let analytic = p.grad
            checks.append(checkTensor(name: "param", analytic: analytic, settings: settings, rng: &rng,
                                      value: { p.value[flat: $0] }, set: { p.value[flat: $0] = $1 },
                                      evaluate: evaluate))
        }
        // Input: the quantized layer is piecewise constant in x, so differences in x measure nothing;
        // the straight-through estimate is dL/dx = 1[0 ≤ x < α] · dL/dx_q. Check dL/dx_q by central
        // differences of the same layer with the quantizer detached, evaluated at x_q, on the inside
        // elements, and that every other element of dx is exactly 0.
        var xq = q.forward(x)
        layer.inputQuantizer = nil
        let insideIndex = (0..<x.count).filter { x[flat: $0] >= 0 && x[flat: $0] < alpha }
        let outside = Set(0..<x.count).subtracting(insideIndex)
        #expect(!insideIndex.isEmpty && !outside.isEmpty)
        #expect(outside.allSatisfy { dx[flat: $0] == 0 })
        let insideAnalytic = Tensor(shape: [insideIndex.count], scalars: insideIndex.map { dx[flat: $0] })
        checks.append(checkTensor(name: "input (inside)", analytic: insideAnalytic, settings: settings, rng: &rng,
                                  value: { xq[flat: insideIndex[$0]] }, set: { xq[flat: insideIndex[$0]] = $1 },
                                  evaluate: { objective(layer.forward(xq, mode: .train), r) }))
        layer.inputQuantizer = q
        expectPassed(checks, label: conv ? "Conv2d+PACT" : "Linear+PACT", settings: settings)
    }

    @Test("dα vs central differences in α: PACT's estimate plus the rounding's derivative Σ g·k/L",
          arguments: [true, false])
    func alphaGradientMatchesFiniteDifferences(conv: Bool) throws {
        // With the rounding locally constant (inputs ≥ 0.15 code units from a boundary), the true
        //   dy_q/dα = 1 for x ≥ α,   k/L for 0 < x < α (y_q = k·α/L, k = round(x·L/α)),   0 for x < 0,
        // while PACT keeps only the first term. So the central difference in α must equal PACT's dα
        // plus Σ_inside g_i · k_i / L, with g = dL/dx_q; a wrong mask or sign in dα fails this.
        let (layer, twin, shape) = makeLayerPair(conv: conv, seed: 41)
        let alpha: Float = 2
        let bits = 3
        let levels = Float((1 << bits) - 1)
        let q = try PACTQuantizer(bits: bits, initialClip: alpha)
        layer.inputQuantizer = q
        var rng = RandomSource(seed: 42)
        let x = regionInputs(shape, alpha: alpha, bits: bits, rng: &rng)
        let y = layer.forward(x, mode: .eval)
        let r = randomTensor(y.shape, rng: &rng)
        layer.zeroGradients()
        _ = layer.backward(r)
        let pactGrad = Double(q.alpha.grad[flat: 0])
        // g = dL/dx_q from the float twin at x_q.
        let xq = q.forward(x)
        _ = twin.forward(xq, mode: .eval)
        let g = twin.backward(r)
        var roundingTerm = 0.0
        var clippedTerm = 0.0
        for i in 0..<x.count {
            let xi = x[flat: i]
            if xi >= alpha {
                clippedTerm += Double(g[flat: i])
            } else if xi > 0 {
                let k = ((xi * levels) / alpha).rounded(.toNearestOrEven)
                roundingTerm += Double(g[flat: i]) * Double(k / levels)
            }
        }
        #expect(abs(pactGrad - clippedTerm) <= alphaSumTolerance * abs(clippedTerm))
        #expect(abs(roundingTerm) > 0.1 * abs(pactGrad), "the check needs a rounding term that matters")

        let a0 = q.alpha.value[flat: 0]
        q.alpha.value[flat: 0] = a0 + alphaStep
        let lp = objective(layer.forward(x, mode: .eval), r)
        q.alpha.value[flat: 0] = a0 - alphaStep
        let lm = objective(layer.forward(x, mode: .eval), r)
        q.alpha.value[flat: 0] = a0
        let numeric = (lp - lm) / (Double(a0 + alphaStep) - Double(a0 - alphaStep))
        let expected = pactGrad + roundingTerm
        #expect(abs(numeric - expected) <= alphaFiniteDifferenceTolerance * abs(expected),
                "numeric \(numeric), PACT \(pactGrad) + rounding \(roundingTerm)")
    }

    @Test("Removing the quantizer restores the float layer: outputs, gradients and parameter list")
    func nilQuantizerIsFloat() throws {
        for conv in [true, false] {
            let (layer, twin, shape) = makeLayerPair(conv: conv, seed: 51)
            let names = twin.namedParameters().map(\.name)
            layer.inputQuantizer = try PACTQuantizer(bits: 2, initialClip: 0.5)
            #expect(layer.namedParameters().map(\.name) == names + ["input_alpha"])
            var rng = RandomSource(seed: 52)
            let x = randomTensor(shape, rng: &rng)
            #expect(layer.forward(x, mode: .train).scalars != twin.forward(x, mode: .train).scalars)
            layer.inputQuantizer = nil
            #expect(layer.namedParameters().map(\.name) == names)
            let y = layer.forward(x, mode: .train)
            #expect(y.scalars == twin.forward(x, mode: .train).scalars)
            let dy = randomTensor(y.shape, rng: &rng)
            #expect(layer.backward(dy).scalars == twin.backward(dy).scalars)
        }
    }

    @Test("α is a trainable, decaying [1] parameter initialised to the requested clip")
    func alphaParameter() throws {
        let q = try PACTQuantizer(bits: 4)
        #expect(q.alpha.value.shape == [1] && q.alpha.value.scalars == [6])
        #expect(q.alpha.trainable && q.alpha.decays)
        #expect(q.alpha.grad.scalars == [0])
        #expect(try PACTQuantizer(bits: 8, initialClip: 2.5).alpha.value.scalars == [2.5])
    }

    @Test("A collapsed α is floored at minimumClip instead of dividing by zero")
    func collapsedAlphaIsFloored() throws {
        let q = try PACTQuantizer(bits: 4, initialClip: 1)
        q.alpha.value[flat: 0] = -0.5
        #expect(q.clip == PACTQuantizer.minimumClip)
        let y = q.forward(Tensor(shape: [3], scalars: [-1, 0, 2]))
        #expect(y.scalars.allSatisfy { $0.isFinite })
        #expect(y.scalars == [-1, 0, 2].map { pactReference($0, alpha: PACTQuantizer.minimumClip, bits: 4) })
    }

    @Test("ResNet-20: 19 input quantizers (conv1 excluded), listed as input_alpha, forward/backward run")
    func resnet20() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let floatNames = model.namedParameters().map(\.name)
        let excluded = defaultActivationExclusions(model)
        #expect(excluded == ["conv1"])
        let attached = try quantizeActivations(model, bits: 4, excluded: excluded, initialClip: 0.5)
        #expect(attached.count == 19)
        #expect(!attached.contains { $0.path == "conv1" })
        #expect(attached.allSatisfy { $0.quantizer.bits == 4 })
        let alphas = model.namedParameters().filter { $0.name.hasSuffix(".input_alpha") }
        #expect(alphas.count == 19)
        #expect(alphas.map(\.name) == attached.map { $0.path + ".input_alpha" })
        #expect(alphas.contains { $0.name == "layer1.0.conv1.input_alpha" })
        #expect(alphas.contains { $0.name == "fc.input_alpha" })
        #expect(zip(alphas, attached).allSatisfy { pair in pair.0.parameter === pair.1.quantizer.alpha })
        // The float parameters keep their names and order; the alphas are interleaved after each layer's.
        #expect(model.namedParameters().map(\.name).filter { !$0.hasSuffix(".input_alpha") } == floatNames)
        let sgd = SGD(model: model, momentum: 0.9, weightDecay: 5e-4, nesterov: false)
        #expect(sgd.parameters.filter { $0.name.hasSuffix(".input_alpha") }.count == 19)

        var rng = RandomSource(seed: 3)
        let images = Tensor.randomNormal([2, 1, 8, 8], std: 1, using: &rng)
        let labels: [Int32] = [3, 7]
        model.zeroGradients()
        let logits = model.forward(images, mode: .train)
        #expect(logits.shape == [2, 10])
        let loss = SoftmaxCrossEntropy()
        let value = try loss.forward(logits: logits, labels: labels)
        #expect(value.isFinite)
        let dx = model.backward(loss.backward())
        #expect(dx.shape == images.shape)
        for (name, p) in model.namedParameters() where p.trainable {
            #expect(p.grad.scalars.allSatisfy { $0.isFinite }, "\(name)")
        }
        // α = 0.5 clips many post-ReLU activations, so some dα must be non-zero.
        #expect(alphas.contains { $0.parameter.grad[flat: 0] != 0 })
        sgd.step(learningRate: 0.01)
        #expect(model.forward(images, mode: .eval).scalars.allSatisfy { $0.isFinite })
    }

    @Test("Refused requests throw and leave the model unchanged")
    func errors() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let names = model.namedParameters().map(\.name)
        let valid = quantizableLayers(of: model).map(\.path)
        for bits in [0, 1, 17] {
            #expect(throws: QuantizationError.invalidBits(bits: bits, path: nil)) {
                try quantizeActivations(model, bits: bits, excluded: [])
            }
            #expect(throws: QuantizationError.invalidBits(bits: bits, path: nil)) { try PACTQuantizer(bits: bits) }
        }
        for path in ["nope", "bn1", "layer1.0", ""] {
            #expect(throws: QuantizationError.unknownLayer(path: path, valid: valid)) {
                try quantizeActivations(model, bits: 4, excluded: ["conv1", path])
            }
        }
        for clip: Float in [0, -1, .infinity] {
            #expect(throws: ActivationQuantizationError.invalidClip(clip)) {
                try quantizeActivations(model, bits: 4, excluded: [], initialClip: clip)
            }
        }
        #expect(throws: ActivationQuantizationError.self) { try PACTQuantizer(bits: 4, initialClip: .nan) }
        #expect(model.namedParameters().map(\.name) == names)
        for (_, m) in quantizableLayers(of: model) {
            #expect((m as? Conv2d)?.inputQuantizer == nil && (m as? Linear)?.inputQuantizer == nil)
        }
        #expect(defaultActivationExclusions(Sequential([Activation(.relu)])).isEmpty)
    }

    @Test("A scheme with activation bits round-trips through JSON and apply() attaches PACT to all but the excluded")
    func schemeWithActivationBits() throws {
        let source = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let paths = quantizableLayers(of: source).map(\.path)
        let scheme = QuantizationScheme(layers: paths.map { .init(path: $0, bits: $0 == "conv1" ? 8 : 4) },
                                        activationBits: 4, activationExcluded: ["conv1"])
        let json = try JSONEncoder().encode(["scheme": scheme])
        let decoded = try QuantizationScheme.decode(fromMethodState: String(decoding: json, as: UTF8.self))
        #expect(decoded == scheme)
        #expect(decoded.activationBits == 4 && decoded.activationExcluded == ["conv1"])

        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let layers = try decoded.apply(to: model)
        #expect(layers.map(\.path) == paths)
        #expect(layers.map(\.bits) == scheme.layers.map(\.bits))
        for (path, m) in quantizableLayers(of: model) {
            let q = (m as? Conv2d)?.inputQuantizer ?? (m as? Linear)?.inputQuantizer
            if path == "conv1" {
                #expect(q == nil)
            } else {
                #expect(q?.bits == 4, "\(path)")
            }
        }
        #expect(model.namedParameters().filter { $0.name.hasSuffix(".input_alpha") }.count == 19)

        // Without activation bits nothing but the weight quantizers is attached.
        let plain = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        _ = try QuantizationScheme(layers: scheme.layers).apply(to: plain)
        #expect(!plain.namedParameters().contains { $0.name.hasSuffix(".input_alpha") })

        // A bad activation request is refused before any weight quantizer is attached.
        for bad in [QuantizationScheme(layers: scheme.layers, activationBits: 4, activationExcluded: ["nope"]),
                    QuantizationScheme(layers: scheme.layers, activationBits: 1, activationExcluded: ["conv1"])] {
            let fresh = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
            #expect(throws: QuantizationError.self) { try bad.apply(to: fresh) }
            for (_, m) in quantizableLayers(of: fresh) {
                #expect((m as? Conv2d)?.weightTransform == nil && (m as? Linear)?.weightTransform == nil)
                #expect((m as? Conv2d)?.inputQuantizer == nil && (m as? Linear)?.inputQuantizer == nil)
            }
        }
    }

    @Test("bypassed quantizers are the identity in forward and backward (Hessian traces use them so)")
    func bypass() throws {
        var rng = RandomSource(seed: 31)
        let x = Tensor.randomNormal([3, 17], std: 3, using: &rng)
        let g = Tensor.randomNormal([3, 17], std: 1, using: &rng)
        let pact = try PACTQuantizer(bits: 3, initialClip: 2)
        pact.isBypassed = true
        #expect(pact.forward(x).scalars == x.scalars)
        #expect(pact.backward(g).scalars == g.scalars)
        #expect(pact.alpha.grad.scalars == [0])
        pact.isBypassed = false
        #expect(pact.forward(x).scalars != x.scalars)
        let rc = RoundClampQuantizer(bits: 3)
        rc.isBypassed = true
        #expect(rc.forward(x).scalars == x.scalars)
        #expect(rc.backward(gradEffective: g, weight: x).scalars == g.scalars)
    }

    @Test("a scheme with activation bits quantizes the inputs of its quantized layers only")
    func schemeSkipsFloatLayers() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let paths = quantizableLayers(of: model).map(\.path)
        let scheme = QuantizationScheme(layers: paths.dropLast().map { .init(path: $0, bits: 4) },
                                        activationBits: 4, activationExcluded: [paths[0]])
        _ = try scheme.apply(to: model)
        let alphas = model.namedParameters().filter { $0.name.hasSuffix("input_alpha") }.map(\.name)
        #expect(alphas.count == paths.count - 2)
        #expect(!alphas.contains("fc.input_alpha"))
    }
}
