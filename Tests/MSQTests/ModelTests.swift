import CKernels
import MSQ
import Testing

func parameterNames(_ m: any Module) -> [String] { m.namedParameters().map(\.name) }

func countModules<T>(_ m: any Module, of type: T.Type) -> Int {
    var n = 0
    m.visitModules(prefix: "") { _, child in if child is T { n += 1 } }
    return n
}

@Suite("Model") struct ModelTests {
    @Test("ResNet-20 parameter paths, buffers and count (269,722 for 3 channels, 10 classes)")
    func resnet20Parameters() throws {
        let model = makeModel(.resnet20, inputChannels: 3, numClasses: 10, seed: 0)
        let named = model.namedParameters()
        let names = named.map(\.name)
        for path in ["conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                     "layer2.0.bn2.bias", "layer3.2.conv2.weight", "layer3.2.bn2.running_var", "fc.weight", "fc.bias"] {
            #expect(names.contains(path), "missing \(path)")
        }
        #expect(Set(names).count == names.count, "duplicate parameter paths")
        #expect(!names.contains { $0.contains("shortcut") || $0.contains("downsample") }, "option A has no parameters")
        let buffers = named.filter { $0.name.hasSuffix("running_mean") || $0.name.hasSuffix("running_var") }
        #expect(buffers.count == 2 * 19)
        #expect(buffers.allSatisfy { !$0.parameter.trainable })
        #expect(named.filter { !$0.parameter.trainable }.count == buffers.count)
        #expect(model.trainableParameterCount == 269_722)
        let conv = try #require(named.first { $0.name == "layer1.0.conv1.weight" })
        #expect(conv.parameter.value.shape == [16, 16, 3, 3])
        #expect(named.first { $0.name == "fc.weight" }?.parameter.value.shape == [10, 64])
        // Weighted layers: 19 convolutions + 1 linear = depth 20.
        #expect(countModules(model, of: Conv2d.self) + countModules(model, of: Linear.self) == 20)
        #expect(countModules(model, of: BasicBlock.self) == 9)
    }

