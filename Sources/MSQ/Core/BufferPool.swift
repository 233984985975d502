import Foundation

/// Recycles large tensor buffers of the sizes a training step allocates again on the next step.
///
/// Why: buffers above glibc's mmap threshold (at most 32 MiB) come from fresh `mmap`s, so every
/// step page-faults them in and the kernel zeroes each page (ResNet-18's 51 MiB activations: about
/// 3 % of a step), and freeing returns them with `munmap`. Buffers of at least ``minimumBytes`` are
/// kept here after their tensor dies and handed to the next tensor of exactly that byte count; at
/// most ``capacityBytes`` are held (the oldest beyond that are freed), so the pool adds at most that
/// much to a process's memory. Thread-safe.
final class BufferPool: @unchecked Sendable {
    /// The pool every ``TensorStorage`` uses.
    static let shared = BufferPool()

    /// Buffers smaller than this go straight to the allocator (malloc recycles them itself).
    let minimumBytes = 1 << 20
    /// Most bytes held at once.
    let capacityBytes = 512 << 20

    private let lock = NSLock()
    /// Free buffers, oldest first; a training step holds a few dozen, so linear searches are cheap.
    private var held: [(bytes: Int, pointer: UnsafeMutableRawPointer)] = []
    private var heldBytes = 0

    /// A 64-byte aligned buffer of `bytes` bytes: the most recently freed one of that size, if any.
    func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        if bytes >= minimumBytes {
            lock.lock()
            if let i = held.lastIndex(where: { $0.bytes == bytes }) {
                let p = held.remove(at: i).pointer
                heldBytes -= bytes
                lock.unlock()
                return p
            }
            lock.unlock()
        }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    /// Takes back a buffer from ``allocate(bytes:)``; small ones, and the oldest held ones once the
    /// pool is over capacity, are freed.
    func release(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        guard bytes >= minimumBytes, bytes <= capacityBytes else { pointer.deallocate(); return }
        lock.lock()
        held.append((bytes, pointer))
        heldBytes += bytes
        var evicted = 0
        while heldBytes > capacityBytes {
            heldBytes -= held[evicted].bytes
            evicted += 1
        }
        let freed = held.prefix(evicted).map(\.pointer)
        held.removeFirst(evicted)
        lock.unlock()
        for p in freed { p.deallocate() }
    }
}
