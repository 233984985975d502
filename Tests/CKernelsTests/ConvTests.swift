import CKernels
import Testing

// conv2d: shape validation, the reference against hand-computed outputs, fast vs reference
// (forward, backward input, backward weight/bias) over odd geometries at 1 and 2 threads,
// accumulation, adjointness of the backward kernels, and determinism.

/// Fast-vs-reference tolerances: max |fast − ref| relative to max |ref|. The reference
/// accumulates in double; the fast path is float im2col + SGEMM, so the error is float
/// rounding over at most a few thousand terms (backward weight sums over n·h_out·w_out).
private let convForwardRelTolerance: Float = 1e-5
private let convBackwardInputRelTolerance: Float = 1e-5
private let convBackwardWeightRelTolerance: Float = 2e-5
/// Hand-computed outputs are small integers or halves: exact in float.
private let convHandTolerance: Float = 0
/// Adjoint identities in double: |lhs − rhs| relative to Σ|terms|. The reference kernels
/// round only once per output element; the fast ones round along each float dot product.
private let convRefAdjointRelTolerance: Double = 1e-6
private let convFastAdjointRelTolerance: Double = 1e-5
/// Calling a backward kernel twice must add twice the single-call increment, up to the
/// float rounding of each addition (relative to the increment's max magnitude).
private let convAccumulateRelTolerance: Float = 1e-5

private typealias Kit = KernelTestKit

/// One convolution geometry. `strideW`/`padW`, when set, override the width-wise values that
/// msq_conv2d_make_shape (square stride and pad only) fills in, to exercise asymmetric shapes.
struct ConvTestCase: Sendable, CustomStringConvertible {
    let n, cIn, h, w, cOut, kh, kw, stride, pad, groups: Int
    var strideW: Int? = nil
    var padW: Int? = nil

    init(n: Int, cIn: Int, h: Int, w: Int, cOut: Int, k: Int, stride: Int, pad: Int, groups: Int,
         kw: Int? = nil, strideW: Int? = nil, padW: Int? = nil) {
        self.n = n; self.cIn = cIn; self.h = h; self.w = w; self.cOut = cOut
        self.kh = k; self.kw = kw ?? k; self.stride = stride; self.pad = pad; self.groups = groups
        self.strideW = strideW; self.padW = padW
    }

    var description: String {
        var d = "x[\(n),\(cIn),\(h),\(w)] -> \(cOut) k=\(kh)x\(kw) s=\(stride) p=\(pad) g=\(groups)"
        if let sw = strideW { d += " sw=\(sw)" }
        if let pw = padW { d += " pw=\(pw)" }
        return d
    }

    func shape() -> msq_conv2d_shape {
        var s = msq_conv2d_shape()
        let rc = msq_conv2d_make_shape(&s, Int32(n), Int32(cIn), Int32(h), Int32(w), Int32(cOut),
                                       Int32(kh), Int32(kw), Int32(stride), Int32(pad), Int32(groups))
        precondition(rc == 0, "invalid test geometry \(self)")
        if strideW != nil || padW != nil {
            s.stride_w = Int32(strideW ?? stride)
            s.pad_w = Int32(padW ?? pad)
            s.w_out = (s.w_in + 2 * s.pad_w - s.kw) / s.stride_w + 1
            precondition(s.w_out > 0, "invalid test geometry \(self)")
        }
        return s
    }
}

private extension msq_conv2d_shape {
    var xCount: Int { Int(n) * Int(c_in) * Int(h_in) * Int(w_in) }
    var yCount: Int { Int(n) * Int(c_out) * Int(h_out) * Int(w_out) }
    var wCount: Int { Int(c_out) * Int(c_in / groups) * Int(kh) * Int(kw) }
}

