/// The players of an SMPQ supernet and the value of a coalition of them (SMPQ-SPEC §3).
///
/// Players are the (layer, candidate) pairs, layer-major: player `k` of layer `l` is
/// `offsets[l] + j` for candidate j. v(S) is the top-1 accuracy, in eval mode, of the supernet on
/// one fixed batch with every player outside S masked (a layer renormalises p over its remaining
/// candidates, and one with none left computes with a zero weight).
public struct SupernetGame {
    /// The supernet layers, in walk order.
    public let layers: [SupernetWeight]
    /// The network they belong to.
    public let model: any Module
    /// The fixed validation batch, `[N, C, H, W]`, normalised.
    public let images: Tensor
    /// Its labels, N of them.
    public let labels: [Int32]

    /// The game of `model`'s supernet `layers` on one batch.
    public init(model: any Module, layers: [SupernetWeight], images: Tensor, labels: [Int32]) {
        precondition(images.shape.first == labels.count, "SupernetGame: \(labels.count) labels for a batch of shape \(images.shape)")
        self.model = model
        self.layers = layers
        self.images = images
        self.labels = labels
    }

    /// Σ_l |B_l|.
    public var playerCount: Int { layers.reduce(0) { $0 + $1.candidates.count } }

    /// The first player of each layer.
    public var offsets: [Int] {
        var out: [Int] = [], at = 0
        for layer in layers {
            out.append(at)
            at += layer.candidates.count
        }
        return out
    }

    /// v(S) for the coalition `active` (one flag per player); the layers' masks are restored after.
    public func value(_ active: [Bool]) -> Double {
        precondition(active.count == playerCount, "SupernetGame: \(active.count) flags for \(playerCount) players")
        let saved = layers.map(\.active)
        defer { for (layer, mask) in zip(layers, saved) { layer.active = mask } }
        var at = 0
        for layer in layers {
            layer.active = Array(active[at..<(at + layer.candidates.count)])
            at += layer.candidates.count
        }
        return topOneAccuracy(model.forward(images, mode: .eval), labels: labels)
    }

    /// φ per player by `estimator` (its `estimate`-th draw), reshaped per layer: `[l][j]` is
    /// candidate j of layer l.
    public func shapley(_ estimator: MonteCarloShapley, estimate: Int) -> (phi: [[Double]], standardErrors: [[Double]], evaluations: Int) {
        perLayer(estimator.estimate(playerCount: playerCount, estimate: estimate, value: value))
    }

    /// ``shapley(_:estimate:)`` with the permutations split over `collective`'s ranks
    /// (``MonteCarloShapley/estimate(playerCount:estimate:collective:value:)``): every rank plays the
    /// same game (identical replicas, the same batch) and gets the one-process values.
    /// - Throws: ``CollectiveError`` if the ranks' sum fails.
    public func shapley(_ estimator: MonteCarloShapley, estimate: Int,
                        collective: any Collective) throws -> (phi: [[Double]], standardErrors: [[Double]], evaluations: Int) {
        perLayer(try estimator.estimate(playerCount: playerCount, estimate: estimate, collective: collective, value: value))
    }

    /// A flat estimate as `[l][j]`.
    private func perLayer(_ e: ShapleyEstimate) -> (phi: [[Double]], standardErrors: [[Double]], evaluations: Int) {
        var phi: [[Double]] = [], se: [[Double]] = [], at = 0
        for layer in layers {
            phi.append(Array(e.values[at..<(at + layer.candidates.count)]))
            se.append(Array(e.standardErrors[at..<(at + layer.candidates.count)]))
            at += layer.candidates.count
        }
        return (phi, se, e.evaluations)
    }
}

/// The fraction of rows of `logits` (`[N, K]`) whose largest entry (the first, on ties) is the label.
public func topOneAccuracy(_ logits: Tensor, labels: [Int32]) -> Double {
    let n = labels.count
    guard n > 0, logits.shape.count == 2, logits.shape[0] == n else { return 0 }
    let k = logits.shape[1]
    let values = logits.scalars
    var correct = 0
    for i in 0..<n {
        var best = i * k
        for j in (i * k)..<((i + 1) * k) where values[j] > values[best] { best = j }
        if best - i * k == Int(labels[i]) { correct += 1 }
    }
    return Double(correct) / Double(n)
}
