import Foundation
import MSQ
import Testing

// Tolerances (named so a reader can see what each check allows).
/// Float32 central-difference HVP vs the double-precision reference: ‖Hv − ref‖ / ‖ref‖.
private let hvpRelativeTolerance = 1e-3
/// Float32 model gradient vs the independent double-precision gradient: ‖g − ref‖ / ‖ref‖.
private let referenceGradientTolerance = 1e-4
/// Symmetry of the exact (double) Hessian: ‖H − Hᵀ‖_F / ‖H‖_F.
private let hessianSymmetryTolerance = 1e-8
/// Hutchinson total trace vs the exact trace, relative.
private let hutchinsonTraceTolerance = 0.05
/// Hutchinson probes for the exact-trace comparison: enough that the estimator's own standard error
/// (from the exact Hessian, √(2 Σ_{i≠j} H_ij² / m)) is well under the tolerance (checked below).
private let hutchinsonComparisonProbes = 4000
/// Per-layer Hutchinson traces must lie within this many standard errors of the exact ones.
private let hutchinsonStandardErrors = 5.0
/// Step of the double-precision 4-point stencil on the reference gradient.
private let referenceStencilStep = 1e-3

/// The small smooth MLP: Linear(6→5) → GELU → Linear(5→3), batch 8, random data.
private struct SmallProblem {
    let model: Sequential
    let first: Linear
    let second: Linear
    let layers: [QuantizedLayer]
    let images: Tensor
    let labels: [Int32]

    /// `attachQuantizers`: false builds QuantizedLayer records without attaching the quantizers
    /// (the float Hessian); true runs `quantizeForMSQ`.
    init(seed: UInt64, attachQuantizers: Bool = false) throws {
        var rng = RandomSource(seed: seed)
        first = Linear(inFeatures: 6, outFeatures: 5, rng: &rng)
        second = Linear(inFeatures: 5, outFeatures: 3, rng: &rng)
        model = Sequential([first, Activation(.gelu), second])
        // Larger weights so the GELU is well inside its curved region.
        for lin in [first, second] {
            lin.weight.value = Tensor(shape: lin.weight.value.shape,
                                      scalars: lin.weight.value.scalars.map { $0 * 2 })
        }
        images = Tensor.randomNormal([8, 6], std: 1, using: &rng)
        labels = (0..<8).map { _ in Int32(rng.nextInt(below: 3)) }
        if attachQuantizers {
            layers = try quantizeForMSQ(model, initialBits: 4)
        } else {
            layers = [
                QuantizedLayer(path: "0", parameter: first.weight, quantizer: RoundClampQuantizer(bits: 8), count: 30),
                QuantizedLayer(path: "2", parameter: second.weight, quantizer: RoundClampQuantizer(bits: 8), count: 15),
            ]
        }
    }

    /// An independent double-precision copy of the network (θ = [W1 row-major, W2 row-major]).
    var reference: ReferenceMLP {
        ReferenceMLP(x: images.scalars.map(Double.init), labels: labels.map(Int.init),
                     b1: first.bias!.value.scalars.map(Double.init), b2: second.bias!.value.scalars.map(Double.init))
    }

    var theta: [Double] {
        (first.weight.value.scalars + second.weight.value.scalars).map(Double.init)
    }
}

/// Linear(6→5) → exact-erf GELU → Linear(5→3) → mean softmax cross-entropy, all in Double,
/// with its hand-derived gradient w.r.t. the two weight matrices.
private struct ReferenceMLP {
    let x: [Double]        // [8, 6]
    let labels: [Int]
    let b1: [Double]       // [5]
    let b2: [Double]       // [3]
    let n = 8, d0 = 6, d1 = 5, d2 = 3

    func gradient(_ theta: [Double]) -> [Double] {
        let w1 = Array(theta[0..<30]), w2 = Array(theta[30..<45])
        var gw1 = [Double](repeating: 0, count: 30), gw2 = [Double](repeating: 0, count: 15)
        for i in 0..<n {
            var h = [Double](repeating: 0, count: d1), a = h, dphi = h
            for o in 0..<d1 {
                var s = b1[o]
                for k in 0..<d0 { s += x[i * d0 + k] * w1[o * d0 + k] }
                h[o] = s
                let cdf = 0.5 * (1 + erf(s / 2.0.squareRoot()))
                let pdf = exp(-0.5 * s * s) / (2 * Double.pi).squareRoot()
                a[o] = s * cdf
                dphi[o] = cdf + s * pdf
            }
            var z = [Double](repeating: 0, count: d2)
            for c in 0..<d2 {
                var s = b2[c]
                for o in 0..<d1 { s += a[o] * w2[c * d1 + o] }
                z[c] = s
            }
            let zmax = z.max()!
            let e = z.map { exp($0 - zmax) }
            let sum = e.reduce(0, +)
            let dz = (0..<d2).map { c in (e[c] / sum - (c == labels[i] ? 1 : 0)) / Double(n) }
            var da = [Double](repeating: 0, count: d1)
            for c in 0..<d2 {
                for o in 0..<d1 {
                    gw2[c * d1 + o] += dz[c] * a[o]
                    da[o] += dz[c] * w2[c * d1 + o]
                }
            }
            for o in 0..<d1 {
                let dh = da[o] * dphi[o]
                for k in 0..<d0 { gw1[o * d0 + k] += dh * x[i * d0 + k] }
            }
        }
        return gw1 + gw2
    }

