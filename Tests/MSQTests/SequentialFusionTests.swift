import MSQ
import Testing

// Sequential runs a batch norm followed by a ReLU or a hard-swish as one fused pass; the result
// must be the two layers' bit for bit, in both modes, for outputs, input gradients, parameter
// gradients and running statistics.

/// conv → BN → `kind` → conv, from `seed`: the fusion sits between two other layers.
private func layers(seed: UInt64, kind: ActivationKind) -> [any Module] {
    var rng = RandomSource(seed: seed)
    return [Conv2d(inChannels: 3, outChannels: 5, kernelSize: 3, padding: 1, bias: false, rng: &rng),
            BatchNorm2d(channels: 5), Activation(kind),
            Conv2d(inChannels: 5, outChannels: 4, kernelSize: 1, bias: true, rng: &rng)]
}

/// Every parameter's value (running statistics included) and gradient, as bit patterns, in
/// visiting order; gradients only when `values` is false.
private func state(_ modules: [any Module], values: Bool = true) -> [[UInt32]] {
    var out: [[UInt32]] = []
    for m in modules {
        m.visitParameters(prefix: "") { _, p in
            if values { out.append(p.value.scalars.map(\.bitPattern)) }
            out.append(p.grad.scalars.map(\.bitPattern))
        }
    }
    return out
}

@Suite("Sequential batch norm + activation fusion")
struct SequentialFusionTests {
    @Test("conv → BN → ReLU or hard-swish → conv in a Sequential equals the layers run one by one, bit for bit",
          arguments: [ForwardMode.train, .eval], [ActivationKind.relu, .hardswish])
    func bitIdentical(mode: ForwardMode, kind: ActivationKind) {
        let fusedLayers = layers(seed: 4, kind: kind), plain = layers(seed: 4, kind: kind)
        let sequential = Sequential(fusedLayers)
        var rng = RandomSource(seed: 9)
        // Values straddling 0 after the batch norm, so the ReLU masks some of them.
        let x = Tensor.randomNormal([2, 3, 5, 6], std: 1, using: &rng)
        let g = Tensor.randomNormal([2, 4, 5, 6], std: 1, using: &rng)
        for _ in 0..<2 {  // twice: the second pass runs on updated running statistics
            sequential.zeroGradients()
            for m in plain { m.zeroGradients() }
            let y = sequential.forward(x, mode: mode)
            var yPlain = x
            for m in plain { yPlain = m.forward(yPlain, mode: mode) }
            #expect(y.scalars.map(\.bitPattern) == yPlain.scalars.map(\.bitPattern))
            let dx = sequential.backward(g)
            var dxPlain = g
            for m in plain.reversed() { dxPlain = m.backward(dxPlain) }
            #expect(dx.scalars.map(\.bitPattern) == dxPlain.scalars.map(\.bitPattern))
            #expect(state(fusedLayers) == state(plain))
        }
        // backwardParameters (no input gradient for the first layer) gives the same parameter
        // gradients (each forward in train mode moves the running statistics, so values differ).
        sequential.zeroGradients()
        _ = sequential.forward(x, mode: mode)
        sequential.backwardParameters(g)
        let viaParameters = state(fusedLayers, values: false)
        sequential.zeroGradients()
        _ = sequential.forward(x, mode: mode)
        _ = sequential.backward(g)
        #expect(viaParameters == state(fusedLayers, values: false))
    }
}
