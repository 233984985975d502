import Foundation
import MSQ
import Testing

// Tolerances of the CSQ tests.
/// Relative agreement of the Float implementation with the Double transcription of the formula.
let csqReferenceTolerance = 1e-5
/// Central-difference step on the logits (the relaxation is smooth: exact gradient, no STE).
let csqGradStep: Float = 1e-3
/// Relative tolerance of the logit gradients against central differences.
let csqGradTolerance = 5e-3
/// CSQ keeps two logits per weight and plane: 2·8 per weight, plus a few per layer.
let csqParameterRatio = 16.0
let csqParameterRatioTolerance = 0.2

private func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }

/// The Double transcription of CSQ's relaxed weight: W_i = s Σ_b m_b K_b (σ(βp) − σ(βq)),
/// m_b = σ(βμ_b) (or the hard mask with hard bits 1[p > 0] − 1[q > 0]), K_b = 2^b/(2^P0 − 1).
private func refCSQ(_ q: CSQQuantizer) -> [Double] {
    let n = q.count, p0 = q.maxPlanes, beta = Double(q.beta), s = Double(q.scale.value[flat: 0])
    let p = q.positive.value.scalars, nq = q.negative.value.scalars, mu = q.maskLogits.value.scalars
    return (0..<n).map { i in
        var u = 0.0
        for b in 0..<p0 {
            let k = Double(1 << b) / Double((1 << p0) - 1)
            if let hard = q.hardMask {
                if hard[b] { u += k * ((p[b * n + i] > 0 ? 1 : 0) - (nq[b * n + i] > 0 ? 1 : 0)) }
            } else {
                u += sigmoid(beta * Double(mu[b])) * k * (sigmoid(beta * Double(p[b * n + i])) - sigmoid(beta * Double(nq[b * n + i])))
            }
        }
        return s * u
    }
}

private func randomizeLogits(_ q: CSQQuantizer, rng: inout RandomSource) {
    q.positive.value = randomTensor(q.positive.value.shape, rng: &rng, scale: 1.5)
    q.negative.value = randomTensor(q.negative.value.shape, rng: &rng, scale: 1.5)
    q.maskLogits.value = randomTensor(q.maskLogits.value.shape, rng: &rng, scale: 1)
}

