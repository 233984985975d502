import Foundation
import MSQ
import XCTest

/// Data-parallel training without MPI: ranks as threads (``runRanks(_:_:)``).
final class DataParallelTests: XCTestCase {
    /// The most a weight of a P = 2 run may differ from the P = 1 run, relative to the largest
    /// weight of its tensor: the two sum the same gradients in another order.
    static let replicaTolerance: Float = 1e-4

    func testShardsPartitionEveryBatchWithTheSameAugmentation() throws {
        let data = try SyntheticDataset(count: 23, sampleShape: [1, 8, 8], numClasses: 3, seed: 5)
        let augmentation = Augmentation(randomCropPadding: 2, horizontalFlip: true)
        let whole = try BatchLoader(dataset: data, batchSize: 7, shuffle: true, augmentation: augmentation,
                                    seed: 9, epoch: 2, prefetch: false)
        for p in [2, 3] {
            let shards = try (0..<p).map {
                try BatchLoader(dataset: data, batchSize: 7, shuffle: true, augmentation: augmentation, seed: 9, epoch: 2,
                                prefetch: false, shard: .init(index: $0, count: p))
            }
            for b in 0..<whole.batchCount {
                let full = whole.batch(at: b)
                let parts = shards.map { $0.batch(at: b) }
                XCTAssertEqual(parts.flatMap(\.sampleIndices), full.sampleIndices, "batch \(b), P = \(p)")
                XCTAssertEqual(parts.flatMap(\.images.scalars), full.images.scalars, "batch \(b), P = \(p)")
                XCTAssertTrue(parts.allSatisfy { $0.globalCount == full.count })
                XCTAssertLessThanOrEqual(parts.map(\.count).max()! - parts.map(\.count).min()!, 1)
            }
        }
        XCTAssertThrowsError(try BatchLoader(dataset: data, batchSize: 7, shuffle: false, seed: 0, shard: .init(index: 2, count: 2)))
    }

    func testBucketsSumTheShareWeightedGradients() throws {
        let (results, _) = runRanks(2) { c -> [[Float]] in
            let model = makeSmallNet(seed: 3)
            let buckets = GradientBuckets(model: model, collective: c, bucketBytes: 64)
            XCTAssertGreaterThan(buckets.bucketCount, 2)
            let share = c.rank == 0 ? 0.75 : 0.25
            buckets.beginStep(share: share)
            // A real backward fills the gradients and reports each child as it finishes.
            var rng = RandomSource(seed: 11)
            let x = Tensor(shape: [4, 1, 6, 6], scalars: (0..<144).map { _ in Float(rng.nextGaussian()) })
            model.zeroGradients()
            let y = model.forward(x, mode: .train)
            model.backwardParameters(Tensor(shape: y.shape, repeating: Float(c.rank + 1)))
            let local = model.trainableParameters().map(\.grad.scalars)
            try buckets.finish()
            XCTAssertEqual(buckets.startedDuringBackward, buckets.bucketCount, "every bucket started by a Sequential report")
            return local + model.trainableParameters().map(\.grad.scalars)
        }
        let r0 = try results[0].get(), r1 = try results[1].get()
        let n = r0.count / 2
        for i in 0..<n {
            XCTAssertEqual(r0[n + i], r1[n + i], "both ranks hold the same sums")
            for j in r0[i].indices {
                XCTAssertEqual(r0[n + i][j], 0.75 * r0[i][j] + 0.25 * r1[i][j], accuracy: 1e-6 * max(1, abs(r0[n + i][j])))
            }
        }
    }

    func train(ranks: Int, epochs: Int = 2, out: String?, resume: Bool = false, stopAfter: Int? = nil, syncBN: Bool = false, seedOfRank: @escaping @Sendable (Int) -> UInt64 = { _ in 4 },
               model make: @escaping @Sendable (UInt64) -> any Module) throws -> (summaries: [TrainingSummary?], weights: [[Float]], errors: [Error?]) {
        var config = try TinyTrainingSetup(method: "fp", epochs: epochs).config
        config.threads = 1
        let setup = try TinyTrainingSetup(method: "fp", epochs: epochs), fixed = config
        let (results, _) = runRanks(ranks) { c -> (TrainingSummary, [[Float]]) in
            let model = make(seedOfRank(c.rank))
            let trainer = Trainer(config: fixed, model: model, method: FloatTraining(), train: setup.train, test: setup.test,
                                  normalization: setup.normalization, outDirectory: out, log: { _ in })
            trainer.collective = c
            trainer.synchronizeBatchNorm = syncBN
            if let stopAfter { trainer.onEpoch = { if $0.epoch == stopAfter { throw Stop() } } }
            let summary = try trainer.run(resume: resume)
            return (summary, MSQTests.weights(model))
        }
        let values = results.map { try? $0.get() }
        return (values.map { $0?.0 }, values.compactMap { $0?.1 }.first ?? [],
                results.map(failure))
    }

