import ArgumentParser
import CBLASBench
import CKernels
import Foundation
import MSQ

/// One depthwise convolution geometry of MobileNetV3-Large at 224×224 (torchvision's blocks,
/// each distinct channels × kernel × stride × input size once).
struct DepthwiseCase {
    var name: String
    var channels, hIn, k, stride: Int

    /// The 12 distinct depthwise shapes of MobileNetV3-Large (features.1 … features.15).
    static let mobileNetV3Large: [DepthwiseCase] = [
        DepthwiseCase(name: "f1 16 3x3 @112", channels: 16, hIn: 112, k: 3, stride: 1),
        DepthwiseCase(name: "f2 64 3x3 s2 @112", channels: 64, hIn: 112, k: 3, stride: 2),
        DepthwiseCase(name: "f3 72 3x3 @56", channels: 72, hIn: 56, k: 3, stride: 1),
        DepthwiseCase(name: "f4 72 5x5 s2 @56", channels: 72, hIn: 56, k: 5, stride: 2),
        DepthwiseCase(name: "f5-6 120 5x5 @28", channels: 120, hIn: 28, k: 5, stride: 1),
        DepthwiseCase(name: "f7 240 3x3 s2 @28", channels: 240, hIn: 28, k: 3, stride: 2),
        DepthwiseCase(name: "f8 200 3x3 @14", channels: 200, hIn: 14, k: 3, stride: 1),
        DepthwiseCase(name: "f9-10 184 3x3 @14", channels: 184, hIn: 14, k: 3, stride: 1),
        DepthwiseCase(name: "f11 480 3x3 @14", channels: 480, hIn: 14, k: 3, stride: 1),
        DepthwiseCase(name: "f12 672 3x3 @14", channels: 672, hIn: 14, k: 3, stride: 1),
        DepthwiseCase(name: "f13 672 5x5 s2 @14", channels: 672, hIn: 14, k: 5, stride: 2),
        DepthwiseCase(name: "f14-15 960 5x5 @7", channels: 960, hIn: 7, k: 5, stride: 1),
    ]
}

extension KernelsCommand {
    /// Copy bandwidth (bytes read + bytes written per second) of `bytes`-sized buffers, one
    /// contiguous `memcpy` per thread (`bench_parallel_memcpy`): the ceiling of a kernel that
    /// streams the same bytes.
    func copyBandwidth(bytes: Int, threads: Int) -> Double {
        let src = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { src.deallocate(); dst.deallocate() }
        memset(src, 1, bytes)
        memset(dst, 0, bytes)
        return 2 * Double(bytes) / timePerCall { bench_parallel_memcpy(dst, src, bytes, Int32(threads)) }
    }

    /// Depthwise rows: GB/s on the bytes each direction must move (forward: x, w → y; backward
    /// input: dy, w → dx, read and written as it accumulates; backward weight: dy, x → dw) and
    /// GFLOP/s (2·k² per output), against the ceilings measured in the same run: the copy
    /// bandwidth for a 256 MiB buffer (DRAM) and for a buffer of the forward's own bytes (the cache
    /// level it fits), and the forward's arithmetic ceiling: depthwise_channels.c does one 8-channel
    /// multiply-add per tap per output position (channels rounded up to 8), so it cannot pass
    /// bytes / (those multiply-adds / the FMA rate).
    func runDepthwise(batch: Int, threads: Int) throws {
        let dram = copyBandwidth(bytes: 256 << 20, threads: threads)
        let rate = bench_fma_rate(Int32(threads), 50_000_000)
        writeLine("depthwise, batch \(batch): copy ceiling (bytes read + written / s) for 256 MiB \(fmt(dram / 1e9)) GB/s;"
                  + " 'same' = copy of the forward's own bytes; FMA rate \(fmt(rate / 1e9, 2)) G/s of 8 floats"
                  + " ('fma' = the forward's ceiling at one 8-channel multiply-add per tap per output position)")
        writeLine(pad("layer", 22) + pad("MiB fwd", 8) + pad("same", 7) + pad("fma", 7) + pad("fwd GB/s", 9)
                  + pad("GFLOP/s", 8) + pad("fwd/dram", 9) + pad("fwd/same", 9) + pad("fwd/fma", 9)
                  + pad("bwd-in GB/s", 12) + pad("bwd-w GB/s", 11) + pad("bwd-w GFLOP/s", 13))
        for c in DepthwiseCase.mobileNetV3Large {
            var s = msq_conv2d_shape()
            guard msq_conv2d_make_shape(&s, Int32(batch), Int32(c.channels), Int32(c.hIn), Int32(c.hIn), Int32(c.channels),
                                        Int32(c.k), Int32(c.k), Int32(c.stride), Int32((c.k - 1) / 2), Int32(c.channels)) == 0 else {
                throw ValidationError("invalid depthwise shape \(c.name)")
            }
            let inCount = batch * c.channels * c.hIn * c.hIn, outCount = batch * c.channels * Int(s.h_out) * Int(s.w_out)
            let wCount = c.channels * c.k * c.k
            var rng = RandomSource(seed: 2)
            let x = Tensor.randomNormal([batch, c.channels, c.hIn, c.hIn], std: 1, using: &rng)
            let w = Tensor.randomNormal([c.channels, 1, c.k, c.k], std: 0.1, using: &rng)
            let dy = Tensor.randomNormal([batch, c.channels, Int(s.h_out), Int(s.w_out)], std: 1, using: &rng)
            let (fwd, bin, bw) = timeConv(&s, x: x, w: w, dy: dy)
            let fwdBytes = Double(4 * (inCount + outCount + wCount))
            let binBytes = Double(4 * (outCount + 2 * inCount + wCount))
            let bwBytes = Double(4 * (outCount + inCount + 2 * wCount))
            let flops = 2 * Double(outCount * c.k * c.k)
            let same = copyBandwidth(bytes: Int(fwdBytes) / 2, threads: threads)
            let vectorTaps = Double(batch * ((c.channels + 7) / 8) * Int(s.h_out) * Int(s.w_out) * c.k * c.k)
            let fma = fwdBytes / (vectorTaps / rate)
            let f = fwdBytes / fwd
            writeLine(pad(c.name, 22) + pad(fmt(fwdBytes / 1048576, 1), 8) + pad(fmt(same / 1e9), 7) + pad(fmt(fma / 1e9), 7)
                      + pad(fmt(f / 1e9), 9) + pad(fmt(flops / fwd / 1e9), 8) + pad(fmt(f / dram, 2), 9) + pad(fmt(f / same, 2), 9)
                      + pad(fmt(f / fma, 2), 9)
                      + pad(fmt(binBytes / bin / 1e9), 12) + pad(fmt(bwBytes / bw / 1e9), 11) + pad(fmt(flops / bw / 1e9), 13))
        }
    }
}
