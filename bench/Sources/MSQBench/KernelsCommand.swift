import ArgumentParser
import CBLASBench
import CKernels
import Foundation
import MSQ

/// One convolution geometry to benchmark, named after the layers that use it.
struct ConvCase {
    var name: String
    var cIn, hIn, cOut, k, stride, pad: Int

    /// The layer shapes of ResNet-20 (CIFAR, 3×32×32 input) and ResNet-18 (ImageNet, 3×224×224),
    /// each distinct geometry once.
    static func cases(model: String) -> [ConvCase] {
        switch model {
        case "resnet20":
            return [
                ConvCase(name: "conv1 3→16 @32", cIn: 3, hIn: 32, cOut: 16, k: 3, stride: 1, pad: 1),
                ConvCase(name: "layer1 16→16 @32", cIn: 16, hIn: 32, cOut: 16, k: 3, stride: 1, pad: 1),
                ConvCase(name: "layer2.0 16→32 s2 @32", cIn: 16, hIn: 32, cOut: 32, k: 3, stride: 2, pad: 1),
                ConvCase(name: "layer2 32→32 @16", cIn: 32, hIn: 16, cOut: 32, k: 3, stride: 1, pad: 1),
                ConvCase(name: "layer3.0 32→64 s2 @16", cIn: 32, hIn: 16, cOut: 64, k: 3, stride: 2, pad: 1),
                ConvCase(name: "layer3 64→64 @8", cIn: 64, hIn: 8, cOut: 64, k: 3, stride: 1, pad: 1),
            ]
        default:
            return [
                ConvCase(name: "conv1 3→64 7x7 s2 @224", cIn: 3, hIn: 224, cOut: 64, k: 7, stride: 2, pad: 3),
                ConvCase(name: "layer1 64→64 @56", cIn: 64, hIn: 56, cOut: 64, k: 3, stride: 1, pad: 1),
                ConvCase(name: "layer2.0 64→128 s2 @56", cIn: 64, hIn: 56, cOut: 128, k: 3, stride: 2, pad: 1),
                ConvCase(name: "layer2.0.down 1x1 s2 @56", cIn: 64, hIn: 56, cOut: 128, k: 1, stride: 2, pad: 0),
                ConvCase(name: "layer2 128→128 @28", cIn: 128, hIn: 28, cOut: 128, k: 3, stride: 1, pad: 1),
                ConvCase(name: "layer3.0 128→256 s2 @28", cIn: 128, hIn: 28, cOut: 256, k: 3, stride: 2, pad: 1),
                ConvCase(name: "layer3.0.down 1x1 s2 @28", cIn: 128, hIn: 28, cOut: 256, k: 1, stride: 2, pad: 0),
                ConvCase(name: "layer3 256→256 @14", cIn: 256, hIn: 14, cOut: 256, k: 3, stride: 1, pad: 1),
                ConvCase(name: "layer4.0 256→512 s2 @14", cIn: 256, hIn: 14, cOut: 512, k: 3, stride: 2, pad: 1),
                ConvCase(name: "layer4.0.down 1x1 s2 @14", cIn: 256, hIn: 14, cOut: 512, k: 1, stride: 2, pad: 0),
                ConvCase(name: "layer4 512→512 @7", cIn: 512, hIn: 7, cOut: 512, k: 3, stride: 1, pad: 1),
            ]
        }
    }
}

