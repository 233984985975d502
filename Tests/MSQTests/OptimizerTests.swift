import MSQ
import Testing

/// One step's parameter and moments, as torch.optim.AdamW left them.
private typealias Expected = (w: [Float], m: [Float], v: [Float])

/// Fixed inputs of the PyTorch transcription (bench/scripts/adamw_reference.py).
private let startWeights: [Float] = [0.5, -1.25, 2.0, 0.0, -0.0625, 3.5, -2.75]
private let gradients: [[Float]] = [[0.1, -0.2, 0.3, 0.0, 1.5, -0.01, 0.25],
                                    [-0.3, 0.05, 0.3, 0.2, -1.0, 0.02, 0.25],
                                    [0.7, -0.4, -0.1, -0.2, 0.5, 0.0, 0.25]]

/// torch.optim.AdamW (PyTorch 2.15.0, foreach=False, float32) after steps 1, 2, 3.
private let pytorchDecayed: [Expected] = [
    // lr 0.01, betas (0.9, 0.999), eps 1e-08, weight_decay 0.05
    (w: [0.489749998, -1.239375, 1.98899996, 0, -0.0724687502, 3.50825, -2.75862503],
     m: [0.0100000007, -0.0200000014, 0.0300000012, 0, 0.150000006, -0.00100000005, 0.0250000004],
     v: [1.00000007e-05, 4.00000026e-05, 9.00000086e-05, 0, 0.0022499999, 1.00000001e-07, 6.2500003e-05]),
    (w: [0.494447023, -1.23406053, 1.97800541, -0.00744136702, -0.0738777146, 3.5028348, -2.76724553],
     m: [-0.0209999997, -0.0130000012, 0.0570000038, 0.0200000014, 0.0350000076, 0.00109999999, 0.0474999994],
     v: [9.99900076e-05, 4.24600039e-05, 0.000179910014, 4.00000026e-05, 0.00324774999, 4.99900011e-07, 0.000124937505]),
    (w: [0.489949584, -1.22610271, 1.97095931, -0.00698582456, -0.0766258612, 3.49825335, -2.77586174],
     m: [0.0511000045, -0.0516999997, 0.0413000025, -0.0019999987, 0.0815000087, 0.000989999971, 0.0677499995],
     v: [0.000589890056, 0.000202417548, 0.000189730112, 7.9960002e-05, 0.00349450228, 4.9940013e-07, 0.000187312573]),
]
private let pytorchUndecayed: [Expected] = [
    // lr 0.1, betas (0.8, 0.99), eps 0.001, weight_decay 0
    (w: [0.400990099, -1.15049756, 1.90033221, 0, -0.162433386, 3.590909, -2.84960151],
     m: [0.0200000014, -0.0400000028, 0.0600000024, 0, 0.300000012, -0.00200000009, 0.0500000007],
     v: [0.000100000005, 0.000400000019, 0.000900000043, 0, 0.022499999, 9.99999997e-07, 0.000624999986]),
    (w: [0.455297619, -1.1087693, 1.80066442, -0.0778218508, -0.171151251, 3.55130935, -2.94920301],
     m: [-0.0440000035, -0.0220000017, 0.108000003, 0.0400000028, 0.0400000177, 0.00239999988, 0.0900000036],
     v: [0.00099900004, 0.000421000033, 0.00179100013, 0.000400000019, 0.0322749987, 4.98999998e-06, 0.00124374998]),
    (w: [0.407176942, -1.03231156, 1.74669743, -0.0678688437, -0.196242809, 3.52299762, -3.04880452],
     m: [0.104800001, -0.0975999981, 0.066399999, -0.00799999945, 0.132000014, 0.00191999995, 0.122000001],
     v: [0.00588900968, 0.00201679021, 0.00187309016, 0.000796000066, 0.0344522521, 4.9401001e-06, 0.0018563125]),
]

/// PyTorch's vectorised CPU kernels may fuse a multiply-add (lerp, addcmul) where ours round
/// twice, so a step may differ in the last bit or two of a float.
private let pytorchRelTol: Float = 4e-7
private let pytorchAbsTol: Float = 1e-9

/// A 1×7 linear layer without bias: one decaying parameter holding `startWeights`.
private func sevenWeights() -> Linear {
    var rng = RandomSource(seed: 0)
    let layer = Linear(inFeatures: 7, outFeatures: 1, bias: false, rng: &rng)
    layer.weight.value = Tensor(shape: [1, 7], scalars: startWeights)
    return layer
}

