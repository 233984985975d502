/// How a model's parameter paths (``Module/namedParameters()``) and the tensor names of a weights
/// file (safetensors) correspond, in both directions.
///
/// ``pytorch`` fits every model whose parameter paths follow PyTorch's `state_dict` naming, which
/// MSQ's built-in models do (CIFAR ResNets as in bench/pytorch/models.py, ResNet-18/50 as
/// torchvision): the identity, except for tensors only one side has. A model of your own with other
/// names can start from it and rename single tensors with ``renaming(_:)``.
public struct TensorNameMap: Sendable {
    /// The file's name for the model tensor at a parameter path; nil when files do not hold that
    /// tensor (it is then neither required when loading nor written when exporting).
    public var fileName: @Sendable (_ parameterPath: String) -> String?
    /// The parameter path for a file's tensor name; nil when the tensor is to be skipped (neither
    /// loaded nor reported as extra), such as PyTorch's `num_batches_tracked`.
    public var parameterPath: @Sendable (_ fileName: String) -> String?
    /// Whether an export writes an `I64` scalar `<bn>.num_batches_tracked` (value 0) next to every
    /// batch-norm layer's `running_mean`, so that `load_state_dict` (strict) finds every key a
    /// `torch.nn.BatchNorm2d` has. MSQ keeps no such counter (its BN momentum is fixed), and
    /// PyTorch reads it only when `momentum=None`.
    public var writesBatchNormCounters: Bool
    /// Whether an export writes torchvision's `I64` buffer `<attn>.relative_position_index`
    /// `[window⁴]` next to every Swin attention's `relative_position_bias_table`, so that
    /// `load_state_dict` (strict) finds every key a torchvision `ShiftedWindowAttention` has. MSQ
    /// computes the index from the window size instead of storing it.
    public var writesRelativePositionIndices: Bool

    /// A map from its two directions; `fileName` and `parameterPath` should be inverse on the
    /// names both accept.
    public init(fileName: @escaping @Sendable (String) -> String?,
                parameterPath: @escaping @Sendable (String) -> String?,
                writesBatchNormCounters: Bool = false, writesRelativePositionIndices: Bool = false) {
        self.fileName = fileName
        self.parameterPath = parameterPath
        self.writesBatchNormCounters = writesBatchNormCounters
        self.writesRelativePositionIndices = writesRelativePositionIndices
    }

    /// PyTorch `state_dict` names: the identity, except that MSQ-only tensors (PACT clip levels
    /// `….input_alpha`, BSQ/CSQ quantizer parameters `….bsq.*`, `….csq.*`) have no file name and
    /// PyTorch's buffers `….num_batches_tracked` and `….relative_position_index` are skipped;
    /// exports write both.
    public static let pytorch = TensorNameMap(
        fileName: { isMSQOnly($0) ? nil : $0 },
        parameterPath: { isPyTorchOnly($0) || isMSQOnly($0) ? nil : $0 },
        writesBatchNormCounters: true, writesRelativePositionIndices: true)

    /// Every tensor under its parameter path, nothing skipped, no counters written.
    public static let identity = TensorNameMap(fileName: { $0 }, parameterPath: { $0 })

    /// This map with some tensors renamed: `names` maps a parameter path to its file name (and
    /// back); every other name goes through `self`. A file that still holds a renamed tensor under
    /// its old name has an extra tensor when loaded.
    public func renaming(_ names: [String: String]) -> TensorNameMap {
        let inverse = Dictionary(names.map { ($0.value, $0.key) }) { first, _ in first }
        let base = self
        return TensorNameMap(fileName: { names[$0] ?? base.fileName($0) },
                             parameterPath: { inverse[$0] ?? base.parameterPath($0) },
                             writesBatchNormCounters: writesBatchNormCounters,
                             writesRelativePositionIndices: writesRelativePositionIndices)
    }
}