@Suite("CSQ") struct CSQTests {
    @Test("initialisation: set bits of round(W·(2^P0 − 1)/max|W|) at logit 1, the rest at 0; masks at 0")
    func initialisation() {
        var rng = RandomSource(seed: 41)
        let w = randomTensor([3, 5], rng: &rng, scale: 0.5)
        let q = CSQQuantizer(weight: w, planes: 4)
        let s = w.scalars.map(abs).max()!
        let p = q.positive.value.scalars, nq = q.negative.value.scalars
        for i in 0..<w.count {
            let c = Int((w[flat: i] * 15 / s).rounded(.toNearestOrEven))
            var vp = 0, vn = 0
            for b in 0..<4 {
                #expect([0, 1].contains(p[b * w.count + i]) && [0, 1].contains(nq[b * w.count + i]))
                vp += Int(p[b * w.count + i]) << b
                vn += Int(nq[b * w.count + i]) << b
            }
            #expect(vp - vn == c && (vp == 0 || vn == 0))
        }
        #expect(q.maskLogits.value.scalars == [0, 0, 0, 0])
        #expect(q.bits == 5)
        // In the hard limit the layer computes the P0-bit rounding of W.
        q.hardMask = [true, true, true, true]
        let y = q.forward(w).scalars
        for i in 0..<w.count { #expect(abs(y[i] - w[flat: i]) <= s / 15 / 2 * 1.0001) }
    }

    @Test("forward equals the formula's transcription, soft and hard", arguments: [Float(1), 7.5])
    func matchesReference(beta: Float) {
        var rng = RandomSource(seed: 42)
        let w = randomTensor([4, 6], rng: &rng)
        let q = CSQQuantizer(weight: w, planes: 5)
        randomizeLogits(q, rng: &rng)
        q.beta = beta
        for hard in [nil, [true, false, true, true, false]] as [[Bool]?] {
            q.hardMask = hard
            let y = q.forward(w).scalars
            let ref = refCSQ(q)
            for i in 0..<w.count {
                #expect(abs(Double(y[i]) - ref[i]) <= csqReferenceTolerance * max(abs(ref[i]), 1e-3))
            }
        }
        #expect(q.bits == 1 + 3)
    }

    @Test("soft phase: the logits' gradients agree with central differences (the relaxation is smooth)")
    func gradientCheck() {
        var rng = RandomSource(seed: 43)
        let w = randomTensor([3, 4], rng: &rng)
        let q = CSQQuantizer(weight: w, planes: 3)
        randomizeLogits(q, rng: &rng)
        q.beta = 2.5
        let r = randomTensor(w.shape, rng: &rng)
        for p in [q.positive, q.negative, q.maskLogits] { p.grad.zero() }
        _ = q.backward(gradEffective: r, weight: w)
        let settings = GradCheckSettings(step: csqGradStep, tolerance: csqGradTolerance, floorFraction: gradFloorFraction,
                                         absoluteFloor: gradAbsoluteFloor, richardson: true)
        let checks = [("csq.positive", q.positive), ("csq.negative", q.negative), ("csq.mask", q.maskLogits)].map { name, p in
            checkTensor(name: name, analytic: p.grad, settings: settings, rng: &rng,
                        value: { p.value[flat: $0] }, set: { p.value[flat: $0] = $1 },
                        evaluate: { objective(q.forward(w), r) })
        }
        expectPassed(checks, label: "CSQ soft", settings: settings)
    }

    @Test("hard phase: straight-through bits (dL/dp = g·s·K_b, dL/dq = −g·s·K_b on active planes), no mask gradient")
    func hardBackward() {
        var rng = RandomSource(seed: 44)
        let w = randomTensor([2, 5], rng: &rng)
        let q = CSQQuantizer(weight: w, planes: 3)
        randomizeLogits(q, rng: &rng)
        q.hardMask = [false, true, true]
        let g = randomTensor(w.shape, rng: &rng)
        for p in [q.positive, q.negative, q.maskLogits] { p.grad.zero() }
        _ = q.backward(gradEffective: g, weight: w)
        let s = q.scale.value[flat: 0]
        for b in 0..<3 {
            let k = s * (Float(1 << b) / 7)    // s·K_b, K_b = 2^b/(2^P0 − 1)
            for i in 0..<w.count {
                #expect(q.positive.grad[flat: b * w.count + i] == (b == 0 ? 0 : g[flat: i] * k))
                #expect(q.negative.grad[flat: b * w.count + i] == (b == 0 ? 0 : -(g[flat: i] * k)))
            }
        }
        #expect(q.maskLogits.grad.scalars == [0, 0, 0])
    }

    @Test("budget regulariser: value and mask gradients equal the transcription; the sign follows the budget")
    func budgetRegularizer() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
        var options = CSQOptions(targetCompression: 10.67)
        options.lambda = 0.7
        let method = try CSQTraining(model: model, options: options)
        var rng = RandomSource(seed: 45)
        for q in method.quantizers {
            q.maskLogits.value = randomTensor([8], rng: &rng, scale: 1)
            q.beta = 3
            q.maskLogits.grad.zero()
        }
        let r = method.applyBudgetRegularizer()
        let total = Double(method.totalCount)
        let active = zip(method.counts, method.quantizers).reduce(0.0) { sum, e in
            sum + Double(e.0) * Double(e.1.maskLogits.value.scalars.filter { $0 >= 0 }.count)
        }
        let rho = active / (total * 8)
        let rhoTarget = (32 / 10.67 - 1) / 8
        #expect(abs(method.bitRatio - rho) < 1e-12 && abs(method.targetBitRatio - rhoTarget) < 1e-12)
        var expected = 0.0
        for (count, q) in zip(method.counts, method.quantizers) {
            let weight = Double(count) / total
            for b in 0..<8 {
                let m = sigmoid(3 * Double(q.maskLogits.value[flat: b]))
                expected += (rho - rhoTarget) * weight * m
                let want = 0.7 * (rho - rhoTarget) * weight * 3 * m * (1 - m)
                #expect(abs(Double(q.maskLogits.grad[flat: b]) - want) <= csqReferenceTolerance * max(abs(want), 1e-9))
            }
        }
        #expect(abs(r - expected) <= csqReferenceTolerance * abs(expected))
    }

    @Test("trainable parameters: CSQ / MSQ ≈ 16 on ResNet-20; the stored weights are not listed")
    func parameterCount() throws {
        let msqModel = makeModel(.resnet20, inputChannels: 3, numClasses: 10, seed: 0)
        try quantizeForMSQ(msqModel)
        let csqModel = makeModel(.resnet20, inputChannels: 3, numClasses: 10, seed: 0)
        _ = try CSQTraining(model: csqModel, options: CSQOptions(targetCompression: 10.67))
        let ratio = Double(csqModel.trainableParameterCount) / Double(msqModel.trainableParameterCount)
        #expect(abs(ratio - csqParameterRatio) <= csqParameterRatioTolerance, "ratio \(ratio)")
        let names = csqModel.namedParameters().map(\.name)
        #expect(names.contains("fc.csq.positive") && names.contains("fc.csq.mask") && !names.contains("fc.weight"))
    }
}
