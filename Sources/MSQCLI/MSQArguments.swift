import ArgumentParser
import MSQ

/// The `msq train` options of the quantized methods (MSQ-SPEC §2–5, §7); defaults are
/// ``MSQOptions``'s, ``DoReFaOptions``'s, ``BSQOptions``'s and ``CSQOptions``'s. Which method takes
/// which option is ``applicable``; the others are refused with a message.
struct MSQArguments: ParsableArguments {
    @Option(help: "Target compression, sign bit counted: 10.67 = 3 bits per weight on average (the paper's \"16x\"). Required with --method msq (except with --bit-scheme), bsq and csq.")
    var targetCompression: Double?
    @Option(help: "Bits per weight, sign included. msq: starting precision (default 8). dorefa: the fixed precision of every layer (required unless --bit-scheme). bsq, csq: starting precision = bit planes + 1 (default 9: 8 planes).")
    var weightBits: Int?
    @Option(help: "Quantize the inputs of the quantized layers (except the first) to A bits with PACT (default: float). msq, dorefa, bsq, csq.")
    var actBits: Int?
    @Option(help: "λ, the regulariser weight. msq: LSB regulariser (default 1). bsq: group lasso, BSQ's --decay (default 0.01). csq: budget-aware mask regulariser (default 1).")
    var lambda: Double?
    @Option(help: "τ. msq: prune a layer whose LSB nonzero rate is at most this (default 0.05). bsq: remove an MSB/LSB plane whose nonzero rate is at most this (default 0: all-zero planes only).")
    var pruneThreshold: Double?
    @Option(help: "Interval in epochs, fractional allowed (default 0.5; msq 0.2, msq --preset paper 0.5). msq: pruning. bsq: requantization and plane removal. csq: status table.")
    var pruneInterval: Double?
    @Option(help: "Fraction of training by which the target must be met (default 0.6; msq 0.2, msq --preset paper 0.6). csq: the masks are hardened there.")
    var pruneDeadline: Double?
    @Option(help: "Lowest precision a layer may reach, sign included (default 2). msq, bsq, csq.")
    var minBits: Int?
    @Option(help: "Hessian-aware pruning step k (on|off, default on; off: every layer drops 1 bit at a time). msq only.")
    var hessian: String?
    @Option(help: "How Hessian-vector products are computed: auto (Gauss-Newton for piecewise-linear CNNs, else the exact R-operator), exact, gauss-newton, central-difference (the old float32 reference). msq only.")
    var hessianMode: String?
    @Option(help: "How the per-layer traces are estimated: hutchinson (Rademacher probes through Hessian-vector products) or sampled-gauss-newton (gradients at labels sampled from the model's softmax: never negative, no cross-layer noise). msq only.")
    var hessianTrace: String?
    @Option(help: "Calibration images for the Hessian traces (default 64). msq only.")
    var hessianBatch: Int?
    @Option(help: "Most Hutchinson probes per trace estimate (default 8). msq only.")
    var hessianProbes: Int?
    @Option(help: "Multiply λ by this after each interval that had to force pruning (default 1: never). msq only.")
    var lambdaGrowth: Double?
    @Option(help: "How λ is weighted per layer as its precision falls: uniform (the paper's single λ) or constant-pull (λ·2^(8−n): the pull per weight keeps its 8-bit strength). msq only.")
    var lambdaScaling: String?
    @Option(help: "ρ, the scheduled pull (default 0: off): the layers the pace would force at the next pruning interval get a proximal step of their LSB term after every optimizer step (ρ·2^(k−1)/T n-bit levels, T steps per interval, plus twice the step's mean weight change), so they reach r ≤ τ and drop unforced. On the 10k recipe ρ = 2 left no drop forced but cost 0.9 points. msq only.")
    var scheduledPull: Double?
    @Option(help: "Which layers are forced down when the target needs it: estimated-loss (least estimated loss increase per stored bit saved, Hessian-weighted when --hessian on; default) or nonzero-rate (the paper's wording: lowest LSB nonzero rate first). msq only.")
    var forcedOrder: String?
    @Option(help: "msq: a named set of defaults, overridden by any option given: default (the project's allocation rules) or paper (MSQ-SPEC read literally: lowest-r forcing with whole k-bit drops, one λ for all precisions, Hutchinson traces, per-tensor scales).")
    var preset: String?
    @Option(help: "hawq: float training before the traces are taken, in epochs (default 1; 0 after --init-from).")
    var hawqWarmup: Double?
    @Flag(help: "dorefa: multiply each layer's quantized weights by max|W| (DoReFa's weights are in [-1, 1] otherwise).")
    var dorefaScaled = false
    @Option(help: ArgumentHelp("Train this fixed per-layer scheme from step 0 (the control run). msq: plain QAT with the RoundClamp quantizer, no regulariser, pruning or Hessian; dorefa: per-layer DoReFa bits. SPEC is a file (path:bits entries, one per line or the bit_scheme line of MSQ's logs, or an earlier run's summary.json) or inline path:bits,path:bits,...; *:bits sets every layer not named, otherwise every quantized layer must be named once. Replaces --target-compression and --weight-bits.", valueName: "spec"))
    var bitScheme: String?
    @Option(help: "Weight scales: per-tensor (default; msq: s = max|W| per layer) or per-channel (one scale per output channel, s_c = max|W_c|; msq export stores them). msq, dorefa, hawq, smpq.")
    var scale: String?
    @Option(help: "smpq: how the final precisions are chosen after the search: shapley (SMPQ, by each candidate's Monte Carlo Shapley value; default) or alpha (DMPQ, by its architecture logit).")
    var selection: String?
    @Option(help: "smpq: fraction of the training set held out (seeded) for α and the Shapley values (default 0.1).")
    var validationFraction: Double?
    @Option(help: "smpq: fraction of the run spent searching; QAT at the chosen scheme takes the rest (default 0.4).")
    var searchFraction: Double?
    @Option(help: "smpq: γ, the weight of the budget penalty γ·relu(E[bits] − 32/C)² on α (default 1).")
    var budgetWeight: Double?
    @Option(help: "smpq: images of the fixed validation batch the Shapley values are measured on (default 512).")
    var shapleyBatch: Int?
    @Option(help: "smpq: random permutations per Shapley estimate, M (default 4); 0 takes no estimate (--selection alpha only: the same search, φ unreported).")
    var shapleyPermutations: Int?