private let convCases: [ConvTestCase] = [
    .init(n: 1, cIn: 1, h: 1, w: 1, cOut: 1, k: 1, stride: 1, pad: 0, groups: 1),
    .init(n: 3, cIn: 3, h: 7, w: 5, cOut: 17, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 1, cIn: 4, h: 17, w: 9, cOut: 6, k: 3, stride: 2, pad: 1, groups: 2),
    .init(n: 3, cIn: 6, h: 9, w: 7, cOut: 6, k: 3, stride: 1, pad: 1, groups: 6),   // depthwise
    .init(n: 3, cIn: 6, h: 9, w: 7, cOut: 12, k: 3, stride: 2, pad: 2, groups: 6),  // depth multiplier 2
    .init(n: 1, cIn: 3, h: 33, w: 17, cOut: 7, k: 7, stride: 2, pad: 3, groups: 1), // 7x7 stem
    .init(n: 3, cIn: 5, h: 7, w: 11, cOut: 3, k: 5, stride: 1, pad: 2, groups: 1),
    .init(n: 3, cIn: 16, h: 8, w: 8, cOut: 33, k: 1, stride: 1, pad: 0, groups: 1), // 1x1, no im2col
    .init(n: 3, cIn: 2, h: 1, w: 7, cOut: 4, k: 1, stride: 1, pad: 0, groups: 2),   // 1x1 grouped, no im2col
    .init(n: 1, cIn: 9, h: 7, w: 5, cOut: 6, k: 1, stride: 2, pad: 0, groups: 3),   // 1x1 strided
    .init(n: 3, cIn: 4, h: 5, w: 3, cOut: 4, k: 1, stride: 1, pad: 1, groups: 2),   // 1x1 padded
    .init(n: 1, cIn: 2, h: 3, w: 3, cOut: 1, k: 3, stride: 1, pad: 3, groups: 1),   // pad = k: all-padding rows
    .init(n: 3, cIn: 3, h: 17, w: 33, cOut: 8, k: 3, stride: 2, pad: 0, groups: 1),
    .init(n: 1, cIn: 8, h: 4, w: 6, cOut: 8, k: 5, stride: 2, pad: 3, groups: 4),
    .init(n: 1, cIn: 3, h: 5, w: 5, cOut: 3, k: 5, stride: 1, pad: 0, groups: 3),   // 1x1 output, depthwise
    .init(n: 3, cIn: 33, h: 3, w: 7, cOut: 33, k: 7, stride: 1, pad: 3, groups: 33),
    .init(n: 3, cIn: 4, h: 7, w: 9, cOut: 5, k: 3, stride: 1, pad: 1, groups: 1, kw: 5),                  // 3x5 kernel
    .init(n: 3, cIn: 6, h: 9, w: 17, cOut: 9, k: 3, stride: 1, pad: 0, groups: 3, strideW: 2, padW: 2),   // asymmetric
    .init(n: 3, cIn: 16, h: 8, w: 8, cOut: 32, k: 3, stride: 2, pad: 1, groups: 1), // ResNet downsample
    // Planes big enough that the fast path cuts each image into several bands of rows.
    .init(n: 3, cIn: 16, h: 33, w: 17, cOut: 8, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 3, cIn: 16, h: 33, w: 33, cOut: 16, k: 3, stride: 2, pad: 1, groups: 2),
    .init(n: 1, cIn: 64, h: 33, w: 17, cOut: 7, k: 1, stride: 1, pad: 0, groups: 1),  // 1x1, no im2col, banded
    // Many small images: bands that hold several whole images.
    .init(n: 17, cIn: 8, h: 5, w: 7, cOut: 9, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 17, cIn: 4, h: 7, w: 5, cOut: 4, k: 1, stride: 1, pad: 0, groups: 1),   // 1x1 via multi-image im2col
    // Expanding 1x1 with one image per band: backward_input takes col2im on a "direct" geometry.
    .init(n: 2, cIn: 2, h: 6, w: 6, cOut: 8, k: 1, stride: 1, pad: 0, groups: 1),
    .init(n: 7, cIn: 6, h: 9, w: 19, cOut: 3, k: 3, stride: 2, pad: 1, groups: 3),
    // Deep layers (kdim * MSQ_CONV_MIN_COLS floats > 256 KiB): bands sized by the column minimum,
    // several whole images per band, then rows of one big image.
    .init(n: 9, cIn: 33, h: 5, w: 7, cOut: 17, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 1, cIn: 33, h: 33, w: 31, cOut: 5, k: 3, stride: 2, pad: 1, groups: 1),
    // Winograd F(2x2, 3x3) shapes (3x3, stride 1, >= 64 channels, outputs >= 16 wide), forward and
    // (through the transposed conv) backward input; odd edges and padding 2 (transposed: 0).
    .init(n: 2, cIn: 64, h: 5, w: 17, cOut: 65, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 1, cIn: 64, h: 7, w: 18, cOut: 64, k: 3, stride: 1, pad: 2, groups: 1),
    // Direct 3x3 shapes (stride 1, padding 1, <= 32 channels): forward, backward weight and,
    // through the transposed conv, backward input; channels not a multiple of 4, short last groups.
    .init(n: 5, cIn: 7, h: 9, w: 13, cOut: 18, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 5, cIn: 32, h: 32, w: 32, cOut: 31, k: 3, stride: 1, pad: 1, groups: 1),
    // Interleaved Winograd (3x3 stride 1, >= 8 input channels, batch filling 3/4 of its groups of
    // eight): forward, backward weight and, through the transposed conv, backward input; narrow
    // planes, padding 0-2.
    .init(n: 8, cIn: 9, h: 7, w: 13, cOut: 10, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 6, cIn: 16, h: 5, w: 4, cOut: 8, k: 3, stride: 1, pad: 2, groups: 1),
    .init(n: 16, cIn: 12, h: 6, w: 9, cOut: 13, k: 3, stride: 1, pad: 0, groups: 1),
    .init(n: 8, cIn: 17, h: 5, w: 6, cOut: 18, k: 3, stride: 1, pad: 1, groups: 1),
    // Wide mode (at 2 threads: fewer output columns per thread than output channels): shared
    // column matrix, GEMMs split by channel rows; stride 1 and 2 (col2im), and with Winograd.
    .init(n: 2, cIn: 20, h: 5, w: 5, cOut: 70, k: 3, stride: 1, pad: 1, groups: 1),
    .init(n: 1, cIn: 24, h: 9, w: 7, cOut: 40, k: 3, stride: 2, pad: 1, groups: 1),
    .init(n: 1, cIn: 64, h: 3, w: 16, cOut: 128, k: 3, stride: 1, pad: 1, groups: 1),
    // Stride 2 over split phase rows (kernels >= 3 wide): rows of exactly 8 (ResNet-20's 32->64
    // layer), 8 + 8 + an overlapped tail, 4..7, under 4; padding 0 and wider than the kernel's
    // half; a plane too wide for the phase buffers (the gathering path).
    .init(n: 5, cIn: 3, h: 16, w: 16, cOut: 4, k: 3, stride: 2, pad: 1, groups: 1),
    .init(n: 2, cIn: 2, h: 9, w: 37, cOut: 3, k: 7, stride: 2, pad: 3, groups: 1),
    .init(n: 2, cIn: 3, h: 11, w: 13, cOut: 2, k: 5, stride: 2, pad: 0, groups: 1),
    .init(n: 2, cIn: 2, h: 7, w: 5, cOut: 3, k: 3, stride: 2, pad: 3, groups: 1),
    .init(n: 1, cIn: 1, h: 3, w: 2801, cOut: 2, k: 3, stride: 2, pad: 1, groups: 1),
    // 1x1 stride 2 (ResNet-18's shortcuts): gathered rows of 7, 14 and 5 (overlapped 4-wide tails).
    .init(n: 2, cIn: 4, h: 14, w: 14, cOut: 3, k: 1, stride: 2, pad: 0, groups: 1),
    .init(n: 2, cIn: 4, h: 5, w: 28, cOut: 3, k: 1, stride: 2, pad: 0, groups: 1),
    .init(n: 2, cIn: 4, h: 9, w: 9, cOut: 3, k: 1, stride: 2, pad: 0, groups: 1),
]

