import CKernels
import Foundation

/// One pass of the LSB regulariser over the quantized layers: the value R and per-layer LSB statistics.
public struct LSBReport {
    /// R(W) = (1/N_total) · Σ_l Σ_i |lsb_{l,i}| (MSQ-SPEC §2, Eq. 6), N_total = Σ_l N_l. Not multiplied by λ.
    public var regularizer: Double
    /// λ · Σ_l w_l Σ_i |lsb_{l,i}| / N_total: the term added to the loss, with the per-layer
    /// weights w_l of ``LSBRegularizer/lambdaScaling`` (all 1 for ``LambdaScaling/uniform``).
    public var weightedRegularizer: Double
    /// Per layer, in the regulariser's layer order: the module path, the LSB nonzero rate
    /// r_l = #{i : lsb_int_{l,i} ≠ 0} / N_l (MSQ-SPEC §3), and Σ_i |lsb_{l,i}| (in double).
    /// A layer at n_min has no coarser grid: it is neither regularised nor measured, and its rate
    /// is nil (MSQ-SPEC §2).
    public var layers: [(path: String, nonzeroRate: Double?, absSum: Double)]

    /// Bundles a regulariser value and per-layer statistics.
    public init(regularizer: Double, weightedRegularizer: Double,
                layers: [(path: String, nonzeroRate: Double?, absSum: Double)]) {
        self.regularizer = regularizer
        self.weightedRegularizer = weightedRegularizer
        self.layers = layers
    }
}

/// How λ is weighted per layer: the paper's single λ, or a weight that grows as a layer's
/// precision falls so the regulariser still acts at the low precisions where decisions are made.
///
/// The pull per weight is λ · w_l · 2^(n_l) / (2 s N_total) with w_l = 2^(e · (8 − n_l)):
/// e = 0 (``uniform``, MSQ-SPEC §2 as written) makes the pull 32x weaker at 3 bits than at 8;
/// e = 1 (``constantPull``) keeps it at its 8-bit value at every precision.
public enum LambdaScaling: String, Codable, Sendable, CaseIterable {
    /// w_l = 1: Eq. 6–7 literally.
    case uniform
    /// w_l = 2^(8 − n_l): the pull per weight does not shrink with the precision.
    case constantPull = "constant-pull"

    /// The exponent e of w_l = 2^(e · (8 − n_l)).
    var exponent: Double {
        switch self {
        case .uniform: 0
        case .constantPull: 1
        }
    }

    /// w_l for a layer at `bits`.
    public func weight(bits: Int) -> Double { Foundation.pow(2, exponent * Double(8 - bits)) }
}

/// MSQ's LSB regulariser (MSQ-SPEC §2, paper Eqs. 3, 5–8) over a model's quantized layers.
///
/// For layer l at precision n = n_l dropping k = k_l LSBs, with s = max|W_l| and w~ = 1/2 + W/(2s):
///
///     q_{n−k} = clamp(round(2^(n−k) · w~), 0, 2^(n−k) − 1)        (no gradient through it)
///     lsb     = 2^n · w~ − 2^k · q_{n−k}
///     R(W)    = (1/N_total) · Σ_l Σ_i |lsb_{l,i}|,    N_total = Σ_l N_l
///     λ·dR/dW = sign(lsb) · λ · 2^n / (2 s) / N_total             (Eq. 7)
///
/// k is bounded by what the layer may still drop, k_eff = min(k_l, n_l − n_min), and a layer at
/// n_min is skipped: it has no coarser grid to be pulled to (MSQ-SPEC §2).
///
/// The objective is L = L_task(Q(W)) + λ·R(W) (Eq. 8), each layer's term weighted by
/// ``lambdaScaling``. ``apply()`` adds λ·dR/dW into each layer
/// weight's `grad` (call it after the task loss's backward, before the optimizer step);
/// ``measure()`` computes the same statistics without touching gradients. Each layer takes one
/// fused kernel pass (`msq_lsb_forward_backward`). The layers' precisions are read from their
/// quantizers at every call, so pruning is picked up automatically; N_total is fixed at init.
public final class LSBRegularizer {
    /// The quantized layers, in the order of ``k`` and of the report.
    public let layers: [QuantizedLayer]
    /// λ, the regulariser's weight in the objective.
    public var lambda: Double
    /// k_l per layer (same order as ``layers``), the number of LSBs the layer drops at its next
    /// pruning; default 1 (the Hessian-aware scheduler sets 1 or 2). A layer's effective k is
    /// min(k_l, n_l − n_min) (``effectiveK(_:)``).
    public var k: [Int] {
        didSet { precondition(k.count == layers.count && k.allSatisfy { $0 >= 1 },
                              "LSBRegularizer: k needs \(layers.count) entries, each >= 1") }
    }
    /// N_total = Σ_l N_l over ``layers``.
    public let totalCount: Int
    /// n_min: the precision no layer goes below; a layer there is neither regularised nor measured.
    public let minBits: Int
    /// The per-layer weight of λ (``LambdaScaling``).
    public var lambdaScaling: LambdaScaling

