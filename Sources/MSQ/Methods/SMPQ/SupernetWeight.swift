import Foundation

/// A DMPQ/SMPQ supernet layer's weight (SMPQ-SPEC §1): one mixed weight over candidate precisions,
///
///     W_mix = Σ_b p_b · Q_b(W),   p = softmax(α) over the active candidates,
///
/// with Q_b the RoundClamp quantizer at b bits (MSQ-SPEC §1, per tensor or per output channel). One
/// convolution per layer, not one per candidate. Gradients: to W through each Q_b by its STE,
/// dL/dW = Σ_b p_b · STE_b(dL/dW_mix); to α exactly, dL/dα_b = p_b · (⟨g, Q_b(W)⟩ − ⟨g, W_mix⟩)
/// for active b and 0 for masked ones. A layer whose candidates are all masked computes with zeros
/// (the Shapley value function's empty layer).
public final class SupernetWeight: WeightTransform {
    /// The candidate precisions b, sign included, in α's order.
    public let candidates: [Int]
    /// α, one logit per candidate, shape `[candidates.count]`; trained by the architecture step (no decay).
    public let alpha: Parameter
    /// Which candidates take part (the Shapley walk masks players); all by default.
    public var active: [Bool]
    let quantizers: [RoundClampQuantizer]

    /// A supernet weight over `candidates` (each in 2…16, no repeats) with α = 0 (uniform p).
    public init(candidates: [Int], granularity: ScaleGranularity = .perTensor) {
        precondition(!candidates.isEmpty && Set(candidates).count == candidates.count && candidates.allSatisfy { msqBitRange.contains($0) },
                     "SupernetWeight: candidates must be distinct precisions in 2...16 (got \(candidates))")
        self.candidates = candidates
        self.alpha = Parameter(Tensor(shape: [candidates.count]), decays: false)
        self.active = [Bool](repeating: true, count: candidates.count)
        self.quantizers = candidates.map { RoundClampQuantizer(bits: $0, granularity: granularity) }
    }

    /// p_b = softmax(α) over the active candidates (0 for masked ones), computed in Double.
    public var probabilities: [Double] {
        let logits = alpha.value.scalars.map(Double.init)
        let top = zip(logits, active).filter(\.1).map(\.0).max() ?? 0
        let weights = zip(logits, active).map { $1 ? exp($0 - top) : 0 }
        let total = weights.reduce(0, +)
        return weights.map { total > 0 ? $0 / total : 0 }
    }

    /// W_mix; shape of `weight`.
    public func forward(_ weight: Tensor) -> Tensor {
        let p = probabilities
        var mixed = Tensor(shape: weight.shape)
        for (b, quantizer) in quantizers.enumerated() where p[b] > 0 {
            mixed += Float(p[b]) * quantizer.forward(weight)
        }
        return mixed
    }

    /// dL/dW by the candidates' STEs; accumulates dL/dα into ``alpha``'s gradient.
    public func backward(gradEffective: Tensor, weight: Tensor) -> Tensor {
        let p = probabilities
        // Q_b(W) again rather than cached from forward: deterministic, and memory stays one weight.
        let quantized = quantizers.enumerated().map { b, q in p[b] > 0 ? q.forward(weight) : nil }
        var mixed = Tensor(shape: weight.shape), dw = Tensor(shape: weight.shape)
        for (b, q) in quantized.enumerated() {
            guard let q else { continue }
            mixed += Float(p[b]) * q
            dw += Float(p[b]) * quantizers[b].backward(gradEffective: gradEffective, weight: weight)
        }
        let mixedDot = gradEffective.dot(mixed)
        alpha.grad.withUnsafeMutablePointer { da in
            for (b, q) in quantized.enumerated() {
                guard let q else { continue }
                da[b] += Float(p[b] * (gradEffective.dot(q) - mixedDot))
            }
        }
        return dw
    }

    /// α, as `<layer>.smpq.alpha`.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        body(joinPath(prefix, "smpq.alpha"), alpha)
    }
}