/// Random inputs for one case; dx/dw/db start nonzero so accumulation is exercised.
private struct ConvTestData {
    let s: msq_conv2d_shape
    let x, w, bias, dy, dx0, dw0, db0: [Float]

    init(_ t: ConvTestCase, seed: UInt64 = 1) {
        s = t.shape()
        var rng = Kit.Xorshift(seed: seed &+ UInt64(t.n * 1_000_003 + t.cIn * 10_007 + t.h * 101 + t.w * 13 + t.kh * 7 + t.groups))
        x = rng.floats(s.xCount); w = rng.floats(s.wCount); bias = rng.floats(Int(s.c_out))
        dy = rng.floats(s.yCount)
        dx0 = rng.floats(s.xCount).map { $0 * 0.5 }
        dw0 = rng.floats(s.wCount).map { $0 * 0.5 }
        db0 = rng.floats(Int(s.c_out)).map { $0 * 0.5 }
    }
}

/// Workspace choice for the fast kernels: none (kernel allocates) or caller-provided.
private func withWorkspace<T>(_ provided: Bool, _ s: msq_conv2d_shape, _ body: (UnsafeMutableRawPointer?) -> T) -> T {
    guard provided else { return body(nil) }
    var s = s
    let bytes = msq_conv2d_workspace_size(&s)
    let ws = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
    defer { ws.deallocate() }
    return body(ws)
}

