import Foundation
import MSQ
import Testing

// Tolerances of the DoReFa tests.
/// Relative tolerance of the STE gradient against central differences of the rounding-free
/// surrogate tanh(W)/M (smooth, so only Float noise and the h² term remain).
let doReFaGradTolerance = 2e-3
/// Central-difference step on W.
let doReFaGradStep: Float = 1e-3

/// The Swift transcription of DoReFa's k-bit weights: t = tanh W, M = max|t| (over the elements),
/// w_t = t/(2M) + 1/2, q = round(L w_t) half to even, w_q = 2q/L − 1, optionally times max|W|.
private func refDoReFa(_ w: [Float], bits k: Int, scaled: Bool = false) -> (wq: [Float], q: [Int32], m: Float) {
    let t = w.map { tanhf($0) }
    let m = t.map(abs).max() ?? 0
    let l = Float((1 << k) - 1)
    guard m > 0 else { return (w.map { _ in 0 }, w.map { _ in 0 }, 0) }
    let s: Float = scaled ? w.map(abs).max()! : 1
    let q = t.map { (l * ($0 / (2 * m) + 0.5)).rounded(.toNearestOrEven) }
    return (q.map { (2 * $0 / l - 1) * s }, q.map { Int32($0) }, m)
}

@Suite("DoReFa") struct DoReFaTests {
    @Test("forward and codes equal the formula's transcription; the levels are the 2^k odd multiples of 1/L",
          arguments: [2, 3, 4, 8])
    func matchesReference(bits: Int) {
        var rng = RandomSource(seed: 31 + UInt64(bits))
        let w = randomTensor([6, 3, 3, 3], rng: &rng, scale: 0.6)
        let q = DoReFaQuantizer(bits: bits)
        let ref = refDoReFa(w.scalars, bits: bits)
        #expect(DoReFaQuantizer.tanhScale(of: w) == ref.m)
        #expect(q.forward(w).scalars == ref.wq)
        #expect(q.codes(of: w) == ref.q)
        let l = (1 << bits) - 1
        #expect(ref.q.allSatisfy { $0 >= 0 && $0 <= Int32(l) })
        // Both extreme levels are used (the max |tanh| maps to 0 or L exactly) and no level is zero.
        #expect(ref.q.contains(0) || ref.q.contains(Int32(l)))
        #expect(ref.wq.allSatisfy { $0 != 0 && abs($0) <= 1 })
        // Scaled variant.
        let scaled = DoReFaQuantizer(bits: bits, scaled: true)
        #expect(scaled.forward(w).scalars == refDoReFa(w.scalars, bits: bits, scaled: true).wq)
    }

    @Test("an all-zero weight quantizes to zeros and passes the gradient straight through")
    func allZero() {
        let w = Tensor(shape: [2, 3])
        let q = DoReFaQuantizer(bits: 3)
        #expect(q.forward(w).scalars == [0, 0, 0, 0, 0, 0])
        let g = Tensor(shape: [2, 3], scalars: [1, -2, 3, -4, 5, -6])
        #expect(q.backward(gradEffective: g, weight: w).scalars == g.scalars)
    }

    @Test("backward equals g·(1 − tanh²W)/M; central differences of the rounding-free surrogate agree",
          arguments: [false, true])
    func gradient(scaled: Bool) {
        var rng = RandomSource(seed: 33)
        let w = randomTensor([5, 8], rng: &rng, scale: 0.8)
        let q = DoReFaQuantizer(bits: 3, scaled: scaled)
        let g = randomTensor(w.shape, rng: &rng)
        let dw = q.backward(gradEffective: g, weight: w)
        let m = refDoReFa(w.scalars, bits: 3).m
        let s: Float = scaled ? w.scalars.map(abs).max()! : 1
        for i in 0..<w.count {
            let t = tanhf(w[flat: i])
            #expect(dw[flat: i] == g[flat: i] * (1 - t * t) / m * s)
        }
        // The STE gradient is the derivative of the surrogate Σ g_i · s · tanh(W_i)/M with M and s
        // held constant; compare it with central differences on every element except the one that
        // sets max|W| (moving that one moves M and s).
        let argmax = (0..<w.count).max { abs(w[flat: $0]) < abs(w[flat: $1]) }!
        var x = w
        func surrogate() -> Double {
            (0..<x.count).reduce(0.0) { $0 + Double(g[flat: $1]) * Double(s * tanhf(x[flat: $1]) / m) }
        }
        var check = TensorCheck(name: "dorefa")
        for i in 0..<w.count where i != argmax {
            let x0 = x[flat: i]
            x[flat: i] = x0 + doReFaGradStep; let lp = surrogate()
            x[flat: i] = x0 - doReFaGradStep; let lm = surrogate()
            x[flat: i] = x0
            let numeric = (lp - lm) / Double(2 * doReFaGradStep)
            let a = Double(dw[flat: i])
            check.checked += 1
            if abs(a - numeric) > doReFaGradTolerance * max(abs(a), abs(numeric)) + gradAbsoluteFloor {
                check.failures.append("w[\(i)]: analytic \(a), numeric \(numeric)")
            }
        }
        expectPassed([check], label: "DoReFa scaled=\(scaled)",
                     settings: GradCheckSettings(step: doReFaGradStep, tolerance: doReFaGradTolerance,
                                                 floorFraction: 0, absoluteFloor: gradAbsoluteFloor))
    }

    @Test("a DoReFa Conv2d computes with the transcribed weights; the stored weight stays the trained parameter")
    func inConv() throws {
        var rng = RandomSource(seed: 34)
        let conv = Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, padding: 1, rng: &rng)
        rng = RandomSource(seed: 34)
        let float = Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, padding: 1, rng: &rng)
        conv.weightTransform = DoReFaQuantizer(bits: 4)
        float.weight.value = Tensor(shape: conv.weight.value.shape, scalars: refDoReFa(conv.weight.value.scalars, bits: 4).wq)
        let x = randomTensor([2, 3, 5, 5], rng: &rng)
        #expect(conv.forward(x, mode: .train).scalars == float.forward(x, mode: .train).scalars)
        #expect(conv.namedParameters().map(\.name) == ["weight", "bias"])
    }

    @Test("DoReFaTraining quantizes every conv/linear layer; trainable parameters equal the float model's")
    func method() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        let floatCount = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0).trainableParameterCount
        let method = try DoReFaTraining(model: model, options: DoReFaOptions(weightBits: 3))
        #expect(method.paths.count == 20)
        #expect(model.trainableParameterCount == floatCount)
        for (_, m) in quantizableLayers(of: model) {
            #expect(((m as? Conv2d)?.weightTransform ?? (m as? Linear)?.weightTransform) is DoReFaQuantizer)
        }
        let fields = method.summaryFields()
        #expect(fields["compression_ratio"] as? Double == 32.0 / 3)
        #expect(fields["average_weight_bits"] as? Double == 3)
        do {
            _ = try DoReFaTraining(model: makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0),
                                   options: DoReFaOptions(weightBits: 1))
            Issue.record("1-bit DoReFa should be refused")
        } catch let error as TrainingError {
            #expect(error.description.contains("DoReFaOptions.weightBits"))
        }
    }
}
