import CKernels

/// Batch normalisation over the channel axis of `[N, C, H, W]` (or `[N, C]`) input.
///
/// Train mode: `y = γ·(x − μ_B)/sqrt(σ²_B + ε) + β` with the batch's per-channel mean and biased
/// variance, and the running statistics updated PyTorch's way:
/// `running = (1 − momentum)·running + momentum·stat` (unbiased variance into `running_var`).
/// Eval mode: `y = γ·(x − running_mean)/sqrt(running_var + ε) + β`.
/// Backward follows whichever forward ran last (in eval mode the statistics are constants).
/// γ (`weight`) starts at 1 and β (`bias`) at 0; neither decays. `running_mean` (0) and
/// `running_var` (1) are non-trainable parameters, so checkpoints carry them.
///
/// With a ``collective`` of more than one process, training statistics are those of the batch all
/// processes hold together (synchronised batch norm).
public final class BatchNorm2d: Module {
    /// Number of channels C.
    public let channels: Int
    /// Weight of the newest batch statistic in the running averages.
    public let momentum: Float
    /// ε added to the variance.
    public let eps: Float
    /// γ `[C]`.
    public let weight: Parameter
    /// β `[C]`.
    public let bias: Parameter
    /// Running mean `[C]` (not trainable).
    public let runningMean: Parameter
    /// Running (unbiased) variance `[C]` (not trainable).
    public let runningVar: Parameter
    /// The processes whose shards of a batch share one set of training statistics (synchronised
    /// batch norm, `--sync-bn`); nil: each process uses its own shard's.
    ///
    /// With more than one process, a training forward normalises every rank's shard with the
    /// statistics of the global batch, `M = Σ_r m_r` values per channel (`m_r = n_r·H·W` on rank r),
    /// combined from each shard's sum `S_r` and squared deviations `M2_r` about its own mean:
    ///
    ///     μ = Σ_r S_r / M,    σ² = (Σ_r M2_r + Σ_r S_r²/m_r − (Σ_r S_r)²/M) / M
    ///
    /// The running averages take μ and the unbiased `σ²·M/(M − 1)`, the same on every rank. The
    /// backward all-reduces `Σ dy` and `Σ dy·x̂`, each rank's weighted by m_r/M, for dx, and leaves dγ
    /// and dβ as this shard's sums for the trainer's n_r/N-weighted gradient sum: together the ranks
    /// compute what one process computes on the whole batch (up to rounding).
    ///
    /// Why: with a few images per process, per-shard statistics are noisy and differ from rank to
    /// rank; synchronised ones do not depend on how the batch is split. Every rank must set it alike
    /// (its all-reduces pair up across ranks). With a one-process collective the layer computes
    /// exactly what it computes without one; eval mode never communicates.
    public var collective: (any Collective)?
    // rForward's snapshot for rBackward: γ, running variance, the fused ReLU's output (nil if unfused).
    private var curvatureCache: (gamma: Tensor, runningVar: Tensor, reluOutput: Tensor?, shape: [Int])?

    private var cachedInput: Tensor?
    /// The output of a ``forwardReLU(_:mode:)``, whose backward masks with it (nil after ``forward(_:mode:)``).
    private var cachedOutput: Tensor?
    /// The activation the last forward fused (nil: none), and β for a fused hard-swish's backward.
    private var cachedFused: ActivationKind?
    private var cachedBeta = Tensor(shape: [0])
    private var cachedGamma = Tensor(shape: [0])
    private var cachedMode: ForwardMode = .train
    private var saveMean = Tensor(shape: [0])
    private var saveInvstd = Tensor(shape: [0])
    private var cachedRunningMean = Tensor(shape: [0])
    private var cachedRunningVar = Tensor(shape: [0])
    /// Set by a synchronised training forward: its collective, this shard's and the global batch's
    /// values per channel (m_r and M), for the backward's all-reduce.
    private var syncState: (collective: any Collective, localCount: Int, globalCount: Int)?

