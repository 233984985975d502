import Foundation
import MSQ
import Testing

// MSQ-SPEC §2–4 as revised 2026-12 (issue 13): the k floor, when a new k applies, the forced order
// by estimated loss, the least-loss deadline allocation and the per-layer λ weight.

private func twoLayerModel(seed: UInt64) -> Sequential {
    var rng = RandomSource(seed: seed)
    return Sequential(named: [
        ("fc1", Linear(inFeatures: 8, outFeatures: 16, rng: &rng)),
        ("act", Activation(.relu)),
        ("fc2", Linear(inFeatures: 16, outFeatures: 4, rng: &rng)),
    ])
}

private func status(_ path: String, _ count: Int, _ bits: Int, r: Double?, k: Int = 1,
                    loss: [Double] = []) -> PruningLayerStatus {
    PruningLayerStatus(path: path, count: count, bits: bits, nonzeroRate: r, k: k, dropLoss: loss)
}

/// Every combination of the allowed precisions (small problems only).
private func bruteForce(_ layers: [BitAllocationLayer], budget: Double) -> Double? {
    var best: Double? = nil
    func walk(_ l: Int, _ size: Double, _ loss: Double) {
        if size > budget + 1e-9 { return }
        if l == layers.count {
            if best == nil || loss < best! { best = loss }
            return
        }
        for (n, value) in layers[l].losses { walk(l + 1, size + Double(layers[l].count * n), loss + value) }
    }
    walk(0, 0, 0)
    return best
}

@Suite("Bit allocation (MSQ-SPEC §2–4, 2026-12)")
struct AllocationTests {
    @Test("k_eff = min(k, n − n_min); a layer at n_min is neither regularised nor measured")
    func kFloor() throws {
        let model = twoLayerModel(seed: 4)
        let layers = try quantizeForMSQ(model, initialBits: 3, overrides: ["fc2": 2])
        let reg = LSBRegularizer(layers: layers, lambda: 1, minBits: 2)
        reg.k = [2, 2]
        // Until 2026-12 this was min(k, n − 1) = 2: a pull toward a 1-bit grid a 3-bit layer never reaches.
        #expect(reg.effectiveK(0) == 1)
        #expect(reg.effectiveK(1) == 0)
        model.zeroGradients()
        let report = reg.apply()
        #expect(report.layers[1].nonzeroRate == nil)
        #expect(report.layers[1].absSum == 0)
        #expect(layers[1].parameter.grad.scalars.allSatisfy { $0 == 0 }, "a 2-bit layer is not pulled anywhere")
        #expect(report.layers[0].nonzeroRate != nil)
        #expect(layers[0].parameter.grad.scalars.contains { $0 != 0 })
        // n_min = 3 leaves nothing to regularise at all.
        let none = LSBRegularizer(layers: layers, lambda: 1, minBits: 3)
        #expect(none.measure().layers.allSatisfy { $0.nonzeroRate == nil })
    }

    @Test("constant-pull λ weights each layer's gradient by 2^(8 − n), the uniform one by 1")
    func lambdaScaling() throws {
        let model = twoLayerModel(seed: 5)
        let layers = try quantizeForMSQ(model, initialBits: 4, overrides: ["fc2": 6])
        func gradient(_ scaling: LambdaScaling) -> [[Float]] {
            model.zeroGradients()
            let reg = LSBRegularizer(layers: layers, lambda: 0.5, lambdaScaling: scaling)
            reg.apply()
            return layers.map(\.parameter.grad.scalars)
        }
        let uniform = gradient(.uniform), scaled = gradient(.constantPull)
        for (i, layer) in layers.enumerated() {
            let w = Float(1 << (8 - layer.bits))
            #expect(zip(uniform[i], scaled[i]).allSatisfy { abs($0 * w - $1) <= 1e-6 * abs($1) })
        }
        #expect(LambdaScaling.uniform.weight(bits: 3) == 1)
        #expect(LambdaScaling.constantPull.weight(bits: 3) == 32)
    }

