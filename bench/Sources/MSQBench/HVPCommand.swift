import ArgumentParser
import CKernels
import Foundation
import MSQ

/// `msq-bench hvp`: Hessian-vector products of a checkpoint written out for another framework to
/// check (bench/scripts/check-hvp.sh), and, with `--time`, what one HVP costs in each mode.
struct HVPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hvp",
        abstract: "Write H·v of a checkpoint for probes (safetensors, PyTorch names), or time one HVP per mode.",
        discussion: """
        H is the Hessian of the mean softmax cross-entropy on the first --calibration training images, eval mode, \
        w.r.t. the quantized layers' weights, at the quantized weights with the quantizers bypassed (as MSQ takes it). \
        OUT holds: every parameter and batch-norm buffer under PyTorch's state_dict names (the weights at which H \
        was taken), calibration.images (float32 NCHW, normalised) and calibration.labels (int64), and for probe j and \
        each quantized weight NAME probe.j.NAME and hv.j.NAME (H·v restricted to that weight). Metadata: model, \
        classes, in_channels, mode, precision. Probes come from --probes IN (IN's probe.j.NAME; a NAME absent from a probe is \
        zero there) or --random M (Rademacher over all quantized weights, --seed).
        --time: for --model (default resnet20 at batch 64 on 1x28x28; resnet18, deit-tiny, deit-small at 224x224, \
        batch 16), fresh 8-bit MSQ \
        weights on random images: one training forward+backward and one HVP per mode, run alternately --repeats \
        times after a warm-up; medians and ratios. With --precision float64 (ResNets) also the float64 \
        Gauss-Newton and exact HVPs.
        """)

    @Option(help: "Checkpoint to take H at (not needed with --time).")
    var checkpoint: String?
    @Option(help: "Calibration images (default 64).")
    var calibration: Int = 64
    @Option(help: "Probes from this safetensors file (probe.j.NAME).")
    var probes: String?
    @Option(help: "Or this many Rademacher probes.")
    var random: Int?
    @Option(help: "Seed of --random probes (default 0).")
    var seed: UInt64 = 0
    @Option(help: "auto, exact, gauss-newton or central-difference (default auto).")
    var mode: String = "auto"
    @Option(help: "float32 or float64: the R-operator modes' arithmetic (default float32; float64 for ResNets, a reference).")
    var precision: String = "float32"
    @Option(help: "Output safetensors file.")
    var out: String?
    @Option(help: "Dataset directory for datasets read from files.")
    var dataDir: String?
    @Flag(help: "Time one HVP per mode against one training forward+backward.")
    var time = false
    @Option(help: "--time: resnet20, resnet18, deit-tiny or deit-small.")
    var model: String = "resnet20"
    @Option(help: "--time: batch size (default 64 for resnet20, 16 for the others).")
    var batch: Int?
    @Option(help: "--time: timed rounds (each runs every row once).")
    var repeats: Int = 5
    @Option(help: "Kernel threads (default 2).")
    var threads: Int = 2
    @Option(help: "--time: write the timings as JSON here.")
    var json: String?

    func validate() throws {
        if calibration < 1 { throw ValidationError("--calibration must be at least 1") }
        if mode != "auto" && HessianMode(rawValue: mode) == nil {
            throw ValidationError("--mode must be auto, exact, gauss-newton or central-difference (got \(mode))")
        }
        guard let p = HessianPrecision(rawValue: precision) else {
            throw ValidationError("--precision must be float32 or float64 (got \(precision))")
        }
        if p == .float64 && mode == HessianMode.centralDifference.rawValue {
            throw ValidationError("--precision float64 needs --mode exact, gauss-newton or auto: central differences run in float32")
        }
        if time { return }
        guard checkpoint != nil else { throw ValidationError("--checkpoint is required (or --time)") }
        guard out != nil else { throw ValidationError("--out is required") }
        guard (probes == nil) != (random == nil) else { throw ValidationError("give exactly one of --probes IN and --random M") }
        if let random, random < 1 { throw ValidationError("--random must be at least 1") }
    }

    func run() throws {
        msq_set_num_threads(Int32(threads))
        if time { return try runTiming() }
        guard let checkpoint, let out else { return }
        let restored = try RestoredModel(checkpoint: try Checkpoint.read(from: checkpoint))
        let batch = try restored.calibrationBatch(count: calibration, dataDirectory: dataDir)
        let layers = restored.layers
        let names = layers.map { pytorchName(forParameterPath: joinPath($0.path, "weight"), model: restored.kind) ?? joinPath($0.path, "weight") }
        let counts = layers.map(\.count)
        var file = SafeTensors()
        let hvp = HessianVectorProduct(model: restored.model, layers: layers, images: batch.images, labels: batch.labels,
                                       mode: HessianMode(rawValue: mode), precision: HessianPrecision(rawValue: precision) ?? .float32)
        let vectors = try probeVectors(names: names, layers: layers, counts: counts)
        let start = Date()
        let products = try atQuantizedWeightsIfQuantized(restored) { () throws -> [[Tensor]] in
            for (name, value) in pytorchStateDict(of: restored.model, kind: restored.kind) { file.add(value, named: name) }
            return try vectors.map { try hvp.apply(tensors: $0) }
        }
        let seconds = Date().timeIntervalSince(start)
        for (j, (v, hv)) in zip(vectors, products).enumerated() {
            for (l, name) in names.enumerated() {
                file.add(v[l].reshaped(layers[l].parameter.value.shape), named: "probe.\(j).\(name)")
                file.add(hv[l], named: "hv.\(j).\(name)")
            }
        }
        file.add(batch.images, named: "calibration.images")
        file.tensors["calibration.labels"] = try SafeTensor(shape: [batch.labels.count], int64: batch.labels.map(Int64.init))
        file.metadata = ["model": restored.kind.rawValue, "classes": String(restored.dataset.numClasses),
                         "in_channels": String(restored.dataset.sampleShape[0]), "mode": hvp.mode.rawValue,
                         "precision": hvp.precision.rawValue, "checkpoint": checkpoint, "probes": String(vectors.count)]
        try file.write(to: out)
        print(String(format: "hvp: %d probes, mode %@, %@, %d images, %.2f s; wrote %@", vectors.count, hvp.mode.rawValue,
                     hvp.precision.rawValue, batch.labels.count, seconds, out))
    }

    private func atQuantizedWeightsIfQuantized<T>(_ r: RestoredModel, _ body: () throws -> T) rethrows -> T {
        r.isQuantized ? try atQuantizedWeights(model: r.model, layers: r.layers, body) : try body()
    }

    /// The probes, per probe and layer, as flat tensors.
    private func probeVectors(names: [String], layers: [QuantizedLayer], counts: [Int]) throws -> [[Tensor]] {
        if let random {
            return (0..<random).map { HutchinsonTrace.probeTensors(seed: seed, probe: $0, counts: counts) }
        }
        guard let probes else { return [] }
        let file = try SafeTensors.read(from: probes)
        var out: [[Tensor]] = []
        while file.tensors.keys.contains(where: { $0.hasPrefix("probe.\(out.count).") }) {
            let j = out.count
            out.append(try names.enumerated().map { l, name in
                guard let entry = file.tensors["probe.\(j).\(name)"] else { return Tensor(shape: [counts[l]]) }
                guard let t = entry.tensor(), t.count == counts[l] else {
                    throw ValidationError("\(probes): probe.\(j).\(name) must be a float tensor of shape \(layers[l].parameter.value.shape)")
                }
                return t.reshaped([counts[l]])
            })
        }
        if out.isEmpty { throw ValidationError("\(probes) holds no probe.0.NAME entry for any quantized weight (\(names.first ?? "")…)") }
        return out
    }

    // MARK: --time

    private func runTiming() throws {
        let timed: [ModelKind] = [.resnet20, .resnet18, .deitTiny, .deitSmall]
        guard let kind = try? ModelKind(name: model), timed.contains(kind) else {
            throw ValidationError("--model must be one of \(timed.map(\.rawValue).joined(separator: ", ")) (got \(model))")
        }
        let (channels, side, n) = kind == .resnet20 ? (1, 28, batch ?? 64) : (3, 224, batch ?? 16)
        let net = makeModel(kind, inputChannels: channels, numClasses: 10, seed: 1)
        let layers = try quantizeForMSQ(net, initialBits: 8)
        var rng = RandomSource(seed: 2)
        let images = Tensor.randomNormal([n, channels, side, side], std: 1, using: &rng)
        let labels = (0..<n).map { _ in Int32(rng.nextInt(below: 10)) }
        // Running statistics as after training, so eval mode is not the identity.
        for _ in 0..<2 { _ = net.forward(images, mode: .train) }
        let counts = layers.map(\.count)
        let probe = HutchinsonTrace.probeTensors(seed: 3, probe: 0, counts: counts)
        var rows: [(name: String, body: () throws -> Void)] = [("train forward+backward", {
            net.zeroGradients()
            let loss = SoftmaxCrossEntropy()
            _ = try loss.forward(logits: net.forward(images, mode: .train), labels: labels)
            net.backwardParameters(loss.backward())
        })]
        // Row 3 is central differences (the ratios' denominator); with --precision float64 the
        // reference precision's cost follows the float32 rows (ResNets only).
        var variants: [(HessianMode, HessianPrecision)] = [(.gaussNewton, .float32), (.exact, .float32), (.centralDifference, .float32)]
        if precision == HessianPrecision.float64.rawValue { variants += [(.gaussNewton, .float64), (.exact, .float64)] }
        for (m, p) in variants {
            let hvp = HessianVectorProduct(model: net, layers: layers, images: images, labels: labels, mode: m, precision: p)
            rows.append(("hvp \(m.rawValue)" + (p == .float64 ? " float64" : ""), {
                _ = try atQuantizedWeights(model: net, layers: layers) { try hvp.apply(tensors: probe) }
            }))
        }
        for row in rows { try row.body() } // warm-up
        var times = rows.map { _ in [Double]() }
        for _ in 0..<repeats {
            for (i, row) in rows.enumerated() {
                let t0 = DispatchTime.now().uptimeNanoseconds
                try row.body()
                times[i].append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
        }
        func median(_ a: [Double]) -> Double { let s = a.sorted(); return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2 }
        let medians = times.map(median)
        let cd = medians[3], train = medians[0]
        print("hvp --time: \(kind.rawValue), batch \(n), \(channels)x\(side)x\(side), \(threads) threads, \(repeats) alternating rounds (median s)")
        var result: [[String: Any]] = []
        for (i, row) in rows.enumerated() {
            print("  " + row.name.padding(toLength: 26, withPad: " ", startingAt: 0)
                  + String(format: " %8.4f s   x train %5.2f   x central-difference %5.2f", medians[i], medians[i] / train, medians[i] / cd))
            result.append(["row": row.name, "median_seconds": medians[i], "seconds": times[i],
                           "ratio_to_train": medians[i] / train, "ratio_to_central_difference": medians[i] / cd])
        }
        if let json {
            let data = try JSONSerialization.data(withJSONObject: ["model": kind.rawValue, "batch": n, "threads": threads,
                                                                   "repeats": repeats, "rows": result],
                                                  options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: json))
        }
    }
}