    /// A batch-norm layer over `channels` channels.
    public init(channels: Int, momentum: Float = 0.1, eps: Float = 1e-5) {
        LayerKit.require(channels > 0, "BatchNorm2d: channels must be positive (got \(channels))")
        self.channels = channels
        self.momentum = momentum
        self.eps = eps
        weight = Parameter(Tensor(shape: [channels], repeating: 1), decays: false)
        bias = Parameter(Tensor(shape: [channels]), decays: false)
        runningMean = Parameter(Tensor(shape: [channels]), trainable: false, decays: false)
        runningVar = Parameter(Tensor(shape: [channels], repeating: 1), trainable: false, decays: false)
    }

    var layerDescription: String { "BatchNorm2d(\(channels))" }

    private func geometry(_ d: [Int]) -> (n: Int, hw: Int) {
        LayerKit.require((d.count == 4 || d.count == 2) && d[1] == channels,
                         "\(layerDescription): expected input [N, \(channels), H, W] or [N, \(channels)], got \(d)")
        return (d[0], d.count == 4 ? d[2] * d[3] : 1)
    }

    /// Normalises with batch statistics (`.train`, updating the running averages) or running ones (`.eval`).
    public func forward(_ input: Tensor, mode: ForwardMode) -> Tensor {
        forwardCore(input, mode: mode, activation: nil)
    }

    /// `relu(forward(x))`, the batch norm + ReLU pair of a residual block, in one pass over the
    /// output in training; its backward is ``backwardReLU(_:)``. Same values as the two layers.
    func forwardReLU(_ input: Tensor, mode: ForwardMode) -> Tensor {
        forwardCore(input, mode: mode, activation: .relu)
    }

    /// `act(forward(x))` for a fusable `act` (``isFusable(_:)``) in one pass in training; its
    /// backward is ``backwardActivation(_:)``. Bit for bit the two layers' values and gradients.
    func forwardActivation(_ input: Tensor, mode: ForwardMode, kind: ActivationKind) -> Tensor {
        LayerKit.require(Self.isFusable(kind), "\(layerDescription): no fused batch norm + \(kind)")
        return forwardCore(input, mode: mode, activation: kind)
    }

    /// The activations a batch norm fuses: ReLU and hard-swish.
    static func isFusable(_ kind: ActivationKind) -> Bool { kind == .relu || kind == .hardswish }

    private func forwardCore(_ input: Tensor, mode: ForwardMode, activation: ActivationKind?) -> Tensor {
        let relu = activation == .relu
        cachedInput = nil
        cachedOutput = nil
        cachedFused = activation
        syncState = nil
        let (n, hw) = geometry(input.shape)
        let (cn, cc, chw) = (LayerKit.c(n), LayerKit.c(channels), LayerKit.c(hw))
        var y = Tensor(unfilledShape: input.shape)
        switch mode {
        case .train:
            if let collective, collective.size > 1 {
                synchronizedForward(input, into: &y, n: n, hw: hw, activation: activation, collective: collective)
                break
            }
            LayerKit.require(n * hw > 1,
                             "\(layerDescription): training needs more than one value per channel (input \(input.shape))")
            let train = switch activation {
            case .relu: msq_batchnorm_relu_forward_train
            case .hardswish: msq_batchnorm_hardswish_forward_train
            default: msq_batchnorm_forward_train
            }
            trainingForward(input, into: &y) { yp, m, s, rm, rv, x, g, b in
                train(yp, m, s, rm, rv, x, g, b, cn, cc, chw, momentum, eps)
            }
        case .eval:
            let rmT = runningMean.value, rvT = runningVar.value
            input.withUnsafePointer { x in
                weight.value.withUnsafePointer { g in
                    bias.value.withUnsafePointer { b in
                        rmT.withUnsafePointer { rm in
                            rvT.withUnsafePointer { rv in
                                y.withUnsafeMutablePointer { yp in
                                    msq_batchnorm_forward_eval(yp, x, g, b, rm, rv, cn, cc, chw, eps)
                                    if let activation { msq_activation_forward(yp, yp, input.count, activation.kernelKind) }
                                }
                            }
                        }
                    }
                }
            }
            cachedRunningMean = rmT
            cachedRunningVar = rvT
        }
        cachedInput = input
        cachedGamma = weight.value
        if activation == .hardswish { cachedBeta = bias.value }
        cachedMode = mode
        if relu { cachedOutput = y }
        return y
    }

