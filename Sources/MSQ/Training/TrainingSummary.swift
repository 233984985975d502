import Foundation

/// What a finished run reports: the fields of `summary.json`, typed.
///
/// Encodes as one flat JSON object with `summary.json`'s keys (`test_accuracy`, `lr`, …); the
/// method's own fields (``TrainingMethod/summaryFields()``: `compression_ratio`, `layers`, …) sit
/// beside them and win a clash, as they always have. Optional fields are left out when nil.
public struct TrainingSummary: Codable, Sendable, Equatable {
    /// ``TrainingConfig/model``.
    public var model: String
    /// ``TrainingConfig/dataset``.
    public var dataset: String
    /// The method's ``TrainingMethod/name``.
    public var method: String
    /// Epochs of the run.
    public var epochs: Int
    /// Images per step.
    public var batchSize: Int
    /// Peak learning rate (``TrainingConfig/learningRate``), key `lr`.
    public var learningRate: Double
    /// Images in the training split.
    public var trainImages: Int
    /// Images in the test split.
    public var testImages: Int
    /// Test accuracy after the last epoch, 0–1.
    public var testAccuracy: Double
    /// Mean test cross-entropy after the last epoch.
    public var testLoss: Double
    /// Trainable scalars of the model.
    public var trainableParams: Int
    /// Wall-clock training seconds (evaluation excluded), across resumes.
    public var trainSeconds: Double
    /// Training images per second over ``trainSeconds``.
    public var imagesPerSecond: Double
    /// Peak resident set size of the process, bytes.
    public var peakRSSBytes: Int
    /// ``TrainingConfig/seed``.
    public var seed: UInt64
    /// The kernels' thread count during the run.
    public var threads: Int
    /// ``TrainingConfig/initFrom`` as an object (`path`, `weights_fnv1a64`, …); nil when not set.
    public var initFrom: JSONValue?
    /// ``TrainingConfig/bitScheme``; nil when not set.
    public var givenBitScheme: String?
    /// The method's ``TrainingMethod/scaleGranularity`` raw value; nil when it has none.
    public var scaleGranularity: String?
    /// The optimizer's ``Optimizer/name`` when it is not SGD (SGD runs keep their old keys).
    public var optimizer: String?
    /// AdamW's β1, β2, ε (keys `beta1`, `beta2`, `eps`); nil unless the optimizer is ``AdamW``.
    public var adamW: AdamWSettings?
    /// The method's own fields.
    public var methodFields: [String: JSONValue]
    /// Processes that trained the model together (``Trainer/collective``'s size); 1 = one process.
    public var processes: Int = 1
    /// With several processes: whether batch norm was synchronised, the gradient buckets and how
    /// much of their all-reduce the backward pass hid (`data_parallel` in `summary.json`).
    public var dataParallel: JSONValue?

    /// AdamW's hyper-parameters as the summary records them.
    public struct AdamWSettings: Codable, Sendable, Equatable {
        /// β1.
        public var beta1: Double
        /// β2.
        public var beta2: Double
        /// ε.
        public var epsilon: Double

        /// Bundles the three.
        public init(beta1: Double, beta2: Double, epsilon: Double) {
            self.beta1 = beta1
            self.beta2 = beta2
            self.epsilon = epsilon
        }
    }

    /// The summary as one JSON object, keys as in `summary.json`.
    public var jsonObject: [String: JSONValue] {
        var o: [String: JSONValue] = [
            "model": .string(model), "dataset": .string(dataset), "method": .string(method),
            "epochs": .int(epochs), "batch_size": .int(batchSize), "lr": .double(learningRate),
            "train_images": .int(trainImages), "test_images": .int(testImages),
            "test_accuracy": .double(testAccuracy), "test_loss": .double(testLoss),
            "trainable_params": .int(trainableParams), "train_seconds": .double(trainSeconds),
            "images_per_second": .double(imagesPerSecond), "peak_rss_bytes": .int(peakRSSBytes),
            // A seed above Int.max is written as a double, as JSONSerialization wrote a UInt64.
            "seed": Int(exactly: seed).map(JSONValue.int) ?? .double(Double(seed)),
            "threads": .int(threads),
        ]
        if processes != 1 { o["processes"] = .int(processes) }
        if let dataParallel { o["data_parallel"] = dataParallel }
        if let initFrom { o["init_from"] = initFrom }
        if let givenBitScheme { o["given_bit_scheme"] = .string(givenBitScheme) }
        if let scaleGranularity { o["scale_granularity"] = .string(scaleGranularity) }
        if let optimizer { o["optimizer"] = .string(optimizer) }
        if let adamW {
            o["beta1"] = .double(adamW.beta1)
            o["beta2"] = .double(adamW.beta2)
            o["eps"] = .double(adamW.epsilon)
        }
        return o.merging(methodFields) { _, method in method }
    }

