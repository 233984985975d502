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
        let thread = Thread {
            // Named from inside: on Linux a name set before start() never reaches the OS thread,
            // and tests find workers by this name.
            Thread.current.name = "msq-batch-prefetch"
            for index in loader.startBatch..<loader.batchCount {
                guard slot.waitUntilEmpty() else { break }
                guard slot.put(loader.batch(at: index)) else { break }
            }
            slot.finish()
        }
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
