/// Which half of a data set to load.
public enum DataSplit: String, Sendable, CaseIterable {
    /// The training images.
    case train
    /// The held-out test images.
    case test
}

/// A labelled image data set that can copy out any sample on demand.
///
/// Samples are `[C, H, W]` floats in [0, 1] (before normalisation); labels are in `0..<numClasses`.
/// Implementations must be safe to read from a background thread (``BatchLoader`` prefetches).
public protocol Dataset: Sendable {
    /// Short name used in messages, e.g. `fashion-mnist/train`.
    var name: String { get }
    /// Number of samples.
    var count: Int { get }
    /// Shape of one sample, `[C, H, W]`.
    var sampleShape: [Int] { get }
    /// Number of classes; every label is in `0..<numClasses`.
    var numClasses: Int { get }
    /// Writes sample `index` (`0..<count`), `C·H·W` floats in CHW order, to `destination`.
    func copySample(_ index: Int, into destination: UnsafeMutablePointer<Float>)
    /// The label of sample `index` (`0..<count`).
    func label(_ index: Int) -> Int32
}

extension Dataset {
    /// Floats in one sample: `C·H·W`.
    public var sampleSize: Int { sampleShape.reduce(1, *) }

    /// Sample `index` as a tensor of shape `[C, H, W]`.
    public func sample(_ index: Int) -> Tensor {
        precondition(index >= 0 && index < count, "\(name): sample \(index) out of range 0..<\(count)")
        var t = Tensor(shape: sampleShape)
        t.withUnsafeMutablePointer { copySample(index, into: $0) }
        return t
    }
}

/// A data set held in memory: one `[N, C, H, W]` float tensor in [0, 1] and `N` labels.
///
/// A value type whose pixel buffer is shared copy-on-write, so copies (and the prefetch thread's
/// reads) cost nothing.
public struct InMemoryDataset: Dataset {
    /// Short name used in messages, e.g. `cifar10/test`.
    public let name: String
    /// All images, shape `[N, C, H, W]`, values in [0, 1].
    public let images: Tensor
    /// One label per image, each in `0..<numClasses`.
    public let labels: [Int32]
    /// Number of classes.
    public let numClasses: Int

    /// Wraps `images` (`[N, C, H, W]`) and `labels` (`N` values in `0..<numClasses`), checking both.
    public init(name: String, images: Tensor, labels: [Int32], numClasses: Int) throws(DataError) {
        guard images.shape.count == 4 else {
            throw .invalidArgument("\(name): images must have shape [N, C, H, W], got \(images.shape)")
        }
        guard images.shape[0] == labels.count else {
            throw .invalidArgument("\(name): \(images.shape[0]) images but \(labels.count) labels")
        }
        guard numClasses >= 1 else { throw .invalidArgument("\(name): numClasses must be at least 1 (got \(numClasses))") }
        if let bad = labels.firstIndex(where: { $0 < 0 || Int($0) >= numClasses }) {
            throw .labelOutOfRange(path: name, index: bad, value: Int(labels[bad]), numClasses: numClasses)
        }
        self.name = name
        self.images = images
        self.labels = labels
        self.numClasses = numClasses
    }

    /// Materialises every sample of another data set (e.g. a small ``SyntheticDataset``).
    public init(_ other: some Dataset) throws(DataError) {
        var images = Tensor(shape: [other.count] + other.sampleShape)
        let size = other.sampleSize
        images.withUnsafeMutablePointer { p in
            for i in 0..<other.count { other.copySample(i, into: p + i * size) }
        }
        try self.init(name: other.name, images: images, labels: (0..<other.count).map { other.label($0) },
                      numClasses: other.numClasses)
    }

    /// Number of samples, `N`.
    public var count: Int { labels.count }

    /// Shape of one sample, `[C, H, W]`.
    public var sampleShape: [Int] { Array(images.shape.dropFirst()) }

    /// Copies sample `index` (`C·H·W` floats) to `destination`.
    public func copySample(_ index: Int, into destination: UnsafeMutablePointer<Float>) {
        precondition(index >= 0 && index < count, "\(name): sample \(index) out of range 0..<\(count)")
        let size = sampleSize
        images.withUnsafePointer { destination.update(from: $0 + index * size, count: size) }
    }

    /// The label of sample `index`.
    public func label(_ index: Int) -> Int32 { labels[index] }

    /// The first `n` samples (all of them when `n ≥ count`); `n` must not be negative.
    public func prefix(_ n: Int) -> InMemoryDataset {
        precondition(n >= 0, "InMemoryDataset.prefix: negative length \(n)")
        if n >= count { return self }
        let size = sampleSize
        var head = Tensor(shape: [n] + sampleShape)
        images.withUnsafePointer { src in
            head.withUnsafeMutablePointer { $0.update(from: src, count: n * size) }
        }
        return InMemoryDataset(unchecked: name, images: head, labels: Array(labels.prefix(n)), numClasses: numClasses)
    }

    /// Skips validation for data already checked (a prefix of a valid set, or freshly decoded files).
    init(unchecked name: String, images: Tensor, labels: [Int32], numClasses: Int) {
        self.name = name
        self.images = images
        self.labels = labels
        self.numClasses = numClasses
    }
}

/// Checks a user-supplied `limit` (nil = everything).
func validateLimit(_ limit: Int?, dataset: String) throws(DataError) {
    if let limit, limit < 1 {
        throw .invalidArgument("\(dataset): limit must be at least 1 (got \(limit))")
    }
}
