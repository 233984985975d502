import CKernels

/// Small helpers shared by the layer implementations (internal; namespaced to avoid clashes).
enum LayerKit {
    /// `precondition` that prints its message in release builds too (under -O, `precondition`
    /// traps without the message). For programming errors such as input shape mismatches.
    @inline(__always)
    static func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                        file: StaticString = #file, line: UInt = #line) {
        if !condition() { fatalError(message(), file: file, line: line) }
    }

    /// `dst += src`, element by element (shapes must hold the same number of elements).
    static func accumulate(_ dst: inout Tensor, _ src: Tensor) {
        require(dst.count == src.count,
                "LayerKit.accumulate: \(src.shape) does not match \(dst.shape)")
        let n = src.count
        src.withUnsafePointer { s in
            dst.withUnsafeMutablePointer { d in msq_accumulate(d, s, n) }
        }
    }

    /// `a + b` (same shape).
    static func add(_ a: Tensor, _ b: Tensor, context: @autoclosure () -> String) -> Tensor {
        require(a.shape == b.shape, "\(context()): cannot add \(a.shape) and \(b.shape)")
        var y = Tensor(unfilledShape: a.shape)
        let n = a.count
        a.withUnsafePointer { pa in
            b.withUnsafePointer { pb in
                y.withUnsafeMutablePointer { py in msq_add_forward(py, pa, pb, n) }
            }
        }
        return y
    }

    /// Calls `body` with a read pointer to `tensor`, or nil when there is none.
    static func withOptionalPointer<R>(_ tensor: Tensor?, _ body: (UnsafePointer<Float>?) -> R) -> R {
        guard let tensor else { return body(nil) }
        return tensor.withUnsafePointer { body($0) }
    }

    /// Calls `body` with a write pointer to the gradient of `parameter`, or nil when there is
    /// no such parameter or it is not trainable (then it has no gradient buffer).
    static func withGradPointer<R>(_ parameter: Parameter?, _ body: (UnsafeMutablePointer<Float>?) -> R) -> R {
        guard let parameter, parameter.trainable else { return body(nil) }
        return parameter.grad.withUnsafeMutablePointer { body($0) }
    }

    /// Converts a dimension to the C kernels' `int`, trapping on overflow.
    @inline(__always) static func c(_ value: Int) -> Int32 {
        require(value >= Int(Int32.min) && value <= Int(Int32.max), "dimension \(value) does not fit a C int")
        return Int32(value)
    }
}
