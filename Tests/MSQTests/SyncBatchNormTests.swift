import Foundation
import MSQ
import Testing

// Synchronised batch norm (BatchNorm2d.collective): two ranks on two threads, each with a replica
// of the layer and a shard of the batch, talking through an in-process Collective, against one
// BatchNorm2d on the whole batch. The trainer's gradient convention is replayed by hand: each
// rank's loss is the mean over its own n_r images, and its parameter gradients are scaled by
// n_r/N before the ranks' are summed.

/// The meeting point of the in-process ranks: each all-reduce hands every rank's buffer to every
/// rank, which sums them in rank order (so all ranks get the same bits). Waits at most 60 s for
/// the other ranks, then stops the process (mismatched collectives would otherwise hang the tests).
final class ThreadRendezvous: @unchecked Sendable {
    let size: Int
    private let condition = NSCondition()
    private var arrived = 0, generation = 0
    private var slots: [[Double]]
    private var callCounts: [Int]

    init(size: Int) {
        self.size = size
        slots = Array(repeating: [], count: size)
        callCounts = Array(repeating: 0, count: size)
    }

    /// The number of exchanges each rank has made.
    var calls: [Int] {
        condition.lock()
        defer { condition.unlock() }
        return callCounts
    }

    /// A barrier; called with the lock held.
    private func waitForAll() {
        let g = generation
        arrived += 1
        if arrived == size {
            arrived = 0
            generation += 1
            condition.broadcast()
            return
        }
        let deadline = Date().addingTimeInterval(60)
        while generation == g {
            if !condition.wait(until: deadline) {
                fatalError("ThreadRendezvous: the other ranks did not arrive within 60 s (mismatched collectives?)")
            }
        }
    }

    /// Every rank's `values`, in rank order.
    func exchange(rank: Int, _ values: [Double]) -> [[Double]] {
        condition.lock()
        defer { condition.unlock() }
        slots[rank] = values
        callCounts[rank] += 1
        waitForAll()
        let all = slots
        waitForAll()  // nobody overwrites a slot before every rank has read them all
        return all
    }
}

/// One rank of a ``ThreadRendezvous``, as a ``Collective``.
final class ThreadRankCollective: Collective {
    let rank: Int
    let rendezvous: ThreadRendezvous
    var size: Int { rendezvous.size }

    init(rank: Int, _ rendezvous: ThreadRendezvous) {
        self.rank = rank
        self.rendezvous = rendezvous
    }

    private func gather(_ values: [Double]) throws(CollectiveError) -> [[Double]] {
        let all = rendezvous.exchange(rank: rank, values)
        guard all.allSatisfy({ $0.count == values.count }) else {
            throw .replicasDiffer("all-reduce counts \(all.map(\.count))")
        }
        return all
    }

    func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws(CollectiveError) {
        let all = try gather(Array(values))
        for i in values.indices { values[i] = all.reduce(0) { $0 + $1[i] } }
    }

    func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) {
        let all = try gather(values.map(Double.init))
        for i in values.indices { values[i] = all.reduce(Float(0)) { $0 + Float($1[i]) } }
    }

    func startAllReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) -> any CollectiveRequest {
        try allReduceSum(values)
        return DoneRequest()
    }

    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws(CollectiveError) {
        let all = try gather(bytes.map(Double.init))
        for i in bytes.indices { bytes[i] = UInt8(all[root][i]) }
    }

    func barrier() throws(CollectiveError) { _ = try gather([]) }

    func abort(_ message: String, code: Int32) -> Never { fatalError("rank \(rank) aborted: \(message)") }

    private final class DoneRequest: CollectiveRequest {
        func test() throws(CollectiveError) -> Bool { true }
        func wait() throws(CollectiveError) {}
    }
}

/// A value that crosses to another thread unchecked: the test threads share nothing else.
private final class Handoff<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// `body(rank)` for every rank, each on a thread of its own, at once; the results in rank order.
private func onThreads<T>(_ count: Int, _ body: @escaping (Int) -> T) -> [T] {
    let work = Handoff(body)
    let results = Handoff([T?](repeating: nil, count: count))
    let lock = NSLock()
    let done = DispatchSemaphore(value: 0)
    for rank in 0..<count {
        let thread = Thread {
            let value = work.value(rank)
            lock.lock()
            results.value[rank] = value
            lock.unlock()
            done.signal()
        }
        thread.stackSize = 16 << 20
        thread.start()
    }
    for _ in 0..<count { done.wait() }
    return results.value.map { $0! }
}

