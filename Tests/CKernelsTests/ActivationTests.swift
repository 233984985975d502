import CKernels
import Foundation
import Testing

// Activation kernels: fast vs reference, hand values incl. PyTorch's derivatives at the kinks,
// accumulation, and central differences away from the kinks.

private typealias Kit = KernelTestKit

/// The fast kernels evaluate the same per-element float expression as the reference (no
/// reassociation, no FMA contraction), so they must agree bit for bit.
private let actFastVsRefTol: Float = 0
/// Hand values are rounded to float; GELU's reference values come from erf in double.
private let actHandTol: Float = 2e-6
/// GELU's erf and exp are polynomials (vector_math.h): against erf and exp in double over
/// [−10, 10], absolute error per unit of max(1, |value|).
private let geluExactTol: Float = 1e-6
/// Central differences: relu/relu6/hardswish are piecewise polynomials of degree <= 2, for which
/// central differences are exact; GELU's truncation error is ~h^2/6 * |f'''| < 1e-4.
private let actGradStep: Float = 1e-2
private let actGradAbsTol = 1e-3
private let actGradRelTol = 1e-3

/// The activations as a Sendable test argument.
enum ActivationTestKind: Int32, CaseIterable, Sendable {
    case relu = 0, relu6 = 1, hardswish = 2, gelu = 3, hardsigmoid = 4
    var c: msq_activation { msq_activation(rawValue: UInt32(rawValue)) }
    /// Points where the derivative jumps; finite differences keep clear of them.
    var kinks: [Float] {
        switch self {
        case .relu: [0]
        case .relu6: [0, 6]
        case .hardswish, .hardsigmoid: [-3, 3]
        case .gelu: []
        }
    }
}

private func forward(_ x: [Float], _ kind: ActivationTestKind, fast: Bool) -> [Float] {
    var y = [Float](repeating: .nan, count: x.count)
    (fast ? msq_activation_forward : msq_activation_forward_ref)(&y, x, x.count, kind.c)
    return y
}

private func backward(_ dx0: [Float], _ dy: [Float], _ x: [Float], _ kind: ActivationTestKind, fast: Bool) -> [Float] {
    var dx = dx0
    (fast ? msq_activation_backward : msq_activation_backward_ref)(&dx, dy, x, x.count, kind.c)
    return dx
}

/// Element counts built from the odd sizes, the last one large enough to go parallel.
private let actCounts = [1, 3, 7, 17 * 33, 33 * 33 * 17 * 7]

@Suite("Activation kernels")
struct ActivationTests {
    @Test("GELU and its derivative match erf and exp in double over [−10, 10]", arguments: [false, true])
    func geluAgainstDouble(fast: Bool) {
        let x = (0...4000).map { Float(-10 + Double($0) * 0.005) }
        let y = forward(x, .gelu, fast: fast)
        let d = backward([Float](repeating: 0, count: x.count), [Float](repeating: 1, count: x.count), x, .gelu, fast: fast)
        var worstY: Float = 0, worstD: Float = 0
        for (i, v) in x.enumerated() {
            let xd = Double(v), cdf = 0.5 * (1 + erf(xd / 2.0.squareRoot())), pdf = exp(-xd * xd / 2) / (2 * Double.pi).squareRoot()
            worstY = max(worstY, Float(abs(Double(y[i]) - xd * cdf) / max(1, abs(xd * cdf))))
            worstD = max(worstD, Float(abs(Double(d[i]) - (cdf + xd * pdf)) / max(1, abs(cdf + xd * pdf))))
        }
        #expect(worstY <= geluExactTol, "GELU: worst error \(worstY)")
        #expect(worstD <= geluExactTol, "GELU': worst error \(worstD)")
    }

    @Test("fast forward and backward match the reference", arguments: ActivationTestKind.allCases, actCounts)
    func fastMatchesReference(kind: ActivationTestKind, count: Int) {
        var rng = Kit.SplitMix64(seed: UInt64(count) &* 31 &+ UInt64(kind.rawValue))
        var x = rng.floats(count, -8, 8)
        // Put the kinks themselves (and -0) in, so their conventions are compared too.
        for (i, k) in ([-0.0, 0, 6, -3, 3] as [Float]).enumerated() where i < count {
            x[(i * 7919) % count] = k
        }
        let dy = rng.floats(count, -1, 1)
        let dx0 = rng.floats(count, -1, 1)
        let ref = forward(x, kind, fast: false)
        let refB = backward(dx0, dy, x, kind, fast: false)
        for threads in Kit.threadCounts {
            msq_set_num_threads(threads)
            let tag = "\(kind) count=\(count) threads=\(threads)"
            Kit.expectClose(forward(x, kind, fast: true), ref, atol: actFastVsRefTol, rtol: 0, "y \(tag)")
            Kit.expectClose(backward(dx0, dy, x, kind, fast: true), refB, atol: actFastVsRefTol, rtol: 0, "dx \(tag)")
        }
    }

