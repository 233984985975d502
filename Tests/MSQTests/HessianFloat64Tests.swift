import Foundation
import MSQ
import Testing

// HessianPrecision.float64: the R-operator modes in double against the double-precision reference
// network of HessianConvNetTests, against the float32 passes, and its errors.

/// Float64 R-operator vs the double stencil: ‖Hv − ref‖ / ‖ref‖. The stencil's own error is below
/// 1e-9 (HessianConvNetTests); a float32 pass is off by ~1e-6 here, so this fails on one.
private let float64StencilTolerance = 1e-8
/// Gauss-Newton vs exact diagonal blocks of a piecewise-linear net, both in double.
private let float64GaussNewtonBlockTolerance = 1e-11
/// Off the diagonal, GN and exact must differ by at least this.
private let float64GaussNewtonDifferenceFloor = 1e-2
/// Float64 vs float32 R-operator on a ResNet at random weights and inputs (no cancelling block).
private let float64VersusFloat32Tolerance = 1e-3

private func l2(_ a: [Double]) -> Double { a.reduce(0) { $0 + $1 * $1 }.squareRoot() }
private func relErr(_ a: [Double], _ ref: [Double]) -> Double { l2(zip(a, ref).map { $0 - $1 }) / l2(ref) }

/// A Gaussian probe on layer `layer` (every layer when nil), zero elsewhere.
private func gaussianProbe(_ rng: inout RandomSource, counts: [Int], layer: Int?) -> [Double] {
    counts.enumerated().flatMap { l, n in (0..<n).map { _ in layer == nil || layer == l ? Double(rng.nextGaussian()) : 0 } }
}

@Suite("Hessian-vector products in float64") struct HessianFloat64Tests {
    private func hvp(_ p: ConvNetProblem, _ mode: HessianMode, _ precision: HessianPrecision) -> HessianVectorProduct {
        HessianVectorProduct(model: p.model, layers: p.layers, images: p.images, labels: p.labels, mode: mode,
                             precision: precision)
    }

    @Test("the float64 exact HVP of a ReLU conv net matches the double stencil to round-off; float32 does not")
    func exactMatchesStencil() throws {
        let problem = try ConvNetProblem(seed: 202, activation: .relu)
        let (f64, f32) = (hvp(problem, .exact, .float64), hvp(problem, .exact, .float32))
        let theta = problem.theta
        var rng = RandomSource(seed: 37)
        var float32Errors: [Double] = []
        for trial in 0..<3 {
            let v = gaussianProbe(&rng, counts: f64.layerCounts, layer: nil)
            expectNoKinkCrossed(problem, theta, v, "trial \(trial)")
            let ref = problem.reference.hvp(theta, v)
            let err = relErr(try f64.apply(problem.split(v)).flatMap { $0 }, ref)
            #expect(err < float64StencilTolerance, "trial \(trial): float64 relative error \(err)")
            float32Errors.append(relErr(try f32.apply(problem.split(v)).flatMap { $0 }, ref))
        }
        // The tolerance separates the precisions: a float32 pass would not pass it.
        #expect(float32Errors.allSatisfy { $0 > float64StencilTolerance }, "float32 errors \(float32Errors)")
    }

    @Test("float64 Gauss-Newton diagonal blocks equal the exact ones on a ReLU net; off-diagonal blocks differ")
    func gaussNewtonBlocks() throws {
        let problem = try ConvNetProblem(seed: 203, activation: .relu)
        let (gn, exact) = (hvp(problem, .gaussNewton, .float64), hvp(problem, .exact, .float64))
        var rng = RandomSource(seed: 47)
        var offDiagonal: [Double] = []
        for l in problem.layers.indices {
            let v = problem.split(gaussianProbe(&rng, counts: gn.layerCounts, layer: l))
            let (a, b) = (try gn.apply(v), try exact.apply(v))
            let err = relErr(a[l], b[l])
            #expect(err < float64GaussNewtonBlockTolerance, "\(problem.layers[l].path): GN vs exact diagonal block \(err)")
            let rest = problem.layers.indices.filter { $0 != l }
            offDiagonal.append(relErr(rest.flatMap { a[$0] }, rest.flatMap { b[$0] }))
        }
        #expect(offDiagonal.allSatisfy { $0 > float64GaussNewtonDifferenceFloor }, "off-diagonal GN vs exact: \(offDiagonal)")
    }

