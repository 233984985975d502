// Element-wise arithmetic for code around the layers (metrics, custom losses, weight edits); the
// layers themselves call their C kernels. Shapes must match exactly: there is no broadcasting, so a
// mismatch is a programming error and traps with both shapes, as Array's index checks do.

extension Tensor {
    /// `body` applied element by element to `a` and `b` (same shape), into a new tensor of that shape.
    static func zipped(_ a: Tensor, _ b: Tensor, _ op: String, _ body: (Float, Float) -> Float) -> Tensor {
        precondition(a.shape == b.shape, "Tensor \(op): shapes \(a.shape) and \(b.shape) differ (no broadcasting)")
        var out = Tensor(unfilledShape: a.shape)
        let n = a.count
        out.withUnsafeMutablePointer { o in
            a.withUnsafePointer { x in b.withUnsafePointer { y in for i in 0..<n { o[i] = body(x[i], y[i]) } } }
        }
        return out
    }

    /// `body` applied to every element, into a new tensor of the same shape.
    public func map(_ body: (Float) -> Float) -> Tensor {
        var out = Tensor(unfilledShape: shape)
        let n = count
        out.withUnsafeMutablePointer { o in withUnsafePointer { x in for i in 0..<n { o[i] = body(x[i]) } } }
        return out
    }

    /// Element-wise sum `a[i] + b[i]`; shapes must be equal.
    public static func + (a: Tensor, b: Tensor) -> Tensor { zipped(a, b, "+") { $0 + $1 } }
    /// Element-wise difference `a[i] − b[i]`; shapes must be equal.
    public static func - (a: Tensor, b: Tensor) -> Tensor { zipped(a, b, "-") { $0 - $1 } }
    /// Element-wise (Hadamard) product `a[i] · b[i]`; shapes must be equal.
    public static func * (a: Tensor, b: Tensor) -> Tensor { zipped(a, b, "*") { $0 * $1 } }
    /// Every element times `s`.
    public static func * (s: Float, a: Tensor) -> Tensor { a.map { s * $0 } }
    /// Every element times `s`.
    public static func * (a: Tensor, s: Float) -> Tensor { a.map { $0 * s } }
    /// Every element plus `s`.
    public static func + (a: Tensor, s: Float) -> Tensor { a.map { $0 + s } }
    /// Element-wise `a[i] += b[i]`; shapes must be equal.
    public static func += (a: inout Tensor, b: Tensor) { a = a + b }
    /// Element-wise `a[i] −= b[i]`; shapes must be equal.
    public static func -= (a: inout Tensor, b: Tensor) { a = a - b }

    /// Σ_i self[i], accumulated in Double.
    public func sum() -> Double {
        withUnsafePointer { p in
            var s = 0.0
            for i in 0..<count { s += Double(p[i]) }
            return s
        }
    }

    /// The mean of the elements in Double (NaN for an empty tensor).
    public func mean() -> Double { count == 0 ? .nan : sum() / Double(count) }
}
