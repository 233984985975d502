import Foundation

/// A data-parallel run's per-step machinery: the gradient buckets and, with per-shard batch
/// norm, the running statistics averaged over the ranks.
final class DataParallelStep {
    var buckets: GradientBuckets
    let runningStatistics: [Parameter]

    init(buckets: GradientBuckets, runningStatistics: [Parameter]) {
        self.buckets = buckets
        self.runningStatistics = runningStatistics
    }
}

extension Trainer {
    /// This rank's slice of every batch.
    var shard: BatchLoader.Shard { BatchLoader.Shard(index: collective.rank, count: collective.size) }

    /// Refuses a split that would leave a rank without images in some batch.
    func checkShards() throws(TrainingError) {
        let p = collective.size
        guard p > 1 else { return }
        guard config.batchSize >= p else {
            throw .invalidProperty(property: "batchSize", problem: "is \(config.batchSize), fewer than the \(p) processes: the batch size is the global batch, and each process needs at least one image of it")
        }
        let last = train.count % config.batchSize
        if last != 0 && last < p {
            throw .incompatibleData("the last batch of every epoch holds \(last) images (\(train.count) mod batch size \(config.batchSize)), fewer than the \(p) processes: change the batch size or the number of training images")
        }
    }

    /// Hooks the model for P > 1: batch norm synchronisation, the gradient buckets, and a check
    /// that every rank starts from the same weights.
    func prepareDataParallel() throws -> DataParallelStep? {
        guard collective.size > 1 else { return nil }
        var norms: [BatchNorm2d] = []
        model.visitModules(prefix: "") { _, m in if let bn = m as? BatchNorm2d { norms.append(bn) } }
        model.synchronizeBatchNorm(over: synchronizeBatchNorm ? collective : nil)
        gradientBuckets?.unhook()
        let buckets = GradientBuckets(model: model, collective: collective)
        gradientBuckets = buckets
        try checkReplicasAgree(after: "building the model (same seed, same initial weights file)")
        return DataParallelStep(buckets: buckets,
                                runningStatistics: synchronizeBatchNorm ? [] : norms.flatMap { [$0.runningMean, $0.runningVar] })
    }

    /// The buckets for the model's current trainable parameters (a method may swap layers, as
    /// SMPQ does when its search ends).
    func currentBuckets(_ step: DataParallelStep) -> GradientBuckets {
        if !step.buckets.covers(model) {
            step.buckets.unhook()
            step.buckets = GradientBuckets(model: model, collective: collective)
            gradientBuckets = step.buckets
        }
        return step.buckets
    }

    /// The step's loss, correct count and image count over all ranks (and, with per-shard batch
    /// norm, the running statistics averaged over them).
    func reduceStep(_ step: DataParallelStep, loss: Float, correct: Int, count: Int) throws -> (Float, Int, Int) {
        var values = [Double(loss) * Double(count), Double(correct), Double(count)]
        for p in step.runningStatistics {
            p.value.withUnsafePointer { v in values.append(contentsOf: UnsafeBufferPointer(start: v, count: p.value.count).map(Double.init)) }
        }
        let sums = try collective.allReduceSum(values)
        var offset = 3
        let ranks = Double(collective.size)
        for p in step.runningStatistics {
            let n = p.value.count
            p.value.withUnsafeMutablePointer { v in
                for j in 0..<n { v[j] = Float(sums[offset + j] / ranks) }
            }
            offset += n
        }
        return (Float(sums[0] / sums[2]), Int(sums[1].rounded()), Int(sums[2].rounded()))
    }

    /// The test set evaluated in P contiguous slices, one per rank, the sums reduced: every rank
    /// returns the whole set's figures.
    func evaluateSharded() throws -> Evaluation {
        let batchSize = max(config.batchSize, 256)
        guard collective.size > 1 else {
            return evaluate(model, on: test, normalization: normalization, batchSize: batchSize)
        }
        let range = shard.range(in: test.count)
        var part = Evaluation(loss: 0, accuracy: 0, count: 0)
        if !range.isEmpty {
            let slice = try DatasetSubset(test, indices: Array(range), part: "rank \(collective.rank)")
            part = evaluate(model, on: slice, normalization: normalization, batchSize: batchSize)
        }
        let n = Double(part.count)
        let sums = try collective.allReduceSum([part.count > 0 ? part.loss * n : 0, (part.accuracy * n).rounded(), n])
        return Evaluation(loss: sums[0] / sums[2], accuracy: sums[1] / sums[2], count: Int(sums[2]))
    }

    /// Throws unless every rank holds bit for bit the same parameters (weights and statistics).
    ///
    /// Cheap (one hash per rank, summed): run when the model is built and after every epoch. The
    /// replicas stay identical by construction (same seed, summed gradients identical on every rank,
    /// same optimizer); a difference means a rank read other data or a method decided differently.
    func checkReplicasAgree(after moment: String) throws {
        var hash = fnv1a64Offset
        for (_, p) in model.namedParameters() {
            let t = p.value
            hash = t.withUnsafePointer { fnv1a64(UnsafeRawBufferPointer(start: $0, count: 4 * t.count), continuing: hash) }
        }
        // Three 22-bit pieces: exact as doubles even when summed over 2^30 ranks.
        let pieces = [Double(hash & 0x3f_ffff), Double((hash >> 22) & 0x3f_ffff), Double(hash >> 44)]
        let sums = try collective.allReduceSum(pieces)
        let ranks = Double(collective.size)
        guard zip(sums, pieces).allSatisfy({ $0 == $1 * ranks }) else {
            throw CollectiveError.replicasDiffer("the model's parameters differ between the ranks after \(moment)")
        }
    }

    /// The data-parallel part of the summary; nil at P = 1.
    func dataParallelSummary() -> JSONValue? {
        guard collective.size > 1 else { return nil }
        var o: [String: JSONValue] = ["sync_batch_norm": .bool(synchronizeBatchNorm)]
        if let b = gradientBuckets {
            o["all_reduce_bytes_per_step"] = .int(b.floatCount * MemoryLayout<Float>.stride)
            o["buckets"] = .int(b.bucketCount)
            o["buckets_started"] = .int(b.started)
            o["buckets_started_during_backward"] = .int(b.startedDuringBackward)
            o["exposed_all_reduce_seconds"] = .double(b.exposedSeconds)
        }
        return .object(o)
    }

    /// The checkpoint at `path` as rank 0 reads it, on every rank; nil when there is none.
    func sharedCheckpoint(at path: String) throws -> Checkpoint? {
        guard collective.size > 1 else {
            return FileManager.default.fileExists(atPath: path) ? try Checkpoint.read(from: path) : nil
        }
        var bytes: [UInt8] = []
        if collective.isRoot, FileManager.default.fileExists(atPath: path) {
            guard let data = FileManager.default.contents(atPath: path) else {
                _ = try Checkpoint.read(from: path)  // throws the reason
                throw CheckpointError.unreadable(path: path, reason: "it could not be read")
            }
            bytes = [UInt8](data)
        }
        bytes = try collective.broadcast(bytes, root: 0)
        return bytes.isEmpty ? nil : try Checkpoint(serialized: bytes, path: path)
    }
}