    @Test("CIFAR ResNet sizes: counts follow the architecture for other depths, channels and classes")
    func cifarCounts() {
        // 1 input channel: conv1 has 16·1·9 weights instead of 16·3·9.
        #expect(makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0).trainableParameterCount == 269_722 - 288)
        // Each extra pair of blocks per stage adds 2·(2·(16²+32²+64²)·9 + 2·2·(16+32+64)) parameters.
        let perN = 2 * (16 * 16 + 32 * 32 + 64 * 64) * 9 + 2 * 2 * (16 + 32 + 64)
        #expect(makeModel(.resnet32, inputChannels: 3, numClasses: 10, seed: 0).trainableParameterCount == 269_722 + 2 * perN)
        #expect(makeModel(.resnet56, inputChannels: 3, numClasses: 100, seed: 0).trainableParameterCount
                == 269_722 + 6 * perN + 90 * 65)
    }

    @Test("ResNet-18 and ResNet-50 match torchvision's parameter counts and names")
    func imagenetCounts() throws {
        let r18 = makeModel(.resnet18, inputChannels: 3, numClasses: 1000, seed: 0)
        #expect(r18.trainableParameterCount == 11_689_512)
        let n18 = parameterNames(r18)
        for path in ["conv1.weight", "layer1.1.conv2.weight", "layer2.0.downsample.0.weight",
                     "layer2.0.downsample.1.running_var", "layer4.1.bn2.bias", "fc.weight"] {
            #expect(n18.contains(path), "missing \(path)")
        }
        #expect(!n18.contains("layer1.0.downsample.0.weight"))
        let r50 = makeModel(.resnet50, inputChannels: 3, numClasses: 1000, seed: 0)
        #expect(r50.trainableParameterCount == 25_557_032)
        let p50 = r50.namedParameters()
        let down = try #require(p50.first { $0.name == "layer1.0.downsample.0.weight" })
        #expect(down.parameter.value.shape == [256, 64, 1, 1])
        #expect(p50.first { $0.name == "layer4.2.conv3.weight" }?.parameter.value.shape == [2048, 512, 1, 1])
        #expect(p50.first { $0.name == "fc.weight" }?.parameter.value.shape == [1000, 2048])
        #expect(countModules(r50, of: Bottleneck.self) == 16)
    }

    @Test("ResNet-20 on Fashion-MNIST-shaped input gives [2, 10] logits, train and eval")
    func resnet20Shapes() {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 1)
        var rng = RandomSource(seed: 2)
        let x = randomTensor([2, 1, 28, 28], rng: &rng)
        for mode in [ForwardMode.train, .eval] {
            let y = model.forward(x, mode: mode)
            #expect(y.shape == [2, 10])
            #expect(y.scalars.allSatisfy { $0.isFinite })
            let dx = model.backward(Tensor(shape: [2, 10], repeating: 0.1))
            #expect(dx.shape == x.shape)
        }
    }

    @Test("ResNet-18 on [1, 3, 64, 64] gives [1, classes] logits")
    func resnet18Shapes() {
        let model = makeModel(.resnet18, inputChannels: 3, numClasses: 1000, seed: 1)
        var rng = RandomSource(seed: 3)
        let x = randomTensor([1, 3, 64, 64], rng: &rng)
        let y = model.forward(x, mode: .eval)
        #expect(y.shape == [1, 1000])
        #expect(y.scalars.allSatisfy { $0.isFinite })
        #expect(model.backward(Tensor(shape: [1, 1000], repeating: 0.001)).shape == x.shape)
    }

    @Test("backwardParameters accumulates exactly backward's parameter gradients",
          arguments: [ModelKind.resnet20, .resnet18])
    func backwardParametersMatchesBackward(kind: ModelKind) throws {
        let model = makeModel(kind, inputChannels: 3, numClasses: 10, seed: 4)
        var rng = RandomSource(seed: 5)
        let x = randomTensor([2, 3, kind == .resnet20 ? 12 : 40, kind == .resnet20 ? 12 : 40], rng: &rng)
        let labels: [Int32] = [1, 7]
        func gradients(full: Bool) throws -> [[Float]] {
            model.zeroGradients()
            let loss = SoftmaxCrossEntropy()
            _ = try loss.forward(logits: model.forward(x, mode: .train), labels: labels)
            if full { _ = model.backward(loss.backward()) } else { model.backwardParameters(loss.backward()) }
            return model.namedParameters().filter(\.parameter.trainable).map(\.parameter.grad.scalars)
        }
        let full = try gradients(full: true), params = try gradients(full: false)
        #expect(full.count == params.count)
        #expect(full == params)
        #expect(full.contains { $0.contains { $0 != 0 } })
    }

    @Test("Initialisation is a function of the seed", arguments: [ModelKind.resnet20, .resnet18])
    func determinism(kind: ModelKind) {
        let a = makeModel(kind, inputChannels: 3, numClasses: 10, seed: 42).namedParameters()
        let b = makeModel(kind, inputChannels: 3, numClasses: 10, seed: 42).namedParameters()
        let c = makeModel(kind, inputChannels: 3, numClasses: 10, seed: 43).namedParameters()
        #expect(a.map(\.name) == b.map(\.name))
        #expect(zip(a, b).allSatisfy { $0.parameter.value.scalars == $1.parameter.value.scalars })
        let differing = zip(a, c).filter { $0.0.name.hasSuffix("conv1.weight") || $0.0.name == "fc.weight" }
        #expect(!differing.isEmpty)
        #expect(differing.allSatisfy { $0.0.parameter.value.scalars != $0.1.parameter.value.scalars })
    }

    @Test("Model initialisation: Kaiming normal (fan-out) convolutions, unit BN, PyTorch-default fc")
    func initStatistics() throws {
        let named = makeModel(.resnet20, inputChannels: 3, numClasses: 10, seed: 5).namedParameters()
        let w = try #require(named.first { $0.name == "layer3.1.conv1.weight" }).parameter.value.scalars.map(Double.init)
        let std = (w.reduce(0) { $0 + $1 * $1 } / Double(w.count)).squareRoot()
        let expected = (2.0 / (64 * 9)).squareRoot()
        #expect(abs(std - expected) < 0.03 * expected)
        for (name, p) in named where name.contains("bn") {
            if name.hasSuffix("weight") { #expect(p.value.scalars.allSatisfy { $0 == 1 }) }
            if name.hasSuffix("bias") { #expect(p.value.scalars.allSatisfy { $0 == 0 }) }
        }
        let fc = try #require(named.first { $0.name == "fc.weight" }).parameter.value.scalars
        #expect(fc.allSatisfy { abs($0) <= 0.125 })
    }

    @Test("Models share one convolution workspace")
    func sharedWorkspace() {
        let model = makeModel(.resnet20, inputChannels: 3, numClasses: 10, seed: 0)
        var spaces: [ConvWorkspace] = []
        model.visitModules(prefix: "") { _, m in if let conv = m as? Conv2d { spaces.append(conv.workspace) } }
        #expect(spaces.count == 19)
        #expect(spaces.allSatisfy { $0 === spaces[0] })
    }

    @Test("Model names: every ModelKind is buildable by name; unknown names list the valid ones")
    func modelNames() throws {
        #expect(ModelKind.allCases.map(\.rawValue) == ["resnet20", "resnet32", "resnet56", "resnet18", "resnet50",
                                                       "mobilenetv3-large", "mobilenetv3-small", "deit-tiny", "deit-small", "swin-t"])
        let mobile = try makeModel(named: "mobilenetv3-small", inputChannels: 1, numClasses: 10, seed: 0, inputSize: 28)
        #expect((mobile as? MobileNetV3)?.smallInput == true)
        let large = makeModel(.mobilenetv3Large, inputChannels: 3, numClasses: 10, seed: 0)
        #expect((large as? MobileNetV3)?.smallInput == false)
        // Small inputs (short runs) update batch-norm statistics at 0.1, ImageNet-sized ones at torchvision's 0.01.
        func momenta(_ m: any Module) -> Set<Float> {
            var out = Set<Float>()
            m.visitModules(prefix: "") { _, l in if let bn = l as? BatchNorm2d { out.insert(bn.momentum) } }
            return out
        }
        #expect(momenta(mobile) == [MobileNetV3.shortRunBatchNormMomentum] && momenta(large) == [MobileNetV3.torchvisionBatchNormMomentum])
        #expect(try ModelKind(name: "resnet56") == .resnet56)
        let m = try makeModel(named: "resnet20", inputChannels: 1, numClasses: 5, seed: 0)
        #expect(m is CIFARResNet)
        let valid = ModelKind.allCases.map(\.rawValue)
        #expect(throws: ModelError.unknownModel(name: "resnet99", valid: valid)) {
            try makeModel(named: "resnet99", inputChannels: 3, numClasses: 10, seed: 0)
        }
        #expect(ModelError.unknownModel(name: "x", valid: valid).description.contains("resnet20, resnet32"))
    }

    @Test("DeiT-Tiny and -Small have timm's parameter counts at 1000 classes; small inputs get patch 4, depth 6")
    func deit() throws {
        func count(_ m: any Module) -> Int { m.namedParameters().reduce(0) { $0 + $1.parameter.value.count } }
        #expect(count(makeModel(.deitTiny, inputChannels: 3, numClasses: 1000, seed: 0)) == 5_717_416)
        #expect(count(makeModel(.deitSmall, inputChannels: 3, numClasses: 1000, seed: 0)) == 22_050_664)
        let small = try #require(makeModel(.deitTiny, inputChannels: 1, numClasses: 10, seed: 0, inputSize: 28) as? VisionTransformer)
        #expect(small.configuration == .init(dim: 192, depth: 6, heads: 3, patch: 4))
        #expect(small.patchCount == 49 && small.positionEmbedding.value.shape == [1, 50, 192])
        let logits = small.forward(Tensor(shape: [2, 1, 28, 28], repeating: 0.5), mode: .eval)
        #expect(logits.shape == [2, 10] && logits.scalars.allSatisfy(\.isFinite))
        // Sizes a DeiT cannot take are refused with a message, not a trap; convolutional kinds take any.
        #expect(throws: (any Error).self) { try checkImageSize(.deitTiny, height: 30, width: 30) }
        #expect(throws: (any Error).self) { try checkImageSize(.deitSmall, height: 28, width: 32) }
        #expect(throws: (any Error).self) { try makeModel(named: "deit-tiny", inputChannels: 1, numClasses: 10, seed: 0, inputSize: 30) }
        try checkImageSize(.deitTiny, height: 32, width: 32)
        try checkImageSize(.deitTiny, height: 224, width: 224)
        try checkImageSize(.resnet20, height: 30, width: 17)
        let message = ModelError.unsupportedImageSize(model: "deit-tiny", height: 30, width: 30, requirement: "r").description
        #expect(message.contains("deit-tiny") && message.contains("30×30"))
    }

    @Test("A tiny CIFAR ResNet fits a small batch (loss falls under plain gradient descent)")
    func tinyResNetLearns() throws {
        var rng = RandomSource(seed: 9)
        let net = CIFARResNet(depth: 8, inputChannels: 3, numClasses: 4, rng: &rng)
        let x = randomTensor([8, 3, 8, 8], rng: &rng)
        let labels: [Int32] = [0, 1, 2, 3, 0, 1, 2, 3]
        let loss = SoftmaxCrossEntropy()
        var first: Float = 0, last: Float = 0
        for step in 0..<30 {
            net.zeroGradients()
            let value = try loss.forward(logits: net.forward(x, mode: .train), labels: labels)
            _ = net.backward(loss.backward())
            if step == 0 { first = value }
            last = value
            for p in net.trainableParameters() {
                let g = p.grad
                let n = g.count
                g.withUnsafePointer { gp in p.value.withUnsafeMutablePointer { w in for i in 0..<n { w[i] -= 0.1 * gp[i] } } }
            }
        }
        #expect(last.isFinite && last < 0.5 * first, "loss \(first) → \(last)")
    }
}