/// A batch norm with reproducible non-trivial γ, β and running statistics.
private func makeBatchNorm(channels: Int, seed: UInt64) -> BatchNorm2d {
    var rng = RandomSource(seed: seed)
    let bn = BatchNorm2d(channels: channels, momentum: 0.3)
    func values(_ lo: Float, _ hi: Float) -> Tensor {
        Tensor(shape: [channels], scalars: (0..<channels).map { _ in lo + (hi - lo) * rng.nextUnitFloat() })
    }
    bn.weight.value = values(0.5, 1.5)
    bn.bias.value = values(-0.5, 0.5)
    bn.runningMean.value = values(-1, 1)
    bn.runningVar.value = values(0.5, 2)
    return bn
}

/// The batch norm alone, or followed by `kind` in a Sequential (which runs the pair as one fused pass).
private func network(_ bn: BatchNorm2d, _ kind: ActivationKind?) -> any Module {
    kind.map { Sequential([bn, Activation($0)]) } ?? bn
}

/// Images `range` of a `[N, ...]` tensor.
private func images(_ t: Tensor, _ range: Range<Int>) -> Tensor {
    let per = t.shape.dropFirst().reduce(1, *)
    let scalars = t.scalars[(range.lowerBound * per)..<(range.upperBound * per)]
    return Tensor(shape: [range.count] + t.shape.dropFirst(), scalars: Array(scalars))
}

private func scaled(_ t: Tensor, _ s: Float) -> Tensor { Tensor(shape: t.shape, scalars: t.scalars.map { $0 * s }) }

/// Max |got − want| over max |want|: the error relative to the quantity's scale.
private func relativeError(_ got: [Float], _ want: [Float]) -> Double {
    precondition(got.count == want.count, "\(got.count) values, expected \(want.count)")
    var diff = 0.0, scale = 0.0
    for (g, w) in zip(got, want) {
        diff = max(diff, abs(Double(g) - Double(w)))
        scale = max(scale, abs(Double(w)))
    }
    return diff.isNaN ? .infinity : diff / max(scale, 1e-30)
}

/// What one replica (or the single process) ends a training run with.
private struct Outcome {
    var y: [Float] = [], dx: [Float] = []
    var dgamma: [Float] = [], dbeta: [Float] = [], runningMean: [Float] = [], runningVar: [Float] = []
}

/// One shard-and-sum comparison: the per-image shape after N, the shard sizes, the fused activation.
struct SyncCase: Sendable, CustomTestStringConvertible {
    let imageShape: [Int]
    let shards: [Int]
    let kind: ActivationKind?
    var testDescription: String { "\(imageShape) shards \(shards) \(kind.map(\.rawValue) ?? "plain")" }
}

private let syncCases: [SyncCase] = [ActivationKind?.none, .relu, .hardswish].flatMap { kind in
    [SyncCase(imageShape: [3, 5, 3], shards: [5, 3], kind: kind),
     SyncCase(imageShape: [3, 5, 3], shards: [4, 4], kind: kind),
     SyncCase(imageShape: [3, 5, 3], shards: [7, 1], kind: kind),
     SyncCase(imageShape: [5], shards: [5, 3], kind: kind)]
}

/// Sharded vs whole: a normwise relative error budget of float rounding on O(1) values, with margin.
private let syncRelTol = 1e-5