    /// The quantized methods' options the user gave explicitly, by CLI name.
    var givenOptions: [String] {
        // Ordered pairs: the first inapplicable option in this order is the one refused.
        let given: KeyValuePairs<String, Bool> = [
            "--target-compression": targetCompression != nil, "--weight-bits": weightBits != nil,
            "--act-bits": actBits != nil, "--lambda": lambda != nil, "--prune-threshold": pruneThreshold != nil,
            "--prune-interval": pruneInterval != nil, "--prune-deadline": pruneDeadline != nil,
            "--min-bits": minBits != nil, "--hessian": hessian != nil, "--hessian-mode": hessianMode != nil, "--hessian-trace": hessianTrace != nil, "--hessian-batch": hessianBatch != nil,
            "--hessian-probes": hessianProbes != nil, "--lambda-growth": lambdaGrowth != nil,
            "--lambda-scaling": lambdaScaling != nil, "--forced-order": forcedOrder != nil,
            "--scheduled-pull": scheduledPull != nil, "--hawq-warmup": hawqWarmup != nil, "--preset": preset != nil,
            "--dorefa-scaled": dorefaScaled, "--scale": scale != nil, "--selection": selection != nil,
            "--validation-fraction": validationFraction != nil, "--search-fraction": searchFraction != nil,
            "--budget-weight": budgetWeight != nil, "--shapley-batch": shapleyBatch != nil,
            "--shapley-permutations": shapleyPermutations != nil,
        ]
        return given.filter { $0.value }.map { $0.key } + (bitScheme != nil ? ["--bit-scheme"] : [])
    }

    /// The options each method takes.
    static let applicable: [String: Set<String>] = [
        "fp": [],
        "msq": ["--target-compression", "--weight-bits", "--act-bits", "--lambda", "--prune-threshold", "--prune-interval",
                "--prune-deadline", "--min-bits", "--hessian", "--hessian-mode", "--hessian-trace", "--hessian-batch",
                "--hessian-probes", "--lambda-growth", "--lambda-scaling", "--forced-order", "--scheduled-pull", "--scale", "--preset"],
        "dorefa": ["--weight-bits", "--act-bits", "--dorefa-scaled", "--scale"],
        "bsq": ["--target-compression", "--weight-bits", "--act-bits", "--lambda", "--prune-threshold", "--prune-interval",
                "--prune-deadline", "--min-bits"],
        "hawq": ["--target-compression", "--weight-bits", "--min-bits", "--hessian-trace", "--hessian-batch",
                 "--hessian-probes", "--hawq-warmup", "--scale"],
        "csq": ["--target-compression", "--weight-bits", "--act-bits", "--lambda", "--prune-interval", "--prune-deadline",
                "--min-bits"],
        "smpq": ["--target-compression", "--act-bits", "--scale", "--selection", "--validation-fraction", "--search-fraction",
                 "--budget-weight", "--shapley-batch", "--shapley-permutations"],
    ]

