import CKernels
import Testing

// The squeeze-excitation channel scale (channel_scale.c): fast vs reference at odd sizes and 1 and
// 2 threads, accumulation, NULL outputs.

private typealias Kit = KernelTestKit

/// The forward and dx are the same products in both kernels; ds sums hw products in another order.
private let channelScaleSumRelTolerance: Float = 1e-5

/// (n, c, hw); the last goes parallel.
private let channelScaleCases: [[Int]] = [[1, 1, 1], [2, 3, 7], [3, 5, 17], [2, 7, 64], [4, 96, 197]]

@Suite("Channel scale")
struct ChannelScaleTests {
    @Test("forward and backward match the reference; outputs accumulate; NULL leaves the other alone",
          arguments: channelScaleCases, Kit.threadCountArguments)
    func matchesReference(_ c: [Int], threads: Int) {
        let (n, ch, hw) = (c[0], c[1], c[2])
        var rng = Kit.Xorshift(seed: UInt64(c.reduce(3) { $0 &* 31 &+ $1 }))
        let x = rng.floats(n * ch * hw), s = rng.floats(n * ch), dy = rng.floats(n * ch * hw)
        let dx0 = rng.floats(n * ch * hw), ds0 = rng.floats(n * ch)
        var refY = [Float](repeating: 0, count: x.count), gotY = [Float](repeating: .nan, count: x.count)
        msq_channel_scale_forward_ref(&refY, x, s, Int32(n), Int32(ch), Int32(hw))
        var refDx = dx0, refDs = ds0, gotDx = dx0, gotDs = ds0, onlyDx = dx0, onlyDs = ds0
        msq_channel_scale_backward_ref(&refDx, &refDs, dy, x, s, Int32(n), Int32(ch), Int32(hw))
        Kit.withThreads(threads) {
            msq_channel_scale_forward(&gotY, x, s, Int32(n), Int32(ch), Int32(hw))
            msq_channel_scale_backward(&gotDx, &gotDs, dy, x, s, Int32(n), Int32(ch), Int32(hw))
            msq_channel_scale_backward(&onlyDx, nil, dy, x, s, Int32(n), Int32(ch), Int32(hw))
            msq_channel_scale_backward(nil, &onlyDs, dy, x, s, Int32(n), Int32(ch), Int32(hw))
        }
        #expect(Kit.bits(gotY) == Kit.bits(refY), "\(c) y")
        #expect(Kit.bits(gotDx) == Kit.bits(refDx), "\(c) dx")
        #expect(Kit.maxRelError(gotDs, refDs) <= channelScaleSumRelTolerance, "\(c) ds")
        #expect(Kit.bits(onlyDx) == Kit.bits(gotDx) && Kit.bits(onlyDs) == Kit.bits(gotDs), "\(c) NULL outputs")
        for p in 0..<(n * ch) {
            let sum = (0..<hw).reduce(0.0) { $0 + Double(dy[p * hw + $1]) * Double(x[p * hw + $1]) }
            #expect(abs(Double(gotDs[p]) - (Double(ds0[p]) + sum)) < 1e-4, "\(c) ds[\(p)] against double")
        }
    }
}
