import Foundation
import MSQ
import Testing

@Suite("Squeeze-excitation")
struct SqueezeExcitationTests {
    @Test("gradients to the input and to fc1/fc2 match central differences", arguments: [(8, 2, 5), (6, 4, 3), (16, 8, 1)])
    func gradients(config: (channels: Int, squeeze: Int, side: Int)) {
        var rng = RandomSource(seed: 31)
        let block = SqueezeExcitation(channels: config.channels, squeezeChannels: config.squeeze, rng: &rng)
        let x = randomTensor([2, config.channels, config.side, config.side], rng: &rng, scale: 2)
        // ReLU and the hard-sigmoid gate have kinks: the ReLU-network settings skip elements next to one.
        gradientCheck(block, input: x, mode: .train, settings: netSettings(.relu, maxChecked: 48), seed: 32,
                      label: "SqueezeExcitation \(config)")
    }

    @Test("y = x · hardsigmoid(fc2(relu(fc1(mean(x))))), computed by hand; torchvision's parameter paths")
    func formula() {
        var rng = RandomSource(seed: 33)
        let block = SqueezeExcitation(channels: 3, squeezeChannels: 2, rng: &rng)
        let x = randomTensor([2, 3, 2, 2], rng: &rng, scale: 3)
        let y = block.forward(x, mode: .eval)
        let w1 = block.fc1.weight.value, b1 = try! #require(block.fc1.bias).value
        let w2 = block.fc2.weight.value, b2 = try! #require(block.fc2.bias).value
        for n in 0..<2 {
            let mean = (0..<3).map { c in (0..<4).reduce(0.0) { $0 + Double(x[flat: (n * 3 + c) * 4 + $1]) } / 4 }
            let hidden = (0..<2).map { j in max(0, Double(b1[flat: j]) + (0..<3).reduce(0.0) { $0 + Double(w1[flat: j * 3 + $1]) * mean[$1] }) }
            for c in 0..<3 {
                let z = Double(b2[flat: c]) + (0..<2).reduce(0.0) { $0 + Double(w2[flat: c * 2 + $1]) * hidden[$1] }
                let gate = min(max(z + 3, 0), 6) / 6
                for i in 0..<4 {
                    let k = (n * 3 + c) * 4 + i
                    #expect(abs(Double(y[flat: k]) - Double(x[flat: k]) * gate) < 1e-5)
                }
            }
        }
        #expect(block.namedParameters().map(\.name) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
    }
}
