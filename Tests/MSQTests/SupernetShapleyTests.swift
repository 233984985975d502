import MSQ
import Testing

// SMPQ-SPEC §3 on a real network: players are (layer, candidate) pairs, v is top-1 accuracy on a
// fixed batch with the players outside the coalition masked.

@Suite("SMPQ supernet game")
struct SupernetShapleyTests {
    /// SmallNet with a supernet weight on every conv/linear layer, and a batch of 24 images.
    private func game(candidates: [Int] = [2, 4, 8]) throws -> SupernetGame {
        let model = makeSmallNet(seed: 4)
        var layers: [SupernetWeight] = []
        for (_, module) in quantizableLayers(of: model) {
            let supernet = SupernetWeight(candidates: candidates)
            (module as? Conv2d)?.weightTransform = supernet
            (module as? Linear)?.weightTransform = supernet
            layers.append(supernet)
        }
        let data = try SyntheticDataset(count: 24, sampleShape: [1, 8, 8], numClasses: 4, seed: 5)
        let batch = try calibrationBatch(from: data, normalization: Normalization(mean: [0.5], std: [0.3]), count: 24)
        return SupernetGame(model: model, layers: layers, images: batch.images, labels: batch.labels)
    }

    @Test("v(all players) is the supernet's eval accuracy; masks are restored after each evaluation; a layer with no candidate left computes with zeros")
    func value() throws {
        let g = try game()
        #expect(g.playerCount == 9 && g.offsets == [0, 3, 6])
        let all = [Bool](repeating: true, count: 9)
        let logits = g.model.forward(g.images, mode: .eval)
        #expect(g.value(all) == topOneAccuracy(logits, labels: g.labels))
        var withoutFC = all
        withoutFC[6...8] = [false, false, false]
        _ = g.value(withoutFC)
        #expect(g.layers.allSatisfy { $0.active == [true, true, true] })
        // The last layer's weight is zero: the logits are its bias alone, the same for every image.
        g.layers[2].active = [false, false, false]
        let biasOnly = g.model.forward(g.images, mode: .eval).scalars
        #expect(Array(biasOnly[0..<4]) == Array(biasOnly[4..<8]))
        g.layers[2].active = [true, true, true]
    }

    @Test("φ per layer and candidate: efficiency Σφ = v(all) − v(none) over untruncated walks, 1 + M·players evaluations, reproducible per estimate")
    func shapley() throws {
        let g = try game()
        let estimator = MonteCarloShapley(permutations: 3, truncation: 0, seed: 2)
        let (phi, se, evaluations) = g.shapley(estimator, estimate: 0)
        #expect(phi.count == 3 && phi.allSatisfy { $0.count == 3 } && se.count == 3)
        #expect(evaluations == 1 + 3 * 9)
        let full = g.value([Bool](repeating: true, count: 9)), none = g.value([Bool](repeating: false, count: 9))
        #expect(abs(phi.joined().reduce(0, +) - (full - none)) < 1e-12)
        #expect(g.shapley(estimator, estimate: 0).phi == phi)
    }

    @Test("top-1 accuracy: the first of tied maxima counts; rows of another count are refused as 0")
    func topOne() {
        let logits = Tensor(shape: [3, 3], scalars: [0, 2, 2, 5, 1, 0, -1, -3, -2])
        #expect(topOneAccuracy(logits, labels: [1, 0, 0]) == 1)
        #expect(topOneAccuracy(logits, labels: [2, 0, 2]) == 1.0 / 3)
        #expect(topOneAccuracy(logits, labels: [0, 0]) == 0)
    }
}
