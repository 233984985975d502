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
        let (n, hw) = geometry(input.shape)
        let (cn, cc, chw) = (LayerKit.c(n), LayerKit.c(channels), LayerKit.c(hw))
        var y = Tensor(unfilledShape: input.shape)
        switch mode {
        case .train:
            LayerKit.require(n * hw > 1,
                             "\(layerDescription): training needs more than one value per channel (input \(input.shape))")
            var mean = Tensor(shape: [channels])
            var invstd = Tensor(shape: [channels])
            input.withUnsafePointer { x in
                weight.value.withUnsafePointer { g in
                    bias.value.withUnsafePointer { b in
                        y.withUnsafeMutablePointer { yp in
                            mean.withUnsafeMutablePointer { m in
                                invstd.withUnsafeMutablePointer { s in
                                    runningMean.value.withUnsafeMutablePointer { rm in
                                        runningVar.value.withUnsafeMutablePointer { rv in
                                            let train = switch activation {
                                            case .relu: msq_batchnorm_relu_forward_train
                                            case .hardswish: msq_batchnorm_hardswish_forward_train
                                            default: msq_batchnorm_forward_train
                                            }
                                            train(yp, m, s, rm, rv, x, g, b, cn, cc, chw, momentum, eps)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            saveMean = mean
            saveInvstd = invstd
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
