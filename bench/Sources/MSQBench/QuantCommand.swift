import ArgumentParser
import CBLASBench
import CKernels
import Foundation
import MSQ

/// `msq-bench quant`: GB/s of the quantizer kernels next to a parallel memcpy moving the same bytes.
struct QuantCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quant",
        abstract: "Bandwidth of the RoundClamp / LSB kernels vs a parallel memcpy moving the same bytes.",
        discussion: """
        For each weight-vector length (default 11,200,000 ≈ ResNet-18's conv weights, then 270,000 ≈ \
        ResNet-20's), times each kernel (median over repeated calls for at least --seconds, after one \
        warm-up call) at 8 bits, k = 1. GB/s = bytes the call must move (reads + writes, B/elem column) / \
        time. The memcpy baseline copies half that many bytes (a copy reads and writes each byte) in \
        --threads contiguous pieces, one per thread. ratio = kernel GB/s / memcpy GB/s. Rows marked \
        "step" are the exact calls of an msq training step (RoundClampQuantizer forward/backward, \
        LSBRegularizer.apply; msq_absmax runs three times per layer and step).
        """)

    @Option(help: "Weight-vector length in floats; repeat for several (default: 11200000 and 270000).")
    var count: [Int] = []
    @Option(help: "Threads for the kernels and the memcpy baseline (0 = all cores).")
    var threads: Int = 0
    @Option(help: "Minimum seconds spent timing each measurement.")
    var seconds: Double = 0.5
    @Option(help: "Write the results as JSON here.")
    var json: String?

    /// Refuses non-positive counts and durations.
    func validate() throws {
        guard count.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--count must be ≥ 1") }
        guard threads >= 0 else { throw ValidationError("--threads must be ≥ 0") }
        guard seconds > 0, seconds.isFinite else { throw ValidationError("--seconds must be > 0") }
    }

    /// Measures every length in turn, printing one table per length.
    func run() throws {
        msq_set_num_threads(Int32(threads))
        let t = Int(msq_get_num_threads())
        writeLine("threads \(t); GB/s = bytes moved / median time per call; memcpy: same bytes, \(t) pieces on the kernels' OpenMP pool")
        var runs: [[String: Any]] = []
        for n in count.isEmpty ? [11_200_000, 270_000] : count {
            writeLine("")
            writeLine("N = \(grouped(n)) floats")
            writeLine(pad("kernel", 44) + pad("step", 5) + pad("B/elem", 7) + pad("ms", 9) + pad("GB/s", 8)
                      + pad("memcpy", 8) + pad("ratio", 6))
            var rows: [[String: Any]] = []
            for r in measure(count: n, threads: t) {
                writeLine(pad(r.name, 44) + pad(r.inStep ? "yes" : "", 5) + pad("\(r.bytesPerElement)", 7)
                          + pad(fmt(r.seconds * 1000, 3), 9) + pad(fmt(r.gbPerSecond), 8)
                          + pad(fmt(r.memcpyGBPerSecond), 8) + pad(fmt(r.ratio, 2), 6))
                rows.append(r.json)
            }
            runs.append(["count": n, "kernels": rows])
        }
        if let json {
            try writeJSON(["threads": t, "seconds": seconds, "bits": 8, "k": 1, "runs": runs],
                          to: json)
        }
    }

    /// One kernel's timing next to its memcpy baseline.
    struct Row {
        var name, call: String
        var inStep: Bool
        var bytesPerElement: Int
        var seconds, memcpySeconds: Double
        var count: Int

        /// Bytes the call moves.
        var bytes: Double { Double(bytesPerElement) * Double(count) }
        /// The kernel's bandwidth in GB/s (10^9 bytes).
        var gbPerSecond: Double { bytes / seconds / 1e9 }
        /// The memcpy baseline's bandwidth on the same bytes.
        var memcpyGBPerSecond: Double { bytes / memcpySeconds / 1e9 }
        /// Kernel bandwidth as a fraction of memcpy's (the acceptance target is ≥ 0.70).
        var ratio: Double { memcpySeconds / seconds }

        /// The row as a JSON object.
        var json: [String: Any] {
            ["name": name, "call": call, "in_training_step": inStep, "bytes_per_element": bytesPerElement,
             "seconds": seconds, "gb_per_s": gbPerSecond, "memcpy_seconds": memcpySeconds,
             "memcpy_gb_per_s": memcpyGBPerSecond, "ratio": ratio]
        }
    }

    /// Times every kernel on an `n`-float weight vector, and memcpy for each distinct byte count.
    func measure(count n: Int, threads: Int) -> [Row] {
        let w = FloatBuffer(n), wq = FloatBuffer(n), grad = FloatBuffer(n), lsb = FloatBuffer(n)
        let dw = FloatBuffer(n), dwq = FloatBuffer(n)
        let codes = UnsafeMutablePointer<Int32>.allocate(capacity: n)
        codes.initialize(repeating: 0, count: n)
        defer { codes.deallocate() }
        var rng = RandomSource(seed: 1)
        for i in 0..<n {
            w.p[i] = 0.05 * rng.nextGaussian()
            dwq.p[i] = 1e-3 * rng.nextGaussian()
        }
        let s = msq_absmax(w.p, n)
        let coeff = Float(5.0 / Double(n))  // λ / N_total, as LSBRegularizer passes it
        var absSum = 0.0
        var nonzero: Int64 = 0

        typealias Case = (name: String, call: String, inStep: Bool, bytes: Int, body: () -> Void)
        let cases: [Case] = [
            ("absmax", "msq_absmax(w, N)", true, 4, { _ = msq_absmax(w.p, n) }),
            ("(a) roundclamp_forward, codes", "msq_roundclamp_forward(wq, codes, w, N, s, 8)", false, 12,
             { msq_roundclamp_forward(wq.p, codes, w.p, n, s, 8) }),
            ("(b) roundclamp_forward, codes NULL", "msq_roundclamp_forward(wq, NULL, w, N, s, 8)", true, 8,
             { msq_roundclamp_forward(wq.p, nil, w.p, n, s, 8) }),
            ("(c) lsb_forward_backward, lsb + grad", "msq_lsb_forward_backward(lsb, &abs, &nz, grad, w, N, s, 8, 1, coeff)",
             false, 16, { msq_lsb_forward_backward(lsb.p, &absSum, &nonzero, grad.p, w.p, n, s, 8, 1, coeff) }),
            ("(d) lsb_forward_backward, lsb NULL + grad", "msq_lsb_forward_backward(NULL, &abs, &nz, grad, w, N, s, 8, 1, coeff)",
             true, 12, { msq_lsb_forward_backward(nil, &absSum, &nonzero, grad.p, w.p, n, s, 8, 1, coeff) }),
            ("(e) roundclamp_backward", "msq_roundclamp_backward(dw, dwq, w, N, s, 8, 0)", true, 12,
             { msq_roundclamp_backward(dw.p, dwq.p, w.p, n, s, 8, 0) }),
            ("(e') roundclamp_backward, zero outside", "msq_roundclamp_backward(dw, dwq, w, N, s, 8, 1)", false, 16,
             { msq_roundclamp_backward(dw.p, dwq.p, w.p, n, s, 8, 1) }),
        ]

        // One pair of copy buffers big enough for the largest case; memcpy timed once per byte count.
        let maxCopy = (cases.map(\.bytes).max() ?? 16) * n / 2
        let src = ByteBuffer(maxCopy), dst = ByteBuffer(maxCopy)
        var memcpyTime: [Int: Double] = [:]
        return cases.map { c in
            let seconds = Self.timePerCall(minimum: self.seconds, c.body)
            let copyBytes = c.bytes * n / 2
            if memcpyTime[copyBytes] == nil {
                memcpyTime[copyBytes] = Self.timePerCall(minimum: self.seconds) {
                    bench_parallel_memcpy(dst.p, src.p, copyBytes, Int32(threads))
                }
            }
            return Row(name: c.name, call: c.call, inStep: c.inStep, bytesPerElement: c.bytes, seconds: seconds,
                       memcpySeconds: memcpyTime[copyBytes] ?? .nan, count: n)
        }
    }

    /// Median seconds per call over repeated calls for at least `minimum` seconds, after one
    /// warm-up call (as `KernelsCommand.timePerCall`).
    static func timePerCall(minimum: Double, _ body: () -> Void) -> Double {
        body()
        var samples: [Double] = []
        let start = DispatchTime.now().uptimeNanoseconds
        repeat {
            let t0 = DispatchTime.now().uptimeNanoseconds
            body()
            samples.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        } while Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 < minimum || samples.count < 3
        return medianOf(samples)
    }
}

/// A zero-filled, 64-byte-aligned float array freed with its owner (pages touched up front, so
/// first-touch faults stay out of the timings).
final class FloatBuffer {
    /// The first element.
    let p: UnsafeMutablePointer<Float>

    /// `count` zeros.
    init(_ count: Int) {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        p = raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1))
    }

    deinit { p.deallocate() }
}

/// A zero-filled, 64-byte-aligned byte array freed with its owner.
final class ByteBuffer {
    /// The first byte.
    let p: UnsafeMutableRawPointer

    /// `count` zero bytes.
    init(_ count: Int) {
        p = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: max(count, 1))
    }

    deinit { p.deallocate() }
}
