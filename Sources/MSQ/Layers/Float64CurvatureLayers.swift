import CKernels

// The float64 R-passes (``HessianPrecision/float64``) of the layers a ResNet is built from: the
// maps of each layer's ``CurvatureModule`` conformance, in double. Convolutions and linear layers
// run on CKernels' float64 convolution; the per-element maps are loops here.

/// `body` on a pointer to `values`, or on nil.
private func withOptionalDoubles<R>(_ values: [Double]?, _ body: (UnsafePointer<Double>?) -> R) -> R {
    guard let values else { return body(nil) }
    return values.withUnsafeBufferPointer { body($0.baseAddress) }
}

/// The R-pass of `y = conv(x, W) + b` in double (a linear layer is the 1×1 case on [N, in, 1, 1]):
/// `Ry = conv(Rx, W) + conv(x, V) + V_b`; backward `g_x = convᵀ(g, W)`,
/// `R g_x = convᵀ(R g, W) + convᵀ(g, V)`, `(Hv)_W += corr(R g, x) + corr(g, Rx)`, `(Hv)_b += Σ R g`.
private func float64ConvPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, shape: msq_conv2d_shape,
                             weight: Parameter, effectiveWeight: Tensor, bias: Parameter?,
                             context: Float64CurvatureContext, inputGradients: Bool) -> Float64RPass {
    var s = shape
    let outShape = [Int(s.n), Int(s.c_out), Int(s.h_out), Int(s.w_out)]
    let w = Float64Tensor(effectiveWeight).scalars
    let b = bias.map { Float64Tensor($0.value).scalars }
    let v = context.tangent(of: weight)?.scalars
    let vb = bias.flatMap { context.tangent(of: $0) }?.scalars
    var y = Float64Tensor(zeros: outShape)
    withOptionalDoubles(b) { msq_conv2d_forward_f64(&y.scalars, x.scalars, w, $0, &s, 0) }
    var ry: Float64Tensor? = nil
    if rx != nil || v != nil || vb != nil {
        var t = Float64Tensor(zeros: outShape)
        if let rx { msq_conv2d_forward_f64(&t.scalars, rx.scalars, w, nil, &s, 1) }
        if let v { msq_conv2d_forward_f64(&t.scalars, x.scalars, v, nil, &s, 1) }
        if let vb { t = perChannel(t, scale: [Double](repeating: 1, count: vb.count), shift: vb) }
        ry = t
    }
    let xShape = x.shape
    return Float64RPass(output: y, tangent: ry) { g, rg in
        var s = shape
        context.accumulateHessianVector(of: weight) { hv in
            msq_conv2d_backward_weight_f64(&hv, rg.scalars, x.scalars, &s)
            if let g, let rx { msq_conv2d_backward_weight_f64(&hv, g.scalars, rx.scalars, &s) }
        }
        if let bias {
            context.accumulateHessianVector(of: bias) { hv in
                let hw = Int(s.h_out * s.w_out), c = Int(s.c_out)
                for n in 0..<Int(s.n) { for ch in 0..<c { for p in 0..<hw { hv[ch] += rg.scalars[(n * c + ch) * hw + p] } } }
            }
        }
        guard inputGradients else { return (nil, nil) }
        var gx: Float64Tensor? = nil
        if let g {
            var t = Float64Tensor(zeros: xShape)
            msq_conv2d_backward_input_f64(&t.scalars, g.scalars, w, &s)
            gx = t
        }
        var rgx = Float64Tensor(zeros: xShape)
        msq_conv2d_backward_input_f64(&rgx.scalars, rg.scalars, w, &s)
        if let g, let v { msq_conv2d_backward_input_f64(&rgx.scalars, g.scalars, v, &s) }
        return (gx, rgx)
    }
}

extension Conv2d: Float64CurvatureModule {
    var float64Unsupported: String? { inputQuantizer == nil ? nil : "its input quantizer has no float64 R-pass" }

    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        float64ConvPass(x, tangent: rx, shape: makeShape(x.shape), weight: weight, effectiveWeight: effectiveWeight, bias: bias,
                               context: context, inputGradients: inputGradients)
    }
}

extension Linear: Float64CurvatureModule {
    var float64Unsupported: String? { inputQuantizer == nil ? nil : "its input quantizer has no float64 R-pass" }

