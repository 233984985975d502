import Foundation

/// The processes of a data-parallel run and the collective operations among them.
///
/// The MSQ library holds no transport: a run on one process uses ``SingleProcess``; `msq` under
/// `mpirun` uses the `MSQDistributed` target's Open MPI implementation. Every rank calls every
/// collective operation in the same order with the same counts (a mismatch deadlocks, as in MPI).
/// Implementations must give every rank bit-identical results: the ranks' replicas of the model
/// stay identical only if the summed gradients are.
public protocol Collective: AnyObject {
    /// This process's index, `0..<size`.
    var rank: Int { get }
    /// The number of processes.
    var size: Int { get }

    /// Sums `values` element-wise over all ranks, in place.
    func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError)

    /// Sums `values` element-wise over all ranks, in place.
    func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws(CollectiveError)

    /// Starts summing `values` over all ranks in place; the buffer must stay alive and untouched
    /// until the returned request's ``CollectiveRequest/wait()`` returns.
    func startAllReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) -> any CollectiveRequest

    /// Copies `root`'s bytes into every other rank's `bytes` (the same count on every rank).
    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws(CollectiveError)

    /// Waits until every rank has called it.
    func barrier() throws(CollectiveError)

    /// Ends the processes of every rank (not only this one) after writing `message` to standard
    /// error; what a rank calls when it cannot go on, so no other rank waits for it forever.
    func abort(_ message: String, code: Int32) -> Never
}

/// A collective operation started by ``Collective/startAllReduceSum(_:)``.
public protocol CollectiveRequest: AnyObject {
    /// Lets the transport progress the operation; true once it is complete.
    func test() throws(CollectiveError) -> Bool
    /// Returns when the operation is complete.
    func wait() throws(CollectiveError)
}

/// A collective operation failed.
public enum CollectiveError: Error, CustomStringConvertible, Equatable {
    /// The transport reported an error.
    case transport(operation: String, rank: Int, message: String)
    /// The ranks disagree on something they must share.
    case replicasDiffer(String)

    public var description: String {
        switch self {
        case let .transport(operation, rank, message): "rank \(rank): \(operation) failed: \(message)"
        case let .replicasDiffer(what): "the ranks disagree: \(what)"
        }
    }
}

/// One process: every collective operation is the identity.
public final class SingleProcess: Collective {
    /// One process.
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) {}
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws(CollectiveError) {}
    public func startAllReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) -> any CollectiveRequest {
        CompletedRequest()
    }
    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws(CollectiveError) {}
    public func barrier() throws(CollectiveError) {}
    public func abort(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        exit(code)
    }
}

/// A request that was complete when made.
final class CompletedRequest: CollectiveRequest {
    func test() throws(CollectiveError) -> Bool { true }
    func wait() throws(CollectiveError) {}
}

extension Collective {
    /// Whether this process is rank 0, the one that writes files and logs.
    public var isRoot: Bool { rank == 0 }

    /// Sums an array element-wise over all ranks.
    public func allReduceSum(_ values: [Double]) throws(CollectiveError) -> [Double] {
        var out = values
        var failure: CollectiveError?
        out.withUnsafeMutableBufferPointer { p in
            do throws(CollectiveError) { try allReduceSum(p) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// Sums a tensor element-wise over all ranks, in place.
    public func allReduceSum(_ tensor: inout Tensor) throws(CollectiveError) {
        let n = tensor.count
        var failure: CollectiveError?
        tensor.withUnsafeMutablePointer { p in
            do throws(CollectiveError) { try allReduceSum(UnsafeMutableBufferPointer(start: p, count: n)) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Root's tensor on every rank (the same shape everywhere).
    public func broadcast(_ tensor: inout Tensor, root: Int) throws(CollectiveError) {
        let n = tensor.count
        var failure: CollectiveError?
        tensor.withUnsafeMutablePointer { p in
            do throws(CollectiveError) {
                try broadcast(UnsafeMutableRawBufferPointer(start: p, count: n * MemoryLayout<Float>.stride), root: root)
            } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Root's bytes on every rank, whatever count the others hold.
    public func broadcast(_ bytes: [UInt8], root: Int) throws(CollectiveError) -> [UInt8] {
        var count = [Double(bytes.count)]
        var failure: CollectiveError?
        count.withUnsafeMutableBytes { p in
            do throws(CollectiveError) { try broadcast(p, root: root) } catch { failure = error }
        }
        if let failure { throw failure }
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(count[0]))
        out.withUnsafeMutableBytes { p in
            do throws(CollectiveError) { try broadcast(p, root: root) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// Root's string on every rank.
    public func broadcast(_ string: String, root: Int) throws(CollectiveError) -> String {
        String(decoding: try broadcast(Array(string.utf8), root: root), as: UTF8.self)
    }
}