    @Test("an interval decides with the k the layer was regularised toward; a new k applies from the next interval")
    func newKAppliesNextInterval() throws {
        let model = twoLayerModel(seed: 6)
        let layers = try quantizeForMSQ(model, initialBits: 4)
        // fc1 sits exactly on the 3-bit grid: r = 0 on the k = 1 grid it was regularised toward,
        // and ‖Q_4(W) − W‖ = 0 makes its Ω the smallest, so the traces give it k = 2 — whose
        // 2-bit grid nothing has shaped (r ≈ 1/2). Until 2026-12 r was re-measured on that grid and
        // the layer was no candidate.
        var rng = RandomSource(seed: 9)
        let w = layers[0].parameter.value
        var onGrid = (0..<w.count).map { _ in Float(Int(rng.nextUnitFloat() * 8) - 4) / 4 }
        onGrid[0] = -1
        layers[0].parameter.value = Tensor(shape: w.shape, scalars: onGrid)
        var options = MSQOptions(targetCompression: 10.67)
        options.pruneIntervalEpochs = 1
        options.hessianBatch = 16
        options.hessianProbes = 4
        var images = Tensor(shape: [16, 8])
        images.withUnsafeMutablePointer { p in for i in 0..<128 { p[i] = rng.nextUnitFloat() * 2 - 1 } }
        let labels = (0..<16).map { Int32($0 % 4) }
        let method = try MSQTraining(layers: layers, options: options, calibration: (images, labels), seed: 1)
        try method.prepare(model: model, plan: TrainingPlan(stepsPerEpoch: 1, epochs: 10, log: { _ in }))
        model.zeroGradients()
        _ = try method.afterBackward(model: model, epoch: 0, step: 0)
        let first = try #require(method.events.first { $0.decision.path == "fc1" })
        #expect(first.decision.fromBits == 4 && first.decision.toBits == 3)
        #expect(!first.decision.forced, "r = 0 ≤ τ on the grid it was regularised toward")
        #expect(first.decision.nonzeroRate == 0)
        // The traces of this interval set k for the next one.
        #expect(method.regularizer.k(forPath: "fc1") == 2 || method.regularizer.k(forPath: "fc2") == 2)
    }

    @Test("forced drops go by least estimated loss per stored bit; the paper order by lowest r")
    func forcedOrder() {
        // a: low r but costly per bit; b: higher r, cheap. A budget that needs one 100-bit drop.
        let layers = [status("a", 100, 6, r: 0.2, loss: [10, 30, 60, 100]),
                      status("b", 100, 6, r: 0.4, loss: [1, 3, 6, 10])]
        let byLoss = LSBPruningScheduler(targetCompression: 8, threshold: 0.05)
        #expect(byLoss.decide(layers, budgetBits: 1100, deadline: false).map(\.path) == ["b"])
        let paper = LSBPruningScheduler(targetCompression: 8, threshold: 0.05, forcedOrder: .nonzeroRate)
        #expect(paper.decide(layers, budgetBits: 1100, deadline: false).map(\.path) == ["a"])
        let d = byLoss.decide(layers, budgetBits: 1100, deadline: false)
        #expect(d.first?.forced == true && d.first?.estimatedLoss == 1)
    }