    /// A regulariser over `layers` with weight `lambda` and floor `minBits` (n_min); every k_l
    /// starts at 1.
    public init(layers: [QuantizedLayer], lambda: Double, minBits: Int = 2, lambdaScaling: LambdaScaling = .uniform) {
        precondition(minBits >= 1, "LSBRegularizer: minBits \(minBits) < 1")
        self.layers = layers
        self.lambda = lambda
        self.minBits = minBits
        self.lambdaScaling = lambdaScaling
        self.k = Array(repeating: 1, count: layers.count)
        self.totalCount = layers.reduce(0) { $0 + $1.count }
    }

    /// k_l for the layer at module path `path` (nil if no such layer).
    public func k(forPath path: String) -> Int? {
        layers.firstIndex { $0.path == path }.map { k[$0] }
    }

    /// Sets k_l for the layers named in `values` (path → k). Precondition: every path is a layer here.
    public func setK(_ values: [String: Int]) {
        var next = k
        for (path, value) in values {
            guard let i = layers.firstIndex(where: { $0.path == path }) else {
                preconditionFailure("LSBRegularizer: no quantized layer at path '\(path)'")
            }
            next[i] = value
        }
        k = next
    }

    /// The k the layer at `index` is regularised, measured and pruned with: min(k_l, n_l − n_min);
    /// 0 for a layer at (or below) n_min, which is skipped.
    public func effectiveK(_ index: Int) -> Int {
        max(0, min(k[index], layers[index].bits - minBits))
    }

    /// Computes R and the per-layer statistics and ADDS λ·dR/dW (Eq. 7, coeff = λ/N_total) into each
    /// layer weight's `grad`. One fused pass per layer.
    @discardableResult
    public func apply() -> LSBReport { run(accumulateGradient: true) }

    /// Computes R and the per-layer statistics without touching any gradient.
    public func measure() -> LSBReport { run(accumulateGradient: false) }

    /// The proximal step of t·|lsb| on the layer at `index`, in place: every weight moves toward
    /// its nearest (n−k)-bit level (k = ``effectiveK(_:)``) by at most t n-bit levels and stops
    /// there (`msq_lsb_prox`, per scale group). Weights whose coarse code is clamped at the top are
    /// left, so s = max|W| stays put. A layer at n_min is left unchanged.
    ///
    ///     t    = levels + extra · 2^n / (2s)      (`extra` in weight units, per scale group's s)
    ///     lsb' = sign(lsb) · max(0, |lsb| − t),    W += (lsb' − lsb) · 2s / 2^n
    public func proximalStep(layer index: Int, levels: Double, extra: Double = 0) {
        let kk = effectiveK(index)
        guard kk > 0 else { return }
        let layer = layers[index]
        let (groups, size) = layer.quantizer.granularity.groups(shape: layer.parameter.value.shape)
        let perUnit = Foundation.pow(2, Double(layer.bits)) / 2
        layer.parameter.value.withUnsafeMutablePointer { wp in
            for c in 0..<groups {
                let at = wp + c * size
                let s = msq_absmax(at, size)
                guard s > 0 else { continue }
                let t = levels + extra * perUnit / Double(s)
                msq_lsb_prox(at, size, s, Int32(layer.bits), Int32(kk), Float(t))
            }
        }
    }

    private func run(accumulateGradient: Bool) -> LSBReport {
        guard totalCount > 0 else { return LSBReport(regularizer: 0, weightedRegularizer: 0, layers: []) }
        var total = 0.0, weighted = 0.0
        var stats: [(path: String, nonzeroRate: Double?, absSum: Double)] = []
        stats.reserveCapacity(layers.count)
        for (i, layer) in layers.enumerated() {
            guard effectiveK(i) > 0 else {
                stats.append((layer.path, nil, 0))
                continue
            }
            let scale = lambdaScaling.weight(bits: layer.bits)
            let coeff = Float(lambda * scale / Double(totalCount))
            let p = layer.parameter
            let w = p.value
            let n = w.count, bits = Int32(layer.bits), kk = Int32(effectiveK(i))
            var absSum = 0.0
            var nonzero: Int64 = 0
            // One fused pass per scale group (the whole tensor, or each output channel with its own
            // s_c = max|W_c|: the formulas hold per channel, MSQ-SPEC §1), sums added in group order.
            let (groups, size) = layer.quantizer.granularity.groups(shape: w.shape)
            func pass(_ wp: UnsafePointer<Float>, _ g: UnsafeMutablePointer<Float>?) {
                for c in 0..<groups {
                    let at = c * size
                    var groupAbs = 0.0
                    var groupNonzero: Int64 = 0
                    msq_lsb_forward_backward(nil, &groupAbs, &groupNonzero, g.map { $0 + at }, wp + at, size,
                                             msq_absmax(wp + at, size), bits, kk, coeff)
                    absSum += groupAbs
                    nonzero += groupNonzero
                }
            }
            w.withUnsafePointer { wp in
                if accumulateGradient {
                    precondition(p.grad.count == n, "LSBRegularizer: '\(layer.path)' has no gradient of \(n) elements")
                    p.grad.withUnsafeMutablePointer { g in pass(wp, g) }
                } else {
                    pass(wp, nil)
                }
            }
            total += absSum
            weighted += scale * absSum
            stats.append((layer.path, n > 0 ? Double(nonzero) / Double(n) : 0, absSum))
        }
        return LSBReport(regularizer: total / Double(totalCount),
                         weightedRegularizer: lambda * weighted / Double(totalCount), layers: stats)
    }
}
