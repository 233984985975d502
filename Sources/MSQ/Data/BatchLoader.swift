import Foundation

/// One mini-batch: images ready for the model and their labels.
public struct Batch: Sendable {
    /// Augmented, normalised images, shape `[B, C, H, W]`.
    public var images: Tensor
    /// The label of each image, `B` values.
    public var labels: [Int32]
    /// Position of this batch in the epoch, `0..<batchCount`.
    public var index: Int
    /// The data set index of each image, `B` values.
    public var sampleIndices: [Int]
    /// Number of images in the whole global batch this one is a shard of (= ``count`` unsharded).
    public var globalCount: Int

    /// Number of images, `B`.
    public var count: Int { labels.count }
}

/// The batches of one epoch over a ``Dataset``: shuffled, augmented, normalised, prefetched.
///
/// Deterministic whatever the threading and wherever iteration starts: the epoch's permutation comes
/// from `RandomSource(seed:, stream: [epoch])` and sample `p` of the epoch (position in the shuffled
/// order) is augmented with `RandomSource(seed:, stream: [epoch, p])`, so ``batch(at:)`` rebuilds any
/// batch without replaying earlier draws and a resumed run sees identical batches. Iterating prepares
/// the next batch on a background thread while the caller works on the current one.
public struct BatchLoader: Sequence, Sendable {
    /// The data set being iterated.
    public let dataset: any Dataset
    /// Images per batch (the last one may be smaller unless ``dropLast``).
    public let batchSize: Int
    /// Whether the epoch visits samples in a seeded random order.
    public let shuffle: Bool
    /// Augmentation applied to raw pixels before normalisation.
    public let augmentation: Augmentation
    /// Normalisation applied last (nil = raw [0, 1] pixels).
    public let normalization: Normalization?
    /// Seed of the permutation and augmentation streams.
    public let seed: UInt64
    /// Epoch number; selects the streams.
    public let epoch: Int
    /// Whether a final batch smaller than ``batchSize`` is left out.
    public let dropLast: Bool
    /// First batch that iteration yields (0 = the whole epoch).
    public let startBatch: Int
    /// Whether iteration builds the next batch on a background thread.
    public let prefetch: Bool
    /// Data set indices in this epoch's visiting order.
    public let order: [Int]
    /// The part of every batch this loader yields: shard `index` of `count` equal slices of each
    /// global batch (the first images go to shard 0), so P loaders together see what one sees.
    public let shard: Shard

    /// Slice `index` of `count` of every batch: positions `b·index/count ..< b·(index+1)/count` of
    /// a batch of `b` images. Shard sizes differ by at most one image.
    public struct Shard: Sendable, Equatable {
        /// This slice, `0..<count`.
        public var index: Int
        /// The number of slices.
        public var count: Int
        /// The whole batch.
        public static let whole = Shard(index: 0, count: 1)

        /// Slice `index` of `count`.
        public init(index: Int, count: Int) {
            self.index = index
            self.count = count
        }

        /// The positions of this slice in a batch of `batchCount` images.
        public func range(in batchCount: Int) -> Range<Int> {
            (batchCount * index / count)..<(batchCount * (index + 1) / count)
        }
    }

    /// A loader over `dataset` for one epoch; iteration starts at batch `startBatch`.
    ///
    /// Throws ``DataError/invalidArgument(_:)`` for a batch size or epoch below 0/1, an empty data set,
    /// a `startBatch` outside `0...batchCount`, a normalisation whose channel count differs from the
    /// samples', a negative crop padding, or `dropLast` with fewer samples than one batch.
    public init(dataset: any Dataset, batchSize: Int, shuffle: Bool, augmentation: Augmentation = .none,
                normalization: Normalization? = nil, seed: UInt64, epoch: Int = 0, dropLast: Bool = false,
                startBatch: Int = 0, prefetch: Bool = true, shard: Shard = .whole) throws(DataError) {
        guard shard.count >= 1, (0..<shard.count).contains(shard.index) else {
            throw .invalidArgument("shard \(shard.index) of \(shard.count) does not exist")
        }
        let n = dataset.count
        guard batchSize >= 1 else { throw .invalidArgument("batch size must be at least 1 (got \(batchSize))") }
        guard epoch >= 0 else { throw .invalidArgument("epoch must be ≥ 0 (got \(epoch))") }
        guard n >= 1 else { throw .invalidArgument("\(dataset.name) is empty: there is nothing to iterate") }
        guard augmentation.randomCropPadding >= 0 else {
            throw .invalidArgument("crop padding must be ≥ 0 (got \(augmentation.randomCropPadding))")
        }
        guard dataset.sampleShape.count == 3 else {
            throw .invalidArgument("\(dataset.name): samples must be [C, H, W], got \(dataset.sampleShape)")
        }
        let shape = dataset.sampleShape
        guard augmentation.randomCropPadding <= Swift.max(shape[1], shape[2]) else {
            throw .invalidArgument("crop padding \(augmentation.randomCropPadding) exceeds the \(shape[1])×\(shape[2]) image")
        }
        // One batch's input tensor must be addressable and fit in memory at all (an `Int.max`
        // batch size once overflowed here).
        let sampleSize = checkedProduct(shape) ?? Int.max
        let (elements, overflow) = Swift.min(batchSize, n).multipliedReportingOverflow(by: sampleSize)
        let memory = ProcessInfo.processInfo.physicalMemory
        guard !overflow, UInt64(elements) <= memory / 4 else {
            throw .invalidArgument("a batch of \(Swift.min(batchSize, n)) images of shape \(shape) needs more memory than the machine's \(memory / (1 << 20)) MiB; use a smaller batch size")
        }
        try normalization?.validate(channels: dataset.sampleShape[0])
        if dropLast && n < batchSize {
            throw .invalidArgument("\(dataset.name) has \(n) samples, fewer than one batch of \(batchSize), and dropLast is set")
        }
        let batches = dropLast ? n / batchSize : RunLimits.ceilDiv(n, batchSize)
        guard (0...batches).contains(startBatch) else {
            throw .invalidArgument("start batch \(startBatch) is outside 0...\(batches)")
        }
        self.dataset = dataset
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.normalization = normalization
        self.seed = seed
        self.epoch = epoch
        self.dropLast = dropLast
        self.startBatch = startBatch
        self.prefetch = prefetch
        self.shard = shard
        self.order = shuffle ? BatchLoader.permutation(count: n, seed: seed, epoch: epoch) : Array(0..<n)
    }

