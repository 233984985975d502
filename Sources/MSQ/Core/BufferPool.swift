import Foundation

/// Recycles large tensor buffers of the sizes a training step allocates again on the next step.
///
/// Why: buffers above glibc's mmap threshold (at most 32 MiB) come from fresh `mmap`s, so every
/// step page-faults them in and the kernel zeroes each page (ResNet-18's 51 MiB activations: about
/// 3 % of a step; MobileNetV3-Large at 224², batch 16, whose step allocates more than a fixed
/// 512 MiB pool held: a third of the step), and freeing returns them with `munmap`. Buffers of at
/// least ``minimumBytes`` are kept here after their tensor dies and handed to the next tensor of
/// exactly that byte count.
///
/// How much is kept: the pool's footprint (buffers held plus buffers live in tensors) never exceeds
/// the most its tensors have ever had live at once. A miss that would pass that mark frees the
/// oldest held buffers first, so recycling never raises a process's peak memory, only keeps it
/// from being returned and faulted in again on every step. Thread-safe.
final class BufferPool: @unchecked Sendable {
    /// The pool every ``TensorStorage`` uses.
    static let shared = BufferPool()

    /// Buffers smaller than this go straight to the allocator (malloc recycles them itself).
    let minimumBytes = 1 << 20

    private let lock = NSLock()
    /// Free buffers, oldest first; a training step holds a few dozen, so linear searches are cheap.
    private var held: [(bytes: Int, pointer: UnsafeMutableRawPointer)] = []
    private var heldBytes = 0
    /// Pooled-size bytes in live tensors now, and the most there have ever been.
    private var liveBytes = 0, peakLiveBytes = 0

    /// Bytes in live tensors, held for reuse, and the high-water mark of live bytes (buffers of at
    /// least ``minimumBytes`` only).
    var statistics: (live: Int, held: Int, peak: Int) {
        lock.lock()
        defer { lock.unlock() }
        return (liveBytes, heldBytes, peakLiveBytes)
    }

    /// A 64-byte aligned buffer of `bytes` bytes: the most recently freed one of that size, if any.
    func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        guard bytes >= minimumBytes else { return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64) }
        lock.lock()
        liveBytes += bytes
        if let i = held.lastIndex(where: { $0.bytes == bytes }) {
            let p = held.remove(at: i).pointer
            heldBytes -= bytes
            lock.unlock()
            return p
        }
        peakLiveBytes = max(peakLiveBytes, liveBytes)
        let freed = evictBeyondPeak()
        lock.unlock()
        for p in freed { p.deallocate() }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    /// Takes back a buffer from ``allocate(bytes:)``; small ones are freed.
    func release(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        guard bytes >= minimumBytes else { pointer.deallocate(); return }
        lock.lock()
        liveBytes -= bytes
        held.append((bytes, pointer))
        heldBytes += bytes
        lock.unlock()
    }

    /// Removes the oldest held buffers until held + live fits under the peak; returns them to free
    /// outside the lock. Call with the lock held.
    private func evictBeyondPeak() -> [UnsafeMutableRawPointer] {
        var evicted = 0
        while evicted < held.count && heldBytes + liveBytes > peakLiveBytes {
            heldBytes -= held[evicted].bytes
            evicted += 1
        }
        let freed = held.prefix(evicted).map(\.pointer)
        held.removeFirst(evicted)
        return freed
    }
}

/// How much memory the tensors' buffer pool holds: a diagnostic for a process's memory use.
public enum TensorMemory {
    /// Bytes of large buffers (1 MiB and more) in live tensors, held by the pool for reuse, and the
    /// most ever live at once. The pool keeps live + held at or below that peak.
    public static var pooled: (live: Int, held: Int, peak: Int) { BufferPool.shared.statistics }
}