    /// H·v by the 4-point stencil (−g(2h) + 8g(h) − 8g(−h) + g(−2h)) / 12h on the double gradient.
    func hvp(_ theta: [Double], _ v: [Double], step: Double = referenceStencilStep) -> [Double] {
        func g(_ t: Double) -> [Double] { gradient(zip(theta, v).map { $0 + t * $1 }) }
        let (p1, m1, p2, m2) = (g(step), g(-step), g(2 * step), g(-2 * step))
        return (0..<theta.count).map { (-p2[$0] + 8 * p1[$0] - 8 * m1[$0] + m2[$0]) / (12 * step) }
    }
}

private func norm(_ a: [Double]) -> Double { a.reduce(0) { $0 + $1 * $1 }.squareRoot() }
private func relativeError(_ a: [Double], _ ref: [Double]) -> Double {
    norm(zip(a, ref).map { $0 - $1 }) / norm(ref)
}
private func split(_ v: [Double]) -> [[Double]] { [Array(v[0..<30]), Array(v[30..<45])] }

@Suite struct HessianTraceTests {
    @Test func referenceGradientMatchesModel() throws {
        let problem = try SmallProblem(seed: 11)
        let hvp = HessianVectorProduct(model: problem.model, layers: problem.layers,
                                       images: problem.images, labels: problem.labels)
        let g = try hvp.gradient().flatMap { $0 }
        let ref = problem.reference.gradient(problem.theta)
        #expect(relativeError(g, ref) < referenceGradientTolerance)
    }

    @Test func hvpMatchesDoublePrecisionReference() throws {
        let problem = try SmallProblem(seed: 12)
        let hvp = HessianVectorProduct(model: problem.model, layers: problem.layers,
                                       images: problem.images, labels: problem.labels)
        let reference = problem.reference
        var rng = RandomSource(seed: 99)
        for trial in 0..<4 {
            let v: [Double] = trial % 2 == 0
                ? (0..<45).map { _ in Double(rng.nextGaussian()) }
                : HutchinsonTrace.rademacherProbe(seed: 5, probe: trial, counts: [30, 15]).flatMap { $0 }
            let hv = try hvp.apply(split(v)).flatMap { $0 }
            let ref = reference.hvp(problem.theta, v)
            let err = relativeError(hv, ref)
            #expect(err < hvpRelativeTolerance, "trial \(trial): relative error \(err)")
        }
    }