    /// dx, accumulating dγ = Σ dy·x̂ and dβ = Σ dy; uses the train or eval formula to match the forward.
    public func backward(_ gradOutput: Tensor) -> Tensor {
        LayerKit.require(cachedFused == nil, "\(layerDescription): backward after a fused forward; use its backward")
        return backwardCore(gradOutput, reluOutput: nil, hardswish: false)
    }

    /// The backward of ``forwardReLU(_:mode:)``: ``backward(_:)`` of dy masked by relu′ (0 where the
    /// output is ≤ 0), in one pass in training.
    func backwardReLU(_ gradOutput: Tensor) -> Tensor {
        guard let y = cachedOutput, cachedFused == .relu else {
            fatalError("\(layerDescription): backwardReLU called without a preceding forwardReLU")
        }
        cachedOutput = nil
        cachedFused = nil
        return backwardCore(gradOutput, reluOutput: y, hardswish: false)
    }

    /// The backward of ``forwardActivation(_:mode:kind:)``.
    func backwardActivation(_ gradOutput: Tensor) -> Tensor {
        switch cachedFused {
        case .relu: return backwardReLU(gradOutput)
        case .hardswish:
            cachedFused = nil
            return backwardCore(gradOutput, reluOutput: nil, hardswish: true)
        default: fatalError("\(layerDescription): backwardActivation called without a preceding fused forward")
        }
    }

