import ArgumentParser
import MSQ

/// The `msq train` options of the quantized methods (MSQ-SPEC §2–5, §7); defaults are
/// ``MSQOptions``'s, ``DoReFaOptions``'s, ``BSQOptions``'s and ``CSQOptions``'s. Which method takes
/// which option is ``applicable``; the others are refused with a message.
struct MSQArguments: ParsableArguments {
    @Option(help: "Target compression, sign bit counted: 10.67 = 3 bits per weight on average (the paper's \"16x\"). Required with --method msq, bsq and csq.")
    var targetCompression: Double?
    @Option(help: "Bits per weight, sign included. msq: starting precision (default 8). dorefa: the fixed precision of every layer (required). bsq, csq: starting precision = bit planes + 1 (default 9: 8 planes).")
    var weightBits: Int?
    @Option(help: "Quantize the inputs of the quantized layers (except the first) to A bits with PACT (default: float). msq, dorefa, bsq, csq.")
    var actBits: Int?
    @Option(help: "λ, the regulariser weight. msq: LSB regulariser (default 1). bsq: group lasso, BSQ's --decay (default 0.01). csq: budget-aware mask regulariser (default 1).")
    var lambda: Double?
    @Option(help: "τ. msq: prune a layer whose LSB nonzero rate is at most this (default 0.05). bsq: remove an MSB/LSB plane whose nonzero rate is at most this (default 0: all-zero planes only).")
    var pruneThreshold: Double?
    @Option(help: "Interval in epochs, fractional allowed (default 0.5). msq: pruning. bsq: requantization and plane removal. csq: status table.")
    var pruneInterval: Double?
    @Option(help: "Fraction of training by which the target must be met (default 0.6). csq: the masks are hardened there.")
    var pruneDeadline: Double?
    @Option(help: "Lowest precision a layer may reach, sign included (default 2). msq, bsq, csq.")
    var minBits: Int?
    @Option(help: "Hessian-aware pruning step k (on|off, default on; off: every layer drops 1 bit at a time). msq only.")
    var hessian: String?
    @Option(help: "How Hessian-vector products are computed: auto (Gauss-Newton for piecewise-linear CNNs, else the exact R-operator), exact, gauss-newton, central-difference (the old float32 reference). msq only.")
    var hessianMode: String?
    @Option(help: "Calibration images for the Hessian traces (default 64). msq only.")
    var hessianBatch: Int?
    @Option(help: "Most Hutchinson probes per trace estimate (default 8). msq only.")
    var hessianProbes: Int?
    @Option(help: "Multiply λ by this after each interval that had to force pruning (default 1: never). msq only.")
    var lambdaGrowth: Double?
    @Flag(help: "dorefa: multiply each layer's quantized weights by max|W| (DoReFa's weights are in [-1, 1] otherwise).")
    var dorefaScaled = false
    @Option(help: "Weight scales: per-tensor (default; msq: s = max|W| per layer) or per-channel (one scale per output channel, s_c = max|W_c|; msq export stores them). msq, dorefa.")
    var scale: String?

    /// The quantized methods' options the user gave explicitly, by CLI name.
    var givenOptions: [String] {
        // Ordered pairs: the first inapplicable option in this order is the one refused.
        let given: KeyValuePairs<String, Bool> = [
            "--target-compression": targetCompression != nil, "--weight-bits": weightBits != nil,
            "--act-bits": actBits != nil, "--lambda": lambda != nil, "--prune-threshold": pruneThreshold != nil,
            "--prune-interval": pruneInterval != nil, "--prune-deadline": pruneDeadline != nil,
            "--min-bits": minBits != nil, "--hessian": hessian != nil, "--hessian-mode": hessianMode != nil, "--hessian-batch": hessianBatch != nil,
            "--hessian-probes": hessianProbes != nil, "--lambda-growth": lambdaGrowth != nil,
            "--dorefa-scaled": dorefaScaled, "--scale": scale != nil,
        ]
        return given.filter { $0.value }.map { $0.key }
    }

    /// The options each method takes.
    static let applicable: [String: Set<String>] = [
        "fp": [],
        "msq": ["--target-compression", "--weight-bits", "--act-bits", "--lambda", "--prune-threshold", "--prune-interval",
                "--prune-deadline", "--min-bits", "--hessian", "--hessian-mode", "--hessian-batch", "--hessian-probes",
                "--lambda-growth", "--scale"],
        "dorefa": ["--weight-bits", "--act-bits", "--dorefa-scaled", "--scale"],
        "bsq": ["--target-compression", "--weight-bits", "--act-bits", "--lambda", "--prune-threshold", "--prune-interval",
                "--prune-deadline", "--min-bits"],
        "csq": ["--target-compression", "--weight-bits", "--act-bits", "--lambda", "--prune-interval", "--prune-deadline",
                "--min-bits"],
    ]

    /// Refuses options given with a method that does not take them, naming the methods that do.
    func refuseInapplicable(method: String) throws {
        let allowed = Self.applicable[method] ?? []
        for option in givenOptions where !allowed.contains(option) {
            let takers = Self.applicable.filter { $0.value.contains(option) }.keys.sorted()
            throw ValidationError("\(option) does not apply to --method \(method); it applies to --method \(takers.joined(separator: ", "))")
        }
    }

