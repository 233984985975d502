import Foundation
import MSQ
import Testing

// The R-operator Hessian-vector products (HessianMode.exact and .gaussNewton) against the
// double-precision reference network of HessianConvNetTests, with ReLU (piecewise linear) and GELU.

/// Float32 R-operator HVP vs the double-precision stencil: ‖Hv − ref‖ / ‖ref‖ (round-off only;
/// central differences in float32 need 1e-3, HessianConvNetTests).
private let rOperatorRelativeTolerance = 1e-4
/// Gauss-Newton and exact diagonal blocks of a piecewise-linear network: equal up to round-off.
private let gaussNewtonBlockTolerance = 1e-4
/// Off a piecewise-linear network (or off the diagonal), GN and exact must differ by at least this.
private let gaussNewtonDifferenceFloor = 1e-2
/// Symmetry of the Hessian built column by column from float32 HVPs: ‖H − Hᵀ‖_F / ‖H‖_F.
private let columnHessianSymmetryTolerance = 1e-4
/// Per-layer trace from R-operator columns vs from double-stencil columns, relative to Σ|H_ii|.
private let columnTraceTolerance = 1e-4

private func norm(_ a: [Double]) -> Double { a.reduce(0) { $0 + $1 * $1 }.squareRoot() }
private func relativeError(_ a: [Double], _ ref: [Double]) -> Double {
    norm(zip(a, ref).map { $0 - $1 }) / norm(ref)
}

/// A probe that is Gaussian on layer `layer` (all layers when nil) and zero elsewhere.
private func probe(_ rng: inout RandomSource, counts: [Int], layer: Int?) -> [Double] {
    counts.enumerated().flatMap { l, n in
        (0..<n).map { _ in layer == nil || layer == l ? Double(rng.nextGaussian()) : 0 }
    }
}

/// Expects that neither a ReLU nor a max-pool window changes at any point the stencil evaluates
/// (also HessianFloat64Tests).
func expectNoKinkCrossed(_ problem: ConvNetProblem, _ theta: [Double], _ v: [Double], _ what: String) {
    let reference = problem.reference
    let signs = reference.activationSigns(theta), winners = reference.maxPoolWinners(theta).argmax
    let t = ReferenceConvNet.stencilStep(theta, v, relativeStep: reference.stencilRelativeStep)
    for s in [t, -t, 2 * t, -2 * t] {
        let moved = zip(theta, v).map { $0 + s * $1 }
        let flips = zip(reference.activationSigns(moved), signs).filter { $0 != $1 }.count
        let changed = zip(reference.maxPoolWinners(moved).argmax, winners).filter { $0 != $1 }.count
        #expect(flips == 0, "\(what): \(flips) ReLUs change sign at step \(s); choose another seed")
        #expect(changed == 0, "\(what): \(changed) max-pool winners change at step \(s)")
    }
}

@Suite("Hessian modes: R-operator and Gauss-Newton") struct HessianModeTests {
    @Test("the automatic mode is Gauss-Newton for ReLU networks and the exact R-operator for GELU ones")
    func automaticMode() throws {
        #expect(HessianMode.automatic(for: try ConvNetProblem(seed: 201, activation: .relu).model) == .gaussNewton)
        #expect(HessianMode.automatic(for: try ConvNetProblem(seed: 201).model) == .exact)
        #expect(HessianMode.automatic(for: makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)) == .gaussNewton)
        #expect(HessianMode.automatic(for: makeModel(.resnet50, inputChannels: 3, numClasses: 10, seed: 0)) == .gaussNewton)
    }