    /// The 1×1 convolution on `[N, in, 1, 1]`, reshaped back to `[N, out]`.
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        LayerKit.require(x.shape.count == 2 && x.shape[1] == inFeatures,
                         "\(layerDescription): expected input [N, \(inFeatures)], got \(x.shape)")
        let image = [x.shape[0], inFeatures, 1, 1]
        var s = msq_conv2d_shape()
        let rc = msq_conv2d_make_shape(&s, LayerKit.c(x.shape[0]), LayerKit.c(inFeatures), 1, 1, LayerKit.c(outFeatures), 1, 1, 1, 0, 1)
        LayerKit.require(rc == 0, "\(layerDescription): invalid input \(x.shape)")
        let pass = float64ConvPass(x.reshaped(image), tangent: rx?.reshaped(image), shape: s, weight: weight,
                                   effectiveWeight: effectiveWeight.reshaped([outFeatures, inFeatures, 1, 1]),
                                   bias: bias, context: context, inputGradients: inputGradients)
        let out = [x.shape[0], outFeatures]
        return Float64RPass(output: pass.output.reshaped(out), tangent: pass.tangent?.reshaped(out)) { g, rg in
            let r = pass.backward(g?.reshaped(pass.output.shape), rg.reshaped(pass.output.shape))
            return (r.gradient?.reshaped(x.shape), r.tangent?.reshaped(x.shape))
        }
    }
}

/// Applies `scale[c]` (and adds `shift[c]` when given) over `[N, C, rest…]`.
private func perChannel(_ t: Float64Tensor, scale: [Double], shift: [Double]? = nil) -> Float64Tensor {
    let (n, c) = (t.shape[0], t.shape[1])
    let hw = t.scalars.count / max(1, n * c)
    var out = t
    for b in 0..<n {
        for ch in 0..<c {
            let base = (b * c + ch) * hw
            for p in 0..<hw { out.scalars[base + p] = t.scalars[base + p] * scale[ch] + (shift?[ch] ?? 0) }
        }
    }
    return out
}

extension BatchNorm2d: Float64CurvatureModule {
    /// Eval mode: `y = a·x + (β − a·μ)`, `a = γ/√(σ² + ε)` per channel (running statistics), so
    /// `Ry = a·Rx`, `g_x = a·g`, `R g_x = a·R g`. γ and β are not probed (HessianVectorProduct probes
    /// conv and linear weights only).
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        LayerKit.require(x.shape.count >= 2 && x.shape[1] == channels,
                         "\(layerDescription): expected input [N, \(channels), …], got \(x.shape)")
        precondition(context.tangent(of: weight) == nil && context.tangent(of: bias) == nil,
                     "\(layerDescription): the float64 R-pass does not probe batch-norm parameters")
        let gamma = Float64Tensor(weight.value).scalars, beta = Float64Tensor(bias.value).scalars
        let mean = Float64Tensor(runningMean.value).scalars, variance = Float64Tensor(runningVar.value).scalars
        let a = (0..<channels).map { gamma[$0] / (variance[$0] + Double(eps)).squareRoot() }
        let shift = (0..<channels).map { beta[$0] - a[$0] * mean[$0] }
        return Float64RPass(output: perChannel(x, scale: a, shift: shift), tangent: rx.map { perChannel($0, scale: a) }) { g, rg in
            guard inputGradients else { return (nil, nil) }
            return (g.map { perChannel($0, scale: a) }, perChannel(rg, scale: a))
        }
    }
}

/// `t` where `mask` is true, 0 elsewhere.
private func masked(_ t: Float64Tensor, _ mask: [Bool]) -> Float64Tensor {
    var out = t
    for i in out.scalars.indices where !mask[i] { out.scalars[i] = 0 }
    return out
}

extension Activation: Float64CurvatureModule {
    var float64Unsupported: String? {
        kind == .relu || kind == .relu6 ? nil : "\(kind.rawValue) is not piecewise linear; only ReLU and ReLU6 have a float64 R-pass"
    }

    /// ReLU (ReLU6): `y = x` where `0 < x` (`< 6`), else 0 (6); tangents and gradients pass where
    /// the slope is 1 (PyTorch's one-sided derivatives at the kinks: 0).
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        let six = kind == .relu6
        let mask = x.scalars.map { $0 > 0 && (!six || $0 < 6) }
        var y = x
        for i in y.scalars.indices { y.scalars[i] = x.scalars[i] > 0 ? (six ? min(x.scalars[i], 6) : x.scalars[i]) : 0 }
        return Float64RPass(output: y, tangent: rx.map { masked($0, mask) }) { g, rg in
            guard inputGradients else { return (nil, nil) }
            return (g.map { masked($0, mask) }, masked(rg, mask))
        }
    }
}

