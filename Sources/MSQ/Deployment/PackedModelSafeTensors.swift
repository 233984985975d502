import Foundation

/// The `__metadata__` keys of a safetensors file written by ``PackedModel/safeTensors(names:)``
/// (`msq export --format safetensors`). Values are strings, as the format requires; lists and
/// numbers are JSON, floats in Swift's shortest round-trip form (Python's `float()` and
/// `torch.tensor(..., dtype=torch.float32)` give back the same Float32).
public enum SafeTensorsExportKeys {
    /// `msq.format`: the metadata layout version, ``formatVersion``.
    public static let format = "msq.format"
    /// The metadata layout version this build writes.
    public static let formatVersion = "1"
    /// `msq.model`: the network (`resnet20`, …).
    public static let model = "msq.model"
    /// `msq.dataset`: the dataset the model was trained on.
    public static let dataset = "msq.dataset"
    /// `msq.input_shape`: JSON `[C,H,W]` of one image.
    public static let inputShape = "msq.input_shape"
    /// `msq.num_classes`: the classifier's outputs.
    public static let numClasses = "msq.num_classes"
    /// `msq.normalization_mean`, `msq.normalization_std`: JSON lists, one per channel; inputs are
    /// `(x - mean) / std` with x in [0, 1].
    public static let normalizationMean = "msq.normalization_mean"
    /// See ``normalizationMean``.
    public static let normalizationStd = "msq.normalization_std"
    /// `msq.scale_granularity`: `per-tensor` or `per-channel`.
    public static let scaleGranularity = "msq.scale_granularity"
    /// `msq.activation_bits`: A of the PACT input quantizers; absent when activations are float.
    public static let activationBits = "msq.activation_bits"
    /// `msq.weight_bits.<tensor>`: bits n (sign included) of a quantized weight, by its file name.
    public static let weightBitsPrefix = "msq.weight_bits."
    /// `msq.weight_scales.<tensor>`: JSON list of its scales s (one, or one per output channel);
    /// the tensor holds `(s · j) / 2^(n−1)` for integer codes j in [−2^(n−1), 2^(n−1) − 1].
    public static let weightScalesPrefix = "msq.weight_scales."
    /// `msq.input_alpha.<layer>`: the PACT clip level α of the layer's input (module path, e.g.
    /// `layer1.0.conv1`): the layer sees `round(clip(x, 0, α') · L / α') · α' / L` with
    /// L = 2^A − 1 and α' = max(α, 1e-6), rounding half to even.
    public static let inputAlphaPrefix = "msq.input_alpha."
    /// `msq.input_signed`: JSON list of the layers (module paths) whose input quantizer is signed
    /// (LSQ, ``PACTQuantizer/signed``): they see `round(clip(x, −α', α') · L / α') · α' / L` with
    /// L = 2^(A−1) − 1 instead. Absent when no layer's is (or the model is not a built-in one).
    public static let inputSigned = "msq.input_signed"
    /// `msq.source.<key>`: the training run's description (method, seed, epochs, …).
    public static let sourcePrefix = "msq.source."
}