    @Test("exact HVP of a ReLU conv net matches double-precision central differences where no ReLU flips")
    func reluExactMatchesStencil() throws {
        let problem = try ConvNetProblem(seed: 202, activation: .relu)
        let hvp = HessianVectorProduct(model: problem.model, layers: problem.layers, images: problem.images,
                                       labels: problem.labels, mode: .exact)
        let theta = problem.theta
        var rng = RandomSource(seed: 31)
        for trial in 0..<4 {
            let v = probe(&rng, counts: hvp.layerCounts, layer: nil)
            expectNoKinkCrossed(problem, theta, v, "trial \(trial)")
            let hv = try hvp.apply(problem.split(v)).flatMap { $0 }
            let err = relativeError(hv, problem.reference.hvp(theta, v))
            #expect(err < rOperatorRelativeTolerance, "trial \(trial): relative error \(err)")
        }
        // For the record: the old float32 central differences on one more probe.
        let cd = HessianVectorProduct(model: problem.model, layers: problem.layers, images: problem.images,
                                      labels: problem.labels, mode: .centralDifference)
        let v = probe(&rng, counts: hvp.layerCounts, layer: nil)
        let cdError = relativeError(try cd.apply(problem.split(v)).flatMap { $0 }, problem.reference.hvp(theta, v))
        print("HessianModeTests: float32 central differences on the ReLU net: relative error \(cdError)")
    }

    @Test("Gauss-Newton diagonal blocks equal the exact ones on a ReLU net; off-diagonal blocks differ")
    func gaussNewtonBlocksOnReLU() throws {
        let problem = try ConvNetProblem(seed: 203, activation: .relu)
        func hvp(_ mode: HessianMode) -> HessianVectorProduct {
            HessianVectorProduct(model: problem.model, layers: problem.layers, images: problem.images,
                                 labels: problem.labels, mode: mode)
        }
        let (gn, exact) = (hvp(.gaussNewton), hvp(.exact))
        var rng = RandomSource(seed: 41)
        var offDiagonal: [Double] = []
        for l in problem.layers.indices {
            let v = problem.split(probe(&rng, counts: gn.layerCounts, layer: l))
            let (a, b) = (try gn.apply(v), try exact.apply(v))
            let err = relativeError(a[l], b[l])
            #expect(err < gaussNewtonBlockTolerance, "\(problem.layers[l].path): GN vs exact diagonal block \(err)")
            let rest = problem.layers.indices.filter { $0 != l }
            offDiagonal.append(relativeError(rest.flatMap { a[$0] }, rest.flatMap { b[$0] }))
        }
        #expect(offDiagonal.allSatisfy { $0 > gaussNewtonDifferenceFloor }, "off-diagonal GN vs exact: \(offDiagonal)")
    }

    @Test("Gauss-Newton differs from the exact Hessian on a diagonal block of a GELU net (not piecewise linear)")
    func gaussNewtonDiffersOnGELU() throws {
        let problem = try ConvNetProblem(seed: 204)
        let gn = HessianVectorProduct(model: problem.model, layers: problem.layers, images: problem.images,
                                      labels: problem.labels, mode: .gaussNewton)
        let exact = HessianVectorProduct(model: problem.model, layers: problem.layers, images: problem.images,
                                         labels: problem.labels, mode: .exact)
        var rng = RandomSource(seed: 43)
        // block1.conv1 sits between two GELUs: its own block has a second-derivative term.
        let l = 1
        let v = problem.split(probe(&rng, counts: gn.layerCounts, layer: l))
        let err = relativeError(try gn.apply(v)[l], try exact.apply(v)[l])
        #expect(err > gaussNewtonDifferenceFloor, "GELU block GN vs exact: \(err)")
        let ref = problem.reference.hvp(problem.theta, v.flatMap { $0 })
        let counts = gn.layerCounts
        let start = counts[..<l].reduce(0, +)
        let refBlock = Array(ref[start..<start + counts[l]])
        #expect(relativeError(try exact.apply(v)[l], refBlock) < rOperatorRelativeTolerance)
    }

