import Foundation
import MSQ
import Testing

@Suite("Data: batch loader and synthetic data")
struct DataLoaderTests {
    /// 23 samples of 2×5×5 (a prime count, so the last batch is partial for most sizes).
    private func smallSet() throws -> InMemoryDataset {
        try InMemoryDataset(SyntheticDataset(count: 23, sampleShape: [2, 5, 5], numClasses: 4, seed: 3))
    }

    private func loader(_ ds: any Dataset, batch: Int = 5, epoch: Int = 0, start: Int = 0, prefetch: Bool = true,
                        dropLast: Bool = false) throws -> BatchLoader {
        try BatchLoader(dataset: ds, batchSize: batch, shuffle: true,
                        augmentation: Augmentation(randomCropPadding: 1, horizontalFlip: true),
                        normalization: Normalization(mean: [0.5, 0.4], std: [0.2, 0.3]), seed: 42, epoch: epoch,
                        dropLast: dropLast, startBatch: start, prefetch: prefetch)
    }

    private func contents(_ l: BatchLoader) -> [([Float], [Int32], [Int])] {
        l.map { ($0.images.scalars, $0.labels, $0.sampleIndices) }
    }

    @Test("same seed and epoch give identical batches, with or without the prefetch thread")
    func determinism() throws {
        let ds = try smallSet()
        let a = contents(try loader(ds))
        let b = contents(try loader(ds))
        let c = contents(try loader(ds, prefetch: false))
        #expect(a.count == 5)
        #expect(a.map(\.0) == b.map(\.0) && a.map(\.0) == c.map(\.0))
        #expect(a.map(\.2) == b.map(\.2) && a.map(\.2) == c.map(\.2))
        let other = contents(try loader(ds, epoch: 1))
        #expect(other.map(\.2) != a.map(\.2), "a new epoch reshuffles")
    }