    /// The methods that take --bit-scheme (kept apart from ``applicable`` to keep that table as it was).
    static let bitSchemeMethods: Set<String> = ["msq", "dorefa"]

    /// Refuses options given with a method that does not take them, naming the methods that do.
    func refuseInapplicable(method: String) throws {
        let allowed = (Self.applicable[method] ?? []).union(Self.bitSchemeMethods.contains(method) ? ["--bit-scheme"] : [])
        for option in givenOptions where !allowed.contains(option) {
            let takers = option == "--bit-scheme" ? Self.bitSchemeMethods.sorted()
                : Self.applicable.filter { $0.value.contains(option) }.keys.sorted()
            throw ValidationError("\(option) does not apply to --method \(method); it applies to --method \(takers.joined(separator: ", "))")
        }
        if bitScheme != nil {
            // A fixed scheme searches nothing: the options of the search, and the precision options
            // the scheme replaces, are refused rather than silently ignored.
            let withScheme: Set<String> = ["--bit-scheme", "--act-bits", "--dorefa-scaled"]
            for option in givenOptions where !withScheme.contains(option) {
                switch option {
                case "--target-compression":
                    throw ValidationError("--target-compression does not apply with --bit-scheme: the compression is the scheme's own (printed, and written to summary.json as compression_ratio)")
                case "--weight-bits":
                    throw ValidationError("--weight-bits does not apply with --bit-scheme: give unnamed layers a precision with *:bits in the scheme")
                default:
                    throw ValidationError("\(option) does not apply with --bit-scheme: a fixed scheme is plain QAT from step 0 (no regulariser, pruning or Hessian)")
                }
            }
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
        let make: (Double) -> MSQOptions
        switch preset ?? "default" {
        case "default": make = MSQOptions.init(targetCompression:)
        case "paper":
            if scale == "per-channel" { throw ValidationError("--preset paper uses per-tensor scales; drop --scale per-channel or the preset") }
            make = MSQOptions.paper(targetCompression:)
        default: throw ValidationError("--preset must be default or paper (got \(preset ?? ""))")
        }
        var o = try scheduleOptions(method: "msq", make)
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
        if let value: TraceEstimator = try choice(hessianTrace, flag: "--hessian-trace") { o.hessianTrace = value }
        if let hessianBatch { o.hessianBatch = hessianBatch }
        if let hessianProbes { o.hessianProbes = hessianProbes }
        if let lambdaGrowth { o.lambdaGrowth = lambdaGrowth }
        if let value: LambdaScaling = try choice(lambdaScaling, flag: "--lambda-scaling") { o.lambdaScaling = value }
        if let value: ForcedPruningOrder = try choice(forcedOrder, flag: "--forced-order") { o.forcedOrder = value }
        if let scheduledPull { o.scheduledPull = scheduledPull }
        try checkActivationBits()
        if !(2...16).contains(msqWeightBits) { throw ValidationError("--weight-bits must be in 2...16 (got \(msqWeightBits))") }
        o.initialBits = msqWeightBits
        o.scaleGranularity = try scaleGranularity()
        return o
    }

    /// MSQ's starting precision (default 8).
    var msqWeightBits: Int { weightBits ?? 8 }

    /// The --bit-scheme spec, read and checked for syntax, duplicates and ranges (nil without the option).
    func bitSchemeSpec() throws -> BitSchemeSpec? {
        try bitScheme.map { try BitSchemeSpec.load($0) }
    }

    /// DoReFa's options (`--method dorefa`): --weight-bits is required.
    func doReFaOptions() throws -> DoReFaOptions {
        if bitScheme != nil {
            // The layers' precisions come from the scheme (DoReFaTraining's bitScheme); weightBits is
            // then unused and fixed at 8 so that it neither varies nor fails validation.
            try checkActivationBits()
            var o = DoReFaOptions(weightBits: 8)
            o.scaled = dorefaScaled
            return o
        }
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

    /// The case of `E` named by `value` (nil when the option was not given); an unknown name is
    /// refused with the flag and every valid name.
    func choice<E: RawRepresentable & CaseIterable>(_ value: String?, flag: String) throws -> E? where E.RawValue == String {
        guard let value else { return nil }
        guard let parsed = E(rawValue: value) else {
            throw ValidationError("\(flag) must be \(E.allCases.map(\.rawValue).joined(separator: " or ")) (got \(value))")
        }
        return parsed
    }

    /// HAWQ's options (`--method hawq`).
    func hawqOptions() throws -> HAWQOptions {
        guard let target = targetCompression else {
            throw ValidationError("--method hawq needs --target-compression (e.g. 10.67 for 3 bits per weight on average)")
        }
        var o = HAWQOptions(targetCompression: target)
        if let weightBits { o.maxBits = weightBits }
        if let minBits { o.minBits = minBits }
        if let hawqWarmup { o.warmupEpochs = hawqWarmup }
        if let hessianBatch { o.hessianBatch = hessianBatch }
        if let hessianProbes { o.hessianProbes = hessianProbes }
        if let value: TraceEstimator = try choice(hessianTrace, flag: "--hessian-trace") { o.hessianTrace = value }
        o.scaleGranularity = try scaleGranularity()
        return o
    }

    /// SMPQ's options (`--method smpq`); the α steps take `batchSize` validation images.
    func smpqOptions(batchSize: Int) throws -> SMPQOptions {
        guard let target = targetCompression else {
            throw ValidationError("--method smpq needs --target-compression (e.g. 10.67 for 3 bits per weight on average)")
        }
        var o = SMPQOptions(targetCompression: target)
        if let value: SMPQSelection = try choice(selection, flag: "--selection") { o.selection = value }
        if let validationFraction { o.validationFraction = validationFraction }
        if let searchFraction { o.searchFraction = searchFraction }
        if let budgetWeight { o.budgetWeight = budgetWeight }
        if let shapleyBatch { o.shapleyBatch = shapleyBatch }
        if let shapleyPermutations { o.shapleyPermutations = shapleyPermutations }
        o.validationBatchSize = batchSize
        try checkActivationBits()
        o.scaleGranularity = try scaleGranularity()
        return o
    }

    /// --method's options, parsed and checked; `fixedScheme` when --bit-scheme gives the precisions.
    func methodChoice(method: String, fixedScheme: Bool, batchSize: Int) throws -> MethodChoice {
        switch method {
        case "msq" where fixedScheme:
            // The target and the Hessian come from the scheme (MSQTraining.setUp); the rest stays default.
            try checkActivationBits()
            return .msq(MSQOptions(targetCompression: 1))
        case "msq": return .msq(try options())
        case "dorefa": return .dorefa(try doReFaOptions())
        case "bsq": return .bsq(try bsqOptions())
        case "csq": return .csq(try csqOptions())
        case "hawq": return .hawq(try hawqOptions())
        case "smpq": return .smpq(try smpqOptions(batchSize: batchSize))
        default: return .float
        }
    }
}

/// A --method with its parsed options, before the model exists.
enum MethodChoice {
    case float
    case msq(MSQOptions)
    case dorefa(DoReFaOptions)
    case bsq(BSQOptions)
    case csq(CSQOptions)
    case hawq(HAWQOptions)
    case smpq(SMPQOptions)

    /// The method's one set-up call on `model`.
    func setUp(model: any Module, context: MethodContext) throws -> any MethodSetUp {
        switch self {
        case .float: return try FloatTraining.setUp(model: model, options: FloatOptions(), context: context)
        case let .msq(o): return try MSQTraining.setUp(model: model, options: o, context: context)
        case let .dorefa(o): return try DoReFaTraining.setUp(model: model, options: o, context: context)
        case let .bsq(o): return try BSQTraining.setUp(model: model, options: o, context: context)
        case let .csq(o): return try CSQTraining.setUp(model: model, options: o, context: context)
        case let .hawq(o): return try HAWQTraining.setUp(model: model, options: o, context: context)
        case let .smpq(o): return try SMPQTraining.setUp(model: model, options: o, context: context)
        }
    }
}
