import CKernels
import MSQ
import Testing

/// Naive NCHW convolution in Double, the reference for the layer's forward.
func referenceConv(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: Int, pad: Int, groups: Int) -> [Double] {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let (cout, cpg, k) = (w.shape[0], w.shape[1], w.shape[2])
    let ho = (h + 2 * pad - k) / stride + 1, wo = (wd + 2 * pad - k) / stride + 1
    let opg = cout / groups
    var y = [Double](repeating: 0, count: n * cout * ho * wo)
    for b0 in 0..<n { for o in 0..<cout { for i in 0..<ho { for j in 0..<wo {
        var s = b.map { Double($0[flat: o]) } ?? 0
        let g = o / opg
        for c in 0..<cpg { for u in 0..<k { for v in 0..<k {
            let hi = i * stride - pad + u, wj = j * stride - pad + v
            if hi < 0 || hi >= h || wj < 0 || wj >= wd { continue }
            let ci = g * cpg + c
            s += Double(x[flat: ((b0 * cin + ci) * h + hi) * wd + wj]) * Double(w[flat: ((o * cpg + c) * k + u) * k + v])
        } } }
        y[((b0 * cout + o) * ho + i) * wo + j] = s
    } } } }
    return y
}

func maxAbsDifference(_ a: Tensor, _ b: [Double]) -> Double {
    precondition(a.count == b.count)
    var m = 0.0
    for i in 0..<a.count { m = max(m, abs(Double(a[flat: i]) - b[i])) }
    return m
}

@Suite("Layer") struct LayerTests {
    @Test("Conv2d forward matches a naive convolution", arguments: GradientCheckTests.convCases)
    func convForward(_ c: ConvCase) {
        var rng = RandomSource(seed: 31)
        let conv = Conv2d(inChannels: c.cin, outChannels: c.cout, kernelSize: c.k, stride: c.stride,
                          padding: c.pad, groups: c.groups, bias: c.bias, rng: &rng)
        let x = randomTensor([2, c.cin, c.h, c.w], rng: &rng)
        let y = conv.forward(x, mode: .eval)
        let ho = (c.h + 2 * c.pad - c.k) / c.stride + 1, wo = (c.w + 2 * c.pad - c.k) / c.stride + 1
        #expect(y.shape == [2, c.cout, ho, wo])
        #expect(conv.outputShape(for: x.shape) == y.shape)
        let ref = referenceConv(x, conv.weight.value, conv.bias?.value, stride: c.stride, pad: c.pad, groups: c.groups)
        #expect(maxAbsDifference(y, ref) < 1e-4)
    }

    @Test("Conv2d computes with the transformed weight and routes the gradient through the transform")
    func convWeightTransform() {
        var rng = RandomSource(seed: 32)
        let conv = Conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, padding: 1, bias: false, rng: &rng)
        let x = randomTensor([1, 2, 4, 4], rng: &rng)
        let dy = randomTensor([1, 3, 4, 4], rng: &rng)
        let plainY = conv.forward(x, mode: .train)
        conv.zeroGradients()
        let plainDx = conv.backward(dy)
        let plainGrad = conv.weight.grad

