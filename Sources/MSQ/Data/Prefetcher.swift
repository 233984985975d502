import Foundation

/// Builds a loader's batches one ahead on a background thread (double buffering).
///
/// The worker waits for the hand-over slot to be empty *before* building, so at most two batches
/// exist at once: the one the consumer holds and the one being built. The worker owns only the
/// loader (a Sendable value) and the ``PrefetchSlot``, never this object, so releasing the
/// iterator runs `deinit`, which cancels the worker and waits for it to exit: no thread outlives
/// its iterator and no batch is built after it.
final class Prefetcher {
    private let slot = PrefetchSlot()

    init(loader: BatchLoader) {
        let slot = self.slot
        PrefetchSlot.live.add(1)
        let thread = Thread {
            for index in loader.startBatch..<loader.batchCount {
                guard slot.waitUntilEmpty() else { break }
                guard slot.put(loader.batch(at: index)) else { break }
            }
            // Before finish(), so the count is already down when cancelAndWait() returns.
            PrefetchSlot.live.add(-1)
            slot.finish()
        }
        thread.name = "msq-prefetch"  // for debuggers; at most 15 bytes or Linux refuses it
        thread.start()
    }

    /// The next batch, waiting for the worker if it is still being built.
    func take() -> Batch { slot.take() }

    deinit { slot.cancelAndWait() }
}

/// The one-batch hand-over between the prefetch worker and the consumer.
///
/// `@unchecked Sendable` is sound because every stored property is read and written only while
/// `condition` is locked, and `Batch` itself is Sendable.
final class PrefetchSlot: @unchecked Sendable {
    /// Worker threads started and not yet finished, process-wide (see ``BatchLoader/livePrefetchThreads``).
    static let live = LockedCounter()

    private let condition = NSCondition()
    private var batch: Batch?
    private var cancelled = false
    private var workerDone = false

    /// Worker side: blocks until the consumer has taken the previous batch; false once cancelled.
    func waitUntilEmpty() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while batch != nil && !cancelled { condition.wait() }
        return !cancelled
    }

    /// Worker side: hands over a batch; false (and the batch is dropped) once cancelled.
    func put(_ b: Batch) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if cancelled { return false }
        batch = b
        condition.broadcast()
        return true
    }

    /// Worker side: the thread is about to exit.
    func finish() {
        condition.lock()
        workerDone = true
        condition.broadcast()
        condition.unlock()
    }

    /// Consumer side: waits for and removes the next batch.
    func take() -> Batch {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let b = batch {
                batch = nil
                condition.broadcast()
                return b
            }
            // The iterator never asks for more batches than the worker builds, and only `deinit`
            // cancels; reaching this would otherwise hang forever.
            precondition(!workerDone, "BatchLoader: prefetch worker ended before the batch was built")
            condition.wait()
        }
    }

    /// Consumer side: stops the worker and returns once its thread has finished.
    func cancelAndWait() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        while !workerDone { condition.wait() }
        condition.unlock()
    }
}

/// An integer shared between threads.
///
/// `@unchecked Sendable` is sound because `value` is only touched while `lock` is held.
final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0

    /// Adds `delta`.
    func add(_ delta: Int) {
        lock.lock()
        value += delta
        lock.unlock()
    }

    /// The current value.
    var current: Int {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}

extension BatchLoader {
    /// Prefetch threads currently running in this process (a diagnostic: after every iterator is
    /// released it returns to 0 once their workers exit, which `deinit` waits for).
    public static var livePrefetchThreads: Int { PrefetchSlot.live.current }
}
