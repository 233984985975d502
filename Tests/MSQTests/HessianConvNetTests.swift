import Foundation
import MSQ
import Testing

// Tolerances (named so a reader can see what each check allows).
/// Float32 central-difference HVP vs the double-precision reference: ‖Hv − ref‖ / ‖ref‖.
private let convHVPRelativeTolerance = 1e-3
/// Float32 model gradient vs the independent double-precision gradient: ‖g − ref‖ / ‖ref‖,
/// over all weights and per layer.
private let convGradientTolerance = 1e-4
/// Step of the double-precision 4-point stencil, relative: the probe is scaled so that the
/// perturbation t·v has norm `convStencilRelativeStep · ‖θ‖` (truncation O(t⁴) and Double round-off
/// divided by t both stay below 1e-9 relative).
let convStencilRelativeStep = 1e-4

/// The walk-order paths of the net's conv/linear layers, which are the layers H acts on.
let convNetLayerPaths = ["stem", "block1.conv1", "block1.conv2", "block1.downsample.0",
                                 "block2.conv1", "block2.conv2", "fc"]

/// A small conv net that uses every engine layer which carries or passes gradients, in eval mode:
///
///     x [4, 2, 6, 6]
///     stem     Conv2d(2→4, 3×3, padding 1, bias)             [4, 4, 6, 6]
///     bn       BatchNorm2d(4), running statistics
///     act      GELU
///     avgpool  AvgPool2d(2, stride 1)                         [4, 4, 5, 5]
///     block1   BasicBlock(4→6, stride 2, projection, GELU)   [4, 6, 3, 3]
///              conv1 3×3 stride 2 → bn1 → GELU → conv2 3×3 → bn2, + (1×1 stride-2 conv → bn), GELU
///     block2   BasicBlock(6→8, stride 1, zero-pad, GELU)     [4, 8, 3, 3]
///     maxpool  MaxPool2d(2, stride 1)                         [4, 8, 2, 2]
///     gap      GlobalAvgPool2d                                [4, 8]
///     flatten  Flatten                                        [4, 8]
///     fc       Linear(8→3, bias)                              [4, 3]
///
/// GELU, not ReLU, so the loss is smooth; max pooling is the one kink left, and the tests check that
/// no window's winner changes at any point where the gradient is evaluated.
struct ConvNetProblem {
    let model: Sequential
    let layers: [QuantizedLayer]
    let images: Tensor
    let labels: [Int32]
    let reference: ReferenceConvNet