/// The R-pass of a parameter-free map linear in its input, given as the output index each input
/// element feeds with its weight: `y[o] = Σ_{(i, o, c)} c·x[i]`; backward is the transpose.
private func float64LinearMap(_ x: Float64Tensor, tangent rx: Float64Tensor?, outShape: [Int],
                              terms: [(input: Int, output: Int, weight: Double)], inputGradients: Bool) -> Float64RPass {
    func apply(_ t: Float64Tensor) -> Float64Tensor {
        var y = Float64Tensor(zeros: outShape)
        for e in terms { y.scalars[e.output] += e.weight * t.scalars[e.input] }
        return y
    }
    func transpose(_ t: Float64Tensor) -> Float64Tensor {
        var gx = Float64Tensor(zeros: x.shape)
        for e in terms { gx.scalars[e.input] += e.weight * t.scalars[e.output] }
        return gx
    }
    return Float64RPass(output: apply(x), tangent: rx.map(apply)) { g, rg in
        guard inputGradients else { return (nil, nil) }
        return (g.map(transpose), transpose(rg))
    }
}

/// Output geometry of a k×k window with `stride`, `padding` over `[N, C, H, W]`.
private func windowOutput(_ d: [Int], kernel: Int, stride: Int, padding: Int, layer: String) -> (ho: Int, wo: Int) {
    LayerKit.require(d.count == 4 && d[2] + 2 * padding >= kernel && d[3] + 2 * padding >= kernel,
                     "\(layer): invalid geometry for input \(d)")
    return ((d[2] + 2 * padding - kernel) / stride + 1, (d[3] + 2 * padding - kernel) / stride + 1)
}

/// Calls `body(output, inputs)` for every output of a k×k window with `stride`, `padding` over
/// `[N, C, H, W]` (output `[N, C, ho, wo]`): its flat index and its window's input indices in
/// row-major order, padding left out.
private func forEachWindow(_ d: [Int], kernel: Int, stride: Int, padding: Int, ho: Int, wo: Int,
                           _ body: (_ output: Int, _ inputs: [Int]) -> Void) {
    var inputs: [Int] = []
    inputs.reserveCapacity(kernel * kernel)
    for plane in 0..<(d[0] * d[1]) {
        for i in 0..<ho {
            for j in 0..<wo {
                inputs.removeAll(keepingCapacity: true)
                for u in 0..<kernel {
                    let h = i * stride - padding + u
                    guard h >= 0 && h < d[2] else { continue }
                    for t in 0..<kernel {
                        let w = j * stride - padding + t
                        if w >= 0 && w < d[3] { inputs.append((plane * d[2] + h) * d[3] + w) }
                    }
                }
                body((plane * ho + i) * wo + j, inputs)
            }
        }
    }
}

extension MaxPool2d: Float64CurvatureModule {
    /// The first maximal input of each window (padding never wins) carries the output, its tangent
    /// and, backward, its gradients: the window maxima of the double values.
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        let d = x.shape
        let (ho, wo) = windowOutput(d, kernel: kernelSize, stride: stride, padding: padding, layer: layerDescription)
        var terms: [(input: Int, output: Int, weight: Double)] = []
        terms.reserveCapacity(d[0] * d[1] * ho * wo)
        forEachWindow(d, kernel: kernelSize, stride: stride, padding: padding, ho: ho, wo: wo) { output, inputs in
            var best = inputs[0]
            for k in inputs.dropFirst() where x.scalars[k] > x.scalars[best] || (x.scalars[k].isNaN && !x.scalars[best].isNaN) {
                best = k
            }
            terms.append((best, output, 1))
        }
        return float64LinearMap(x, tangent: rx, outShape: [d[0], d[1], ho, wo], terms: terms, inputGradients: inputGradients)
    }
}

extension AvgPool2d: Float64CurvatureModule {
    /// Window sums / k² (padding counted in the divisor).
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        let d = x.shape
        let (ho, wo) = windowOutput(d, kernel: kernelSize, stride: stride, padding: padding, layer: layerDescription)
        let c = 1 / Double(kernelSize * kernelSize)
        var terms: [(input: Int, output: Int, weight: Double)] = []
        forEachWindow(d, kernel: kernelSize, stride: stride, padding: padding, ho: ho, wo: wo) { output, inputs in
            for k in inputs { terms.append((k, output, c)) }
        }
        return float64LinearMap(x, tangent: rx, outShape: [d[0], d[1], ho, wo], terms: terms, inputGradients: inputGradients)
    }
}

extension GlobalAvgPool2d: Float64CurvatureModule {
    /// `[N, C, H, W]` → `[N, C]` means.
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        let d = x.shape
        LayerKit.require(d.count == 4 && d[2] * d[3] > 0, "GlobalAvgPool2d: expected input [N, C, H, W], got \(d)")
        let hw = d[2] * d[3], c = 1 / Double(d[2] * d[3])
        let terms = (0..<x.scalars.count).map { ($0, $0 / hw, c) }
        return float64LinearMap(x, tangent: rx, outShape: [d[0], d[1]], terms: terms, inputGradients: inputGradients)
    }
}

