import CKernels

/// Builds a pooling geometry or traps with a message naming the layer.
private func poolShape(_ layer: String, _ d: [Int], kernelSize: Int, stride: Int, padding: Int) -> msq_pool2d_shape {
    LayerKit.require(d.count == 4, "\(layer): expected input [N, C, H, W], got \(d)")
    var s = msq_pool2d_shape()
    let rc = msq_pool2d_make_shape(&s, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2]), LayerKit.c(d[3]),
                                   LayerKit.c(kernelSize), LayerKit.c(stride), LayerKit.c(padding))
    LayerKit.require(rc == 0, "\(layer): invalid geometry for input \(d) (input smaller than the window, or padding > k/2)")
    return s
}

private func outShape(_ s: msq_pool2d_shape) -> [Int] {
    [Int(s.n), Int(s.c), Int(s.h_out), Int(s.w_out)]
}

/// 2-D max pooling over `[N, C, H, W]`: `y[n,c,i,j] = max over the window` (padding never wins).
///
/// Output `[N, C, H', W']` with `H' = (H + 2·padding − k) / stride + 1`. Backward routes each
/// output gradient to the (first) maximal input of its window.
public final class MaxPool2d: Module {
    /// Window size k.
    public let kernelSize: Int
    /// Stride (defaults to the window size, as in PyTorch).
    public let stride: Int
    /// Implicit padding on each side (at most k/2).
    public let padding: Int
    fileprivate var cachedShape = msq_pool2d_shape()
    fileprivate var cachedArgmax: [Int32]?

    /// A max-pooling layer; `stride` nil means `kernelSize`.
    public init(kernelSize: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernelSize = kernelSize
        self.stride = stride ?? kernelSize
        self.padding = padding
    }

    var layerDescription: String { "MaxPool2d(k\(kernelSize), stride \(stride), padding \(padding))" }

    /// Window maxima; caches the argmax indices.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        var s = poolShape(layerDescription, input.shape, kernelSize: kernelSize, stride: stride, padding: padding)
        var y = Tensor(unfilledShape: outShape(s))
        var argmax = [Int32](repeating: 0, count: y.count)
        input.withUnsafePointer { x in
            y.withUnsafeMutablePointer { yp in
                argmax.withUnsafeMutableBufferPointer { a in msq_maxpool2d_forward(yp, a.baseAddress!, x, &s) }
            }
        }
        cachedShape = s
        cachedArgmax = argmax
        return y
    }

    /// `dx[argmax] += dy`.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let argmax = cachedArgmax else {
            fatalError("\(layerDescription): backward called without a preceding forward")
        }
        var s = cachedShape
        LayerKit.require(gradOutput.shape == outShape(s),
                         "\(layerDescription): gradient shape \(gradOutput.shape) does not match output \(outShape(s))")
        cachedArgmax = nil
        var dx = Tensor(shape: [Int(s.n), Int(s.c), Int(s.h_in), Int(s.w_in)])
        gradOutput.withUnsafePointer { dy in
            argmax.withUnsafeBufferPointer { a in
                dx.withUnsafeMutablePointer { dxp in msq_maxpool2d_backward(dxp, dy, a.baseAddress!, &s) }
            }
        }
        return dx
    }

    /// No parameters.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
}

/// 2-D average pooling over `[N, C, H, W]`, padding counted in the divisor (PyTorch's default).
///
/// `y[n,c,i,j] = (1/k²) Σ_window x`; output `[N, C, H', W']` with `H' = (H + 2·padding − k) / stride + 1`.
public final class AvgPool2d: Module {
    /// Window size k.
    public let kernelSize: Int
    /// Stride (defaults to the window size, as in PyTorch).
    public let stride: Int
    /// Implicit zero padding on each side (at most k/2).
    public let padding: Int
    fileprivate var cachedShape: msq_pool2d_shape?

    /// An average-pooling layer; `stride` nil means `kernelSize`.
    public init(kernelSize: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernelSize = kernelSize
        self.stride = stride ?? kernelSize
        self.padding = padding
    }

    var layerDescription: String { "AvgPool2d(k\(kernelSize), stride \(stride), padding \(padding))" }

    /// Window means.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        var s = poolShape(layerDescription, input.shape, kernelSize: kernelSize, stride: stride, padding: padding)
        var y = Tensor(unfilledShape: outShape(s))
        input.withUnsafePointer { x in
            y.withUnsafeMutablePointer { yp in msq_avgpool2d_forward(yp, x, &s) }
        }
        cachedShape = s
        return y
    }

    /// `dx[window] += dy / k²`.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard var s = cachedShape else {
            fatalError("\(layerDescription): backward called without a preceding forward")
        }
        LayerKit.require(gradOutput.shape == outShape(s),
                         "\(layerDescription): gradient shape \(gradOutput.shape) does not match output \(outShape(s))")
        cachedShape = nil
        var dx = Tensor(shape: [Int(s.n), Int(s.c), Int(s.h_in), Int(s.w_in)])
        gradOutput.withUnsafePointer { dy in
            dx.withUnsafeMutablePointer { dxp in msq_avgpool2d_backward(dxp, dy, &s) }
        }
        return dx
    }

    /// No parameters.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
}