    /// Number of batches in the whole epoch (including those before ``startBatch``).
    public var batchCount: Int { dropLast ? dataset.count / batchSize : RunLimits.ceilDiv(dataset.count, batchSize) }

    /// The epoch's visiting order: a Fisher–Yates shuffle driven by `RandomSource(seed:, stream: [epoch])`.
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        var rng = RandomSource(seed: seed, stream: [UInt64(epoch)])
        var order = Array(0..<count)
        var i = count - 1
        while i > 0 {
            order.swapAt(i, rng.nextInt(below: i + 1))
            i -= 1
        }
        return order
    }

    /// Builds batch `index` (`0..<batchCount`) on the calling thread.
    public func batch(at index: Int) -> Batch {
        precondition(index >= 0 && index < batchCount, "BatchLoader: batch \(index) out of range 0..<\(batchCount)")
        let shape = dataset.sampleShape
        let (c, h, w) = (shape[0], shape[1], shape[2])
        let size = c * h * w
        let first = index * batchSize
        let globalCount = Swift.min(batchSize, dataset.count - first)
        let slice = shard.range(in: globalCount)
        let b = slice.count
        let indices = Array(order[(first + slice.lowerBound)..<(first + slice.upperBound)])
        var images = Tensor(shape: [b, c, h, w])
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: augmentation.isIdentity ? 1 : size)
        defer { scratch.deallocate() }
        images.withUnsafeMutablePointer { out in
            for (j, sample) in indices.enumerated() {
                let slot = out + j * size
                if augmentation.isIdentity {
                    dataset.copySample(sample, into: slot)
                } else {
                    dataset.copySample(sample, into: scratch)
                    var rng = RandomSource(seed: seed, stream: [UInt64(epoch), UInt64(first + slice.lowerBound + j)])
                    Augmentation.apply(augmentation.draw(using: &rng), source: scratch, destination: slot,
                                       channels: c, height: h, width: w)
                }
                normalization?.apply(to: slot, plane: h * w)
            }
        }
        return Batch(images: images, labels: indices.map { dataset.label($0) }, index: index, sampleIndices: indices,
                     globalCount: globalCount)
    }

    /// Number of batches iteration will yield: `batchCount − startBatch`.
    public var underestimatedCount: Int { batchCount - startBatch }

    /// Starts iterating; with ``prefetch``, a background thread begins building the first batch now.
    public func makeIterator() -> Iterator { Iterator(loader: self) }

    /// Yields batches `startBatch..<batchCount` in order.
    ///
    /// A class so that copies share one position and one background thread. Releasing it early
    /// (e.g. `break` out of a `for` loop) stops the thread: `deinit` cancels it and waits for the
    /// batch in progress, if any, to finish.
    public final class Iterator: IteratorProtocol {
        private let loader: BatchLoader
        private var position: Int
        private let prefetcher: Prefetcher?

        init(loader: BatchLoader) {
            self.loader = loader
            position = loader.startBatch
            prefetcher = loader.prefetch && loader.startBatch < loader.batchCount ? Prefetcher(loader: loader) : nil
        }

        /// The next batch, or nil after the last.
        public func next() -> Batch? {
            guard position < loader.batchCount else { return nil }
            defer { position += 1 }
            if let prefetcher { return prefetcher.take() }
            return loader.batch(at: position)
        }
    }
}