    @Test func hutchinsonMatchesExactHessianTrace() throws {
        let problem = try SmallProblem(seed: 13)
        let reference = problem.reference
        let theta = problem.theta
        let p = theta.count
        // Exact Hessian, column by column: H e_i.
        var h = [[Double]](repeating: [], count: p)
        for i in 0..<p {
            var e = [Double](repeating: 0, count: p)
            e[i] = 1
            h[i] = reference.hvp(theta, e)   // column i
        }
        var asym = 0.0, frob = 0.0
        for i in 0..<p {
            for j in 0..<p {
                asym += (h[i][j] - h[j][i]) * (h[i][j] - h[j][i])
                frob += h[i][j] * h[i][j]
            }
        }
        #expect(asym.squareRoot() / frob.squareRoot() < hessianSymmetryTolerance)
        let exact = [(0..<30).reduce(0.0) { $0 + h[$1][$1] }, (30..<45).reduce(0.0) { $0 + h[$1][$1] }]
        let exactTotal = exact[0] + exact[1]
        #expect(exactTotal > 0)
        // Rademacher variance of one probe is 2 Σ_{i≠j} H_ij² (i, j over all 45 weights); make sure the
        // 5 % tolerance is at least 3 standard errors, so the comparison below is not a coin toss.
        var offDiagonal = 0.0
        for i in 0..<p { for j in 0..<p where i != j { offDiagonal += h[i][j] * h[i][j] } }
        let predictedStandardError = (2 * offDiagonal / Double(hutchinsonComparisonProbes)).squareRoot()
        #expect(3 * predictedStandardError < hutchinsonTraceTolerance * abs(exactTotal))

        let estimator = HutchinsonTrace(model: problem.model, layers: problem.layers, images: problem.images,
                                        labels: problem.labels, seed: 2024, maxProbes: hutchinsonComparisonProbes, minProbes: 4,
                                        relativeTolerance: 0)
        let est = try estimator.estimate()
        #expect(est.probes == hutchinsonComparisonProbes)
        #expect(est.traces.count == 2 && est.variances.count == 2)
        let relTotal = abs(est.totalTrace - exactTotal) / abs(exactTotal)
        #expect(relTotal < hutchinsonTraceTolerance, "relative error \(relTotal), estimate \(est.traces) exact \(exact)")
        for l in 0..<2 {
            let se = est.variances[l].squareRoot()
            #expect(est.variances[l] >= 0)
            #expect(abs(est.traces[l] - exact[l]) <= hutchinsonStandardErrors * se + 1e-3 * abs(exact[l]),
                    "layer \(l): \(est.traces[l]) vs \(exact[l]) ± \(se)")
        }
    }

    @Test func hutchinsonStopsEarlyWithTolerance() throws {
        let problem = try SmallProblem(seed: 14)
        let est = try HutchinsonTrace(model: problem.model, layers: problem.layers, images: problem.images,
                                      labels: problem.labels, seed: 1, maxProbes: 200, minProbes: 4,
                                      relativeTolerance: 0.5).estimate()
        #expect(est.probes >= 4 && est.probes < 200)
    }

    @Test(arguments: [false, true])
    func hutchinsonDeterministicAndRestoresWeights(attachQuantizers: Bool) throws {
        let problem = try SmallProblem(seed: 15, attachQuantizers: attachQuantizers)
        let before = problem.model.namedParameters().map { $0.parameter.value.scalars.map(\.bitPattern) }
        problem.model.zeroGradients()
        func run(seed: UInt64) throws -> HessianTraceEstimate {
            try HutchinsonTrace(model: problem.model, layers: problem.layers, images: problem.images,
                                labels: problem.labels, seed: seed, maxProbes: 12).estimate()
        }
        let a = try run(seed: 7)
        let b = try run(seed: 7)
        let c = try run(seed: 8)
        #expect(a == b)
        #expect(a != c)
        let after = problem.model.namedParameters().map { $0.parameter.value.scalars.map(\.bitPattern) }
        #expect(before == after)
        for p in problem.model.trainableParameters() {
            #expect(p.grad.scalars.allSatisfy { $0 == 0 })
        }
    }

    @Test func rademacherProbeIsSignsAndSeeded() {
        let v = HutchinsonTrace.rademacherProbe(seed: 3, probe: 0, counts: [70, 5])
        #expect(v.map(\.count) == [70, 5])
        #expect(v.flatMap { $0 }.allSatisfy { $0 == 1 || $0 == -1 })
        #expect(v == HutchinsonTrace.rademacherProbe(seed: 3, probe: 0, counts: [70, 5]))
        #expect(v != HutchinsonTrace.rademacherProbe(seed: 3, probe: 1, counts: [70, 5]))
    }

    @Test func aggressivePruningKHandExample() {
        // mean = 2: only the 5 is above it; a value equal to the mean gets k = 2.
        #expect(aggressivePruningK(omega: [1, 5, 2, 0]) == [2, 1, 2, 2])
        #expect(aggressivePruningK(omega: [3, 3]) == [2, 2])
        #expect(aggressivePruningK(omega: []) == [])
    }

    @Test func sensitivityHandExample() {
        // W = [0.5, -1, 0.3, 0.1], 2 bits: s = 1, Q = s·j/2 with j = clamp(round(4·(1/2 + W/2)), 0, 3) − 2
        //   → j = [1, −2, 1, 0] (round(2.6) = 3 → 1; round(2.2) = 2 → 0), Q = [0.5, −1, 0.5, 0].
        let w = Parameter(Tensor(shape: [2, 2], scalars: [0.5, -1, 0.3, 0.1]))
        let layer = QuantizedLayer(path: "fc", parameter: w, quantizer: RoundClampQuantizer(bits: 2), count: 4)
        let err = Double(Float(0.5) - Float(0.3)) * Double(Float(0.5) - Float(0.3)) + Double(Float(0.1)) * Double(Float(0.1))
        let omega = sensitivity(traces: [8], layers: [layer])
        #expect(abs(omega[0] - 8.0 / 4.0 * err) < 1e-12)
    }
}