    func assertClose(_ a: [[Float]], _ b: [[Float]], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, file: file, line: line)
        for (x, y) in zip(a, b) {
            let scale = max(x.map(abs).max() ?? 0, 1e-12)
            let worst = zip(x, y).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst / scale, Self.replicaTolerance, file: file, line: line)
        }
    }

    func testTwoRanksTrainLikeOne() throws {
        setKernelThreads(1)
        let one = try train(ranks: 1, out: nil, model: { makePlainNet(seed: $0) })
        let two = try train(ranks: 2, out: nil, model: { makePlainNet(seed: $0) })
        XCTAssertTrue((one.errors + two.errors).allSatisfy { $0 == nil }, "\(one.errors) \(two.errors)")
        XCTAssertFalse(one.weights.isEmpty)
        assertClose(one.weights, two.weights)
        XCTAssertNotEqual(one.weights, makePlainNet(seed: 4).namedParameters().map(\.parameter.value.scalars), "it trained")
        let s1 = try XCTUnwrap(one.summaries[0]), s2 = try XCTUnwrap(two.summaries[0])
        XCTAssertEqual(s2.processes, 2)
        XCTAssertEqual(s1.testAccuracy, s2.testAccuracy, accuracy: 1.0 / 16)
        XCTAssertEqual(s1.testLoss, s2.testLoss, accuracy: 1e-3)
        XCTAssertEqual(try XCTUnwrap(two.summaries[1]).testLoss, s2.testLoss, "every rank reduces the same evaluation")
    }

    func testTwoRanksWithSynchronisedBatchNormTrainLikeOne() throws {
        setKernelThreads(1)
        let make: @Sendable (UInt64) -> any Module = { MSQ.makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: $0) }
        let one = try train(ranks: 1, out: nil, model: make)
        let two = try train(ranks: 2, out: nil, syncBN: true, model: make)
        XCTAssertTrue((one.errors + two.errors).allSatisfy { $0 == nil }, "\(one.errors) \(two.errors)")
        assertClose(one.weights, two.weights)
        let perShard = try train(ranks: 2, out: nil, model: make)
        XCTAssertNotEqual(one.weights, perShard.weights, "per-shard statistics train another model")
    }

    func testRanksThatStartFromDifferentWeightsAreRefused() throws {
        setKernelThreads(1)
        let run = try train(ranks: 2, out: nil, seedOfRank: { UInt64($0) }, model: { makePlainNet(seed: $0) })
        for error in run.errors {
            guard case .replicasDiffer? = error as? CollectiveError else { return XCTFail("got \(String(describing: error))") }
        }
    }

    func testResumeAtAnotherProcessCount() throws {
        setKernelThreads(1)
        let straight = try train(ranks: 1, out: nil, model: { makePlainNet(seed: $0) })
        for (before, after) in [(2, 1), (1, 2)] {
            let dir = freshDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let first = try train(ranks: before, out: dir, stopAfter: 1, model: { makePlainNet(seed: $0) })
            XCTAssertTrue(first.errors.allSatisfy { $0 is Stop }, "\(first.errors)")
            let resumed = try train(ranks: after, out: dir, resume: true, model: { makePlainNet(seed: $0) })
            XCTAssertTrue(resumed.errors.allSatisfy { $0 == nil }, "P = \(before) → \(after): \(resumed.errors)")
            assertClose(straight.weights, resumed.weights)
            let summary = try JSONDecoder().decode(TrainingSummary.self,
                                                   from: Data(contentsOf: URL(fileURLWithPath: dir + "/summary.json")))
            XCTAssertEqual(summary.processes, after)
            XCTAssertEqual(summary.epochs, 2)
        }
    }

    func testALastBatchSmallerThanTheRanksIsRefused() throws {
        setKernelThreads(1)
        let setup = try TinyTrainingSetup(method: "fp", epochs: 1)
        var config = setup.config
        config.batchSize = 47  // 48 images: a last batch of 1 image for 2 ranks
        let fixed = config
        let (results, _) = runRanks(2) { c in
            let trainer = Trainer(config: fixed, model: makePlainNet(seed: 4), method: FloatTraining(), train: setup.train,
                                  test: setup.test, normalization: setup.normalization, outDirectory: nil, log: { _ in })
            trainer.collective = c
            _ = try trainer.run(resume: false)
        }
        for error in results.map(failure) {
            guard case let .incompatibleData(message)? = error as? TrainingError else { return XCTFail("\(String(describing: error))") }
            XCTAssertTrue(message.contains("fewer than the 2 processes"), message)
        }
    }
}

/// A model without batch norm: its P = 2 run is the P = 1 run up to the order of the sums.
func makePlainNet(seed: UInt64) -> Sequential {
    var rng = RandomSource(seed: seed)
    return Sequential(named: [
        ("conv1", Conv2d(inChannels: 1, outChannels: 8, kernelSize: 3, padding: 1, bias: true, rng: &rng)),
        ("relu1", Activation(.relu)),
        ("conv2", Conv2d(inChannels: 8, outChannels: 8, kernelSize: 3, stride: 2, padding: 1, bias: true, rng: &rng)),
        ("relu2", Activation(.relu)),
        ("pool", GlobalAvgPool2d()),
        ("fc", Linear(inFeatures: 8, outFeatures: 4, rng: &rng)),
    ])
}

struct Stop: Error {}

/// A failed rank's error; nil for a rank that finished.
func failure<T>(_ r: Result<T, any Error>) -> (any Error)? {
    if case let .failure(e) = r { return e }
    return nil
}
