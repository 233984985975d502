import Foundation

/// Recycles large tensor buffers of the sizes a training step allocates again on the next step.
///
/// Why: buffers above glibc's mmap threshold (at most 32 MiB) come from fresh `mmap`s, so every
/// step page-faults them in and the kernel zeroes each page (ResNet-18's 51 MiB activations: about
/// 3 % of a step), and freeing returns them with `munmap`. Buffers of at least ``minimumBytes`` are
/// kept here after their tensor dies, keyed by exact byte count, and handed to the next tensor of
/// that size; at most ``capacityBytes`` are held (older ones beyond that are freed), so the pool
/// adds at most that much to a process's memory. Thread-safe.
final class BufferPool: @unchecked Sendable {
    /// The pool every ``TensorStorage`` uses.
    static let shared = BufferPool()

    /// Buffers smaller than this go straight to the allocator (malloc recycles them itself).
    let minimumBytes = 1 << 20
    /// Most bytes held at once.
    let capacityBytes = 512 << 20

    private let lock = NSLock()
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var order: [(bytes: Int, pointer: UnsafeMutableRawPointer)] = [] // oldest first
    private var heldBytes = 0

    /// A 64-byte aligned buffer of `bytes` bytes, recycled when one of that size is free.
    func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        if bytes >= minimumBytes {
            lock.lock()
            if var list = free[bytes], let p = list.popLast() {
                free[bytes] = list.isEmpty ? nil : list
                if let i = order.firstIndex(where: { $0.pointer == p }) { order.remove(at: i) }
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
        var evicted: [UnsafeMutableRawPointer] = []
        lock.lock()
        free[bytes, default: []].append(pointer)
        order.append((bytes, pointer))
        heldBytes += bytes
        while heldBytes > capacityBytes, !order.isEmpty {
            let old = order.removeFirst()
            if var list = free[old.bytes], let i = list.firstIndex(of: old.pointer) {
                list.remove(at: i)
                free[old.bytes] = list.isEmpty ? nil : list
            }
            heldBytes -= old.bytes
            evicted.append(old.pointer)
        }
        lock.unlock()
        for p in evicted { p.deallocate() }
    }

    /// Bytes currently held for reuse.
    var cachedBytes: Int {
        lock.lock(); defer { lock.unlock() }
        return heldBytes
    }
}
