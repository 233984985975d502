import CKernels

/// Shifted-window multi-head self-attention, as torchvision's `ShiftedWindowAttention` (Swin v1):
/// pad the map to multiples of the window, roll it by the shift, attend within each window with a
/// relative position bias (and torchvision's −100 mask between regions the roll brought together),
/// then roll back and crop.
///
/// Shapes: input and output NHWC `[N, H, W, dim]` (already normalised; zero padding happens here,
/// after the norm, as torchvision pads). Per window of `T = window²` tokens and head:
/// `softmax(Q·Kᵀ/sqrt(d) + table[index] + mask)·V`. The shift along an axis is 0 when its padded
/// size is at most the window (torchvision's rule). `qkv` (dim → 3·dim) and `proj` (dim → dim) are
/// ordinary ``Linear``s, so every quantization method finds them; `relative_position_bias_table`
/// `[(2·window − 1)², heads]` is a parameter that does not decay. Kernels: swin_layout.c,
/// window_attention.c.
public final class ShiftedWindowAttention: Module {
    /// Token width.
    public let dim: Int
    /// Number of heads.
    public let heads: Int
    /// Side of a square window, in tokens.
    public let window: Int
    /// The roll applied before partitioning (torchvision's `shift_size`, 0 or window/2).
    public let shift: Int
    /// Dim → 3·dim: queries, keys and values of every head, read as `[T, 3, heads, d]`.
    public let qkv: Linear
    /// Dim → dim: the output projection.
    public let proj: Linear
    /// The relative position bias `[(2·window − 1)², heads]`, not decayed.
    public let relativePositionBiasTable: Parameter

    private var cache: (qkv: Tensor, probs: Tensor, shape: [Int], windows: Int, shiftH: Int, shiftW: Int)?

    /// Width of one head, `dim / heads`.
    public var headDim: Int { dim / heads }

    /// A window attention with torchvision's initialisation: linear weights and the bias table
    /// ~ N(0, 0.02²) (its truncation at ±2 never binds), biases 0.
    public init(dim: Int, heads: Int, window: Int, shift: Int, rng: inout RandomSource) {
        LayerKit.require(dim > 0 && heads > 0 && dim % heads == 0 && window > 0 && shift >= 0 && shift < window,
                         "ShiftedWindowAttention: invalid dim \(dim), heads \(heads), window \(window), shift \(shift)")
        self.dim = dim
        self.heads = heads
        self.window = window
        self.shift = shift
        qkv = Linear(inFeatures: dim, outFeatures: 3 * dim, rng: &rng)
        proj = Linear(inFeatures: dim, outFeatures: dim, rng: &rng)
        initTransformerLinear(qkv, rng: &rng)
        initTransformerLinear(proj, rng: &rng)
        let entries = (2 * window - 1) * (2 * window - 1)
        relativePositionBiasTable = Parameter(Tensor.randomNormal([entries, heads], std: 0.02, using: &rng), decays: false)
    }

    /// The padded sizes and the shifts actually used for an `h × w` map.
    func geometry(height h: Int, width w: Int) -> (padH: Int, padW: Int, shiftH: Int, shiftW: Int) {
        let ph = (h + window - 1) / window * window, pw = (w + window - 1) / window * window
        return (ph, pw, ph <= window ? 0 : shift, pw <= window ? 0 : shift)
    }

