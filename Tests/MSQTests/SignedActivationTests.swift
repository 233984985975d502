import CKernels
import Foundation
import MSQ
import Testing

// LSQ's signed activation quantizer (PACTQuantizer.signed, msq_lsq_*): the formula on hand values,
// the fast kernel against its twin, which layers get it (SignedActivationInputs), and a packed
// model with signed inputs reproducing the trained network's logits bit for bit.

/// dα of the fast kernel vs the scalar twin: both sum in double, in different orders.
private let lsqAlphaGradRelTolerance: Float = 1e-6

/// A tiny DeiT (dim 8, depth 2, 2 heads, patch 2) on 1×4×4 images, 3 classes.
private func tinyViT(seed: UInt64) -> VisionTransformer {
    var rng = RandomSource(seed: seed)
    return VisionTransformer(.init(dim: 8, depth: 2, heads: 2, patch: 2, mlpRatio: 2),
                             inputChannels: 1, numClasses: 3, imageSize: 4, rng: &rng)
}

@Suite("Signed activation quantizer (LSQ)")
struct SignedActivationTests {
    @Test("forward and backward on hand values: 3 bits (codes −3…3), α = 1.5, ties to even, LSQ's dα with its gradient scale")
    func handValues() throws {
        let q = try PACTQuantizer(bits: 3, initialClip: 1.5, signed: true)
        let x = Tensor(shape: [1, 6], scalars: [-2, -0.74, -0.25, 0.25, 0.76, 1.6])
        let y = q.forward(x)
        #expect(y.scalars == [-1.5, -0.5, 0, 0, 1, 1.5])
        let dx = q.backward(Tensor(shape: [1, 6], repeating: 1))
        #expect(dx.scalars == [0, 1, 1, 1, 1, 0])
        // −1 (clipped below) + (−1 + 1.48)/3 + (0 + 0.5)/3 + (0 − 0.5)/3 + (2 − 1.52)/3 + 1 (clipped above),
        // times 1/sqrt(F·L) = 1/sqrt(6·3).
        let expected = (-1 + 0.48 / 3 + 0.5 / 3 - 0.5 / 3 + 0.48 / 3 + 1) / (18.0).squareRoot()
        #expect(abs(Double(q.alpha.grad[flat: 0]) - expected) < 1e-6, "dα \(q.alpha.grad[flat: 0]) vs \(expected)")
        #expect(!q.alpha.decays, "LSQ's α does not decay")
        #expect(try PACTQuantizer(bits: 3).alpha.decays, "PACT's does")
    }

    @Test("msq_lsq_forward / _backward: fast equals _ref (y and dx bit for bit, dα to 1e-6) at 1 and 2 threads",
          arguments: [1, 2])
    func fastMatchesRef(threads: Int) {
        var rng = RandomSource(seed: 5)
        let count = 70_001
        let x = (0..<count).map { _ in rng.nextGaussian() * 2 }, dy = (0..<count).map { _ in rng.nextGaussian() }
        for bits in [2, 5, 8] {
            var yf = [Float](repeating: 0, count: count), yr = yf
            var dxf = [Float](repeating: 0.5, count: count), dxr = dxf
            var daf: Float = 0.25, dar: Float = 0.25
            let saved = msq_get_num_threads()
            msq_set_num_threads(Int32(threads))
            msq_lsq_forward(&yf, x, count, 1.7, Int32(bits))
            msq_lsq_backward(&dxf, &daf, dy, x, count, 1.7, Int32(bits), 0.01)
            msq_set_num_threads(saved)
            msq_lsq_forward_ref(&yr, x, count, 1.7, Int32(bits))
            msq_lsq_backward_ref(&dxr, &dar, dy, x, count, 1.7, Int32(bits), 0.01)
            #expect(yf.map(\.bitPattern) == yr.map(\.bitPattern), "\(bits) bits: y")
            #expect(dxf.map(\.bitPattern) == dxr.map(\.bitPattern), "\(bits) bits: dx")
            #expect(abs(daf - dar) <= lsqAlphaGradRelTolerance * abs(dar), "\(bits) bits: dα \(daf) vs \(dar)")
            #expect(Set(yf).count <= (1 << (bits - 1)) * 2 - 1, "\(bits) bits: more than 2^A − 1 values")
        }
    }

    @Test("a vision transformer's linears get signed quantizers, its patch embedding stays float; a ResNet's inputs are unsigned")
    func whichLayers() throws {
        let vit = tinyViT(seed: 1)
        let attached = try quantizeActivations(vit, bits: 8, excluded: defaultActivationExclusions(vit))
        #expect(attached.count == quantizableLayers(of: vit).count - 1)
        #expect(!attached.contains { $0.path == "patch_embed.proj" })
        #expect(attached.allSatisfy { $0.quantizer.signed })
        let resnet = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        let plain = try quantizeActivations(resnet, bits: 4, excluded: defaultActivationExclusions(resnet))
        #expect(!plain.isEmpty && plain.allSatisfy { !$0.quantizer.signed })
    }

    @Test("a DeiT with 8-bit signed inputs packs and loads into a fresh float DeiT with the same logits, bit for bit; a mislabelled quantizer is refused")
    func packedRoundTrip() throws {
        let vit = tinyViT(seed: 2)
        _ = try quantizeForMSQ(vit, initialBits: 5)
        try quantizeActivations(vit, bits: 8, excluded: defaultActivationExclusions(vit))
        // Clip levels away from their start, as after training.
        var rng = RandomSource(seed: 3)
        for (_, p) in vit.namedParameters() where p.value.count == 1 { p.value = Tensor(shape: [1], repeating: 1 + rng.nextUnitFloat()) }
        let data = DatasetInfo(name: "synthetic", sampleShape: [1, 4, 4], numClasses: 3,
                               normalization: Normalization(mean: [0.5], std: [0.3]))
        let packed = try PackedModel.export(model: vit, name: "tiny-vit", data: data)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("signed-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try packed.write(to: dir + "/m.msqmodel")
        let fresh = tinyViT(seed: 9)
        try PackedModel.read(from: dir + "/m.msqmodel").load(into: fresh)
        let x = Tensor.randomNormal([4, 1, 4, 4], std: 1, using: &rng)
        #expect(fresh.forward(x, mode: .eval).scalars.map(\.bitPattern) == vit.forward(x, mode: .eval).scalars.map(\.bitPattern))

        // An unsigned quantizer where the model declares a signed input would be rebuilt signed on load.
        vit.blocks[0].mlp.fc2.inputQuantizer = try PACTQuantizer(bits: 8)
        #expect(throws: PackedModelError.self) { try PackedModel.export(model: vit, name: "tiny-vit", data: data) }
    }
}

@Suite("Signed activation quantizer on Swin")
struct SwinSignedActivationTests {
    @Test("a Swin's linears (qkv, proj, MLP, merges, head) get signed quantizers; its stem convolution stays float")
    func swinLayers() throws {
        let swin = makeModel(.swinTiny, inputChannels: 1, numClasses: 10, seed: 0, inputSize: 28)
        let attached = try quantizeActivations(swin, bits: 8, excluded: defaultActivationExclusions(swin))
        let linears = quantizableLayers(of: swin).filter { $0.module is Linear }.map(\.path)
        #expect(Set(attached.map(\.path)) == Set(linears))
        #expect(attached.allSatisfy { $0.quantizer.signed })
    }
}