/// `msq-bench kernels`: GFLOP/s of conv2d forward / backward-input / backward-weight per layer
/// shape, next to cblas_sgemm on the GEMM with the same M, N, K (M = C_out, N = batch·H_out·W_out,
/// K = C_in·k·k), at the same thread count.
struct KernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "conv2d GFLOP/s on every distinct ResNet-20 and ResNet-18 layer shape vs cblas_sgemm; depthwise GB/s on MobileNetV3-Large's; layer norm and attention on DeiT-Tiny's; window attention and linears on Swin-T's first stage.")

    @Option(help: "Models whose layer shapes to run (comma-separated): resnet20, resnet18, mobilenetv3-large (its depthwise layers, at --batch18), deit-tiny (layer norm and attention, at --batch18), swin-t (stage 1's window attention and linears, at --batch18).")
    var models: String = "resnet20,resnet18"
    @Option(help: "Batch size for ResNet-20 shapes.")
    var batch20: Int = 128
    @Option(help: "Batch size for ResNet-18 and MobileNetV3-Large shapes.")
    var batch18: Int = 16
    @Option(help: "Threads for both the kernels and OpenBLAS (0 = all cores).")
    var threads: Int = 0
    @Option(help: "Minimum seconds spent timing each measurement.")
    var seconds: Double = 0.5

    func run() throws {
        msq_set_num_threads(Int32(threads))
        let t = Int(msq_get_num_threads())
        writeLine("threads \(t)")
        var convHeader = false
        for model in models.split(separator: ",").map(String.init) {
            guard ["resnet20", "resnet18", "mobilenetv3-large", "deit-tiny", "swin-t"].contains(model) else {
                throw ValidationError("unknown model \(model) in --models (resnet20, resnet18, mobilenetv3-large, deit-tiny, swin-t)")
            }
            if model == "swin-t" {
                try runSwin(batch: batch18, threads: t)
                continue
            }
            if model == "mobilenetv3-large" {
                try runDepthwise(batch: batch18, threads: t)
                continue
            }
            if model == "deit-tiny" {
                try runTransformer(batch: batch18, threads: t)
                continue
            }
            if !convHeader {
                writeLine("GFLOP/s = 2·M·N·K / time; ratio = conv / sgemm at the same M, N, K")
                writeLine(pad("layer", 28) + pad("batch", 6) + pad("M×N×K", 20) + pad("sgemm", 8) + pad("fwd", 8) + pad("ratio", 7)
                      + pad("bwd-in", 8) + pad("ratio", 7) + pad("bwd-w", 8) + pad("ratio", 7))
                convHeader = true
            }
            let batch = model == "resnet20" ? batch20 : batch18
            for c in ConvCase.cases(model: model) {
                try runCase(c, batch: batch, threads: t)
            }
        }
    }

    func runCase(_ c: ConvCase, batch: Int, threads: Int) throws {
        var s = msq_conv2d_shape()
        guard msq_conv2d_make_shape(&s, Int32(batch), Int32(c.cIn), Int32(c.hIn), Int32(c.hIn), Int32(c.cOut),
                                    Int32(c.k), Int32(c.k), Int32(c.stride), Int32(c.pad), 1) == 0 else {
            throw ValidationError("invalid shape \(c.name)")
        }
        let m = Int(s.c_out), n = batch * Int(s.h_out) * Int(s.w_out), k = Int(s.c_in) * c.k * c.k
        let flops = 2.0 * Double(m) * Double(n) * Double(k)
        var rng = RandomSource(seed: 1)
        let x = Tensor.randomNormal([batch, c.cIn, c.hIn, c.hIn], std: 1, using: &rng)
        let w = Tensor.randomNormal([c.cOut, c.cIn, c.k, c.k], std: 0.1, using: &rng)
        let dy = Tensor.randomNormal([batch, c.cOut, Int(s.h_out), Int(s.w_out)], std: 1, using: &rng)

        let a = Tensor.randomNormal([m, k], std: 1, using: &rng)
        let b = Tensor.randomNormal([k, n], std: 1, using: &rng)
        var cm = Tensor(shape: [m, n])
        let gemm = timePerCall {
            cm.withUnsafeMutablePointer { cp in a.withUnsafePointer { ap in b.withUnsafePointer { bp in
                bench_sgemm(cp, ap, bp, Int32(m), Int32(n), Int32(k), Int32(threads)) } } }
        }
        let (fwd, bin, bw) = timeConv(&s, x: x, w: w, dy: dy)
        let g = flops / gemm / 1e9, f = flops / fwd / 1e9, bi = flops / bin / 1e9, bwg = flops / bw / 1e9
        writeLine(pad(c.name, 28) + pad("\(batch)", 6) + pad("\(m)×\(n)×\(k)", 20) + pad(fmt(g), 8)
              + pad(fmt(f), 8) + pad(fmt(f / g, 2), 7) + pad(fmt(bi), 8) + pad(fmt(bi / g, 2), 7)
              + pad(fmt(bwg), 8) + pad(fmt(bwg / g, 2), 7))
    }

    /// Median seconds per call of `msq_conv2d_forward`, `_backward_input` and `_backward_weight` on
    /// shape `s` with input x, weight w and output gradient dy (each direction's output allocated here).
    func timeConv(_ s: inout msq_conv2d_shape, x: Tensor, w: Tensor, dy: Tensor) -> (forward: Double, input: Double, weight: Double) {
        var y = Tensor(shape: dy.shape), dx = Tensor(shape: x.shape), dw = Tensor(shape: w.shape)
        let workspace = UnsafeMutableRawPointer.allocate(byteCount: max(msq_conv2d_workspace_size(&s), 1), alignment: 64)
        defer { workspace.deallocate() }
        let fwd = timePerCall {
            y.withUnsafeMutablePointer { yp in x.withUnsafePointer { xp in w.withUnsafePointer { wp in
                msq_conv2d_forward(yp, xp, wp, nil, &s, workspace) } } }
        }
        let bin = timePerCall {
            dx.withUnsafeMutablePointer { dxp in dy.withUnsafePointer { dyp in w.withUnsafePointer { wp in
                msq_conv2d_backward_input(dxp, dyp, wp, &s, workspace) } } }
        }
        let bw = timePerCall {
            dw.withUnsafeMutablePointer { dwp in dy.withUnsafePointer { dyp in x.withUnsafePointer { xp in
                msq_conv2d_backward_weight(dwp, nil, dyp, xp, &s, workspace) } } }
        }
        return (fwd, bin, bw)
    }

    /// Median seconds per call over repeated timed batches of calls, after one warm-up call.
    func timePerCall(_ body: () -> Void) -> Double {
        body()
        var samples: [Double] = []
        let start = Date()
        repeat {
            let t0 = DispatchTime.now().uptimeNanoseconds
            body()
            samples.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        } while Date().timeIntervalSince(start) < seconds || samples.count < 3
        samples.sort()
        return samples[samples.count / 2]
    }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

func fmt(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
