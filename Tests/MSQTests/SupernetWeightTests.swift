import Foundation
import MSQ
import Testing

// SMPQ-SPEC §1: the supernet layer's mixed weight and its gradients.

/// Central differences in α of L(α) = ⟨g, W_mix(α)⟩ agree with the analytic gradient to this
/// (relative to the largest component): the forward is float32, the step 1e-2.
private let alphaGradientTolerance = 2e-3

private func randomTensor(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = RandomSource(seed: seed)
    return Tensor.randomNormal(shape, std: 1, using: &rng)
}

@Suite("SMPQ supernet weight")
struct SupernetWeightTests {
    @Test("W_mix = Σ p_b Q_b(W) on odd shapes, per tensor and per channel; masked candidates renormalise; none left gives zeros",
          arguments: [ScaleGranularity.perTensor, .perChannel])
    func mixedWeight(granularity: ScaleGranularity) {
        for (i, shape) in [[3, 5, 3, 3], [7, 5], [1, 9]].enumerated() {
            let w = randomTensor(shape, seed: UInt64(10 + i))
            let supernet = SupernetWeight(candidates: [2, 3, 4, 5, 6, 8], granularity: granularity)
            supernet.alpha.value = Tensor(shape: [6], scalars: [0.3, -1.2, 0.8, 0.1, -0.4, 1.5])
            let logits = supernet.alpha.value.scalars.map(Double.init)
            func reference(_ mask: [Bool]) -> [Float] {
                let e = zip(logits, mask).map { $1 ? exp($0) : 0 }
                let total = e.reduce(0, +)
                var out = [Float](repeating: 0, count: w.count)
                for (b, bits) in supernet.candidates.enumerated() where mask[b] {
                    let q = RoundClampQuantizer(bits: bits, granularity: granularity).forward(w).scalars
                    for k in 0..<w.count { out[k] += Float(e[b] / total) * q[k] }
                }
                return out
            }
            let all = supernet.forward(w).scalars
            for (x, y) in zip(all, reference([Bool](repeating: true, count: 6))) { #expect(abs(x - y) <= 1e-6 * max(1, abs(y))) }
            let mask = [true, false, true, false, false, true]
            supernet.active = mask
            #expect(abs(supernet.probabilities.reduce(0, +) - 1) < 1e-12 && supernet.probabilities[1] == 0)
            for (x, y) in zip(supernet.forward(w).scalars, reference(mask)) { #expect(abs(x - y) <= 1e-6 * max(1, abs(y))) }
            supernet.active = [Bool](repeating: false, count: 6)
            #expect(supernet.forward(w).scalars.allSatisfy { $0 == 0 })
        }
    }

    @Test("dL/dα by central differences in double; dL/dW = Σ p_b · STE_b(g); masked candidates get no gradient")
    func gradients() {
        let w = randomTensor([4, 3, 3, 3], seed: 5)
        let g = randomTensor([4, 3, 3, 3], seed: 6)
        let supernet = SupernetWeight(candidates: [2, 3, 4, 8])
        supernet.alpha.value = Tensor(shape: [4], scalars: [0.2, -0.5, 0.7, 0.1])
        supernet.active = [true, true, false, true]
        let dw = supernet.backward(gradEffective: g, weight: w)
        let analytic = supernet.alpha.grad.scalars.map(Double.init)
        #expect(analytic[2] == 0)
        let step: Float = 1e-2
        var numeric = [Double](repeating: 0, count: 4)
        for b in [0, 1, 3] {
            let base = supernet.alpha.value
            supernet.alpha.value[flat: b] = base[flat: b] + step
            let plus = g.dot(supernet.forward(w))
            supernet.alpha.value[flat: b] = base[flat: b] - step
            let minus = g.dot(supernet.forward(w))
            supernet.alpha.value = base
            numeric[b] = (plus - minus) / Double(2 * step)
        }
        let scale = numeric.map(abs).max() ?? 1
        for b in 0..<4 { #expect(abs(analytic[b] - numeric[b]) <= alphaGradientTolerance * scale, "α_\(b): \(analytic[b]) vs \(numeric[b])") }
        // The STE passes g unmasked, so Σ_b p_b · g over the active candidates is g itself.
        for (x, y) in zip(dw.scalars, g.scalars) { #expect(abs(x - y) <= 1e-6 * max(1, abs(y))) }
        // A second backward accumulates into α's gradient.
        _ = supernet.backward(gradEffective: g, weight: w)
        for b in 0..<4 { #expect(abs(Double(supernet.alpha.grad[flat: b]) - 2 * analytic[b]) <= 1e-5 * max(1, abs(analytic[b]))) }
    }

    @Test("attached to a Conv2d, α is a trainable parameter of the layer under <path>.smpq.alpha, without decay")
    func parameterPath() {
        var rng = RandomSource(seed: 1)
        let model = Sequential(named: [("conv", Conv2d(inChannels: 1, outChannels: 2, kernelSize: 3, rng: &rng))])
        let supernet = SupernetWeight(candidates: [2, 4, 8])
        (model["conv"] as? Conv2d)?.weightTransform = supernet
        let names = model.namedParameters().map(\.name)
        #expect(names.contains("conv.smpq.alpha") && names.contains("conv.weight"))
        #expect(!supernet.alpha.decays && supernet.alpha.value.shape == [3])
    }
}