    @Test("The Hessian of a ReLU conv net built column by column from R-operator HVPs: symmetric, and its per-layer traces equal the double stencil's")
    func columnHessianTrace() throws {
        let problem = try ConvNetProblem(seed: 205, activation: .relu)
        let hvp = HessianVectorProduct(model: problem.model, layers: problem.layers, images: problem.images,
                                       labels: problem.labels, mode: .exact)
        let counts = hvp.layerCounts, total = counts.reduce(0, +)
        let theta = problem.theta
        var columns: [[Double]] = []
        var diagonalStencil = [Double](repeating: 0, count: total)
        for i in 0..<total {
            var e = [Double](repeating: 0, count: total)
            e[i] = 1
            columns.append(try hvp.apply(problem.split(e)).flatMap { $0 })
            // The stencil's own diagonal entry, on every 13th column (the double reference is slow).
            if i % 13 == 0 {
                expectNoKinkCrossed(problem, theta, e, "column \(i)")
                diagonalStencil[i] = problem.reference.hvp(theta, e)[i]
            }
        }
        var asym = 0.0, frob = 0.0
        for i in 0..<total { for j in 0..<total {
            asym += pow(columns[i][j] - columns[j][i], 2)
            frob += columns[i][j] * columns[i][j]
        } }
        #expect((asym / frob).squareRoot() < columnHessianSymmetryTolerance)
        var start = 0
        for (l, n) in counts.enumerated() {
            let idx = (start..<start + n).filter { $0 % 13 == 0 }
            let ours = idx.reduce(0.0) { $0 + columns[$1][$1] }
            let ref = idx.reduce(0.0) { $0 + diagonalStencil[$1] }
            let scale = idx.reduce(0.0) { $0 + abs(diagonalStencil[$1]) }
            #expect(abs(ours - ref) <= columnTraceTolerance * max(scale, 1e-12), "\(problem.layers[l].path): \(ours) vs \(ref)")
            start += n
        }
        // Hutchinson with Gauss-Newton products converges to the same per-layer traces.
        let exactTraces = counts.indices.map { l in
            (counts[..<l].reduce(0, +)..<counts[...l].reduce(0, +)).reduce(0.0) { $0 + columns[$1][$1] }
        }
        let est = try HutchinsonTrace(model: problem.model, layers: problem.layers, images: problem.images,
                                      labels: problem.labels, seed: 3, maxProbes: 400, minProbes: 400,
                                      mode: .gaussNewton).estimate()
        for l in counts.indices {
            let se = est.variances[l].squareRoot()
            #expect(abs(est.traces[l] - exactTraces[l]) <= 5 * se + 1e-9,
                    "\(problem.layers[l].path): Hutchinson \(est.traces[l]) ± \(se) vs exact \(exactTraces[l])")
        }
    }

    @Test("R-operator modes leave weights, gradients and tangents as they were, and name a module without an R-operator")
    func sideEffectsAndUnsupportedModules() throws {
        let problem = try ConvNetProblem(seed: 206, activation: .relu)
        problem.model.zeroGradients()
        let before = problem.model.namedParameters().map { $0.parameter.value.scalars.map(\.bitPattern) }
        let hvp = HessianVectorProduct(model: problem.model, layers: problem.layers, images: problem.images,
                                       labels: problem.labels, mode: .exact)
        var rng = RandomSource(seed: 5)
        _ = try hvp.apply(problem.split(probe(&rng, counts: hvp.layerCounts, layer: nil)))
        #expect(problem.model.namedParameters().map { $0.parameter.value.scalars.map(\.bitPattern) } == before)
        for (_, p) in problem.model.namedParameters() {
            #expect(p.tangent == nil && p.hessianVector == nil)
            if p.trainable { #expect(p.grad.scalars.allSatisfy { $0 == 0 }) }
        }
        final class Opaque: Module {
            func forward(_ input: Tensor, mode: ForwardMode) -> Tensor { input }
            func backward(_ gradOutput: Tensor) -> Tensor { gradOutput }
            func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
        }
        let wrapped = Sequential(named: [("net", problem.model), ("opaque", Opaque())])
        #expect(HessianMode.automatic(for: wrapped) == .centralDifference)
        let forced = HessianVectorProduct(model: wrapped, layers: problem.layers, images: problem.images,
                                          labels: problem.labels, mode: .exact)
        #expect(throws: CurvatureError.unsupportedModule(path: "opaque", type: "Opaque")) {
            _ = try forced.apply(problem.split(probe(&rng, counts: forced.layerCounts, layer: nil)))
        }
    }
}