/// `steps` training steps of one process on the whole batches (loss gradient G/N) and of one
/// replica per shard (loss gradient G_r/n_r, rank r's mean over its own images), replica r
/// synchronised through `collective(r)` (none: not synchronised); synchronised ranks run on threads at once.
private func run(_ c: SyncCase, steps: Int, collective: ((Int) -> any Collective)? = nil)
    -> (whole: Outcome, ranks: [Outcome], batches: [(x: Tensor, g: Tensor)]) {
    let n = c.shards.reduce(0, +), channels = c.imageShape[0]
    var rng = RandomSource(seed: 77)
    // Per-channel offsets and spreads, so the statistics matter; G plays ∂ℓ_i/∂y_i per image.
    let offsets = (0..<channels).map { _ in 4 * rng.nextUnitFloat() - 2 }
    let spreads = (0..<channels).map { _ in 0.5 + 2 * rng.nextUnitFloat() }
    let per = c.imageShape.dropFirst().reduce(1, *)
    var batches: [(x: Tensor, g: Tensor)] = []
    for _ in 0..<steps {
        let z = Tensor.randomNormal([n] + c.imageShape, std: 1, using: &rng)
        let x = Tensor(shape: z.shape, scalars: z.scalars.enumerated().map { i, v in
            let ch = (i / per) % channels
            return v * spreads[ch] + offsets[ch]
        })
        batches.append((x, Tensor.randomNormal([n] + c.imageShape, std: 1, using: &rng)))
    }
    func train(_ bn: BatchNorm2d, _ slice: Range<Int>) -> Outcome {
        let net = network(bn, c.kind)
        var out = Outcome()
        for (x, g) in batches {
            let y = net.forward(images(x, slice), mode: .train)
            let dx = net.backward(scaled(images(g, slice), 1 / Float(slice.count)))
            out.y += y.scalars
            out.dx += dx.scalars
        }
        out.dgamma = bn.weight.grad.scalars
        out.dbeta = bn.bias.grad.scalars
        out.runningMean = bn.runningMean.value.scalars
        out.runningVar = bn.runningVar.value.scalars
        return out
    }
    let whole = train(makeBatchNorm(channels: channels, seed: 5), 0..<n)
    let starts = c.shards.indices.map { c.shards[..<$0].reduce(0, +) }
    let body = { (rank: Int) -> Outcome in
        let bn = makeBatchNorm(channels: channels, seed: 5)
        bn.collective = collective?(rank)
        return train(bn, starts[rank]..<(starts[rank] + c.shards[rank]))
    }
    let ranks = collective == nil ? c.shards.indices.map(body) : onThreads(c.shards.count, body)
    return (whole, ranks, batches)
}

/// The ranks' outcome put together as the trainer does: outputs and input gradients concatenated
/// by image (rank r's dx scaled by n_r/N, as everything rank r back-propagates), parameter
/// gradients scaled by n_r/N and summed; and the worst normwise relative error against one process.
private func combinedError(_ c: SyncCase, whole: Outcome, ranks: [Outcome], steps: Int)
    -> (y: Double, dx: Double, params: Double, running: Double) {
    let n = c.shards.reduce(0, +), per = c.imageShape.reduce(1, *)
    var y: [Float] = [], dx: [Float] = []
    for step in 0..<steps {
        for (r, o) in ranks.enumerated() {
            let len = c.shards[r] * per
            y += o.y[(step * len)..<((step + 1) * len)]
            let w = Float(Double(c.shards[r]) / Double(n))
            dx += o.dx[(step * len)..<((step + 1) * len)].map { $0 * w }
        }
    }
    var dgamma = [Double](repeating: 0, count: whole.dgamma.count), dbeta = dgamma
    for (r, o) in ranks.enumerated() {
        let w = Double(c.shards[r]) / Double(n)
        for ch in dgamma.indices {
            dgamma[ch] += w * Double(o.dgamma[ch])
            dbeta[ch] += w * Double(o.dbeta[ch])
        }
    }
    let params = max(relativeError(dgamma.map { Float($0) }, whole.dgamma), relativeError(dbeta.map { Float($0) }, whole.dbeta))
    let running = ranks.map {
        max(relativeError($0.runningMean, whole.runningMean), relativeError($0.runningVar, whole.runningVar))
    }.max()!
    return (relativeError(y, whole.y), relativeError(dx, whole.dx), params, running)
}

