import CKernels

/// Contiguous, 64-byte aligned Float storage shared by ``Tensor`` values.
///
/// A reference type so that large buffers are never copied by accident; ``Tensor`` adds
/// copy-on-write value semantics on top.
public final class TensorStorage: @unchecked Sendable {
    /// Number of Float elements.
    public let count: Int
    /// Start of the buffer; valid for `count` elements for the storage's lifetime.
    public let pointer: UnsafeMutablePointer<Float>

    /// Allocates `count` elements, zero-filled.
    public convenience init(count: Int) {
        self.init(count: count, filledWith: 0)
    }

    /// Allocates `count` elements, each equal to `value` (filled in parallel for large counts).
    convenience init(count: Int, filledWith value: Float) {
        self.init(unfilledCount: count)
        msq_fill(pointer, value, max(count, 1))
    }

    /// Allocates `count` elements without writing them, for outputs a kernel overwrites in full.
    init(unfilledCount count: Int) {
        precondition(count >= 0, "TensorStorage: negative element count \(count)")
        self.count = count
        let raw = BufferPool.shared.allocate(bytes: max(count, 1) * MemoryLayout<Float>.stride)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    deinit { BufferPool.shared.release(UnsafeMutableRawPointer(pointer), bytes: max(count, 1) * MemoryLayout<Float>.stride) }
}

/// A dense, row-major Float32 tensor with value semantics (copy on write).
///
/// Activations are NCHW, convolution weights OIHW, linear weights `[out, in]`.
public struct Tensor: @unchecked Sendable {
    /// Extent of each dimension, outermost first.
    public private(set) var shape: [Int]
    @usableFromInline var storage: TensorStorage

    /// Number of elements: the product of `shape`.
    @inlinable public var count: Int { storage.count }

    /// A tensor of the given shape with every element equal to `value`.
    public init(shape: [Int], repeating value: Float = 0) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in \(shape)")
        self.shape = shape
        storage = TensorStorage(count: shape.reduce(1, *), filledWith: value)
    }

    /// A tensor whose elements are not yet written: only for storage written in full right away (a
    /// forward kernel's output, a copy), never for a gradient a backward kernel accumulates into.
    init(unfilledShape shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in \(shape)")
        self.shape = shape
        storage = TensorStorage(unfilledCount: shape.reduce(1, *))
    }

    /// A tensor of the given shape holding `scalars` in row-major order.
    public init(shape: [Int], scalars: [Float]) {
        precondition(shape.reduce(1, *) == scalars.count,
                     "Tensor: \(scalars.count) scalars do not fill shape \(shape)")
        self.init(unfilledShape: shape)
        scalars.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { storage.pointer.update(from: base, count: src.count) }
        }
    }

    /// All zeros.
    public static func zeros(_ shape: [Int]) -> Tensor { Tensor(shape: shape) }

    /// The elements in row-major order.
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: storage.pointer, count: count)) }

    /// Read-only pointer to the elements, valid for the duration of `body`.
    @inlinable
    public func withUnsafePointer<R>(_ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafePointer(storage.pointer))
    }

    /// Mutable pointer to the elements, copying the storage first if it is shared.
    @inlinable
    public mutating func withUnsafeMutablePointer<R>(_ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        if !isKnownUniquelyReferenced(&storage) { makeUnique() }
        return try body(storage.pointer)
    }

    @usableFromInline mutating func makeUnique() {
        let copy = TensorStorage(unfilledCount: storage.count)
        copy.pointer.update(from: storage.pointer, count: storage.count)
        storage = copy
    }

    /// The element at a flat row-major index.
    @inlinable public subscript(flat index: Int) -> Float {
        get {
            precondition(index >= 0 && index < count, "Tensor: flat index \(index) out of range 0..<\(count)")
            return storage.pointer[index]
        }
        set {
            precondition(index >= 0 && index < count, "Tensor: flat index \(index) out of range 0..<\(count)")
            if !isKnownUniquelyReferenced(&storage) { makeUnique() }
            storage.pointer[index] = newValue
        }
    }

    /// The same elements viewed with another shape of equal element count (no copy).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "Tensor: cannot reshape \(shape) to \(newShape)")
        var t = self
        t.shape = newShape
        return t
    }

    /// Sets every element to zero in place.
    public mutating func zero() {
        let n = count
        withUnsafeMutablePointer { msq_fill($0, 0, n) }
    }

    /// Sum of squares of the elements, accumulated in Double.
    public func squaredNorm() -> Double {
        withUnsafePointer { p in
            var s = 0.0
            for i in 0..<count { s += Double(p[i]) * Double(p[i]) }
            return s
        }
    }

    /// Σ_i self[i]·other[i] in double, the same bits at every thread count (`msq_dot`). The two
    /// tensors must have the same number of elements (shapes may differ).
    public func dot(_ other: Tensor) -> Double {
        precondition(count == other.count, "Tensor.dot: \(count) elements against \(other.count)")
        let n = count
        return withUnsafePointer { a in other.withUnsafePointer { b in msq_dot(a, b, n) } }
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = scalars.prefix(8).map { String($0) }.joined(separator: ", ")
        return "Tensor(shape: \(shape), [\(head)\(count > 8 ? ", …" : "")])"
    }
}
