import ArgumentParser
import MSQ

/// The `msq train` options of the MSQ method (MSQ-SPEC §2–5); defaults are ``MSQOptions``'s.
struct MSQArguments: ParsableArguments {
    @Option(help: "Target compression, sign bit counted: 10.67 = 3 bits per weight on average (the paper's \"16x\"). Required with --method msq.")
    var targetCompression: Double?
    @Option(help: "Starting precision of every quantized layer, sign included.")
    var weightBits: Int = 8
    @Option(help: "Quantize the inputs of the quantized layers (except the first) to A bits with PACT (default: float).")
    var actBits: Int?
    @Option(help: "λ, the weight of the LSB regulariser (default 1).")
    var lambda: Double?
    @Option(help: "τ: prune a layer whose LSB nonzero rate is at most this (default 0.05).")
    var pruneThreshold: Double?
    @Option(help: "Pruning interval in epochs, fractional allowed (default 0.5).")
    var pruneInterval: Double?
    @Option(help: "Fraction of training by which the target must be met (default 0.6).")
    var pruneDeadline: Double?
    @Option(help: "Lowest precision a layer may reach (default 2).")
    var minBits: Int?
    @Option(help: "Hessian-aware pruning step k (on|off; off: every layer drops 1 bit at a time).")
    var hessian: String = "on"
    @Option(help: "Calibration images for the Hessian traces (default 64).")
    var hessianBatch: Int?
    @Option(help: "Most Hutchinson probes per trace estimate (default 8).")
    var hessianProbes: Int?
    @Option(help: "Multiply λ by this after each interval that had to force pruning (default 1: never).")
    var lambdaGrowth: Double?

    /// The MSQ options the user gave explicitly (to refuse them with --method fp).
    var givenOptions: [String] {
        var out: [String] = []
        if targetCompression != nil { out.append("--target-compression") }
        if actBits != nil { out.append("--act-bits") }
        if lambda != nil { out.append("--lambda") }
        if pruneThreshold != nil { out.append("--prune-threshold") }
        if pruneInterval != nil { out.append("--prune-interval") }
        if pruneDeadline != nil { out.append("--prune-deadline") }
        if minBits != nil { out.append("--min-bits") }
        if hessianBatch != nil { out.append("--hessian-batch") }
        if hessianProbes != nil { out.append("--hessian-probes") }
        if lambdaGrowth != nil { out.append("--lambda-growth") }
        return out
    }

    func options() throws -> MSQOptions {
        guard let target = targetCompression else {
            throw ValidationError("--method msq needs --target-compression (e.g. 10.67 for 3 bits per weight on average)")
        }
        guard hessian == "on" || hessian == "off" else { throw ValidationError("--hessian must be on or off (got \(hessian))") }
        var o = MSQOptions(targetCompression: target)
        if let lambda { o.lambda = lambda }
        if let pruneThreshold { o.pruneThreshold = pruneThreshold }
        if let pruneInterval { o.pruneIntervalEpochs = pruneInterval }
        if let pruneDeadline { o.deadlineFraction = pruneDeadline }
        if let minBits { o.minBits = minBits }
        o.hessian = hessian == "on"
        if let hessianBatch { o.hessianBatch = hessianBatch }
        if let hessianProbes { o.hessianProbes = hessianProbes }
        if let lambdaGrowth { o.lambdaGrowth = lambdaGrowth }
        if let a = actBits, !(2...16).contains(a) { throw ValidationError("--act-bits must be in 2...16 (got \(a))") }
        if !(2...16).contains(weightBits) { throw ValidationError("--weight-bits must be in 2...16 (got \(weightBits))") }
        return o
    }

    /// Quantizes `model` (every conv/linear at --weight-bits; PACT inputs when --act-bits is set)
    /// and builds the method.
    func makeMethod(model: any Module, options: MSQOptions, data: LoadedData, seed: UInt64) throws -> MSQTraining {
        let paths = quantizableLayers(of: model).map(\.path)
        let excluded = actBits == nil ? [] : Array(paths.prefix(1))
        let scheme = QuantizationScheme(layers: paths.map { .init(path: $0, bits: weightBits) },
                                        activationBits: actBits, activationExcluded: excluded)
        let layers = try scheme.apply(to: model)
        let calibration = options.hessian
            ? try calibrationBatch(from: data.train, normalization: data.normalization, count: options.hessianBatch)
            : nil
        return try MSQTraining(layers: layers, options: options, calibration: calibration,
                               activationBits: actBits, activationExcluded: excluded, seed: seed)
    }
}