private func convForward(fast: Bool, _ d: ConvTestData, x: [Float]? = nil, w: [Float]? = nil,
                         bias: Bool, workspace: Bool = false) -> [Float] {
    var s = d.s
    var y = [Float](repeating: .nan, count: s.yCount) // overwritten, never read
    let xs = x ?? d.x, ws = w ?? d.w
    withWorkspace(workspace && fast, s) { scratch in
        y.withUnsafeMutableBufferPointer { yp in
            xs.withUnsafeBufferPointer { xp in
                ws.withUnsafeBufferPointer { wp in
                    d.bias.withUnsafeBufferPointer { bp in
                        let f = fast ? msq_conv2d_forward : msq_conv2d_forward_ref
                        f(yp.baseAddress, xp.baseAddress, wp.baseAddress, bias ? bp.baseAddress : nil, &s, scratch)
                    }
                }
            }
        }
    }
    return y
}

private func convBackwardInput(fast: Bool, _ d: ConvTestData, dx0: [Float]? = nil, dy: [Float]? = nil,
                               workspace: Bool = false, times: Int = 1) -> [Float] {
    var s = d.s
    var dx = dx0 ?? d.dx0
    let dys = dy ?? d.dy
    withWorkspace(workspace && fast, s) { scratch in
        dx.withUnsafeMutableBufferPointer { dxp in
            dys.withUnsafeBufferPointer { dyp in
                d.w.withUnsafeBufferPointer { wp in
                    let f = fast ? msq_conv2d_backward_input : msq_conv2d_backward_input_ref
                    for _ in 0..<times { f(dxp.baseAddress, dyp.baseAddress, wp.baseAddress, &s, scratch) }
                }
            }
        }
    }
    return dx
}

private func convBackwardWeight(fast: Bool, _ d: ConvTestData, dw0: [Float]? = nil, db0: [Float]? = nil,
                                dy: [Float]? = nil, withBias: Bool, workspace: Bool = false,
                                times: Int = 1) -> (dw: [Float], db: [Float]) {
    var s = d.s
    var dw = dw0 ?? d.dw0, db = db0 ?? d.db0
    let dys = dy ?? d.dy
    withWorkspace(workspace && fast, s) { scratch in
        dw.withUnsafeMutableBufferPointer { dwp in
            db.withUnsafeMutableBufferPointer { dbp in
                dys.withUnsafeBufferPointer { dyp in
                    d.x.withUnsafeBufferPointer { xp in
                        let f = fast ? msq_conv2d_backward_weight : msq_conv2d_backward_weight_ref
                        for _ in 0..<times {
                            f(dwp.baseAddress, withBias ? dbp.baseAddress : nil, dyp.baseAddress, xp.baseAddress, &s, scratch)
                        }
                    }
                }
            }
        }
    }
    return (dw, db)
}

@Suite("conv2d kernels")
struct ConvTests {
    // MARK: shape

    @Test("make_shape fills every field")
    func makeShapeFields() {
        var s = msq_conv2d_shape()
        #expect(msq_conv2d_make_shape(&s, 3, 8, 17, 9, 12, 3, 5, 2, 1, 4) == 0)
        #expect(s.n == 3 && s.c_in == 8 && s.h_in == 17 && s.w_in == 9 && s.c_out == 12)
        #expect(s.kh == 3 && s.kw == 5 && s.stride_h == 2 && s.stride_w == 2 && s.pad_h == 1 && s.pad_w == 1)
        #expect(s.groups == 4)
        #expect(s.h_out == (17 + 2 - 3) / 2 + 1 && s.w_out == (9 + 2 - 5) / 2 + 1)
    }