    @Test("float tensors in, the double result rounded out; weights and parameters untouched")
    func tensorsAndSideEffects() throws {
        let problem = try ConvNetProblem(seed: 206, activation: .relu)
        let h = hvp(problem, .exact, .float64)
        var rng = RandomSource(seed: 53)
        let v = problem.split(gaussianProbe(&rng, counts: h.layerCounts, layer: nil).map { Double(Float($0)) })
        let before = problem.model.namedParameters().map { ($0.name, $0.parameter.value.scalars, $0.parameter.grad.scalars) }
        let doubles = try h.apply(v)
        let tensors = try h.apply(tensors: zip(v, problem.layers).map {
            Tensor(shape: $1.parameter.value.shape, scalars: $0.map(Float.init))
        })
        for (d, t) in zip(doubles, tensors) { #expect(t.scalars == d.map(Float.init)) }
        let after = problem.model.namedParameters()
        for ((name, value, grad), now) in zip(before, after) {
            #expect(now.parameter.value.scalars == value && now.parameter.grad.scalars == grad, "\(name) changed")
            #expect(now.parameter.tangent == nil && now.parameter.hessianVector == nil, "\(name) kept a tangent")
        }
    }

    @Test("ResNet-20 and ResNet-18: float64 and float32 R-operators agree where float32 is well conditioned")
    func resNetsAgree() throws {
        for (kind, side) in [(ModelKind.resnet20, 12), (.resnet18, 32)] {
            let model = makeModel(kind, inputChannels: 1, numClasses: 5, seed: 3)
            var rng = RandomSource(seed: 59)
            let images = Tensor.randomNormal([2, 1, side, side], std: 1, using: &rng)
            for _ in 0..<2 { _ = model.forward(images, mode: .train) }  // running statistics, so eval is not the identity
            let layers = try quantizeForMSQ(model)
            let labels: [Int32] = [1, 4]
            for mode in [HessianMode.exact, .gaussNewton] {
                let f64 = HessianVectorProduct(model: model, layers: layers, images: images, labels: labels, mode: mode, precision: .float64)
                let f32 = HessianVectorProduct(model: model, layers: layers, images: images, labels: labels, mode: mode)
                let v = HutchinsonTrace.probeTensors(seed: 1, probe: 0, counts: f64.layerCounts)
                let (a, b) = (try f64.apply(tensors: v), try f32.apply(tensors: v))
                let err = relErr(a.flatMap { $0.scalars.map(Double.init) }, b.flatMap { $0.scalars.map(Double.init) })
                #expect(err < float64VersusFloat32Tolerance, "\(kind) \(mode): float64 vs float32 \(err)")
            }
        }
    }

    @Test("inspectHessian and the Hutchinson estimator take the precision: float64 traces equal float32's to round-off here")
    func inspectionPrecision() throws {
        let problem = try ConvNetProblem(seed: 209, activation: .relu)
        func report(_ precision: HessianPrecision) throws -> [LayerHessianReport] {
            try inspectHessian(model: problem.model, layers: problem.layers, images: problem.images, labels: problem.labels,
                               mode: .exact, probes: 3, seed: 5, maxIterations: 4, quantized: false, precision: precision).layers
        }
        let (a, b) = (try report(.float64), try report(.float32))
        for (x, y) in zip(a, b) {
            #expect(abs(x.trace - y.trace) <= float64VersusFloat32Tolerance * abs(y.trace), "\(x.path): trace \(x.trace) vs \(y.trace)")
            #expect(abs(x.topEigenvalue - y.topEigenvalue) <= float64VersusFloat32Tolerance * abs(y.topEigenvalue),
                    "\(x.path): λ \(x.topEigenvalue) vs \(y.topEigenvalue)")
        }
        let estimator = HutchinsonTrace(model: problem.model, layers: problem.layers, images: problem.images, labels: problem.labels,
                                        seed: 5, maxProbes: 3, minProbes: 3, relativeTolerance: 0, mode: .exact, precision: .float64)
        #expect(estimator.hvp.precision == .float64)
        #expect(try estimator.estimate().traces == a.map(\.trace))
    }

    @Test("float64 names the module without a float64 pass, refuses central differences, and checks labels")
    func errors() throws {
        let gelu = try ConvNetProblem(seed: 207)
        #expect(throws: CurvatureError.noFloat64Path(path: "act", type: "Activation",
                                                     reason: "gelu is not piecewise linear; only ReLU and ReLU6 have a float64 R-pass")) {
            try hvp(gelu, .exact, .float64).apply(gelu.split([Double](repeating: 1, count: gelu.theta.count)))
        }
        let relu = try ConvNetProblem(seed: 208, activation: .relu)
        let ones = relu.split([Double](repeating: 1, count: relu.theta.count))
        #expect(throws: CurvatureError.float64NeedsROperator) { try hvp(relu, .centralDifference, .float64).apply(ones) }
        let bad = HessianVectorProduct(model: relu.model, layers: relu.layers, images: relu.images,
                                       labels: relu.labels.map { _ in 7 }, mode: .exact, precision: .float64)
        #expect(throws: LossError.labelOutOfRange(index: 0, label: 7, numClasses: 3)) { try bad.apply(ones) }
    }
}