    @Test("hand-computed values and derivatives, PyTorch's at the kinks", arguments: [false, true])
    func handValues(fast: Bool) {
        let x: [Float] = [-4, -3, -1, 0, 1, 3, 4, 6, 7]
        let phi1 = 0.5 * (1 + erf(1 / 2.0.squareRoot()))   // Phi(1)
        let pdf1 = exp(-0.5) / (2 * Double.pi).squareRoot() // phi(1)
        let cases: [(ActivationTestKind, y: [Float], dydx: [Float])] = [
            (.relu, [0, 0, 0, 0, 1, 3, 4, 6, 7], [0, 0, 0, 0, 1, 1, 1, 1, 1]),
            (.relu6, [0, 0, 0, 0, 1, 3, 4, 6, 6], [0, 0, 0, 0, 1, 1, 1, 0, 0]),
            // x * relu6(x + 3) / 6; derivative 0 below -3, x/3 + 1/2 on [-3, 3], 1 above.
            (.hardswish, [0, 0, -1.0 / 3, 0, 2.0 / 3, 3, 4, 6, 7],
             [0, -0.5, 1.0 / 6, 0.5, 5.0 / 6, 1.5, 1, 1, 1]),
            // relu6(x + 3) / 6; derivative 1/6 strictly inside (-3, 3), 0 at and beyond ±3.
            (.hardsigmoid, [0, 0, 1.0 / 3, 0.5, 2.0 / 3, 1, 1, 1, 1],
             [0, 0, 1.0 / 6, 1.0 / 6, 1.0 / 6, 0, 0, 0, 0]),
        ]
        for (kind, y, dydx) in cases {
            Kit.expectClose(forward(x, kind, fast: fast), y, atol: actHandTol, rtol: actHandTol, "\(kind) y")
            // Starting from dx = 1 checks that backward accumulates.
            let dx = backward([Float](repeating: 1, count: x.count), [Float](repeating: 2, count: x.count), x, kind,
                              fast: fast)
            Kit.expectClose(dx, dydx.map { 1 + 2 * $0 }, atol: actHandTol, rtol: actHandTol, "\(kind) dx")
        }
        let gx: [Float] = [-1, 0, 1]
        Kit.expectClose(forward(gx, .gelu, fast: fast), [Float(-(1 - phi1)), 0, Float(phi1)], atol: actHandTol,
                        rtol: actHandTol, "gelu y")
        // gelu'(x) = Phi(x) + x phi(x): gelu'(0) = 1/2, gelu'(+-1) = Phi(+-1) +- phi(1).
        let gd = backward([1, 1, 1], [2, 2, 2], gx, .gelu, fast: fast)
        Kit.expectClose(gd, [Float(1 + 2 * ((1 - phi1) - pdf1)), 2, Float(1 + 2 * (phi1 + pdf1))], atol: actHandTol,
                        rtol: actHandTol, "gelu dx")
    }

    @Test("NaN propagates through the forward", arguments: ActivationTestKind.allCases)
    func nanPropagates(kind: ActivationTestKind) {
        #expect(forward([.nan], kind, fast: true)[0].isNaN)
        #expect(forward([.nan], kind, fast: false)[0].isNaN)
    }

    @Test("backward matches central differences of the forward", arguments: ActivationTestKind.allCases, [false, true])
    func backwardMatchesFiniteDifferences(kind: ActivationTestKind, fast: Bool) {
        var rng = Kit.SplitMix64(seed: 40 &+ UInt64(kind.rawValue))
        let x = (0..<65).map { _ -> Float in
            while true {
                let v = rng.uniform(-6, 8)
                if kind.kinks.allSatisfy({ abs(v - $0) > 4 * actGradStep }) { return v }
            }
        }
        let dy = rng.floats(x.count, -1, 1)
        let dx = backward([Float](repeating: 0, count: x.count), dy, x, kind, fast: fast)
        Kit.checkGradient(at: x, analytic: dx, indices: Array(x.indices), h: actGradStep, atol: actGradAbsTol,
                          rtol: actGradRelTol, "\(kind) dx") { v in
            Kit.project(forward(v, kind, fast: fast), dy)
        }
    }
}