    @Test("make_shape rejects bad geometry")
    func makeShapeRejects() {
        // (n, c_in, h, w, c_out, kh, kw, stride, pad, groups)
        let bad: [(Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32, Int32)] = [
            (0, 3, 8, 8, 4, 3, 3, 1, 1, 1),   // empty batch
            (1, 0, 8, 8, 4, 3, 3, 1, 1, 1),   // no input channels
            (1, 3, 0, 8, 4, 3, 3, 1, 1, 1),   // empty height
            (1, 3, 8, -1, 4, 3, 3, 1, 1, 1),  // negative width
            (1, 3, 8, 8, 0, 3, 3, 1, 1, 1),   // no output channels
            (1, 3, 8, 8, 4, 0, 3, 1, 1, 1),   // empty kernel
            (1, 3, 8, 8, 4, 3, 3, 0, 1, 1),   // zero stride
            (1, 3, 8, 8, 4, 3, 3, 1, -1, 1),  // negative padding
            (1, 3, 8, 8, 4, 3, 3, 1, 1, 0),   // zero groups
            (1, 3, 8, 8, 4, 3, 3, 1, 1, 2),   // c_in not divisible by groups
            (1, 4, 8, 8, 6, 3, 3, 1, 1, 4),   // c_out not divisible by groups
            (1, 3, 4, 8, 4, 7, 3, 1, 1, 1),   // kernel taller than padded input: empty output
            (1, 3, 8, 2, 4, 3, 5, 1, 1, 1),   // kernel wider than padded input
        ]
        for b in bad {
            var s = msq_conv2d_shape()
            #expect(msq_conv2d_make_shape(&s, b.0, b.1, b.2, b.3, b.4, b.5, b.6, b.7, b.8, b.9) == -1, "\(b)")
        }
        // Boundary: kernel exactly the padded input size gives a 1x1 output.
        var s = msq_conv2d_shape()
        #expect(msq_conv2d_make_shape(&s, 1, 3, 4, 4, 4, 6, 6, 1, 1, 1) == 0)
        #expect(s.h_out == 1 && s.w_out == 1)
    }

    // MARK: hand-computed