    @Test("the drop that reaches the target takes only the bits it needs, at the least loss")
    func finalDropTrimmed() {
        // 3 layers of 100 at 4 bits (C = 8); target 8.5 needs 70.6 bits saved: one 1-bit drop.
        let layers = [status("a", 100, 4, r: 0.5, k: 2, loss: [1, 2]),
                      status("b", 100, 4, r: 0.5, k: 2, loss: [0.9, 5]),
                      status("c", 100, 4, r: 0.01, k: 2, loss: [3, 4])]
        let s = LSBPruningScheduler(targetCompression: 8.5, threshold: 0.05)
        let d = s.decide(layers, budgetBits: 1000, deadline: false)
        // c is under τ: an unforced candidate, and one bit of its k = 2 reaches the target.
        #expect(d == [PruningDecision(path: "c", fromBits: 4, toBits: 3, nonzeroRate: 0.01, forced: false, estimatedLoss: 3)])
        // Without c under τ the forced drop that reaches the target is b's first bit (loss 0.9),
        // though a's two bits are cheaper per bit (1 per 100 bits vs 0.9 per 100).
        var noCandidate = layers
        noCandidate[2].nonzeroRate = 0.3
        let f = s.decide(noCandidate, budgetBits: 1000, deadline: false)
        #expect(f.map(\.path) == ["b"] && f.map(\.toBits) == [3])
        // The paper order drops c's whole k = 2.
        let paper = LSBPruningScheduler(targetCompression: 8.5, threshold: 0.05, forcedOrder: .nonzeroRate)
        #expect(paper.decide(layers, budgetBits: 1000, deadline: false).map(\.toBits) == [2])
    }

    @Test("a layer that was not measured is never an unforced candidate")
    func unmeasuredIsNoCandidate() {
        let s = LSBPruningScheduler(targetCompression: 16, threshold: 0.05)
        #expect(s.decide([status("a", 10, 4, r: nil)], budgetBits: nil, deadline: false).isEmpty)
    }

    @Test("at the deadline the gap closes at the least total estimated loss (equal to brute force)")
    func deadlineLeastLoss() {
        var rng = RandomSource(seed: 21)
        for trial in 0..<40 {
            let n = 2 + trial % 4
            var layers: [PruningLayerStatus] = []
            for l in 0..<n {
                let bits = 3 + Int(rng.nextUnitFloat() * 5)
                var loss: [Double] = []
                var total = 0.0
                for _ in 0..<(bits - 2) { total += Double(rng.nextUnitFloat()) * 10; loss.append(total) }
                layers.append(status("l\(l)", 8 * (1 + Int(rng.nextUnitFloat() * 20)), bits, r: 0.5, k: 2, loss: loss))
            }
            let counts = layers.map(\.count)
            let start = LSBPruningScheduler.compression(counts: counts, bits: layers.map(\.bits))
            let maxC = LSBPruningScheduler.compression(counts: counts, bits: counts.map { _ in 2 })
            let target = start + (maxC - start) * Double(rng.nextUnitFloat()) * 0.9 + 0.01
            let s = LSBPruningScheduler(targetCompression: target, threshold: 0.05)
            let d = s.decide(layers, budgetBits: nil, deadline: true)
            var bits = Dictionary(uniqueKeysWithValues: layers.map { ($0.path, $0.bits) })
            for e in d { bits[e.path] = e.toBits }
            let final = layers.map { bits[$0.path] ?? 0 }
            #expect(LSBPruningScheduler.compression(counts: counts, bits: final) >= target - 1e-9)
            let loss = zip(layers, final).reduce(0.0) { $0 + ($1.1 < $1.0.bits ? $1.0.dropLoss[$1.0.bits - $1.1 - 1] : 0) }
            let choices = layers.map { l in
                BitAllocationLayer(count: l.count, losses: Dictionary(uniqueKeysWithValues: (2...l.bits).map {
                    ($0, $0 == l.bits ? 0 : l.dropLoss[l.bits - $0 - 1])
                }))
            }
            let best = try? #require(bruteForce(choices, budget: s.targetBits(counts: counts)))
            #expect(abs(loss - (best ?? -1)) <= 1e-9 * max(1, loss), "trial \(trial)")
        }
    }