    private func backwardCore(_ gradOutput: Tensor, reluOutput: Tensor?, hardswish: Bool) -> Tensor {
        guard let x = cachedInput else {
            fatalError("\(layerDescription): backward called without a preceding forward")
        }
        LayerKit.require(gradOutput.shape == x.shape,
                         "\(layerDescription): gradient shape \(gradOutput.shape) does not match output \(x.shape)")
        cachedInput = nil
        let (n, hw) = geometry(x.shape)
        let (cn, cc, chw) = (LayerKit.c(n), LayerKit.c(channels), LayerKit.c(hw))
        var dx = Tensor(shape: x.shape)
        let gamma = cachedGamma
        cachedGamma = Tensor(shape: [0])
        if let sync = syncState {
            syncState = nil
            let beta = cachedBeta
            cachedBeta = Tensor(shape: [0])
            synchronizedBackward(gradOutput, x: x, gamma: gamma, beta: hardswish ? beta : nil, reluOutput: reluOutput,
                                 into: &dx, n: n, hw: hw, sync: sync)
            return dx
        }
        // In eval mode the ReLU's mask goes first, into a gradient of its own.
        var gradOutput = gradOutput
        if let y = reluOutput, cachedMode == .eval {
            var masked = Tensor(shape: y.shape)
            gradOutput.withUnsafePointer { dy in
                y.withUnsafePointer { yp in
                    masked.withUnsafeMutablePointer { mp in msq_activation_backward(mp, dy, yp, y.count, MSQ_ACT_RELU) }
                }
            }
            gradOutput = masked
        }
        // Likewise hard-swish's derivative, at its input v = BN(x) recomputed with the running statistics.
        let beta = cachedBeta
        cachedBeta = Tensor(shape: [0])
        if hardswish, cachedMode == .eval {
            var v = Tensor(unfilledShape: x.shape), scaled = Tensor(shape: x.shape)
            x.withUnsafePointer { xp in gamma.withUnsafePointer { g in beta.withUnsafePointer { b in
                cachedRunningMean.withUnsafePointer { rm in cachedRunningVar.withUnsafePointer { rv in
                    v.withUnsafeMutablePointer { vp in msq_batchnorm_forward_eval(vp, xp, g, b, rm, rv, cn, cc, chw, eps) }
                } }
            } } }
            gradOutput.withUnsafePointer { dy in v.withUnsafePointer { vp in
                scaled.withUnsafeMutablePointer { sp in msq_activation_backward(sp, dy, vp, v.count, MSQ_ACT_HARDSWISH) }
            } }
            gradOutput = scaled
        }
        gradOutput.withUnsafePointer { dy in
            x.withUnsafePointer { xp in
                gamma.withUnsafePointer { g in
                    dx.withUnsafeMutablePointer { dxp in
                        LayerKit.withGradPointer(weight) { dg in
                            LayerKit.withGradPointer(bias) { db in
                                switch cachedMode {
                                case .train:
                                    saveMean.withUnsafePointer { m in
                                        saveInvstd.withUnsafePointer { s in
                                            if let y = reluOutput {
                                                y.withUnsafePointer { yp in
                                                    msq_batchnorm_relu_backward(dxp, dg, db, dy, yp, xp, g, m, s, cn, cc, chw)
                                                }
                                            } else if hardswish {
                                                beta.withUnsafePointer { b in
                                                    msq_batchnorm_hardswish_backward(dxp, dg, db, dy, xp, g, b, m, s, cn, cc, chw)
                                                }
                                            } else {
                                                msq_batchnorm_backward(dxp, dg, db, dy, xp, g, m, s, cn, cc, chw)
                                            }
                                        }
                                    }
                                case .eval:
                                    cachedRunningMean.withUnsafePointer { rm in
                                        cachedRunningVar.withUnsafePointer { rv in
                                            msq_batchnorm_backward_eval(dxp, dg, db, dy, xp, g, rm, rv, cn, cc, chw, eps)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        cachedRunningMean = Tensor(shape: [0])
        cachedRunningVar = Tensor(shape: [0])
        return dx
    }

    /// `weight`, `bias`, `running_mean`, `running_var` (PyTorch's state-dict order).
    public func visitParameters(prefix: String, _ body: (String, Parameter) -> Void) {
        body(joinPath(prefix, "weight"), weight)
        body(joinPath(prefix, "bias"), bias)
        body(joinPath(prefix, "running_mean"), runningMean)
        body(joinPath(prefix, "running_var"), runningVar)
    }
}

// Synchronised batch norm (``BatchNorm2d/collective``).
//
// Forward. Rank r holds m_r = n_r·H·W values of each channel; msq_batchnorm_stats gives its shard's
// sum S_r and squared deviations M2_r about the shard's own mean, both in double, both two-pass
// exact. One all-reduce sums [S_r | M2_r | S_r²/m_r | m_r]; Chan et al.'s combination
//   M = Σ m_r,  μ = Σ S_r / M,  M2 = Σ M2_r + Σ m_r·(S_r/m_r − μ)² = Σ M2_r + (Σ S_r²/m_r − (Σ S_r)²/M)
// then gives the global batch's mean and squared deviations. Why not Σx and Σx² (one pass): the
// variance is then Σx²/M − μ², which multiplies the rounding error of a sum of M squares (up to
// M·ε_double relative, ~√M·ε_double typically) by (μ/σ)²: with M = 10⁶ values per channel that
// reaches float resolution at |μ|/σ ≈ 25 (worst case) to 700 (typical). Here each shard's M2_r is
// as accurate as the one-process two-pass sum and only the between-shard term cancels, R + 4
// roundings of values of size M·μ²: a few ε_double·(μ/σ)² relative, independent of M, below float
// resolution up to |μ|/σ ≈ 10⁴. With one shard holding everything the bracket is exactly 0 and
// μ = S/M is the one-process mean, so the result is the one-process kernel's, bit for bit.
//
// Backward. The trainer scales rank r's gradients by w_r = n_r/N = m_r/M and sums them; rank r's
// loss is the mean over its own n_r images, L_r = (1/n_r)·Σ_{i∈r} ℓ_i, so the loss of the global
// batch is L = (1/N)·Σ_i ℓ_i = Σ_r w_r·L_r, and every gradient rank r holds is 1/w_r times L's
// gradient on its slice: dy_r = (1/w_r)·g with g = ∂L/∂y. One process on the whole batch computes
//   dx = γ·invstd·(g − (1/M)·Σ g − x̂·(1/M)·Σ g·x̂),   dγ = Σ g·x̂,   dβ = Σ g   (sums over all M values).
// Rank r's local sums s1_r = Σ_{i∈r} dy_r and s2_r = Σ_{i∈r} dy_r·x̂ (msq_batchnorm_backward_reduce)
// are 1/w_r times its part of those sums, so the all-reduce of w_r·s1_r and w_r·s2_r gives
//   S1 = Σ_r w_r·s1_r = Σ g   and   S2 = Σ_r w_r·s2_r = Σ g·x̂.
// Rank r's dx must again be 1/w_r times the one-process dx (the layers below scale the same way):
//   dx_r = (1/w_r)·γ·invstd·(w_r·dy_r − S1/M − x̂·S2/M) = γ·invstd·(dy_r − S1/m_r − x̂·S2/m_r),
// since w_r·M = m_r: msq_batchnorm_backward_apply with the reduced sums and count m_r.
// dγ and dβ stay s2_r and s1_r, so the trainer's Σ_r w_r·s2_r = S2 and Σ_r w_r·s1_r = S1 are the
// one process's dγ and dβ. With equal shards (w_r = 1/R) this is PyTorch's SyncBatchNorm: the
// unweighted sums over the global count. A fused ReLU or hard-swish only changes g (masked or
// scaled per element by the reduce and apply kernels alike), which is linear in dy.
extension BatchNorm2d {
    private func sum(_ values: UnsafeMutableBufferPointer<Double>, over collective: any Collective) {
        do throws(CollectiveError) {
            try collective.allReduceSum(values)
        } catch {
            collective.abort("\(layerDescription): synchronised batch norm: \(error)", code: 1)
        }
    }

    /// Runs a training-mode forward kernel on the pointers they all take, outputs first (y, the
    /// saved mean and 1/σ, the running mean and variance; then x, γ, β), and keeps the saved
    /// statistics for the backward pass.
    private func trainingForward(_ input: Tensor, into y: inout Tensor,
                         _ kernel: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>,
                                    UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>,
                                    UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>) -> Void) {
        var mean = Tensor(shape: [channels]), invstd = Tensor(shape: [channels])
        input.withUnsafePointer { x in
            weight.value.withUnsafePointer { g in
                bias.value.withUnsafePointer { b in
                    y.withUnsafeMutablePointer { yp in
                        mean.withUnsafeMutablePointer { m in
                            invstd.withUnsafeMutablePointer { s in
                                runningMean.value.withUnsafeMutablePointer { rm in
                                    runningVar.value.withUnsafeMutablePointer { rv in kernel(yp, m, s, rm, rv, x, g, b) }
                                }
                            }
                        }
                    }
                }
            }
        }
        saveMean = mean
        saveInvstd = invstd
    }

    private func synchronizedForward(_ input: Tensor, into y: inout Tensor, n: Int, hw: Int,
                                     activation: ActivationKind?, collective: any Collective) {
        let c = channels, m = n * hw
        let (cn, cc, chw) = (LayerKit.c(n), LayerKit.c(c), LayerKit.c(hw))
        // [S_r | M2_r | S_r²/m_r | m_r], summed over the ranks.
        var stats = [Double](repeating: 0, count: 3 * c + 1)
        stats.withUnsafeMutableBufferPointer { p in
            let base = p.baseAddress!
            input.withUnsafePointer { x in msq_batchnorm_stats(base, base + c, x, cn, cc, chw) }
            if m > 0 { for ch in 0..<c { p[2 * c + ch] = p[ch] * p[ch] / Double(m) } }
            p[3 * c] = Double(m)
            sum(p, over: collective)
        }
        let total = stats[3 * c], globalCount = Int(total)
        LayerKit.require(globalCount > 1, "\(layerDescription): training needs more than one value per channel "
                         + "over all \(collective.size) ranks (input \(input.shape) on rank \(collective.rank))")
        var mean = [Double](repeating: 0, count: c), m2 = [Double](repeating: 0, count: c)
        for ch in 0..<c {
            let s = stats[ch]
            mean[ch] = s / total
            m2[ch] = max(0, stats[c + ch] + (stats[2 * c + ch] - s * s / total))
        }
        let fusion = switch activation {
        case .relu: MSQ_BN_FUSE_RELU
        case .hardswish: MSQ_BN_FUSE_HARDSWISH
        default: MSQ_BN_FUSE_NONE
        }
        trainingForward(input, into: &y) { yp, sm, ss, rm, rv, x, g, b in
            msq_batchnorm_apply_train(yp, sm, ss, rm, rv, x, g, b, mean, m2, globalCount, cn, cc, chw, momentum, eps, fusion)
        }
        syncState = (collective, m, globalCount)
    }

    private func synchronizedBackward(_ gradOutput: Tensor, x: Tensor, gamma: Tensor, beta: Tensor?, reluOutput: Tensor?,
                                      into dx: inout Tensor, n: Int, hw: Int,
                                      sync: (collective: any Collective, localCount: Int, globalCount: Int)) {
        let c = channels
        let (cn, cc, chw) = (LayerKit.c(n), LayerKit.c(c), LayerKit.c(hw))
        // [Σ dy | Σ dy·x̂] of this shard, then w_r times that summed over the ranks.
        var sums = [Double](repeating: 0, count: 2 * c)
        let share = Double(sync.localCount) / Double(sync.globalCount)
        sums.withUnsafeMutableBufferPointer { p in
            let base = p.baseAddress!
            withBackwardInputs(gradOutput, x: x, gamma: gamma, beta: beta, reluOutput: reluOutput) { dy, yp, xp, g, b, sm, ss in
                LayerKit.withGradPointer(weight) { dg in
                    LayerKit.withGradPointer(bias) { db in
                        msq_batchnorm_backward_reduce(base, base + c, dg, db, dy, yp, xp, g, b, sm, ss, cn, cc, chw)
                    }
                }
            }
            for i in 0..<(2 * c) { p[i] *= share }
            sum(p, over: sync.collective)
        }
        guard sync.localCount > 0 else { return }
        withBackwardInputs(gradOutput, x: x, gamma: gamma, beta: beta, reluOutput: reluOutput) { dy, yp, xp, g, b, sm, ss in
            sums.withUnsafeBufferPointer { p in
                dx.withUnsafeMutablePointer { dxp in
                    msq_batchnorm_backward_apply(dxp, dy, yp, xp, g, b, sm, ss, p.baseAddress!, p.baseAddress! + c,
                                                 sync.localCount, cn, cc, chw)
                }
            }
        }
    }

    /// The inputs both synchronised backward kernels read: dy, the fused activation's output (nil
    /// without one), x, γ, β (nil without bias), the saved mean and 1/σ.
    private func withBackwardInputs(_ gradOutput: Tensor, x: Tensor, gamma: Tensor, beta: Tensor?, reluOutput: Tensor?,
                                    _ body: (UnsafePointer<Float>, UnsafePointer<Float>?, UnsafePointer<Float>,
                                             UnsafePointer<Float>, UnsafePointer<Float>?, UnsafePointer<Float>,
                                             UnsafePointer<Float>) -> Void) {
        gradOutput.withUnsafePointer { dy in
            LayerKit.withOptionalPointer(reluOutput) { yp in
                LayerKit.withOptionalPointer(beta) { b in
                    x.withUnsafePointer { xp in
                        gamma.withUnsafePointer { g in
                            saveMean.withUnsafePointer { sm in
                                saveInvstd.withUnsafePointer { ss in body(dy, yp, xp, g, b, sm, ss) }
                            }
                        }
                    }
                }
            }
        }
    }
}

extension Module {
    /// Sets ``BatchNorm2d/collective`` on this module, if it is a batch norm, and on every batch
    /// norm inside it: `collective` to synchronise their training statistics, nil to stop.
    public func synchronizeBatchNorm(over collective: (any Collective)?) {
        (self as? BatchNorm2d)?.collective = collective
        visitModules(prefix: "") { _, module in (module as? BatchNorm2d)?.collective = collective }
    }
}

extension BatchNorm2d: CurvatureModule {
    /// Eval-mode `y = γ·(x − μ)/sqrt(σ² + ε) + β` and `Ry = γ/sqrt(σ² + ε)·Rx` (`msq_batchnorm_rforward_eval`).
    public func rForward(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        rForwardCore(input, tangent: tangent, relu: false)
    }

    /// ``rForward(_:tangent:)`` fused with the ReLU after it: `relu(BN(x))`, tangent masked by y > 0.
    func rForwardReLU(_ input: Tensor, tangent: Tensor?) -> (output: Tensor, tangent: Tensor?) {
        rForwardCore(input, tangent: tangent, relu: true)
    }

    private func rForwardCore(_ input: Tensor, tangent: Tensor?, relu: Bool) -> (output: Tensor, tangent: Tensor?) {
        curvatureCache = nil
        let y = relu ? forwardReLU(input, mode: .eval) : forward(input, mode: .eval)
        // The R-pass keeps its own snapshot; the first-order caches are not needed.
        cachedOutput = nil
        cachedFused = nil
        let (n, hw) = geometry(input.shape)
        let gamma = weight.value, rv = runningVar.value
        var ry: Tensor? = nil
        if let tangent {
            LayerKit.require(tangent.shape == input.shape,
                             "\(layerDescription): input tangent shape \(tangent.shape), expected \(input.shape)")
            var out = Tensor(unfilledShape: input.shape)
            tangent.withUnsafePointer { rx in
                LayerKit.withOptionalPointer(relu ? y : nil) { yp in
                    gamma.withUnsafePointer { g in
                        rv.withUnsafePointer { v in
                            out.withUnsafeMutablePointer { rp in
                                msq_batchnorm_rforward_eval(rp, rx, yp, g, v, LayerKit.c(n), LayerKit.c(channels), LayerKit.c(hw), eps)
                            }
                        }
                    }
                }
            }
            ry = out
        }
        curvatureCache = (gamma, rv, relu ? y : nil, input.shape)
        return (y, ry)
    }

    /// `g_x = a·g_y` and `R g_x = a·R g_y`, a = γ/sqrt(σ² + ε) (masked when fused with ReLU): the map
    /// is affine in x, so it adds no curvature of its own. γ and β are outside the Hessian's space.
    public func rBackward(_ gradient: Tensor?, tangent: Tensor, inputGradients: Bool) -> (gradient: Tensor?, tangent: Tensor?) {
        guard let c = curvatureCache else {
            fatalError("\(layerDescription): rBackward called without a preceding rForward")
        }
        curvatureCache = nil
        LayerKit.require(tangent.shape == c.shape && (gradient?.shape ?? c.shape) == c.shape,
                         "\(layerDescription): gradient shapes do not match output \(c.shape)")
        guard inputGradients else { return (nil, nil) }
        let (n, hw) = geometry(c.shape)
        func scaled(_ t: Tensor) -> Tensor {
            var out = Tensor(shape: c.shape)
            t.withUnsafePointer { tp in
                LayerKit.withOptionalPointer(c.reluOutput) { yp in
                    c.gamma.withUnsafePointer { g in
                        c.runningVar.withUnsafePointer { v in
                            out.withUnsafeMutablePointer { op in
                                msq_batchnorm_rbackward_eval(op, tp, yp, g, v, LayerKit.c(n), LayerKit.c(channels), LayerKit.c(hw), eps)
                            }
                        }
                    }
                }
            }
            return out
        }
        return (gradient.map(scaled), scaled(tangent))
    }
}