private func expectClose(_ actual: [Float], _ expected: [Float], _ what: String) {
    for (i, (a, e)) in zip(actual, expected).enumerated() {
        #expect(abs(a - e) <= pytorchAbsTol + pytorchRelTol * abs(e), "\(what)[\(i)]: \(a), PyTorch \(e)")
    }
}

@Suite("Optimizers")
struct OptimizerTests {
    @Test("AdamW matches torch.optim.AdamW step by step", arguments: [true, false])
    func adamWMatchesPyTorch(decayed: Bool) {
        let layer = sevenWeights()
        let adamW = decayed
            ? AdamW(model: layer, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.05)
            : AdamW(model: layer, beta1: 0.8, beta2: 0.99, epsilon: 1e-3, weightDecay: 0)
        let lr = decayed ? 0.01 : 0.1
        for (t, (g, expected)) in zip(gradients, decayed ? pytorchDecayed : pytorchUndecayed).enumerated() {
            layer.weight.grad = Tensor(shape: [1, 7], scalars: g)
            adamW.step(learningRate: lr)
            expectClose(layer.weight.value.scalars, expected.w, "step \(t + 1) w")
            expectClose(adamW.firstMoments[0].scalars, expected.m, "step \(t + 1) exp_avg")
            expectClose(adamW.secondMoments[0].scalars, expected.v, "step \(t + 1) exp_avg_sq")
        }
        #expect(adamW.steps == 3)
    }

    @Test("AdamW's decay skips parameters that do not decay")
    func adamWDecayOnlyWhereItApplies() {
        // With a zero gradient the moments stay 0 and the update is the decay alone.
        let layer = sevenWeights()
        let adamW = AdamW(model: layer, weightDecay: 0.5)
        adamW.step(learningRate: 0.1)
        #expect(layer.weight.value.scalars == startWeights.map { $0 * Float(1 - 0.1 * 0.5) })
        layer.weight.decays = false
        let before = layer.weight.value.scalars
        adamW.step(learningRate: 0.1)
        #expect(layer.weight.value.scalars == before)
    }

    @Test("AdamW state round-trips and a negative second moment is refused by name")
    func adamWStateRestore() throws {
        let layer = sevenWeights()
        let adamW = AdamW(model: layer)
        layer.weight.grad = Tensor(shape: [1, 7], scalars: gradients[0])
        adamW.step(learningRate: 0.01)
        let saved = adamW.state
        #expect(saved.steps == 1)
        #expect(saved.tensors.map(\.name) == ["optimizer.exp_avg.weight", "optimizer.exp_avg_sq.weight"])

        let other = AdamW(model: sevenWeights())
        try other.restore(saved)
        #expect(other.steps == 1)
        #expect(other.firstMoments[0].scalars == adamW.firstMoments[0].scalars)
        #expect(other.secondMoments[0].scalars == adamW.secondMoments[0].scalars)

        var bad = saved
        bad.tensors[1].tensor = Tensor(shape: [1, 7], scalars: [0, 0, -1, 0, 0, 0, 0])
        #expect(throws: CheckpointError.invalidField(path: "optimizer state", field: "optimizer.exp_avg_sq.weight",
                                                     problem: "holds a negative second moment")) {
            try other.restore(bad)
        }
        var noCount = saved
        noCount.steps = nil
        #expect(throws: CheckpointError.self) { try other.restore(noCount) }
    }

    @Test("SGD takes a Double learning rate, like the schedules, and keeps its momentum state name")
    func sgdDoubleLearningRate() throws {
        let layer = sevenWeights()
        let sgd = SGD(model: layer, momentum: 0, weightDecay: 0, nesterov: false)
        layer.weight.grad = Tensor(shape: [1, 7], scalars: gradients[0])
        let schedule = LearningRateSchedule(base: 0.5, warmupSteps: 0, totalSteps: 10)
        sgd.step(learningRate: schedule.learningRate(at: 0))
        #expect(layer.weight.value.scalars == zip(startWeights, gradients[0]).map { $0 - 0.5 * $1 })
        #expect(sgd.state.tensors.map(\.name) == ["optimizer.momentum.weight"])
        #expect(sgd.state.steps == nil)
    }
}