    /// The value under a `summary.json` key as `JSONSerialization` would read it back (`Double`,
    /// `Int`, `String`, `Bool`, arrays, `[String: Any]`, `NSNull`), e.g. `summary["compression_ratio"] as? Double`;
    /// nil for a key the summary does not have.
    public subscript(key: String) -> Any? { jsonObject[key]?.anyValue }

    /// The keys ``jsonObject`` fills from the typed properties (every other key is a method field).
    static let typedKeys: Set<String> = [
        "model", "dataset", "method", "epochs", "batch_size", "lr", "train_images", "test_images",
        "test_accuracy", "test_loss", "trainable_params", "train_seconds", "images_per_second",
        "peak_rss_bytes", "seed", "threads", "init_from", "given_bit_scheme", "scale_granularity",
        "optimizer", "beta1", "beta2", "eps", "processes", "data_parallel",
    ]

    /// Encodes ``jsonObject``: one flat object with `summary.json`'s keys.
    public func encode(to encoder: Encoder) throws {
        try jsonObject.encode(to: encoder)
    }

    /// Decodes a `summary.json` object: its known keys into the typed fields (null numbers as NaN),
    /// every other key into ``methodFields``.
    public init(from decoder: Decoder) throws {
        let o = try [String: JSONValue](from: decoder)
        func field<T>(_ key: String, _ read: (JSONValue) -> T?) throws -> T {
            guard let value = o[key], let typed = read(value) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                        debugDescription: "summary field \(key) is missing or has the wrong type"))
            }
            return typed
        }
        func int(_ v: JSONValue) -> Int? { if case let .int(i) = v { return i }; return nil }
        // Non-finite numbers were written as null.
        func number(_ v: JSONValue) -> Double? { v == .null ? .nan : v.doubleValue }
        model = try field("model", \.stringValue)
        dataset = try field("dataset", \.stringValue)
        method = try field("method", \.stringValue)
        epochs = try field("epochs", int)
        batchSize = try field("batch_size", int)
        learningRate = try field("lr", number)
        trainImages = try field("train_images", int)
        testImages = try field("test_images", int)
        testAccuracy = try field("test_accuracy", number)
        testLoss = try field("test_loss", number)
        trainableParams = try field("trainable_params", int)
        trainSeconds = try field("train_seconds", number)
        imagesPerSecond = try field("images_per_second", number)
        peakRSSBytes = try field("peak_rss_bytes", int)
        seed = try field("seed") { v in int(v).flatMap(UInt64.init(exactly:)) ?? v.doubleValue.flatMap(UInt64.init(exactly:)) }
        threads = try field("threads", int)
        processes = o["processes"].flatMap(int) ?? 1
        dataParallel = o["data_parallel"]
        initFrom = o["init_from"]
        givenBitScheme = o["given_bit_scheme"]?.stringValue
        scaleGranularity = o["scale_granularity"]?.stringValue
        optimizer = o["optimizer"]?.stringValue
        if let b1 = o["beta1"]?.doubleValue, let b2 = o["beta2"]?.doubleValue, let eps = o["eps"]?.doubleValue {
            adamW = AdamWSettings(beta1: b1, beta2: b2, epsilon: eps)
        }
        methodFields = o.filter { !TrainingSummary.typedKeys.contains($0.key) }
    }

    /// A summary from its typed parts; see the properties.
    public init(model: String, dataset: String, method: String, epochs: Int, batchSize: Int, learningRate: Double,
                trainImages: Int, testImages: Int, testAccuracy: Double, testLoss: Double, trainableParams: Int,
                trainSeconds: Double, imagesPerSecond: Double, peakRSSBytes: Int, seed: UInt64, threads: Int,
                initFrom: JSONValue? = nil, givenBitScheme: String? = nil, scaleGranularity: String? = nil,
                optimizer: String? = nil, adamW: AdamWSettings? = nil, methodFields: [String: JSONValue] = [:]) {
        self.model = model
        self.dataset = dataset
        self.method = method
        self.epochs = epochs
        self.batchSize = batchSize
        self.learningRate = learningRate
        self.trainImages = trainImages
        self.testImages = testImages
        self.testAccuracy = testAccuracy
        self.testLoss = testLoss
        self.trainableParams = trainableParams
        self.trainSeconds = trainSeconds
        self.imagesPerSecond = imagesPerSecond
        self.peakRSSBytes = peakRSSBytes
        self.seed = seed
        self.threads = threads
        self.initFrom = initFrom
        self.givenBitScheme = givenBitScheme
        self.scaleGranularity = scaleGranularity
        self.optimizer = optimizer
        self.adamW = adamW
        self.methodFields = methodFields
    }

    /// Writes the summary to `path` as `summary.json` has always been written: one pretty-printed
    /// object, keys sorted, atomically.
    public func write(to path: String) throws(TrainingError) {
        try writeJSON(jsonObject.mapValues(\.anyValue), to: path)
    }
}