    @Test("allocateBits: brute-force optimum, exact budget, nil when nothing fits, coarse units stay within budget")
    func allocation() throws {
        var rng = RandomSource(seed: 5)
        for _ in 0..<30 {
            let layers = (0..<(1 + Int(rng.nextUnitFloat() * 4))).map { _ in
                BitAllocationLayer(count: 1 + Int(rng.nextUnitFloat() * 50),
                                   losses: Dictionary(uniqueKeysWithValues: (2...6).map { ($0, Double(rng.nextUnitFloat())) }))
            }
            let budget = Double(layers.reduce(0) { $0 + $1.count }) * (2 + Double(rng.nextUnitFloat()) * 4)
            let bits = try #require(allocateBits(layers, budgetBits: budget))
            let size = zip(layers, bits).reduce(0.0) { $0 + Double($1.0.count * $1.1) }
            #expect(size <= budget + 1e-9)
            let loss = zip(layers, bits).reduce(0.0) { $0 + ($1.0.losses[$1.1] ?? .infinity) }
            #expect(abs(loss - (bruteForce(layers, budget: budget) ?? -1)) <= 1e-12)
        }
        let one = [BitAllocationLayer(count: 10, losses: [2: 5, 3: 1])]
        #expect(allocateBits(one, budgetBits: 30) == [3])
        #expect(allocateBits(one, budgetBits: 29.9) == [2])
        #expect(allocateBits(one, budgetBits: 19) == nil)
        // 3 million weights at 2…8 bits need coarse units (18 bits here, sizes rounded up); the
        // answer must still fit, and is the optimum when the budget leaves a unit of room.
        let big = [BitAllocationLayer(count: 3_000_001, losses: [2: 100, 8: 0]),
                   BitAllocationLayer(count: 7, losses: [2: 9, 8: 0])]
        #expect(allocateBits(big, budgetBits: 3_000_001 * 8 + 7 * 2 + 30) == [8, 2])
        let tightBudget: Double = 3_000_001 * 8 + 7 * 2 + 1
        let tight = try #require(allocateBits(big, budgetBits: tightBudget))
        let tightSize = Double(3_000_001 * tight[0] + 7 * tight[1])
        #expect(tightSize <= tightBudget)
    }

    @Test("flooredTraces lifts negative and zero per-weight traces to 1 % of the mean positive one")
    func traceFloor() {
        let t = flooredTraces([10, -4, 0, 30], counts: [10, 4, 5, 10])
        // Per weight: 1, −1, 0, 3 → floor 0.01 · (1 + 0 + 0 + 3) / 4 = 0.01.
        #expect(t == [10, 0.04, 0.05, 30])
        #expect(flooredTraces([0, 0], counts: [1, 1]) == [0, 0])
    }

    @Test("sampled-label Gauss-Newton traces agree with the exact Gauss-Newton traces (unit-vector HVPs)")
    func sampledGaussNewtonTrace() throws {
        let model = twoLayerModel(seed: 11)
        let layers = try quantizeForMSQ(model, initialBits: 8)
        var rng = RandomSource(seed: 3)
        var images = Tensor(shape: [12, 8])
        images.withUnsafeMutablePointer { p in for i in 0..<96 { p[i] = rng.nextGaussian() } }
        let labels = (0..<12).map { Int32($0 % 4) }
        for layer in layers { layer.quantizer.isBypassed = true }
        defer { for layer in layers { layer.quantizer.isBypassed = false } }
        // Exact: Σ_k e_kᵀ G e_k over every weight of the layer.
        let hvp = HessianVectorProduct(model: model, layers: layers, images: images, labels: labels, mode: .gaussNewton)
        let counts = layers.map(\.count)
        var exact = [Double](repeating: 0, count: layers.count)
        for (l, n) in counts.enumerated() {
            for k in 0..<n {
                var v = counts.map { [Double](repeating: 0, count: $0) }
                v[l][k] = 1
                exact[l] += try hvp.apply(v)[l][k]
            }
        }
        let estimate = try SampledGaussNewtonTrace(model: model, layers: layers, images: images, seed: 5,
                                                   maxProbes: 600, minProbes: 600, relativeTolerance: 0).estimate()
        #expect(estimate.probes == 600)
        for l in layers.indices {
            let se = estimate.variances[l].squareRoot()
            #expect(exact[l] > 0)
            #expect(abs(estimate.traces[l] - exact[l]) <= 4 * se, "layer \(l): \(estimate.traces[l]) vs exact \(exact[l]) ± \(se)")
            #expect(se < 0.1 * exact[l])
        }
    }
}