    @Test("every sample appears exactly once per epoch and labels follow their samples")
    func coverage() throws {
        let ds = try smallSet()
        for epoch in 0..<3 {
            let batches = Array(try loader(ds, epoch: epoch))
            #expect(batches.flatMap(\.sampleIndices).sorted() == Array(0..<23))
            for b in batches { #expect(b.labels == b.sampleIndices.map { ds.label($0) }) }
            #expect(batches.map(\.index) == Array(0..<5))
        }
    }

    @Test("starting at batch k yields the k-th and later batches of a full pass")
    func resume() throws {
        let ds = try smallSet()
        let full = contents(try loader(ds))
        for k in 0...5 {
            let tail = contents(try loader(ds, start: k))
            #expect(tail.count == 5 - k)
            #expect(tail.map(\.0) == full.dropFirst(k).map(\.0))
            #expect(tail.map(\.1) == full.dropFirst(k).map(\.1))
        }
        #expect(try loader(ds).batch(at: 3).images.scalars == full[3].0)
    }

    @Test("the last batch is partial unless dropLast")
    func partialBatch() throws {
        let ds = try smallSet()
        let kept = try loader(ds)
        #expect(kept.batchCount == 5)
        #expect(Array(kept).map(\.count) == [5, 5, 5, 5, 3])
        #expect(Array(kept).last?.images.shape == [3, 2, 5, 5])
        let dropped = try loader(ds, dropLast: true)
        #expect(dropped.batchCount == 4)
        #expect(Array(dropped).map(\.count) == [5, 5, 5, 5])
        #expect(try loader(ds, batch: 23).batchCount == 1)
        #expect(try loader(ds, batch: 100).batchCount == 1)
    }

    @Test("without shuffle or augmentation batches are the normalised samples in order")
    func plain() throws {
        let ds = try smallSet()
        let norm = Normalization(mean: [0.5, 0.4], std: [0.2, 0.3])
        let l = try BatchLoader(dataset: ds, batchSize: 10, shuffle: false, normalization: norm, seed: 0)
        let first = try #require(Array(l).first)
        #expect(first.sampleIndices == Array(0..<10))
        let expected = norm.apply(to: ds.prefix(10).images)
        #expect(first.images.scalars == expected.scalars)
    }

    @Test("crop padding is raw zero, so it normalises to -mean/std")
    func paddingValue() throws {
        let ones = try InMemoryDataset(name: "ones", images: Tensor(shape: [16, 1, 4, 4], repeating: 1),
                                       labels: Array(repeating: 0, count: 16), numClasses: 1)
        let l = try BatchLoader(dataset: ones, batchSize: 16, shuffle: true,
                                augmentation: Augmentation(randomCropPadding: 2),
                                normalization: Normalization(mean: [0.5], std: [0.25]), seed: 9)
        let values = Set(Array(l).flatMap { $0.images.scalars })
        #expect(values == [2, -2])
    }

    @Test("abandoning an iterator early neither hangs nor leaves work behind")
    func abandon() throws {
        let big = try SyntheticDataset(count: 4000, sampleShape: [3, 16, 16], seed: 1)
        let l = try BatchLoader(dataset: big, batchSize: 8, shuffle: true,
                                augmentation: Augmentation(randomCropPadding: 2, horizontalFlip: true), seed: 1)
        for _ in 0..<20 {
            for b in l {
                #expect(b.count == 8)
                break
            }
            _ = l.makeIterator()  // released without taking anything
        }
        do {
            let it = l.makeIterator()
            #expect(it.next()?.index == 0)
            #expect(it.next()?.index == 1)
            #expect(BatchLoader.livePrefetchThreads >= 1, "the worker of a live iterator is counted")
        }
        // Each abandoned iterator above would leave a worker blocked forever if release did not
        // stop it; other tests running in parallel account for at most a few live workers.
        let live = BatchLoader.livePrefetchThreads
        #expect(live < 10, "\(live) prefetch threads still alive after abandoning 40 iterators")
    }

    @Test("bad loader arguments are refused with a message")
    func badArguments() throws {
        let ds = try smallSet()
        let cases: [() throws -> Void] = [
            { _ = try BatchLoader(dataset: ds, batchSize: 0, shuffle: false, seed: 0) },
            { _ = try BatchLoader(dataset: ds, batchSize: 4, shuffle: false, seed: 0, startBatch: 7) },
            { _ = try BatchLoader(dataset: ds, batchSize: 4, shuffle: false, seed: 0, startBatch: -1) },
            { _ = try BatchLoader(dataset: ds, batchSize: 4, shuffle: false, seed: 0, epoch: -1) },
            { _ = try BatchLoader(dataset: ds, batchSize: 4, shuffle: false, normalization: .cifar10, seed: 0) },
            { _ = try BatchLoader(dataset: ds, batchSize: 40, shuffle: false, seed: 0, dropLast: true) },
            { _ = try BatchLoader(dataset: ds, batchSize: 4, shuffle: false,
                                  augmentation: Augmentation(randomCropPadding: -1), seed: 0) },
        ]
        for (i, body) in cases.enumerated() {
            let error = DataFixtures.dataError(body)
            guard case .invalidArgument(let message)? = error else {
                Issue.record("case \(i): expected invalidArgument, got \(String(describing: error))")
                continue
            }
            #expect(!message.isEmpty)
        }
        #expect(try BatchLoader(dataset: ds, batchSize: 4, shuffle: false, seed: 0, startBatch: 6).map { $0 }.isEmpty)
    }

    @Test("synthetic data is deterministic, seeded, balanced and needs no storage")
    func synthetic() throws {
        let a = try SyntheticDataset(count: 50, sampleShape: [3, 8, 6], numClasses: 5, seed: 7)
        let b = try SyntheticDataset(count: 50, sampleShape: [3, 8, 6], numClasses: 5, seed: 7)
        let c = try SyntheticDataset(count: 50, sampleShape: [3, 8, 6], numClasses: 5, seed: 8)
        #expect(a.sample(13).scalars == b.sample(13).scalars)
        #expect(a.sample(13).scalars != c.sample(13).scalars)
        #expect(a.sample(13).scalars != a.sample(14).scalars)
        #expect(a.sample(13).scalars.allSatisfy { $0 >= 0 && $0 < 1 })
        #expect((0..<50).map { a.label($0) } == (0..<50).map { Int32($0 % 5) })
        let huge = try SyntheticDataset(count: 1_281_167, sampleShape: [3, 224, 224], numClasses: 1000, seed: 0)
        #expect(huge.sample(1_281_166).shape == [3, 224, 224])
        let l = try BatchLoader(dataset: huge, batchSize: 2, shuffle: true, seed: 0)
        #expect(l.batchCount == 640_584)
        #expect(try BatchLoader(dataset: huge, batchSize: 2, shuffle: true, seed: 0, startBatch: 640_583)
            .map(\.count) == [1])
        #expect(throws: DataError.self) { try SyntheticDataset(count: 0) }
        #expect(throws: DataError.self) { try SyntheticDataset(count: 1, sampleShape: [3, 0, 2]) }
    }
}

@Suite("Data: real Fashion-MNIST")
struct DataFashionMNISTTests {
    // CI installs the dataset (scripts/install-deps.sh, package dataset-fashion-mnist), so a missing
    // directory is a set-up failure to report, not a reason to skip.
    @Test("the installed test split has 10000 28×28 images, 1000 per class")
    func realTestSet() throws {
        let dir = FashionMNIST.defaultDirectory
        try #require(FileManager.default.fileExists(atPath: dir),
                     "\(dir) is missing: run scripts/install-deps.sh (installs dataset-fashion-mnist)")
        let ds = try FashionMNIST.load(split: .test)
        #expect(ds.count == 10000)
        #expect(ds.sampleShape == [1, 28, 28])
        var counts = [Int](repeating: 0, count: 10)
        for l in ds.labels { counts[Int(l)] += 1 }
        #expect(counts == Array(repeating: 1000, count: 10))
        let norm = Normalization.fit(ds)
        #expect(abs(norm.mean[0] - Normalization.fashionMNIST.mean[0]) < 0.003)
        #expect(abs(norm.std[0] - Normalization.fashionMNIST.std[0]) < 0.003)
        #expect(try FashionMNIST.load(split: .test, limit: 100).labels == Array(ds.labels.prefix(100)))
    }
}