extension PackedModel {
    /// The model as float tensors under `names`' file names (default PyTorch `state_dict` names),
    /// ready for `model.load_state_dict(safetensors.torch.load_file(path))`.
    ///
    /// Each quantized weight is its dequantized value, bit for bit ``tensor(named:)``:
    /// `(s · j) / 2^(n−1)`, shape of the layer's weight. Batch-norm parameters and statistics,
    /// biases and the classifier are stored as they are. With ``TensorNameMap/writesBatchNormCounters``
    /// an `I64` scalar `num_batches_tracked` (0) is added per batch-norm layer. PACT clip levels
    /// have no PyTorch tensor: they go into the metadata (``SafeTensorsExportKeys``), with each
    /// quantized weight's bits and scales, the activation bits, the input normalisation and the run
    /// description. With ``TensorNameMap/writesRelativePositionIndices`` torchvision's `I64`
    /// `relative_position_index` is added per Swin attention. All tensors are `F32` except those
    /// counters and indices.
    /// - Throws: ``PackedModelError`` if a stored tensor cannot be decoded (the file was validated
    ///   when read, so only a model built by hand can fail).
    public func safeTensors(names: TensorNameMap = .pytorch) throws(PackedModelError) -> SafeTensors {
        typealias K = SafeTensorsExportKeys
        var out = SafeTensors()
        var meta: [String: String] = [
            K.format: K.formatVersion, K.model: header.model, K.dataset: header.dataset,
            K.inputShape: jsonList(header.inputShape.map(String.init)), K.numClasses: String(header.numClasses),
            K.normalizationMean: jsonList(header.normalization.mean.map(\.description)),
            K.normalizationStd: jsonList(header.normalization.std.map(\.description)),
            K.scaleGranularity: scheme.scaleGranularity.rawValue,
        ]
        if let bits = header.activationBits {
            meta[K.activationBits] = String(bits)
            // Which inputs are signed is the network's declaration; a built-in kind says it.
            let signed = ModelKind(rawValue: header.model).map {
                signedActivationInputs(of: makeModel($0, inputChannels: header.inputShape[0], numClasses: header.numClasses,
                                                     seed: 0, inputSize: header.inputShape[1]))
            } ?? []
            let quantizedInputs = signed.intersection(header.tensors.compactMap {
                $0.name.hasSuffix(".input_alpha") ? String($0.name.dropLast(".input_alpha".count)) : nil
            })
            if !quantizedInputs.isEmpty { meta[K.inputSigned] = jsonList(quantizedInputs.sorted().map { "\"\($0)\"" }) }
        }
        for (key, value) in header.source { meta[K.sourcePrefix + key] = value }
        for e in header.tensors {
            if e.name.hasSuffix(".input_alpha") {
                let layer = String(e.name.dropLast(".input_alpha".count))
                meta[K.inputAlphaPrefix + layer] = try tensor(named: e.name).scalars[0].description
                continue
            }
            guard let name = names.fileName(e.name) else { continue }
            out.tensors[name] = SafeTensor(try tensor(named: e.name))
            if e.kind == .packed {
                let (scales, bits, _) = try codes(named: e.name)
                meta[K.weightBitsPrefix + name] = String(bits)
                meta[K.weightScalesPrefix + name] = jsonList(scales.map(\.description))
            }
            if names.writesBatchNormCounters, e.name.hasSuffix(".running_mean") {
                let counter = String(name.dropLast("running_mean".count)) + "num_batches_tracked"
                out.tensors[counter] = SafeTensor(unchecked: .int64, shape: [], bytes: [UInt8](repeating: 0, count: 8))
            }
            if names.writesRelativePositionIndices, e.name.hasSuffix(".relative_position_bias_table"),
               let index = relativePositionIndex(tableRows: e.shape.first ?? 0) {
                let key = String(name.dropLast("relative_position_bias_table".count)) + "relative_position_index"
                out.tensors[key] = try? SafeTensor(shape: [index.count], int64: index)
            }
        }
        out.metadata = meta
        return out
    }
}

/// torchvision's Swin `relative_position_index` (flattened `[T·T]`, T = window²) for a bias table of
/// `(2·window − 1)²` rows: `(ri − rj + w − 1)·(2w − 1) + (ci − cj + w − 1)` for tokens i, j of a
/// window (as window_attention.c reads the table). Nil when the row count is not such a square.
func relativePositionIndex(tableRows: Int) -> [Int64]? {
    let side = Int(Double(tableRows).squareRoot().rounded())
    guard side > 0, side * side == tableRows, side % 2 == 1 else { return nil }
    let w = (side + 1) / 2, t = w * w
    var index: [Int64] = []
    index.reserveCapacity(t * t)
    for i in 0..<t {
        for j in 0..<t { index.append(Int64((i / w - j / w + w - 1) * side + (i % w - j % w + w - 1))) }
    }
    return index
}

/// `[a,b,c]` from already formatted JSON values.
private func jsonList(_ items: [String]) -> String { "[" + items.joined(separator: ",") + "]" }