    @Test("reference matches hand-computed outputs")
    func handComputed() {
        // x = [[1 2 3] [4 5 6] [7 8 9]], w = [[1 2] [3 4]].
        let x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9], w: [Float] = [1, 2, 3, 4]
        func run(_ t: ConvTestCase, _ x: [Float], _ w: [Float], _ bias: [Float]?, fast: Bool) -> [Float] {
            var s = t.shape()
            var y = [Float](repeating: .nan, count: s.yCount)
            y.withUnsafeMutableBufferPointer { yp in
                (bias ?? [0]).withUnsafeBufferPointer { bp in
                    (fast ? msq_conv2d_forward : msq_conv2d_forward_ref)(yp.baseAddress, x, w, bias == nil ? nil : bp.baseAddress, &s, nil)
                }
            }
            return y
        }
        for fast in [false, true] {
            // Valid, stride 1: y[i,j] = Σ x[i+a, j+b] w[a,b]; plus bias 0.5.
            let valid = run(.init(n: 1, cIn: 1, h: 3, w: 3, cOut: 1, k: 2, stride: 1, pad: 0, groups: 1), x, w, [0.5], fast: fast)
            #expect(zip(valid, [37.5, 47.5, 67.5, 77.5]).allSatisfy { abs($0 - $1) <= convHandTolerance }, "fast=\(fast) \(valid)")
            // Pad 1, stride 2: windows start at (-1,-1), (-1,1), (1,-1), (1,1).
            //   y00 = 1*4 = 4; y01 = 2*3 + 3*4 = 18; y10 = 4*2 + 7*4 = 36; y11 = 5+12+24+36 = 77.
            let strided = run(.init(n: 1, cIn: 1, h: 3, w: 3, cOut: 1, k: 2, stride: 2, pad: 1, groups: 1), x, w, nil, fast: fast)
            #expect(zip(strided, [4, 18, 36, 77]).allSatisfy { abs($0 - $1) <= convHandTolerance }, "fast=\(fast) \(strided)")
            // Two groups of one channel, 1x1 weights 2 and -3: each output channel sees only its own input.
            let x2: [Float] = [1, 2, 3, 4, 10, 20, 30, 40]
            let grouped = run(.init(n: 1, cIn: 2, h: 2, w: 2, cOut: 2, k: 1, stride: 1, pad: 0, groups: 2), x2, [2, -3], nil, fast: fast)
            #expect(zip(grouped, [2, 4, 6, 8, -30, -60, -90, -120]).allSatisfy { abs($0 - $1) <= convHandTolerance }, "fast=\(fast) \(grouped)")
            // Two input channels summed by one 1x1 filter [1, 1], batch of 2.
            let x3: [Float] = [1, 2, 3, 4, 10, 20, 30, 40, -1, -2, -3, -4, 5, 5, 5, 5]
            let summed = run(.init(n: 2, cIn: 2, h: 2, w: 2, cOut: 1, k: 1, stride: 1, pad: 0, groups: 1), x3, [1, 1], [-1], fast: fast)
            #expect(zip(summed, [10, 21, 32, 43, 3, 2, 1, 0]).allSatisfy { abs($0 - $1) <= convHandTolerance }, "fast=\(fast) \(summed)")
        }
        // Backward by hand on the valid 2x2 example with dy = 1 everywhere:
        // dw[a,b] = Σ_{i,j} x[i+a, j+b] = [[12 16] [24 28]]; dbias = 4;
        // dx = full correlation of ones with w = [[1 3 2] [4 10 6] [3 7 4]].
        let t = ConvTestCase(n: 1, cIn: 1, h: 3, w: 3, cOut: 1, k: 2, stride: 1, pad: 0, groups: 1)
        var s = t.shape()
        let ones = [Float](repeating: 1, count: 4)
        for fast in [false, true] {
            var dw = [Float](repeating: 0, count: 4), db: [Float] = [0], dx = [Float](repeating: 0, count: 9)
            (fast ? msq_conv2d_backward_weight : msq_conv2d_backward_weight_ref)(&dw, &db, ones, x, &s, nil)
            (fast ? msq_conv2d_backward_input : msq_conv2d_backward_input_ref)(&dx, ones, w, &s, nil)
            #expect(dw == [12, 16, 24, 28], "fast=\(fast)")
            #expect(db == [4], "fast=\(fast)")
            #expect(dx == [1, 3, 2, 4, 10, 6, 3, 7, 4], "fast=\(fast)")
        }
    }

    // MARK: fast vs reference

    @Test("forward: fast matches reference", arguments: convCases, Kit.threadCountArguments)
    func forwardMatchesReference(_ t: ConvTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = ConvTestData(t)
            for bias in [false, true] {
                let ref = convForward(fast: false, d, bias: bias)
                for workspace in [false, true] {
                    let got = convForward(fast: true, d, bias: bias, workspace: workspace)
                    let err = Kit.maxRelError(got, ref)
                    #expect(err <= convForwardRelTolerance, "bias=\(bias) workspace=\(workspace): rel err \(err)")
                }
            }
        }
    }

    @Test("backward input: fast matches reference", arguments: convCases, Kit.threadCountArguments)
    func backwardInputMatchesReference(_ t: ConvTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = ConvTestData(t)
            let ref = convBackwardInput(fast: false, d)
            for workspace in [false, true] {
                let got = convBackwardInput(fast: true, d, workspace: workspace)
                let err = Kit.maxRelError(got, ref)
                #expect(err <= convBackwardInputRelTolerance, "workspace=\(workspace): rel err \(err)")
            }
        }
    }

    @Test("backward weight: fast matches reference", arguments: convCases, Kit.threadCountArguments)
    func backwardWeightMatchesReference(_ t: ConvTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = ConvTestData(t)
            for withBias in [false, true] {
                let ref = convBackwardWeight(fast: false, d, withBias: withBias)
                for workspace in [false, true] {
                    let got = convBackwardWeight(fast: true, d, withBias: withBias, workspace: workspace)
                    let errW = Kit.maxRelError(got.dw, ref.dw), errB = Kit.maxRelError(got.db, ref.db)
                    #expect(errW <= convBackwardWeightRelTolerance, "bias=\(withBias) workspace=\(workspace): dw rel err \(errW)")
                    #expect(errB <= convBackwardWeightRelTolerance, "bias=\(withBias) workspace=\(workspace): db rel err \(errB)")
                    if !withBias { #expect(got.db == d.db0, "dbias touched although NULL was passed") }
                }
            }
        }
    }

    // MARK: accumulation

    @Test("backward kernels accumulate: two calls add twice the increment", arguments: [convCases[1], convCases[3], convCases[7], convCases[13]], Kit.threadCountArguments)
    func backwardAccumulates(_ t: ConvTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = ConvTestData(t)
            for fast in [false, true] {
                let dx1 = convBackwardInput(fast: fast, d), dx2 = convBackwardInput(fast: fast, d, times: 2)
                Kit.expectDoubledIncrement(start: d.dx0, once: dx1, twice: dx2, relTol: convAccumulateRelTolerance,
                                           "dx fast=\(fast)")
                let g1 = convBackwardWeight(fast: fast, d, withBias: true)
                let g2 = convBackwardWeight(fast: fast, d, withBias: true, times: 2)
                Kit.expectDoubledIncrement(start: d.dw0, once: g1.dw, twice: g2.dw, relTol: convAccumulateRelTolerance,
                                           "dw fast=\(fast)")
                Kit.expectDoubledIncrement(start: d.db0, once: g1.db, twice: g2.db, relTol: convAccumulateRelTolerance,
                                           "db fast=\(fast)")
            }
        }
    }

    // MARK: adjointness

    @Test("backward kernels are adjoint to forward", arguments: convCases, Kit.threadCountArguments)
    func adjoint(_ t: ConvTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = ConvTestData(t)
            let zerosX = [Float](repeating: 0, count: d.s.xCount)
            let zerosW = [Float](repeating: 0, count: d.s.wCount)
            let zerosB = [Float](repeating: 0, count: Int(d.s.c_out))
            for fast in [false, true] {
                let tol = fast ? convFastAdjointRelTolerance : convRefAdjointRelTolerance
                // <dy, conv(x; w)> == <conv_bwd_input(dy; w), x> == <conv_bwd_weight(dy; x), w>
                let y = convForward(fast: fast, d, bias: false)
                let lhs = Kit.dotWithScale(d.dy, y)
                let dx = convBackwardInput(fast: fast, d, dx0: zerosX)
                let viaX = Kit.dotWithScale(dx, d.x)
                let g = convBackwardWeight(fast: fast, d, dw0: zerosW, db0: zerosB, withBias: true)
                let viaW = Kit.dotWithScale(g.dw, d.w)
                let scale = max(lhs.scale, 1e-30)
                #expect(abs(lhs.value - viaX.value) <= tol * scale, "fast=\(fast) input: \(lhs.value) vs \(viaX.value)")
                #expect(abs(lhs.value - viaW.value) <= tol * scale, "fast=\(fast) weight: \(lhs.value) vs \(viaW.value)")
                // Bias: <dy, conv(x) + b> - <dy, conv(x)> == <dbias, b>.
                let yb = convForward(fast: fast, d, bias: true)
                let withB = Kit.dotWithScale(d.dy, yb)
                let viaB = Kit.dotWithScale(g.db, d.bias)
                #expect(abs((withB.value - lhs.value) - viaB.value) <= tol * max(withB.scale, scale), "fast=\(fast) bias")
            }
        }
    }

    // MARK: determinism

    @Test("fast kernels are bit-identical run to run at a fixed thread count", arguments: [convCases[1], convCases[4], convCases[18]], Kit.threadCountArguments)
    func deterministic(_ t: ConvTestCase, threads: Int) {
        Kit.withThreads(threads) {
            let d = ConvTestData(t)
            let w1 = convBackwardWeight(fast: true, d, withBias: true, workspace: true)
            let w2 = convBackwardWeight(fast: true, d, withBias: true, workspace: false)
            #expect(w1.dw == w2.dw)
            #expect(w1.db == w2.db)
            #expect(convBackwardInput(fast: true, d) == convBackwardInput(fast: true, d, workspace: true))
            #expect(convForward(fast: true, d, bias: true) == convForward(fast: true, d, bias: true, workspace: true))
        }
    }
}