    /// `activation`: GELU (smooth; the default) or ReLU (piecewise linear: the Gauss-Newton checks).
    init(seed: UInt64, activation: ActivationKind = .gelu) throws {
        var rng = RandomSource(seed: seed)
        let stem = Conv2d(inChannels: 2, outChannels: 4, kernelSize: 3, stride: 1, padding: 1, bias: true, rng: &rng)
        let bn = BatchNorm2d(channels: 4)
        let block1 = BasicBlock(inChannels: 4, outChannels: 6, stride: 2, shortcut: .projection,
                                activation: activation, rng: &rng)
        let block2 = BasicBlock(inChannels: 6, outChannels: 8, stride: 1, shortcut: .zeroPad,
                                activation: activation, rng: &rng)
        let fc = Linear(inFeatures: 8, outFeatures: 3, rng: &rng)
        // Larger classifier weights so the softmax is not nearly flat (more curvature in the loss).
        fc.weight.value = Tensor(shape: fc.weight.value.shape, scalars: fc.weight.value.scalars.map { $0 * 3 })
        model = Sequential(named: [
            ("stem", stem), ("bn", bn), ("act", Activation(activation)), ("avgpool", AvgPool2d(kernelSize: 2, stride: 1)),
            ("block1", block1), ("block2", block2), ("maxpool", MaxPool2d(kernelSize: 2, stride: 1)),
            ("gap", GlobalAvgPool2d()), ("flatten", Flatten()), ("fc", fc),
        ])
        images = Tensor.randomNormal([4, 2, 6, 6], std: 1, using: &rng)
        labels = (0..<4).map { _ in Int32(rng.nextInt(below: 3)) }
        let downBN = try #require((block1.shortcut as? Sequential)?["1"] as? BatchNorm2d)
        let norms = [bn, block1.bn1, block1.bn2, downBN, block2.bn1, block2.bn2]

        // Batch norm: non-trivial affine parameters; running statistics near this batch's own (train
        // mode normalises with batch statistics, so repeated train passes converge the running
        // averages to them whatever they started at), then perturbed, so the eval-mode
        // pre-activations are O(1) — inside GELU's curved region — but not exactly standardised.
        for b in norms {
            b.weight.value = Tensor(shape: [b.channels], scalars: (0..<b.channels).map { _ in 0.7 + 0.8 * rng.nextUnitFloat() })
            b.bias.value = Tensor(shape: [b.channels], scalars: (0..<b.channels).map { _ in -0.3 + 0.6 * rng.nextUnitFloat() })
        }
        for _ in 0..<60 { _ = model.forward(images, mode: .train) }
        for b in norms {
            let mean = b.runningMean.value.scalars, variance = b.runningVar.value.scalars
            b.runningMean.value = Tensor(shape: [b.channels], scalars: (0..<b.channels).map {
                mean[$0] + (rng.nextUnitFloat() - 0.5) * 0.4 * variance[$0].squareRoot()
            })
            b.runningVar.value = Tensor(shape: [b.channels], scalars: (0..<b.channels).map {
                variance[$0] * (0.6 + rng.nextUnitFloat())
            })
        }

        let all = quantizableLayers(of: model)
        #expect(all.map(\.path) == convNetLayerPaths)
        var layers: [QuantizedLayer] = []
        for (path, module) in all {
            // Records only, quantizers NOT attached: H is the float Hessian the reference computes.
            let weight = try #require((module as? Conv2d)?.weight ?? (module as? Linear)?.weight)
            layers.append(QuantizedLayer(path: path, parameter: weight, quantizer: RoundClampQuantizer(bits: 8),
                                         count: weight.value.count))
        }
        self.layers = layers

        func d(_ t: Tensor) -> [Double] { t.scalars.map(Double.init) }
        func norm(_ b: BatchNorm2d) -> ReferenceConvNet.Norm {
            .init(gamma: d(b.weight.value), beta: d(b.bias.value), mean: d(b.runningMean.value),
                  invstd: b.runningVar.value.scalars.map { 1 / (Double($0) + Double(b.eps)).squareRoot() })
        }
        reference = ReferenceConvNet(
            x: d(images), labels: labels.map(Int.init), stemBias: d(try #require(stem.bias).value),
            bn: norm(bn), b1bn1: norm(block1.bn1), b1bn2: norm(block1.bn2), b1downBN: norm(downBN),
            b2bn1: norm(block2.bn1), b2bn2: norm(block2.bn2), fcBias: d(try #require(fc.bias).value),
            relu: activation == .relu, stencilRelativeStep: activation == .relu ? 1e-6 : convStencilRelativeStep)
        #expect(layers.map(\.count) == ReferenceConvNet.weightCounts)
    }

    /// θ: every layer's weights, concatenated in `layers` order.
    var theta: [Double] { layers.flatMap { $0.parameter.value.scalars.map(Double.init) } }

    /// Cuts a flat vector into the per-layer blocks ``HessianVectorProduct`` takes.
    func split(_ v: [Double]) -> [[Double]] {
        var out: [[Double]] = []
        var start = 0
        for n in ReferenceConvNet.weightCounts {
            out.append(Array(v[start..<start + n]))
            start += n
        }
        return out
    }
}

/// ``ConvNetProblem``'s network in Double with a hand-written backward: the loss gradient w.r.t. the
/// seven weight tensors (θ, `weightCounts` in walk order), everything else held fixed. Batch norm uses
/// the given running statistics (eval mode), GELU the exact erf form, max pooling keeps the first
/// maximum (as the engine).
struct ReferenceConvNet {
    /// A batch norm in eval mode: y = (x − mean) · gamma · invstd + beta, per channel.
    struct Norm {
        let gamma: [Double], beta: [Double], mean: [Double], invstd: [Double]
    }

    /// A feature map batch: `data` is [n, c, h, w] row-major.
    struct Map {
        var data: [Double]
        let c: Int, h: Int, w: Int
    }

    let x: [Double]
    let labels: [Int]
    let stemBias: [Double]
    let bn: Norm, b1bn1: Norm, b1bn2: Norm, b1downBN: Norm, b2bn1: Norm, b2bn2: Norm
    let fcBias: [Double]
    /// ReLU instead of GELU.
    var relu = false
    /// The stencil's relative step (ReLU nets take a smaller one, so that no ReLU flips inside it).
    var stencilRelativeStep = convStencilRelativeStep
    let n = 4

    /// stem, block1.conv1, block1.conv2, block1.downsample.0, block2.conv1, block2.conv2, fc.
    static let weightCounts = [4 * 2 * 9, 6 * 4 * 9, 6 * 6 * 9, 6 * 4, 8 * 6 * 9, 8 * 8 * 9, 3 * 8]

    /// A convolution's geometry (groups 1).
    struct ConvSpec { let cin: Int, cout: Int, k: Int, stride: Int, pad: Int }
    static let stem = ConvSpec(cin: 2, cout: 4, k: 3, stride: 1, pad: 1)
    static let b1c1 = ConvSpec(cin: 4, cout: 6, k: 3, stride: 2, pad: 1)
    static let b1c2 = ConvSpec(cin: 6, cout: 6, k: 3, stride: 1, pad: 1)
    static let b1down = ConvSpec(cin: 4, cout: 6, k: 1, stride: 2, pad: 0)
    static let b2c1 = ConvSpec(cin: 6, cout: 8, k: 3, stride: 1, pad: 1)
    static let b2c2 = ConvSpec(cin: 8, cout: 8, k: 3, stride: 1, pad: 1)

    // MARK: primitives

    func conv(_ x: Map, _ s: ConvSpec, _ wt: ArraySlice<Double>, bias: [Double]?) -> Map {
        let ho = (x.h + 2 * s.pad - s.k) / s.stride + 1, wo = (x.w + 2 * s.pad - s.k) / s.stride + 1
        var y = [Double](repeating: 0, count: n * s.cout * ho * wo)
        let w0 = wt.startIndex
        for b in 0..<n {
            for o in 0..<s.cout {
                for i in 0..<ho {
                    for j in 0..<wo {
                        var acc = bias?[o] ?? 0
                        for ci in 0..<s.cin {
                            for ki in 0..<s.k {
                                let ii = i * s.stride - s.pad + ki
                                if ii < 0 || ii >= x.h { continue }
                                for kj in 0..<s.k {
                                    let jj = j * s.stride - s.pad + kj
                                    if jj < 0 || jj >= x.w { continue }
                                    acc += x.data[((b * s.cin + ci) * x.h + ii) * x.w + jj]
                                        * wt[w0 + ((o * s.cin + ci) * s.k + ki) * s.k + kj]
                                }
                            }
                        }
                        y[((b * s.cout + o) * ho + i) * wo + j] = acc
                    }
                }
            }
        }
        return Map(data: y, c: s.cout, h: ho, w: wo)
    }

    /// Given dL/dy of ``conv(_:_:_:bias:)``: dL/dx, and dL/dW added into `dw`.
    func convBackward(_ dy: Map, _ x: Map, _ s: ConvSpec, _ wt: ArraySlice<Double>, dw: inout [Double]) -> Map {
        var dx = [Double](repeating: 0, count: x.data.count)
        let w0 = wt.startIndex
        for b in 0..<n {
            for o in 0..<s.cout {
                for i in 0..<dy.h {
                    for j in 0..<dy.w {
                        let g = dy.data[((b * s.cout + o) * dy.h + i) * dy.w + j]
                        for ci in 0..<s.cin {
                            for ki in 0..<s.k {
                                let ii = i * s.stride - s.pad + ki
                                if ii < 0 || ii >= x.h { continue }
                                for kj in 0..<s.k {
                                    let jj = j * s.stride - s.pad + kj
                                    if jj < 0 || jj >= x.w { continue }
                                    let xi = ((b * s.cin + ci) * x.h + ii) * x.w + jj
                                    let wi = ((o * s.cin + ci) * s.k + ki) * s.k + kj
                                    dw[wi] += g * x.data[xi]
                                    dx[xi] += g * wt[w0 + wi]
                                }
                            }
                        }
                    }
                }
            }
        }
        return Map(data: dx, c: x.c, h: x.h, w: x.w)
    }

    func norm(_ x: Map, _ p: Norm) -> Map {
        var y = x
        let hw = x.h * x.w
        for k in 0..<y.data.count {
            let c = (k / hw) % x.c
            y.data[k] = (x.data[k] - p.mean[c]) * p.gamma[c] * p.invstd[c] + p.beta[c]
        }
        return y
    }

    func normBackward(_ dy: Map, _ p: Norm) -> Map {
        var dx = dy
        let hw = dy.h * dy.w
        for k in 0..<dx.data.count { dx.data[k] *= p.gamma[(k / hw) % dy.c] * p.invstd[(k / hw) % dy.c] }
        return dx
    }

    static func gelu(_ v: Double) -> Double { v * 0.5 * (1 + erf(v / 2.0.squareRoot())) }
    static func geluDerivative(_ v: Double) -> Double {
        0.5 * (1 + erf(v / 2.0.squareRoot())) + v * exp(-0.5 * v * v) / (2 * Double.pi).squareRoot()
    }

    /// The network's activation: GELU, or ReLU when `relu` (relu'(0) = 0, as the engine).
    func gelu(_ x: Map) -> Map {
        Map(data: x.data.map { relu ? max($0, 0) : Self.gelu($0) }, c: x.c, h: x.h, w: x.w)
    }

    func geluBackward(_ dy: Map, _ x: Map) -> Map {
        Map(data: zip(dy.data, x.data).map { relu ? ($1 > 0 ? $0 : 0) : $0 * Self.geluDerivative($1) },
            c: x.c, h: x.h, w: x.w)
    }

    func add(_ a: Map, _ b: Map) -> Map { Map(data: zip(a.data, b.data).map(+), c: a.c, h: a.h, w: a.w) }

    /// Average pooling, window k, stride 1, no padding.
    func avgPool(_ x: Map, k: Int) -> Map {
        let ho = x.h - k + 1, wo = x.w - k + 1
        var y = [Double](repeating: 0, count: n * x.c * ho * wo)
        for p in 0..<n * x.c {
            for i in 0..<ho {
                for j in 0..<wo {
                    var s = 0.0
                    for a in 0..<k { for b in 0..<k { s += x.data[(p * x.h + i + a) * x.w + j + b] } }
                    y[(p * ho + i) * wo + j] = s / Double(k * k)
                }
            }
        }
        return Map(data: y, c: x.c, h: ho, w: wo)
    }

    func avgPoolBackward(_ dy: Map, _ x: Map, k: Int) -> Map {
        var dx = [Double](repeating: 0, count: x.data.count)
        for p in 0..<n * x.c {
            for i in 0..<dy.h {
                for j in 0..<dy.w {
                    let g = dy.data[(p * dy.h + i) * dy.w + j] / Double(k * k)
                    for a in 0..<k { for b in 0..<k { dx[(p * x.h + i + a) * x.w + j + b] += g } }
                }
            }
        }
        return Map(data: dx, c: x.c, h: x.h, w: x.w)
    }

    /// Max pooling, window k, stride 1, no padding: the output, each window's winner (flat input
    /// index, first maximum in row-major window order) and its lead over the runner-up.
    func maxPool(_ x: Map, k: Int) -> (y: Map, argmax: [Int], gaps: [Double]) {
        let ho = x.h - k + 1, wo = x.w - k + 1
        var y = [Double](repeating: 0, count: n * x.c * ho * wo), argmax = [Int](repeating: 0, count: y.count)
        var gaps = [Double](repeating: 0, count: y.count)
        for p in 0..<n * x.c {
            for i in 0..<ho {
                for j in 0..<wo {
                    var best = -Double.infinity, second = -Double.infinity, at = 0
                    for a in 0..<k {
                        for b in 0..<k {
                            let idx = (p * x.h + i + a) * x.w + j + b
                            if x.data[idx] > best {
                                second = best
                                best = x.data[idx]
                                at = idx
                            } else if x.data[idx] > second {
                                second = x.data[idx]
                            }
                        }
                    }
                    let o = (p * ho + i) * wo + j
                    y[o] = best
                    argmax[o] = at
                    gaps[o] = best - second
                }
            }
        }
        return (Map(data: y, c: x.c, h: ho, w: wo), argmax, gaps)
    }

    func maxPoolBackward(_ dy: Map, _ x: Map, argmax: [Int]) -> Map {
        var dx = [Double](repeating: 0, count: x.data.count)
        for o in 0..<dy.data.count { dx[argmax[o]] += dy.data[o] }
        return Map(data: dx, c: x.c, h: x.h, w: x.w)
    }

    /// Option-A shortcut at stride 1: channels zero-padded from x.c to `c`, ⌊(c − x.c)/2⌋ before.
    func zeroPad(_ x: Map, to c: Int) -> Map {
        let before = (c - x.c) / 2, hw = x.h * x.w
        var y = [Double](repeating: 0, count: n * c * hw)
        for b in 0..<n { for ch in 0..<x.c { for k in 0..<hw { y[(b * c + ch + before) * hw + k] = x.data[(b * x.c + ch) * hw + k] } } }
        return Map(data: y, c: c, h: x.h, w: x.w)
    }

    func zeroPadBackward(_ dy: Map, inChannels: Int) -> Map {
        let before = (dy.c - inChannels) / 2, hw = dy.h * dy.w
        var dx = [Double](repeating: 0, count: n * inChannels * hw)
        for b in 0..<n { for ch in 0..<inChannels { for k in 0..<hw { dx[(b * inChannels + ch) * hw + k] = dy.data[(b * dy.c + ch + before) * hw + k] } } }
        return Map(data: dx, c: inChannels, h: dy.h, w: dy.w)
    }

    // MARK: network

    /// The weight tensor `index` of θ as a slice.
    func slice(_ theta: [Double], _ index: Int) -> ArraySlice<Double> {
        let start = Self.weightCounts[..<index].reduce(0, +)
        return theta[start..<start + Self.weightCounts[index]]
    }

    /// The max-pool winners and their leads at θ (for the tie checks).
    func maxPoolWinners(_ theta: [Double]) -> (argmax: [Int], gaps: [Double]) {
        let r = evaluate(theta)
        return (r.argmax, r.gaps)
    }

    /// Whether each activation input (every element of the five activation layers' inputs) is
    /// positive at θ: with ReLU the Hessian is defined where this pattern does not change.
    func activationSigns(_ theta: [Double]) -> [Bool] { evaluate(theta).signs }

    /// ∇_θ L, the mean softmax cross-entropy over the batch.
    func gradient(_ theta: [Double]) -> [Double] { evaluate(theta).gradient }

    private func evaluate(_ theta: [Double]) -> (gradient: [Double], argmax: [Int], gaps: [Double], signs: [Bool]) {
        let w = (0..<7).map { slice(theta, $0) }
        // Forward, keeping what backward needs.
        let x0 = Map(data: x, c: 2, h: 6, w: 6)
        let s1 = conv(x0, Self.stem, w[0], bias: stemBias)
        let s2 = norm(s1, bn)
        let s3 = gelu(s2)
        let s4 = avgPool(s3, k: 2)
        let c1 = conv(s4, Self.b1c1, w[1], bias: nil)
        let n1 = norm(c1, b1bn1)
        let a1 = gelu(n1)
        let c2 = conv(a1, Self.b1c2, w[2], bias: nil)
        let d1 = conv(s4, Self.b1down, w[3], bias: nil)
        let sum1 = add(norm(c2, b1bn2), norm(d1, b1downBN))
        let out1 = gelu(sum1)
        let e1 = conv(out1, Self.b2c1, w[4], bias: nil)
        let m1 = norm(e1, b2bn1)
        let f1 = gelu(m1)
        let e2 = conv(f1, Self.b2c2, w[5], bias: nil)
        let sum2 = add(norm(e2, b2bn2), zeroPad(out1, to: 8))
        let out2 = gelu(sum2)
        let (mp, argmax, gaps) = maxPool(out2, k: 2)
        let c = mp.c, hw = mp.h * mp.w
        var pooled = [Double](repeating: 0, count: n * c)
        for p in 0..<n * c { for k in 0..<hw { pooled[p] += mp.data[p * hw + k] / Double(hw) } }
        let classes = 3
        var dLogits = [Double](repeating: 0, count: n * classes)
        for b in 0..<n {
            var z = [Double](repeating: 0, count: classes)
            for o in 0..<classes {
                z[o] = fcBias[o]
                for i in 0..<c { z[o] += w[6][w[6].startIndex + o * c + i] * pooled[b * c + i] }
            }
            let zmax = z.max() ?? 0
            let e = z.map { exp($0 - zmax) }
            let total = e.reduce(0, +)
            for o in 0..<classes { dLogits[b * classes + o] = (e[o] / total - (o == labels[b] ? 1 : 0)) / Double(n) }
        }

        // Backward.
        var grads = Self.weightCounts.map { [Double](repeating: 0, count: $0) }
        var dPooled = [Double](repeating: 0, count: n * c)
        for b in 0..<n {
            for o in 0..<classes {
                let g = dLogits[b * classes + o]
                for i in 0..<c {
                    grads[6][o * c + i] += g * pooled[b * c + i]
                    dPooled[b * c + i] += g * w[6][w[6].startIndex + o * c + i]
                }
            }
        }
        var dmp = mp
        for p in 0..<n * c { for k in 0..<hw { dmp.data[p * hw + k] = dPooled[p] / Double(hw) } }
        let dOut2 = maxPoolBackward(dmp, out2, argmax: argmax)
        let dSum2 = geluBackward(dOut2, sum2)
        let dE2 = normBackward(dSum2, b2bn2)
        let dF1 = convBackward(dE2, f1, Self.b2c2, w[5], dw: &grads[5])
        let dE1 = normBackward(geluBackward(dF1, m1), b2bn1)
        var dOut1 = convBackward(dE1, out1, Self.b2c1, w[4], dw: &grads[4])
        dOut1 = add(dOut1, zeroPadBackward(dSum2, inChannels: 6))
        let dSum1 = geluBackward(dOut1, sum1)
        let dC2 = normBackward(dSum1, b1bn2)
        let dA1 = convBackward(dC2, a1, Self.b1c2, w[2], dw: &grads[2])
        let dC1 = normBackward(geluBackward(dA1, n1), b1bn1)
        var dS4 = convBackward(dC1, s4, Self.b1c1, w[1], dw: &grads[1])
        let dD1 = normBackward(dSum1, b1downBN)
        dS4 = add(dS4, convBackward(dD1, s4, Self.b1down, w[3], dw: &grads[3]))
        let dS3 = avgPoolBackward(dS4, s3, k: 2)
        let dS1 = normBackward(geluBackward(dS3, s2), bn)
        _ = convBackward(dS1, x0, Self.stem, w[0], dw: &grads[0])
        let signs = [s2, n1, sum1, m1, sum2].flatMap { $0.data.map { $0 > 0 } }
        return (grads.flatMap { $0 }, argmax, gaps, signs)
    }

    /// The perturbation t = `relativeStep` · ‖θ‖ / ‖v‖ of the stencil.
    static func stencilStep(_ theta: [Double], _ v: [Double], relativeStep: Double) -> Double {
        relativeStep * l2(theta) / l2(v)
    }

    /// H·v by the 4-point stencil (−g(2t) + 8g(t) − 8g(−t) + g(−2t)) / 12t on the double gradient.
    func hvp(_ theta: [Double], _ v: [Double]) -> [Double] {
        let t = Self.stencilStep(theta, v, relativeStep: stencilRelativeStep)
        func g(_ s: Double) -> [Double] { gradient(zip(theta, v).map { $0 + s * $1 }) }
        let (p1, m1, p2, m2) = (g(t), g(-t), g(2 * t), g(-2 * t))
        return (0..<theta.count).map { (-p2[$0] + 8 * p1[$0] - 8 * m1[$0] + m2[$0]) / (12 * t) }
    }
}

private func l2(_ a: [Double]) -> Double { a.reduce(0) { $0 + $1 * $1 }.squareRoot() }
private func relativeError(_ a: [Double], _ ref: [Double]) -> Double {
    l2(zip(a, ref).map { $0 - $1 }) / l2(ref)
}

@Suite("Hessian-vector products on a small conv net") struct HessianConvNetTests {
    @Test("The double-precision reference gradient matches the engine's, overall and per layer")
    func referenceGradientMatchesEngine() throws {
        let problem = try ConvNetProblem(seed: 101)
        let hvp = HessianVectorProduct(model: problem.model, layers: problem.layers,
                                       images: problem.images, labels: problem.labels)
        let engine = try hvp.gradient()
        let ref = problem.split(problem.reference.gradient(problem.theta))
        let overall = relativeError(engine.flatMap { $0 }, ref.flatMap { $0 })
        #expect(overall < convGradientTolerance, "relative error \(overall)")
        for (l, path) in convNetLayerPaths.enumerated() {
            let err = relativeError(engine[l], ref[l])
            #expect(l2(ref[l]) > 0, "\(path): zero gradient, the layer is not exercised")
            #expect(err < convGradientTolerance, "\(path): relative error \(err)")
        }
    }

    @Test("HessianVectorProduct.apply matches the double-precision stencil HVP for Gaussian and Rademacher probes")
    func hvpMatchesReference() throws {
        let problem = try ConvNetProblem(seed: 102)
        let hvp = HessianVectorProduct(model: problem.model, layers: problem.layers,
                                       images: problem.images, labels: problem.labels)
        let reference = problem.reference
        let theta = problem.theta
        let total = theta.count
        let winners = reference.maxPoolWinners(theta)
        var rng = RandomSource(seed: 77)
        var errors: [Double] = []
        for trial in 0..<6 {
            let v: [Double] = trial % 2 == 0
                ? (0..<total).map { _ in Double(rng.nextGaussian()) }
                : HutchinsonTrace.rademacherProbe(seed: 9, probe: trial, counts: hvp.layerCounts).flatMap { $0 }
            // The Hessian is only defined where no max-pool window changes its winner: check every
            // point either HVP evaluates the gradient at (the engine's ±ε and the stencil's ±t, ±2t).
            let eps = hvp.step(for: problem.split(v))
            let t = ReferenceConvNet.stencilStep(theta, v, relativeStep: convStencilRelativeStep)
            for s in [eps, -eps, t, -t, 2 * t, -2 * t] {
                let moved = reference.maxPoolWinners(zip(theta, v).map { $0 + s * $1 }).argmax
                #expect(moved == winners.argmax, "trial \(trial): a max-pool winner changes at step \(s); choose another seed")
            }
            let hv = try hvp.apply(problem.split(v)).flatMap { $0 }
            let ref = reference.hvp(theta, v)
            let err = relativeError(hv, ref)
            errors.append(err)
            #expect(err < convHVPRelativeTolerance, "trial \(trial): relative error \(err)")
        }
        print("HessianConvNetTests: HVP relative errors \(errors.map { String(format: "%.2e", $0) }), "
              + "smallest max-pool lead \(String(format: "%.2e", winners.gaps.min() ?? 0))")
    }

    @Test("A Hutchinson trace of the conv net is finite, seeded, and leaves weights and gradients alone")
    func hutchinsonFiniteAndReproducible() throws {
        let problem = try ConvNetProblem(seed: 103)
        let before = problem.model.namedParameters().map { $0.parameter.value.scalars.map(\.bitPattern) }
        problem.model.zeroGradients()
        func run(seed: UInt64) throws -> HessianTraceEstimate {
            try HutchinsonTrace(model: problem.model, layers: problem.layers, images: problem.images,
                                labels: problem.labels, seed: seed, maxProbes: 6, minProbes: 6).estimate()
        }
        let a = try run(seed: 5)
        let b = try run(seed: 5)
        let c = try run(seed: 6)
        #expect(a.probes == 6)
        #expect(a.traces.count == convNetLayerPaths.count && a.variances.count == convNetLayerPaths.count)
        #expect(a.traces.allSatisfy(\.isFinite) && a.variances.allSatisfy(\.isFinite))
        #expect(a.totalTrace.isFinite && a.totalTrace != 0)
        #expect(a == b)
        #expect(a != c)
        let after = problem.model.namedParameters().map { $0.parameter.value.scalars.map(\.bitPattern) }
        #expect(before == after)
        for p in problem.model.trainableParameters() {
            #expect(p.grad.scalars.allSatisfy { $0 == 0 })
        }
    }
}