extension Flatten: Float64CurvatureModule {
    /// `[N, rest…]` → `[N, Π rest]`.
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        let d = x.shape
        let out = [d[0], d.dropFirst().reduce(1, *)]
        return Float64RPass(output: x.reshaped(out), tangent: rx?.reshaped(out)) { g, rg in
            inputGradients ? (g?.reshaped(d), rg.reshaped(d)) : (nil, nil)
        }
    }
}

extension ZeroPadShortcut: Float64CurvatureModule {
    /// `y[n, c + before, i, j] = x[n, c, s·i, s·j]`, other channels 0.
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        let d = x.shape
        LayerKit.require(d.count == 4 && d[1] == inChannels, "ZeroPadShortcut: expected input [N, \(inChannels), H, W], got \(d)")
        let (n, h, w) = (d[0], d[2], d[3])
        let (ho, wo) = ((h + stride - 1) / stride, (w + stride - 1) / stride)
        let before = (outChannels - inChannels) / 2
        var terms: [(input: Int, output: Int, weight: Double)] = []
        for b in 0..<n {
            for c in 0..<inChannels {
                for i in 0..<ho {
                    for j in 0..<wo {
                        terms.append((((b * inChannels + c) * h + i * stride) * w + j * stride,
                                      ((b * outChannels + c + before) * ho + i) * wo + j, 1))
                    }
                }
            }
        }
        return float64LinearMap(x, tangent: rx, outShape: [n, outChannels, ho, wo], terms: terms, inputGradients: inputGradients)
    }
}

/// The R-pass of `modules` applied in order; the first gets `inputGradients`, the others must
/// return theirs.
func float64Chain(_ modules: [any Module], _ x: Float64Tensor, tangent rx: Float64Tensor?,
                  context: Float64CurvatureContext, inputGradients: Bool) -> Float64RPass {
    var passes: [Float64RPass] = []
    var (y, ry) = (x, rx)
    for (i, m) in modules.enumerated() {
        let p = float64Child(m).float64RPass(y, tangent: ry, context: context, inputGradients: i == 0 ? inputGradients : true)
        passes.append(p)
        (y, ry) = (p.output, p.tangent)
    }
    return Float64RPass(output: y, tangent: ry) { g, rg in
        var (g, rg): (Float64Tensor?, Float64Tensor?) = (g, rg)
        for p in passes.reversed() {
            guard let t = rg else { return (nil, nil) }
            (g, rg) = p.backward(g, t)
        }
        return (g, rg)
    }
}

/// `post(main(x) + shortcut(x))`, shortcut nil = the identity.
func float64Residual(main: [any Module], shortcut: (any Module)?, post: any Module, _ x: Float64Tensor,
                     tangent rx: Float64Tensor?, context: Float64CurvatureContext, inputGradients: Bool) -> Float64RPass {
    let m = float64Chain(main, x, tangent: rx, context: context, inputGradients: inputGradients)
    let side = shortcut.map { float64Child($0).float64RPass(x, tangent: rx, context: context, inputGradients: inputGradients) }
    let sum = m.output + (side?.output ?? x)
    let rsum = addFloat64(m.tangent, side.map(\.tangent) ?? rx)
    let p = float64Child(post).float64RPass(sum, tangent: rsum, context: context, inputGradients: true)
    return Float64RPass(output: p.output, tangent: p.tangent) { g, rg in
        let (gs, rgs) = p.backward(g, rg)
        guard let rgs else { return (nil, nil) }
        let a = m.backward(gs, rgs)
        let b = side.map { $0.backward(gs, rgs) } ?? (gs, rgs)
        guard inputGradients else { return (nil, nil) }
        return (addFloat64(a.gradient, b.gradient), addFloat64(a.tangent, b.tangent))
    }
}

extension Sequential: Float64CurvatureModule {
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        float64Chain(children.map(\.module), x, tangent: rx, context: context, inputGradients: inputGradients)
    }
}

extension BasicBlock: Float64CurvatureModule {
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        float64Residual(main: [conv1, bn1, act1, conv2, bn2], shortcut: shortcut, post: act2, x, tangent: rx,
                        context: context, inputGradients: inputGradients)
    }
}

extension Bottleneck: Float64CurvatureModule {
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        float64Residual(main: [conv1, bn1, act1, conv2, bn2, act2, conv3, bn3], shortcut: shortcut, post: act3, x,
                        tangent: rx, context: context, inputGradients: inputGradients)
    }
}

extension CIFARResNet: Float64CurvatureModule {
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        body.float64RPass(x, tangent: rx, context: context, inputGradients: inputGradients)
    }
}

extension ImageNetResNet: Float64CurvatureModule {
    func float64RPass(_ x: Float64Tensor, tangent rx: Float64Tensor?, context: Float64CurvatureContext,
                      inputGradients: Bool) -> Float64RPass {
        body.float64RPass(x, tangent: rx, context: context, inputGradients: inputGradients)
    }
}