    /// --scale as a ``ScaleGranularity`` (per tensor when not given).
    func scaleGranularity() throws -> ScaleGranularity {
        guard let scale else { return .perTensor }
        guard let granularity = ScaleGranularity(rawValue: scale) else {
            throw ValidationError("--scale must be \(ScaleGranularity.allCases.map(\.rawValue).joined(separator: " or ")) (got \(scale))")
        }
        return granularity
    }

    func checkActivationBits() throws {
        if let a = actBits, !(2...16).contains(a) { throw ValidationError("--act-bits must be in 2...16 (got \(a))") }
    }

    /// The options of a target-driven method (`method` is its --method name for the message) with
    /// the shared options the user gave applied over `make`'s defaults; one place, so that msq, bsq
    /// and csq read --target-compression, --lambda, --prune-interval, --prune-deadline and
    /// --min-bits alike.
    func scheduleOptions<O: PruningScheduleOptions>(method: String, _ make: (Double) -> O) throws -> O {
        guard let target = targetCompression else {
            throw ValidationError("--method \(method) needs --target-compression (e.g. 10.67 for 3 bits per weight on average)")
        }
        var o = make(target)
        if let lambda { o.lambda = lambda }
        if let pruneInterval { o.pruneIntervalEpochs = pruneInterval }
        if let pruneDeadline { o.deadlineFraction = pruneDeadline }
        if let minBits { o.minBits = minBits }
        return o
    }

    /// MSQ's options (`--method msq`).
    func options() throws -> MSQOptions {
        var o = try scheduleOptions(method: "msq", MSQOptions.init(targetCompression:))
        let hessianSetting = hessian ?? "on"
        guard hessianSetting == "on" || hessianSetting == "off" else { throw ValidationError("--hessian must be on or off (got \(hessianSetting))") }
        if let pruneThreshold { o.pruneThreshold = pruneThreshold }
        o.hessian = hessianSetting == "on"
        if let hessianMode, hessianMode != "auto" {
            guard let mode = HessianMode(rawValue: hessianMode) else {
                throw ValidationError("--hessian-mode must be auto, \(HessianMode.allCases.map(\.rawValue).joined(separator: ", ")) (got \(hessianMode))")
            }
            o.hessianMode = mode
        }
        if let hessianBatch { o.hessianBatch = hessianBatch }
        if let hessianProbes { o.hessianProbes = hessianProbes }
        if let lambdaGrowth { o.lambdaGrowth = lambdaGrowth }
        try checkActivationBits()
        if !(2...16).contains(msqWeightBits) { throw ValidationError("--weight-bits must be in 2...16 (got \(msqWeightBits))") }
        _ = try scaleGranularity()
        return o
    }

    /// MSQ's starting precision (default 8).
    var msqWeightBits: Int { weightBits ?? 8 }

    /// Quantizes `model` (every conv/linear at --weight-bits with --scale scales; PACT inputs when
    /// --act-bits is set) and builds the method.
    func makeMethod(model: any Module, options: MSQOptions, data: LoadedData, seed: UInt64) throws -> MSQTraining {
        let paths = quantizableLayers(of: model).map(\.path)
        let excluded = actBits == nil ? [] : defaultActivationExclusions(model).sorted()
        let scheme = QuantizationScheme(layers: paths.map { .init(path: $0, bits: msqWeightBits) },
                                        activationBits: actBits, activationExcluded: excluded,
                                        scaleGranularity: try scaleGranularity())
        let layers = try scheme.apply(to: model)
        let calibration = options.hessian
            ? try calibrationBatch(from: data.train, normalization: data.normalization, count: options.hessianBatch)
            : nil
        return try MSQTraining(layers: layers, options: options, calibration: calibration,
                               activationBits: actBits, activationExcluded: excluded, seed: seed)
    }

    /// DoReFa's options (`--method dorefa`): --weight-bits is required.
    func doReFaOptions() throws -> DoReFaOptions {
        guard let weightBits else {
            throw ValidationError("--method dorefa needs --weight-bits (bits per weight, sign included; e.g. 3 for C = 10.67)")
        }
        try checkActivationBits()
        var o = DoReFaOptions(weightBits: weightBits)
        o.scaled = dorefaScaled
        o.scaleGranularity = try scaleGranularity()
        return o
    }

    /// BSQ's options (`--method bsq`).
    func bsqOptions() throws -> BSQOptions {
        var o = try scheduleOptions(method: "bsq", BSQOptions.init(targetCompression:))
        if let weightBits { o.initialBits = weightBits }
        if let pruneThreshold { o.pruneThreshold = pruneThreshold }
        try checkActivationBits()
        return o
    }

    /// CSQ's options (`--method csq`).
    func csqOptions() throws -> CSQOptions {
        var o = try scheduleOptions(method: "csq", CSQOptions.init(targetCompression:))
        if let weightBits { o.initialBits = weightBits }
        try checkActivationBits()
        return o
    }

    /// The activation part of a method's run fingerprint.
    var actBitsIdentity: String { actBits.map(String.init) ?? "off" }
}