    /// Partition, qkv, window attention, proj, reverse; caches qkv's output and the attention matrix.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        cache = nil
        let s = input.shape
        LayerKit.require(s.count == 4 && s[3] == dim, "ShiftedWindowAttention(\(dim)): expected input [N, H, W, \(dim)], got \(s)")
        let (n, h, w) = (s[0], s[1], s[2])
        let g = geometry(height: h, width: w)
        let windows = n * (g.padH / window) * (g.padW / window), t = window * window
        var tokens = Tensor(unfilledShape: [windows * t, dim])
        input.withUnsafePointer { x in
            tokens.withUnsafeMutablePointer { y in
                msq_window_partition_forward(y, x, LayerKit.c(n), LayerKit.c(h), LayerKit.c(w), LayerKit.c(dim),
                                             LayerKit.c(window), LayerKit.c(g.shiftH), LayerKit.c(g.shiftW))
            }
        }
        let q = qkv.forward(tokens, mode: mode)
        var out = Tensor(unfilledShape: [windows * t, dim])
        var probs = Tensor(unfilledShape: [windows, heads, t, t])
        q.withUnsafePointer { qp in
            relativePositionBiasTable.value.withUnsafePointer { table in
                out.withUnsafeMutablePointer { o in
                    probs.withUnsafeMutablePointer { p in
                        msq_window_attention_forward(o, p, qp, table, LayerKit.c(windows), LayerKit.c(window), LayerKit.c(heads),
                                                     LayerKit.c(headDim), LayerKit.c(g.padH), LayerKit.c(g.padW),
                                                     LayerKit.c(g.shiftH), LayerKit.c(g.shiftW), scale)
                    }
                }
            }
        }
        cache = (q, probs, s, windows, g.shiftH, g.shiftW)
        let projected = proj.forward(out, mode: mode)
        var y = Tensor(unfilledShape: s)
        projected.withUnsafePointer { src in
            y.withUnsafeMutablePointer { dst in
                msq_window_partition_backward(dst, src, LayerKit.c(n), LayerKit.c(h), LayerKit.c(w), LayerKit.c(dim),
                                              LayerKit.c(window), LayerKit.c(g.shiftH), LayerKit.c(g.shiftW))
            }
        }
        return y
    }

    private var scale: Float { 1 / Float(headDim).squareRoot() }

    /// dx through the reverse, proj, the attention (the table's gradient accumulated), qkv and the partition.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let c = cache else { fatalError("ShiftedWindowAttention(\(dim)): backward called without a preceding forward") }
        LayerKit.require(gradOutput.shape == c.shape,
                         "ShiftedWindowAttention(\(dim)): gradient shape \(gradOutput.shape), expected \(c.shape)")
        cache = nil
        let (n, h, w, t) = (c.shape[0], c.shape[1], c.shape[2], window * window)
        let dims = (LayerKit.c(n), LayerKit.c(h), LayerKit.c(w), LayerKit.c(dim), LayerKit.c(window))
        var dProjected = Tensor(unfilledShape: [c.windows * t, dim])
        gradOutput.withUnsafePointer { dy in
            dProjected.withUnsafeMutablePointer { d in
                msq_window_partition_forward(d, dy, dims.0, dims.1, dims.2, dims.3, dims.4, LayerKit.c(c.shiftH), LayerKit.c(c.shiftW))
            }
        }
        let dOut = proj.backward(dProjected)
        var dq = Tensor(shape: c.qkv.shape)
        dOut.withUnsafePointer { go in
            c.qkv.withUnsafePointer { q in
                c.probs.withUnsafePointer { p in
                    dq.withUnsafeMutablePointer { dqp in
                        LayerKit.withGradPointer(relativePositionBiasTable) { dt in
                            msq_window_attention_backward(dqp, dt, go, q, p, LayerKit.c(c.windows), LayerKit.c(window),
                                                          LayerKit.c(heads), LayerKit.c(headDim), scale)
                        }
                    }
                }
            }
        }
        let dTokens = qkv.backward(dq)
        var dx = Tensor(unfilledShape: c.shape)
        dTokens.withUnsafePointer { src in
            dx.withUnsafeMutablePointer { dst in
                msq_window_partition_backward(dst, src, dims.0, dims.1, dims.2, dims.3, dims.4, LayerKit.c(c.shiftH), LayerKit.c(c.shiftW))
            }
        }
        return dx
    }

    /// `relative_position_bias_table`, `qkv.*`, `proj.*` (torchvision's state_dict order; its
    /// `relative_position_index` buffer is a constant MSQ computes instead of storing).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        body(joinPath(prefix, "relative_position_bias_table"), relativePositionBiasTable)
        qkv.visitParameters(prefix: joinPath(prefix, "qkv"), body)
        proj.visitParameters(prefix: joinPath(prefix, "proj"), body)
    }

    /// `qkv`, `proj`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("qkv", qkv), ("proj", proj)], prefix: prefix, body)
    }
}

/// A Swin block, as torchvision's `SwinTransformerBlock` (v1): a ``PreNormBlock`` with (shifted)
/// window attention, an MLP under torchvision's names (`mlp.0`, `mlp.3`) and layer norms with
/// ε = 1e-5. Input and output NHWC `[N, H, W, dim]`.
///
/// Stochastic depth is not applied (torchvision's swin_t trains with drop-path rates up to 0.2): the
/// layer has no random stream of its own, and one drawn per step would also have to be saved in
/// checkpoints for a resumed run to repeat the same steps; in eval mode torchvision's drop path is
/// the identity, so inference is unaffected.
public typealias SwinTransformerBlock = PreNormBlock<ShiftedWindowAttention>