        conv.weightTransform = ScalingTransform(factor: 3)
        #expect(conv.effectiveWeight.scalars == conv.weight.value.scalars.map { $0 * 3 })
        let y = conv.forward(x, mode: .train)
        conv.zeroGradients()
        let dx = conv.backward(dy)
        for i in 0..<y.count { #expect(abs(y[flat: i] - 3 * plainY[flat: i]) <= 1e-4 * max(1, abs(y[flat: i]))) }
        // effective = 3w: dx scales by 3, and dL/dw = 3 · dL/dEffective = 3 · (dL/dw of the plain layer).
        for i in 0..<dx.count { #expect(abs(dx[flat: i] - 3 * plainDx[flat: i]) <= 1e-4 * max(1, abs(dx[flat: i]))) }
        for i in 0..<plainGrad.count {
            #expect(abs(conv.weight.grad[flat: i] - 3 * plainGrad[flat: i]) <= 1e-4 * max(1, abs(plainGrad[flat: i])))
        }
    }

    @Test("Linear forward matches x·Wᵀ + b; the weight transform applies")
    func linearForward() {
        var rng = RandomSource(seed: 33)
        let fc = Linear(inFeatures: 4, outFeatures: 3, rng: &rng)
        let x = randomTensor([2, 4], rng: &rng)
        for factor in [Float(1), -2] {
            fc.weightTransform = factor == 1 ? nil : ScalingTransform(factor: factor)
            let y = fc.forward(x, mode: .eval)
            #expect(y.shape == [2, 3])
            for n in 0..<2 {
                for o in 0..<3 {
                    var s = Double(fc.bias!.value[flat: o])
                    for i in 0..<4 { s += Double(x[flat: n * 4 + i]) * Double(factor * fc.weight.value[flat: o * 4 + i]) }
                    #expect(abs(Double(y[flat: n * 3 + o]) - s) < 1e-5)
                }
            }
        }
    }

    @Test("Layer initialisation follows the documented distributions")
    func initialisation() {
        var rng = RandomSource(seed: 34)
        let conv = Conv2d(inChannels: 64, outChannels: 64, kernelSize: 3, bias: true, rng: &rng)
        let w = conv.weight.value.scalars.map(Double.init)
        let std = (w.reduce(0) { $0 + $1 * $1 } / Double(w.count)).squareRoot()
        #expect(abs(std - (2.0 / (64 * 9)).squareRoot()) < 0.03 * (2.0 / (64 * 9)).squareRoot())
        #expect(conv.bias!.value.scalars.allSatisfy { abs($0) <= 1 / Float(64 * 9).squareRoot() })
        #expect(conv.weight.decays && !conv.bias!.decays)
        let fc = Linear(inFeatures: 64, outFeatures: 10, rng: &rng)
        #expect((fc.weight.value.scalars + fc.bias!.value.scalars).allSatisfy { abs($0) <= 0.125 })
        #expect(fc.weight.decays && !fc.bias!.decays)
        let bn = BatchNorm2d(channels: 5)
        #expect(bn.weight.value.scalars == [1, 1, 1, 1, 1] && bn.bias.value.scalars == [0, 0, 0, 0, 0])
        #expect(bn.runningMean.value.scalars == [0, 0, 0, 0, 0] && bn.runningVar.value.scalars == [1, 1, 1, 1, 1])
        #expect(!bn.weight.decays && !bn.bias.decays)
    }

    @Test("BatchNorm2d train mode normalises and updates the running statistics PyTorch's way")
    func batchNormTrainStatistics() {
        var rng = RandomSource(seed: 35)
        let bn = BatchNorm2d(channels: 2, momentum: 0.1, eps: 1e-5)
        let x = randomTensor([3, 2, 2, 2], rng: &rng, scale: 3)
        let y = bn.forward(x, mode: .train)
        for c in 0..<2 {
            var xs: [Double] = [], ys: [Double] = []
            for n in 0..<3 { for i in 0..<4 {
                xs.append(Double(x[flat: (n * 2 + c) * 4 + i])); ys.append(Double(y[flat: (n * 2 + c) * 4 + i]))
            } }
            let m = Double(xs.count)
            let mean = xs.reduce(0, +) / m
            let varBiased = xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / m
            let yMean = ys.reduce(0, +) / m
            let yVar = ys.reduce(0) { $0 + ($1 - yMean) * ($1 - yMean) } / m
            #expect(abs(yMean) < 1e-5)
            #expect(abs(yVar - varBiased / (varBiased + 1e-5)) < 1e-4)
            #expect(abs(Double(bn.runningMean.value[flat: c]) - 0.1 * mean) < 1e-5)
            #expect(abs(Double(bn.runningVar.value[flat: c]) - (0.9 + 0.1 * varBiased * m / (m - 1))) < 1e-4)
        }
    }

    @Test("BatchNorm2d eval mode uses the running statistics and leaves them unchanged")
    func batchNormEval() {
        let bn = BatchNorm2d(channels: 2)
        bn.runningMean.value = Tensor(shape: [2], scalars: [0.5, -1])
        bn.runningVar.value = Tensor(shape: [2], scalars: [4, 0.25])
        bn.weight.value = Tensor(shape: [2], scalars: [2, 1])
        bn.bias.value = Tensor(shape: [2], scalars: [0, 1])
        let x = Tensor(shape: [1, 2, 1, 2], scalars: [2.5, 0.5, -1, 0])
        let y = bn.forward(x, mode: .eval).scalars
        let expected: [Float] = [2 * 2 / (4 + 1e-5).squareRoot(), 0, 1, 1 + 1 / (0.25 + 1e-5).squareRoot()]
        for i in 0..<4 { #expect(abs(y[i] - expected[i]) < 1e-4) }
        #expect(bn.runningMean.value.scalars == [0.5, -1] && bn.runningVar.value.scalars == [4, 0.25])
        let paths = bn.namedParameters().map(\.name)
        #expect(paths == ["weight", "bias", "running_mean", "running_var"])
        #expect(bn.trainableParameters().count == 2)
    }

    @Test("Activations compute their documented formulas")
    func activationValues() {
        let x = Tensor(shape: [6], scalars: [-4, -1, -0.5, 0.5, 2, 7])
        func expected(_ kind: ActivationKind, _ v: Double) -> Double {
            switch kind {
            case .relu: return max(v, 0)
            case .relu6: return min(max(v, 0), 6)
            case .hardswish: return v * min(max(v + 3, 0), 6) / 6
            case .gelu: return 0.5 * v * (1 + erf(v / 2.0.squareRoot()))
            case .hardsigmoid: return min(max(v + 3, 0), 6) / 6
            }
        }
        for kind in ActivationKind.allCases {
            let y = Activation(kind).forward(x, mode: .eval)
            #expect(y.shape == [6])
            for i in 0..<6 { #expect(abs(Double(y[flat: i]) - expected(kind, Double(x[flat: i]))) < 1e-5, "\(kind)") }
        }
    }

    @Test("Pooling layers compute window maxima and means")
    func poolingValues() {
        let x = Tensor(shape: [1, 1, 4, 4], scalars: (0..<16).map(Float.init))
        let mp = MaxPool2d(kernelSize: 2).forward(x, mode: .eval)
        #expect(mp.shape == [1, 1, 2, 2] && mp.scalars == [5, 7, 13, 15])
        let ap = AvgPool2d(kernelSize: 2).forward(x, mode: .eval)
        #expect(ap.scalars == [2.5, 4.5, 10.5, 12.5])
        let mp3 = MaxPool2d(kernelSize: 3, stride: 2, padding: 1).forward(x, mode: .eval)
        #expect(mp3.shape == [1, 1, 2, 2] && mp3.scalars == [5, 7, 13, 15])
        let gap = GlobalAvgPool2d().forward(Tensor(shape: [2, 2, 1, 2], scalars: [1, 3, 5, 7, 0, 2, 4, 8]), mode: .eval)
        #expect(gap.shape == [2, 2] && gap.scalars == [2, 6, 1, 6])
        let flat = Flatten().forward(x, mode: .eval)
        #expect(flat.shape == [1, 16] && flat.scalars == x.scalars)
    }

    @Test("ZeroPadShortcut subsamples and pads channels symmetrically")
    func zeroPadShortcut() {
        let x = Tensor(shape: [1, 2, 3, 3], scalars: (0..<18).map(Float.init))
        let y = ZeroPadShortcut(inChannels: 2, outChannels: 4, stride: 2).forward(x, mode: .eval)
        #expect(y.shape == [1, 4, 2, 2])
        #expect(y.scalars == [0, 0, 0, 0, 0, 2, 6, 8, 9, 11, 15, 17, 0, 0, 0, 0])
    }

    @Test("Sequential names children by position or by the given names")
    func sequentialNames() {
        var rng = RandomSource(seed: 36)
        let seq = Sequential([Conv2d(inChannels: 1, outChannels: 2, kernelSize: 3, rng: &rng), BatchNorm2d(channels: 2)])
        #expect(seq.namedParameters().map(\.name)
                == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"])
        let outer = Sequential(named: [("features", seq), ("head", Linear(inFeatures: 2, outFeatures: 1, rng: &rng))])
        #expect(outer.namedParameters().map(\.name).first == "features.0.weight")
        #expect(outer.namedParameters().map(\.name).last == "head.bias")
        var modules: [String] = []
        outer.visitModules(prefix: "net") { path, _ in modules.append(path) }
        #expect(modules == ["net.features", "net.features.0", "net.features.1", "net.head"])
        #expect(outer["head"] is Linear)
    }

    @Test("Residual blocks choose identity, option-A or projection shortcuts")
    func blockShortcuts() {
        var rng = RandomSource(seed: 37)
        #expect(BasicBlock(inChannels: 8, outChannels: 8, shortcut: .zeroPad, rng: &rng).shortcut == nil)
        #expect(BasicBlock(inChannels: 8, outChannels: 16, stride: 2, shortcut: .zeroPad, rng: &rng).shortcut is ZeroPadShortcut)
        let projected = BasicBlock(inChannels: 8, outChannels: 16, stride: 2, shortcut: .projection, rng: &rng)
        #expect(projected.namedParameters().map(\.name).contains("downsample.0.weight"))
        #expect(projected.namedParameters().map(\.name).contains("downsample.1.running_var"))
        let bottleneck = Bottleneck(inChannels: 16, width: 4, rng: &rng)
        #expect(bottleneck.shortcut == nil)
        let y = bottleneck.forward(randomTensor([2, 16, 3, 3], rng: &rng), mode: .train)
        #expect(y.shape == [2, 16, 3, 3])
        let strided = BasicBlock(inChannels: 3, outChannels: 6, stride: 2, shortcut: .zeroPad, rng: &rng)
        #expect(strided.forward(randomTensor([1, 3, 7, 5], rng: &rng), mode: .eval).shape == [1, 6, 4, 3])
    }

    @Test("Backward accumulates parameter gradients across calls")
    func backwardAccumulates() {
        var rng = RandomSource(seed: 38)
        let block = BasicBlock(inChannels: 2, outChannels: 4, stride: 2, shortcut: .projection, rng: &rng)
        let x = randomTensor([2, 2, 4, 4], rng: &rng)
        let dy = randomTensor([2, 4, 2, 2], rng: &rng)
        block.zeroGradients()
        _ = block.forward(x, mode: .train)
        _ = block.backward(dy)
        let once = block.trainableParameters().map(\.grad)
        _ = block.forward(x, mode: .train)
        _ = block.backward(dy)
        for (p, g) in zip(block.trainableParameters(), once) {
            for i in 0..<g.count { #expect(abs(p.grad[flat: i] - 2 * g[flat: i]) <= 1e-4 * max(1, abs(g[flat: i]))) }
        }
    }

    @Test("SoftmaxCrossEntropy matches the formula and rejects out-of-range labels")
    func lossValues() throws {
        let logits = Tensor(shape: [2, 3], scalars: [1, 2, 3, 0, 0, 0])
        for eps in [Float(0), 0.2] {
            let loss = SoftmaxCrossEntropy(labelSmoothing: eps)
            let value = try loss.forward(logits: logits, labels: [2, 1])
            var expected = 0.0
            for (row, label) in [(0, 2), (1, 1)] {
                let z = (0..<3).map { Double(logits[flat: row * 3 + $0]) }
                let lse = log(z.map { exp($0) }.reduce(0, +))
                for j in 0..<3 {
                    let q = (1 - Double(eps)) * (j == label ? 1 : 0) + Double(eps) / 3
                    expected -= q * (z[j] - lse)
                }
            }
            #expect(abs(Double(value) - expected / 2) < 1e-5)
            let probs = try #require(loss.probabilities)
            #expect(abs(probs.scalars.reduce(0, +) - 2) < 1e-5)
        }
        let loss = SoftmaxCrossEntropy()
        #expect(throws: LossError.labelOutOfRange(index: 1, label: 3, numClasses: 3)) {
            try loss.forward(logits: logits, labels: [0, 3])
        }
        #expect(throws: LossError.labelOutOfRange(index: 0, label: -1, numClasses: 3)) {
            try loss.forward(logits: logits, labels: [-1, 0])
        }
        #expect(LossError.labelOutOfRange(index: 1, label: 3, numClasses: 3).description.contains("0..<3"))
    }

    @Test("Accuracy helpers count argmax hits")
    func accuracy() {
        let logits = Tensor(shape: [4, 3], scalars: [0, 1, 0, 5, 1, 2, 1, 1, 0, -1, -2, -0.5])
        #expect(predictedClasses(logits: logits) == [1, 0, 0, 2])
        #expect(correctPredictions(logits: logits, labels: [1, 0, 1, 2]) == 3)
    }

    @Test("A shape mismatch stops with a message naming the layer and the shapes")
    func shapeMismatchTraps() async throws {
        func stderr(_ result: ExitTest.Result?) -> String {
            String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        }
        let conv = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            var rng = RandomSource(seed: 1)
            let conv = Conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, rng: &rng)
            _ = conv.forward(Tensor(shape: [1, 2, 5, 5]), mode: .eval)
        }
        #expect(stderr(conv).contains("Conv2d(3→4, k3, stride 1, padding 0): expected input [N, 3, H, W], got [1, 2, 5, 5]"))
        let bn = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = BatchNorm2d(channels: 4).forward(Tensor(shape: [2, 3, 2, 2]), mode: .train)
        }
        #expect(stderr(bn).contains("BatchNorm2d(4): expected input [N, 4, H, W] or [N, 4], got [2, 3, 2, 2]"))
        let model = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = makeModel(.resnet20, inputChannels: 3, numClasses: 10, seed: 0)
                .forward(Tensor(shape: [2, 1, 28, 28]), mode: .eval)
        }
        #expect(stderr(model).contains("CIFARResNet-20: expected images [N, 3, H, W], got [2, 1, 28, 28]"))
        let fc = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            var rng = RandomSource(seed: 1)
            _ = Linear(inFeatures: 4, outFeatures: 2, rng: &rng).forward(Tensor(shape: [3, 5]), mode: .eval)
        }
        #expect(stderr(fc).contains("Linear(4→2): expected input [N, 4], got [3, 5]"))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