/// Global average pooling: `[N, C, H, W]` → `[N, C]`, `y[n,c] = (1/HW) Σ_hw x[n,c,h,w]`.
public final class GlobalAvgPool2d: Module {
    fileprivate var cachedInputShape: [Int]?

    /// A global average-pooling layer.
    public init() {}

    /// Per-channel spatial means, shape `[N, C]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count == 4 && d[2] * d[3] > 0, "GlobalAvgPool2d: expected input [N, C, H, W], got \(d)")
        var y = Tensor(unfilledShape: [d[0], d[1]])
        input.withUnsafePointer { x in
            y.withUnsafeMutablePointer { yp in
                msq_global_avgpool_forward(yp, x, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2] * d[3]))
            }
        }
        cachedInputShape = d
        return y
    }

    /// `dx[n,c,h,w] = dy[n,c] / HW`.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let d = cachedInputShape else {
            fatalError("GlobalAvgPool2d: backward called without a preceding forward")
        }
        LayerKit.require(gradOutput.shape == [d[0], d[1]],
                         "GlobalAvgPool2d: gradient shape \(gradOutput.shape) does not match output \([d[0], d[1]])")
        cachedInputShape = nil
        var dx = Tensor(shape: d)
        gradOutput.withUnsafePointer { dy in
            dx.withUnsafeMutablePointer { dxp in
                msq_global_avgpool_backward(dxp, dy, LayerKit.c(d[0]), LayerKit.c(d[1]), LayerKit.c(d[2] * d[3]))
            }
        }
        return dx
    }

    /// No parameters.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
}

/// Flattens every dimension after the first: `[N, d1, d2, …]` → `[N, d1·d2·…]` (no copy).
public final class Flatten: Module {
    fileprivate var cachedInputShape: [Int]?

    /// A flatten layer.
    public init() {}

    /// The input reshaped to `[N, rest]`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let d = input.shape
        LayerKit.require(d.count >= 1, "Flatten: expected input with a batch dimension, got \(d)")
        cachedInputShape = d
        return input.reshaped([d[0], d.dropFirst().reduce(1, *)])
    }

    /// The gradient reshaped back to the input's shape.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let d = cachedInputShape else {
            fatalError("Flatten: backward called without a preceding forward")
        }
        LayerKit.require(gradOutput.count == d.reduce(1, *) && gradOutput.shape.first == d[0],
                         "Flatten: gradient shape \(gradOutput.shape) does not match output for input \(d)")
        cachedInputShape = nil
        return gradOutput.reshaped(d)
    }

    /// No parameters.
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {}
}

extension MaxPool2d: CurvatureModule {
    /// `y = maxpool(x)` and `Ry = Rx` at the argmax (`msq_maxpool2d_rforward`).
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        let y = forward(input, mode: .eval)
        guard let tangent else { return (y, nil) }
        LayerKit.require(tangent.shape == input.shape,
                         "\(layerDescription): input tangent shape \(tangent.shape), expected \(input.shape)")
        var s = cachedShape
        var ry = Tensor(unfilledShape: y.shape)
        tangent.withUnsafePointer { rx in
            (cachedArgmax ?? []).withUnsafeBufferPointer { a in
                ry.withUnsafeMutablePointer { rp in msq_maxpool2d_rforward(rp, rx, a.baseAddress!, &s) }
            }
        }
        return (y, ry)
    }

    /// Both gradients scattered to the argmax: max pooling is linear once the argmax is fixed.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let argmax = cachedArgmax
        let rgx = backward(tangent)
        cachedArgmax = argmax
        let gx = gradient.map { backward($0) }
        cachedArgmax = nil
        return (gx, rgx)
    }
}

extension AvgPool2d: CurvatureModule {
    /// `y = avgpool(x)`, `Ry = avgpool(Rx)`.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        linearRForward(input, tangent: tangent) { forward($0, mode: .eval) }
    }

    /// Both gradients through the (linear) backward.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let cache = cachedShape
        return linearRBackward(gradient, tangent: tangent, backward: backward) { cachedShape = cache }
    }
}

extension GlobalAvgPool2d: CurvatureModule {
    /// `y = mean_hw(x)`, `Ry = mean_hw(Rx)`.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        linearRForward(input, tangent: tangent) { forward($0, mode: .eval) }
    }

    /// Both gradients through the (linear) backward.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let cache = cachedInputShape
        return linearRBackward(gradient, tangent: tangent, backward: backward) { cachedInputShape = cache }
    }
}

extension Flatten: CurvatureModule {
    /// Reshapes the input and its tangent.
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        linearRForward(input, tangent: tangent) { forward($0, mode: .eval) }
    }

    /// Reshapes both gradients back.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        let cache = cachedInputShape
        return linearRBackward(gradient, tangent: tangent, backward: backward) { cachedInputShape = cache }
    }
}
