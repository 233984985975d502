import CKernels

/// One pass of the LSB regulariser over the quantized layers: the value R and per-layer LSB statistics.
public struct LSBReport {
    /// R(W) = (1/N_total) · Σ_l Σ_i |lsb_{l,i}| (MSQ-SPEC §2, Eq. 6), N_total = Σ_l N_l. Not multiplied by λ.
    public var regularizer: Double
    /// Per layer, in the regulariser's layer order: the module path, the LSB nonzero rate
    /// r_l = #{i : lsb_int_{l,i} ≠ 0} / N_l (MSQ-SPEC §3), and Σ_i |lsb_{l,i}| (in double).
    public var layers: [(path: String, nonzeroRate: Double, absSum: Double)]

    /// Bundles a regulariser value and per-layer statistics.
    public init(regularizer: Double, layers: [(path: String, nonzeroRate: Double, absSum: Double)]) {
        self.regularizer = regularizer
        self.layers = layers
    }
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
/// The objective is L = L_task(Q(W)) + λ·R(W) (Eq. 8). ``apply()`` adds λ·dR/dW into each layer
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
    /// min(k_l, n_l − 1), since the kernel needs 1 ≤ k < n (a 2-bit layer always uses k = 1).
    public var k: [Int] {
        didSet { precondition(k.count == layers.count && k.allSatisfy { $0 >= 1 },
                              "LSBRegularizer: k needs \(layers.count) entries, each >= 1") }
    }
    /// N_total = Σ_l N_l over ``layers``.
    public let totalCount: Int

    /// A regulariser over `layers` with weight `lambda`; every k_l starts at 1.
    public init(layers: [QuantizedLayer], lambda: Double) {
        self.layers = layers
        self.lambda = lambda
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

    /// The k the kernel uses for layer `index`: min(k_l, n_l − 1), at least 1.
    public func effectiveK(_ index: Int) -> Int {
        max(1, min(k[index], layers[index].bits - 1))
    }

    /// Computes R and the per-layer statistics and ADDS λ·dR/dW (Eq. 7, coeff = λ/N_total) into each
    /// layer weight's `grad`. One fused pass per layer.
    @discardableResult
    public func apply() -> LSBReport { run(accumulateGradient: true) }

    /// Computes R and the per-layer statistics without touching any gradient.
    public func measure() -> LSBReport { run(accumulateGradient: false) }

    private func run(accumulateGradient: Bool) -> LSBReport {
        guard totalCount > 0 else { return LSBReport(regularizer: 0, layers: []) }
        let coeff = Float(lambda / Double(totalCount))
        var total = 0.0
        var stats: [(path: String, nonzeroRate: Double, absSum: Double)] = []
        stats.reserveCapacity(layers.count)
        for (i, layer) in layers.enumerated() {
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
            stats.append((layer.path, n > 0 ? Double(nonzero) / Double(n) : 0, absSum))
        }
        return LSBReport(regularizer: total / Double(totalCount), layers: stats)
    }
}