@Suite("Synchronised batch norm", .serialized)
struct SyncBatchNormTests {
    @Test("two ranks with sync-BN compute one process's output, running statistics, dx and (n_r/N-summed) dγ, dβ",
          arguments: syncCases)
    func shardedEqualsWhole(c: SyncCase) {
        let steps = 2
        let rendezvous = ThreadRendezvous(size: c.shards.count)
        let sync = run(c, steps: steps) { ThreadRankCollective(rank: $0, rendezvous) }
        let e = combinedError(c, whole: sync.whole, ranks: sync.ranks, steps: steps)
        print("sync-BN \(c.testDescription): relative error y \(e.y), dx \(e.dx), dγ/dβ \(e.params), running \(e.running)")
        #expect(e.y <= syncRelTol, "output: \(e.y)")
        #expect(e.dx <= syncRelTol, "input gradient: \(e.dx)")
        #expect(e.params <= syncRelTol, "dγ, dβ: \(e.params)")
        #expect(e.running <= syncRelTol, "running statistics: \(e.running)")
        // Every rank ends with the same running statistics, bit for bit.
        for o in sync.ranks.dropFirst() {
            #expect(o.runningMean.map(\.bitPattern) == sync.ranks[0].runningMean.map(\.bitPattern)
                    && o.runningVar.map(\.bitPattern) == sync.ranks[0].runningVar.map(\.bitPattern),
                    "ranks' running statistics differ")
        }
        // One all-reduce in each forward and each backward, on every rank.
        #expect(rendezvous.calls == Array(repeating: 2 * steps, count: c.shards.count), "all-reduces \(rendezvous.calls)")
        // The comparison can fail: the same shards without synchronisation are far off.
        let plain = run(c, steps: steps)
        let p = combinedError(c, whole: plain.whole, ranks: plain.ranks, steps: steps)
        #expect(p.y > 100 * syncRelTol && p.dx > 100 * syncRelTol && p.running > 100 * syncRelTol,
                "per-shard statistics should differ from the whole batch's: \(p)")
    }

    @Test("one rank with the whole batch and one with none: the one-process layer, bit for bit",
          arguments: [ActivationKind?.none, .relu, .hardswish])
    func emptyShardIsBitIdentical(kind: ActivationKind?) {
        let c = SyncCase(imageShape: [3, 5, 3], shards: [6, 0], kind: kind)
        let rendezvous = ThreadRendezvous(size: 2)
        let sync = run(c, steps: 2) { ThreadRankCollective(rank: $0, rendezvous) }
        let (whole, r0, r1) = (sync.whole, sync.ranks[0], sync.ranks[1])
        func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }
        #expect(bits(r0.y) == bits(whole.y) && bits(r0.dx) == bits(whole.dx), "output and input gradient")
        #expect(bits(r0.dgamma) == bits(whole.dgamma) && bits(r0.dbeta) == bits(whole.dbeta), "dγ, dβ")
        #expect(r1.dgamma.allSatisfy { $0 == 0 } && r1.dbeta.allSatisfy { $0 == 0 } && r1.y.isEmpty, "the empty shard")
        for o in [r0, r1] {
            #expect(bits(o.runningMean) == bits(whole.runningMean) && bits(o.runningVar) == bits(whole.runningVar),
                    "running statistics")
        }
    }

    @Test("a one-process collective changes nothing, bit for bit", arguments: [ActivationKind?.none, .relu, .hardswish])
    func singleProcessIsBitIdentical(kind: ActivationKind?) {
        let c = SyncCase(imageShape: [3, 5, 3], shards: [5], kind: kind)
        let withOne = run(c, steps: 2) { _ in SingleProcess() }
        let without = run(c, steps: 2)
        for (a, b) in [(withOne.ranks[0], without.ranks[0]), (withOne.ranks[0], withOne.whole)] {
            for (x, y) in [(a.y, b.y), (a.dx, b.dx), (a.dgamma, b.dgamma), (a.dbeta, b.dbeta),
                           (a.runningMean, b.runningMean), (a.runningVar, b.runningVar)] {
                #expect(x.map(\.bitPattern) == y.map(\.bitPattern))
            }
        }
    }

    @Test("synchronizeBatchNorm(over:) reaches every batch norm, nested or itself, and nil undoes it")
    func synchronizeReachesEveryBatchNorm() {
        var rng = RandomSource(seed: 3)
        let inner = BatchNorm2d(channels: 4), outer = BatchNorm2d(channels: 2)
        let model = Sequential([Conv2d(inChannels: 1, outChannels: 2, kernelSize: 3, rng: &rng), outer, Activation(.relu),
                                Sequential([Conv2d(inChannels: 2, outChannels: 4, kernelSize: 1, rng: &rng), inner])])
        let collective = SingleProcess()
        model.synchronizeBatchNorm(over: collective)
        #expect(inner.collective === collective && outer.collective === collective)
        model.synchronizeBatchNorm(over: nil)
        #expect(inner.collective == nil && outer.collective == nil)
        inner.synchronizeBatchNorm(over: collective)
        #expect(inner.collective === collective && outer.collective == nil)
    }
}
