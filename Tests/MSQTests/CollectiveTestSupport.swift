import Foundation
import MSQ

// Test doubles of `Collective` for the data-parallel splitting of the methods' estimates (issue 19):
// simulated ranks on threads of this process with a real all-reduce among them, and a one-rank
// double whose "other rank" is a closure.

/// A collective operation that was complete when made.
final class DoneRequest: CollectiveRequest {
    func test() throws(CollectiveError) -> Bool { true }
    func wait() throws(CollectiveError) {}
}

/// P simulated ranks meeting at a rendezvous: each operation waits until every rank has called it,
/// then hands every rank the same result (sums taken in rank order). Records every rank's inputs.
final class RankGroup: @unchecked Sendable {
    let size: Int
    /// How long a rank waits for the others before failing (instead of hanging the test run).
    let timeout: TimeInterval
    private let condition = NSCondition()
    private var contributions: [[Double]?]
    private var arrived = 0
    private var generation = 0
    private var outcome: [[Double]] = []
    private var recorded: [[[Double]]]

    init(size: Int, timeout: TimeInterval = 60) {
        self.size = size
        self.timeout = timeout
        contributions = Array(repeating: nil, count: size)
        recorded = Array(repeating: [], count: size)
    }

    /// The values rank `rank` passed to each of its all-reduces, in call order.
    func inputs(of rank: Int) -> [[Double]] {
        condition.lock()
        defer { condition.unlock() }
        return recorded[rank]
    }

    /// Every rank's contribution to this round, once all have arrived.
    func gather(rank: Int, _ values: [Double], record: Bool, operation: String) throws(CollectiveError) -> [[Double]] {
        condition.lock()
        defer { condition.unlock() }
        if record { recorded[rank].append(values) }
        contributions[rank] = values
        arrived += 1
        let mine = generation
        if arrived == size {
            outcome = contributions.map { $0 ?? [] }
            contributions = Array(repeating: nil, count: size)
            arrived = 0
            generation += 1
            condition.broadcast()
        } else {
            let deadline = Date(timeIntervalSinceNow: timeout)
            while generation == mine {
                if !condition.wait(until: deadline) && generation == mine {
                    throw .transport(operation: operation, rank: rank, message: "the other ranks never came")
                }
            }
        }
        return outcome
    }

    /// Element-wise sums in rank order; the counts must agree.
    func sum(rank: Int, _ values: [Double]) throws(CollectiveError) -> [Double] {
        let all = try gather(rank: rank, values, record: true, operation: "allReduceSum")
        guard all.allSatisfy({ $0.count == values.count }) else {
            throw .transport(operation: "allReduceSum", rank: rank, message: "counts differ: \(all.map(\.count))")
        }
        var out = [Double](repeating: 0, count: values.count)
        for contribution in all {
            for i in out.indices { out[i] += contribution[i] }
        }
        return out
    }
}

/// Rank `rank` of a ``RankGroup``.
final class GroupRank: Collective {
    let rank: Int
    let group: RankGroup
    var size: Int { group.size }

    init(rank: Int, group: RankGroup) {
        self.rank = rank
        self.group = group
    }

    func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws(CollectiveError) {
        let out = try group.sum(rank: rank, Array(values))
        for i in values.indices { values[i] = out[i] }
    }

    func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) {
        let out = try group.sum(rank: rank, values.map(Double.init))
        for i in values.indices { values[i] = Float(out[i]) }
    }

    func startAllReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) -> any CollectiveRequest {
        try allReduceSum(values)
        return DoneRequest()
    }

    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws(CollectiveError) {
        let all = try group.gather(rank: rank, bytes.map(Double.init), record: false, operation: "broadcast")
        for i in bytes.indices { bytes[i] = UInt8(all[root][i]) }
    }

    func barrier() throws(CollectiveError) {
        _ = try group.gather(rank: rank, [], record: false, operation: "barrier")
    }

    func abort(_ message: String, code: Int32) -> Never { fatalError("rank \(rank) aborted: \(message)") }
}

/// Runs `body` as ranks 0..<`size`, one thread each (so their collective calls meet), and returns
/// each rank's result and the group (for its recorded inputs). Every rank builds its own replica
/// inside `body`: the models are not shared between threads.
func runRanks<T: Sendable>(_ size: Int,
                           _ body: @escaping @Sendable (any Collective) throws -> T) -> (results: [Result<T, any Error>], group: RankGroup) {
    let group = RankGroup(size: size)
    let box = ResultBox<T>(size: size)
    let done = DispatchGroup()
    for rank in 0..<size {
        done.enter()
        let thread = Thread {
            box.set(rank, Result { try body(GroupRank(rank: rank, group: group)) })
            done.leave()
        }
        thread.stackSize = 16 << 20
        thread.start()
    }
    done.wait()
    return (box.values, group)
}

/// The ranks' results, filled from their threads.
private final class ResultBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Result<T, any Error>?]
    init(size: Int) { slots = Array(repeating: nil, count: size) }
    func set(_ i: Int, _ r: Result<T, any Error>) {
        lock.lock()
        slots[i] = r
        lock.unlock()
    }
    var values: [Result<T, any Error>] {
        lock.lock()
        defer { lock.unlock() }
        return slots.map { $0! }
    }
}

/// Rank `rank` of `size` in one thread: each all-reduce adds what `peer` says the other ranks
/// contribute (nothing when nil) to this rank's values. Records this rank's inputs.
final class PeerCollective: Collective {
    let rank: Int
    let size: Int
    let peer: (([Double]) -> [Double])?
    private(set) var inputs: [[Double]] = []

    init(rank: Int = 0, size: Int = 2, peer: (([Double]) -> [Double])?) {
        self.rank = rank
        self.size = size
        self.peer = peer
    }

    func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws(CollectiveError) {
        let mine = Array(values)
        inputs.append(mine)
        guard let peer else { return }
        let others = peer(mine)
        guard others.count == mine.count else {
            throw .transport(operation: "allReduceSum", rank: rank, message: "the peer gave \(others.count) values for \(mine.count)")
        }
        for i in values.indices { values[i] += others[i] }
    }

    func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) {
        let doubles = try allReduceSum(values.map(Double.init))
        for i in values.indices { values[i] = Float(doubles[i]) }
    }

    func startAllReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) -> any CollectiveRequest {
        try allReduceSum(values)
        return DoneRequest()
    }

    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws(CollectiveError) {}
    func barrier() throws(CollectiveError) {}
    func abort(_ message: String, code: Int32) -> Never { fatalError("aborted: \(message)") }
}

/// What a rank holding `bits` contributes to ``Collective/checkSameBitScheme(paths:bits:step:)``'s
/// all-reduce, recorded from the check itself (so the tests do not depend on its layout).
func bitSchemeContribution(_ bits: [Int]) -> [Double] {
    let recorder = PeerCollective(rank: 1, size: 2, peer: nil)
    try? recorder.checkSameBitScheme(paths: bits.map { _ in "" }, bits: bits, step: 0)
    return recorder.inputs[0]
}

/// A rank whose only peer holds `peerBits()` at each check, for a method whose only collective call
/// is the bit-scheme check.
func peerHolding(_ peerBits: @escaping () -> [Int]) -> PeerCollective {
    PeerCollective(peer: { _ in bitSchemeContribution(peerBits()) })
}