extension PreNormBlock where Attention == ShiftedWindowAttention {
    /// A block of width `dim` with `heads` heads, `window × window` windows rolled by `shift`.
    public convenience init(dim: Int, heads: Int, window: Int, shift: Int, mlpRatio: Int = 4, rng: inout RandomSource) {
        let attn = ShiftedWindowAttention(dim: dim, heads: heads, window: window, shift: shift, rng: &rng)
        let mlp = TokenMLP(dim: dim, hidden: mlpRatio * dim, naming: .torchvision, rng: &rng)
        self.init(dim: dim, epsilon: 1e-5, attn: attn, mlp: mlp)
    }
}

/// Swin's downsampling between stages, as torchvision's `PatchMerging` (v1): 2 × 2 neighbours
/// concatenated on channels (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]; odd sides
/// zero-padded), `norm` over the 4·dim channels (ε = 1e-5), `reduction` 4·dim → 2·dim without bias.
///
/// Shapes: input NHWC `[N, H, W, dim]`, output `[N, ⌈H/2⌉, ⌈W/2⌉, 2·dim]`. Kernel: swin_layout.c.
public final class PatchMerging: Module {
    /// Channels of the input.
    public let dim: Int
    /// Layer norm over the 4·dim merged channels.
    public let norm: LayerNorm
    /// 4·dim → 2·dim, no bias.
    public let reduction: Linear
    private var inputShape: [Int]?

    /// A merge of `dim`-channel maps; the reduction ~ N(0, 0.02²) as torchvision initialises it.
    public init(dim: Int, rng: inout RandomSource) {
        self.dim = dim
        norm = LayerNorm(dim: 4 * dim, epsilon: 1e-5)
        reduction = Linear(inFeatures: 4 * dim, outFeatures: 2 * dim, bias: false, rng: &rng)
        initTransformerLinear(reduction, rng: &rng)
    }

    /// `reduction(norm(merge(x)))`.
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        let s = input.shape
        LayerKit.require(s.count == 4 && s[3] == dim, "PatchMerging(\(dim)): expected input [N, H, W, \(dim)], got \(s)")
        inputShape = s
        let (ho, wo) = ((s[1] + 1) / 2, (s[2] + 1) / 2)
        var merged = Tensor(unfilledShape: [s[0] * ho * wo, 4 * dim])
        input.withUnsafePointer { x in
            merged.withUnsafeMutablePointer { y in
                msq_patch_merge_forward(y, x, LayerKit.c(s[0]), LayerKit.c(s[1]), LayerKit.c(s[2]), LayerKit.c(dim))
            }
        }
        return reduction.forward(norm.forward(merged, mode: mode), mode: mode).reshaped([s[0], ho, wo, 2 * dim])
    }

    /// dx through the reduction, the norm and the merge.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        guard let s = inputShape else { fatalError("PatchMerging(\(dim)): backward called without a preceding forward") }
        let (ho, wo) = ((s[1] + 1) / 2, (s[2] + 1) / 2)
        LayerKit.require(gradOutput.shape == [s[0], ho, wo, 2 * dim],
                         "PatchMerging(\(dim)): gradient shape \(gradOutput.shape), expected \([s[0], ho, wo, 2 * dim])")
        inputShape = nil
        let dMerged = norm.backward(reduction.backward(gradOutput.reshaped([s[0] * ho * wo, 2 * dim])))
        var dx = Tensor(unfilledShape: s)
        dMerged.withUnsafePointer { dy in
            dx.withUnsafeMutablePointer { d in
                msq_patch_merge_backward(d, dy, LayerKit.c(s[0]), LayerKit.c(s[1]), LayerKit.c(s[2]), LayerKit.c(dim))
            }
        }
        return dx
    }

    /// `reduction.*`, `norm.*` (torchvision's order).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        reduction.visitParameters(prefix: joinPath(prefix, "reduction"), body)
        norm.visitParameters(prefix: joinPath(prefix, "norm"), body)
    }

    /// `reduction`, `norm`.
    public func visitModules(prefix: String, _ body: (String, any Module) -> Void) {
        LayerKit.visitChildren([("reduction", reduction), ("norm", norm)], prefix: prefix, body)
    }
}
