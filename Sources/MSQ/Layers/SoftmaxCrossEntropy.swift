import CKernels

/// Why a loss could not be computed from the given labels.
public enum LossError: Error, Equatable, CustomStringConvertible {
    /// `labels[index]` is not a class index in `0..<numClasses`.
    case labelOutOfRange(index: Int, label: Int32, numClasses: Int)

    /// A message naming the label, its position and the valid range.
    public var description: String {
        switch self {
        case let .labelOutOfRange(index, label, numClasses):
            return "label \(label) at batch position \(index) is outside 0..<\(numClasses): the data's labels do not match the model's number of classes"
        }
    }
}

/// Softmax cross-entropy with optional label smoothing, averaged over the batch.
///
/// For logits `z[N, K]` and labels `t[N]`: `p = softmax(z)` per row, target
/// `q_ij = (1 − ε)·[j = t_i] + ε/K`, `loss = −(1/N) Σ_i Σ_j q_ij · log p_ij`.
/// ``backward(scale:)`` returns `dloss/dz = scale · (p − q) / N`.
public final class SoftmaxCrossEntropy {
    /// Label smoothing ε in [0, 1).
    public let labelSmoothing: Float
    /// Softmax probabilities `[N, K]` of the last forward (nil before the first).
    public private(set) var probabilities: Tensor?
    private var cachedLabels: [Int32] = []

    /// A loss with label smoothing `labelSmoothing` (0 = plain cross-entropy).
    public init(labelSmoothing: Float = 0) {
        LayerKit.require(labelSmoothing >= 0 && labelSmoothing < 1,
                         "SoftmaxCrossEntropy: label smoothing must be in [0, 1) (got \(labelSmoothing))")
        self.labelSmoothing = labelSmoothing
    }

    /// The mean loss over the batch; keeps the probabilities for ``backward(scale:)``.
    /// - Throws: ``LossError/labelOutOfRange(index:label:numClasses:)`` if a label is not in `0..<K`.
    public func forward(logits: Tensor, labels: [Int32]) throws(LossError) -> Float {
        let d = logits.shape
        LayerKit.require(d.count == 2 && d[0] > 0 && d[1] > 0,
                         "SoftmaxCrossEntropy: expected logits [N, K], got \(d)")
        LayerKit.require(labels.count == d[0],
                         "SoftmaxCrossEntropy: \(labels.count) labels for a batch of \(d[0]) logits")
        let (n, k) = (d[0], d[1])
        probabilities = nil
        if let bad = labels.firstIndex(where: { $0 < 0 || Int($0) >= k }) {
            throw .labelOutOfRange(index: bad, label: labels[bad], numClasses: k)
        }
        var probs = Tensor(shape: d)
        var loss: Float = 0
        let rc = logits.withUnsafePointer { z in
            probs.withUnsafeMutablePointer { p in
                labels.withUnsafeBufferPointer { t in
                    msq_softmax_cross_entropy_forward(&loss, p, z, t.baseAddress!, LayerKit.c(n), LayerKit.c(k),
                                                      labelSmoothing)
                }
            }
        }
        LayerKit.require(rc == 0, "SoftmaxCrossEntropy: kernel rejected labels that passed the range check")
        probabilities = probs
        cachedLabels = labels
        return loss
    }

    /// dloss/dlogits `[N, K]` of the last forward, multiplied by `scale`: `scale · (p − q) / N`.
    public func backward(scale: Float = 1) -> Tensor {
        guard let probs = probabilities else {
            fatalError("SoftmaxCrossEntropy: backward called without a successful forward")
        }
        let (n, k) = (probs.shape[0], probs.shape[1])
        var grad = Tensor(shape: probs.shape)
        probs.withUnsafePointer { p in
            cachedLabels.withUnsafeBufferPointer { t in
                grad.withUnsafeMutablePointer { g in
                    msq_softmax_cross_entropy_backward(g, p, t.baseAddress!, LayerKit.c(n), LayerKit.c(k),
                                                       labelSmoothing, scale)
                }
            }
        }
        return grad
    }

    /// The Hessian of the last forward's mean loss w.r.t. the logits times `rz [N, K]`:
    /// `(diag p_i − p_i p_iᵀ)·rz_i / N` per row (`msq_softmax_cross_entropy_hvp`; label smoothing
    /// does not change it, the smoothed targets still sum to one).
    public func hessianProduct(_ rz: Tensor) -> Tensor {
        guard let probs = probabilities else {
            fatalError("SoftmaxCrossEntropy: hessianProduct called without a successful forward")
        }
        LayerKit.require(rz.shape == probs.shape,
                         "SoftmaxCrossEntropy: tangent shape \(rz.shape) does not match logits \(probs.shape)")
        var out = Tensor(unfilledShape: probs.shape)
        probs.withUnsafePointer { p in
            rz.withUnsafePointer { t in
                out.withUnsafeMutablePointer { o in
                    msq_softmax_cross_entropy_hvp(o, p, t, LayerKit.c(probs.shape[0]), LayerKit.c(probs.shape[1]))
                }
            }
        }
        return out
    }
}

/// The predicted class of each row of `logits [N, K]`: the index of the row's maximum
/// (the first one on ties; NaN never wins).
public func predictedClasses(logits: Tensor) -> [Int32] {
    let d = logits.shape
    LayerKit.require(d.count == 2 && d[1] > 0, "predictedClasses: expected logits [N, K], got \(d)")
    let (n, k) = (d[0], d[1])
    return logits.withUnsafePointer { z in
        (0..<n).map { i in
            let row = z + i * k
            var best = 0
            for j in 1..<max(k, 1) where row[j] > row[best] || (row[best].isNaN && !row[j].isNaN) { best = j }
            return Int32(best)
        }
    }
}

/// The number of rows of `logits [N, K]` whose argmax equals the label: `Σ_i [argmax_j z_ij = t_i]`.
public func correctPredictions(logits: Tensor, labels: [Int32]) -> Int {
    LayerKit.require(logits.shape.count == 2 && labels.count == logits.shape[0],
                     "correctPredictions: \(labels.count) labels for logits \(logits.shape)")
    return zip(predictedClasses(logits: logits), labels).reduce(0) { $0 + ($1.0 == $1.1 ? 1 : 0) }
}
