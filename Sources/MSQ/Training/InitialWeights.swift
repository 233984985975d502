import Foundation

/// Why a model could not be initialised from a checkpoint (`msq train --init-from`), in words a
/// user can act on. Nothing in the model has changed when one of these is thrown.
public enum WeightLoadError: Error, CustomStringConvertible, Equatable {
    /// The file does not exist or cannot be opened.
    case unreadable(path: String, reason: String)
    /// The file is not an MSQ checkpoint (bad magic number).
    case notACheckpoint(path: String)
    /// The file is a checkpoint this build cannot use: truncated, modified or of another format version.
    case invalidCheckpoint(path: String, reason: String)
    /// The checkpoint's run was of another model (`resnet32` into `resnet20`, …).
    case modelMismatch(path: String, checkpointModel: String, model: String)
    /// A parameter or buffer of the model has no tensor in the checkpoint. `hint` says why when
    /// that is recognisable (a BSQ/CSQ run stores bit planes, not float weights).
    case missingTensor(path: String, name: String, hint: String?)
    /// A tensor has another shape in the checkpoint than in the model.
    case shapeMismatch(path: String, name: String, checkpointShape: [Int], modelShape: [Int])
    /// The checkpoint holds model tensors this model does not have (another architecture).
    case unexpectedTensors(path: String, names: [String])

    public var description: String {
        let prefix = { (path: String) in "cannot initialise the model from checkpoint \(path): " }
        switch self {
        case let .unreadable(path, reason): return prefix(path) + reason
        case let .notACheckpoint(path): return prefix(path) + "it is not an MSQ checkpoint (bad magic number)"
        case let .invalidCheckpoint(path, reason): return prefix(path) + reason
        case let .modelMismatch(path, checkpointModel, model):
            return prefix(path) + "it was written by a \(checkpointModel) run, this run trains \(model)"
        case let .missingTensor(path, name, hint):
            return prefix(path) + "it has no tensor \(name), which this model needs" + (hint.map { " (\($0))" } ?? "")
        case let .shapeMismatch(path, name, checkpointShape, modelShape):
            return prefix(path) + "\(name) has shape \(checkpointShape) in the checkpoint, the model expects \(modelShape)"
                + " (another dataset's input channels or classes, or another architecture)"
        case let .unexpectedTensors(path, names):
            let shown = names.prefix(5).joined(separator: ", ") + (names.count > 5 ? ", … (\(names.count) in all)" : "")
            return prefix(path) + "it holds tensors this model does not have (another architecture): \(shown)"
        }
    }
}

/// What ``loadWeights(from:into:expectedModel:)`` loaded: where from, and a content hash that
/// identifies the starting weights in a run's fingerprint (``TrainingConfig/initFrom``).
public struct LoadedWeights: Codable, Sendable, Equatable {
    /// The checkpoint file, as given.
    public var path: String
    /// FNV-1a (64-bit) over the loaded tensors' Float32 bytes, in the model's parameter order. For
    /// a float run's checkpoint this is the `weights_fnv1a64` that `msq inspect` prints.
    public var weightsHash: UInt64
    /// Model of the source run (its run description), if recorded.
    public var sourceModel: String?
    /// Training method of the source run (`fp`, `msq`, …), if recorded.
    public var sourceMethod: String?
    /// Epochs the source run had completed.
    public var sourceEpochs: Int
    /// Tensors loaded (parameters and batch-norm buffers).
    public var tensorCount: Int
    /// Quantizer state in the checkpoint that was not loaded (PACT clip levels `*.input_alpha`):
    /// the new run's method attaches its own.
    public var ignored: [String]

    /// The hash as 16 hex digits.
    public var weightsHashHex: String {
        let hex = String(weightsHash, radix: 16)
        return String(repeating: "0", count: max(0, 16 - hex.count)) + hex
    }

    /// The fingerprint value: `fnv1a64:<hash>`, the content only (the same weights under another
    /// path are the same start; other weights under the same path are not).
    public var identity: String { "fnv1a64:" + weightsHashHex }

    /// The `summary.json` object `init_from`.
    public var summaryObject: [String: Any] {
        ["path": path, "weights_fnv1a64": weightsHashHex, "source_model": sourceModel ?? NSNull(),
         "source_method": sourceMethod ?? NSNull(), "source_epochs": sourceEpochs, "tensors": tensorCount]
    }
}

/// Loads every parameter and batch-norm running statistic of `model` from the training checkpoint
/// at `path` (the `checkpoint.msqckpt` of an earlier `msq train` run, typically a float one: the
/// paper's ImageNet regime starts QAT from a float model).
///
/// Only the model's tensors are taken; the optimizer state, step counter, RNG and method state of
/// the source run are not (the new run starts at step 0). Call it on a freshly built model
/// **before** a training method attaches its quantizers (``QuantizationScheme/apply(to:)``,
/// ``DoReFaTraining``, ``BSQTraining``, ``CSQTraining``): BSQ and CSQ derive their bit variables
/// from the float weights they find at that moment.
///
/// Every check runs before anything is written, so on a throw the model is unchanged:
/// - the file must be a readable, intact checkpoint;
/// - if `expectedModel` is given and the checkpoint records its run's model, they must match;
/// - every parameter and buffer the model lists must be in the checkpoint with the same shape;
/// - the checkpoint must hold no model tensor the model lacks (a deeper network's extra blocks),
///   except PACT clip levels (`*.input_alpha`, listed in ``LoadedWeights/ignored``).
///
/// - Parameters:
///   - path: The checkpoint file.
///   - model: A freshly built network, without weight quantizers attached.
///   - expectedModel: The model name of the new run (`resnet20`, …), checked against the
///     checkpoint's run description; nil skips that check (shapes are still checked).
/// - Returns: What was loaded, with the content hash that goes into the run fingerprint.
/// - Throws: ``WeightLoadError``.
@discardableResult
public func loadWeights(from path: String, into model: any Module,
                        expectedModel: String? = nil) throws(WeightLoadError) -> LoadedWeights {
    let checkpoint: Checkpoint
    do {
        checkpoint = try Checkpoint.read(from: path)
    } catch {
        switch error {
        case let .unreadable(_, reason): throw .unreadable(path: path, reason: reason)
        case .notACheckpoint: throw .notACheckpoint(path: path)
        default: throw .invalidCheckpoint(path: path, reason: error.description)
        }
    }
    let h = checkpoint.header
    if let expectedModel, let recorded = h.runDescription["model"], recorded != expectedModel {
        throw .modelMismatch(path: path, checkpointModel: recorded, model: expectedModel)
    }
    let params = model.namedParameters()
    var values: [Tensor] = []
    values.reserveCapacity(params.count)
    for (name, p) in params {
        guard let t = checkpoint.tensor(named: name) else {
            let layer = name.hasSuffix(".weight") ? String(name.dropLast(".weight".count)) : name
            let bitPlanes = h.tensors.contains { $0.name.hasPrefix(layer + ".bsq.") || $0.name.hasPrefix(layer + ".csq.") }
            throw .missingTensor(path: path, name: name, hint: bitPlanes
                                 ? "the checkpoint stores bit planes (a bsq or csq run), not float weights" : nil)
        }
        guard t.shape == p.value.shape else {
            throw .shapeMismatch(path: path, name: name, checkpointShape: t.shape, modelShape: p.value.shape)
        }
        values.append(t)
    }
    let known = Set(params.map(\.name))
    let extra = h.tensors.map(\.name).filter { !$0.hasPrefix("optimizer.") && !known.contains($0) }
    let ignored = extra.filter { $0.hasSuffix(".input_alpha") }
    let unexpected = extra.filter { !$0.hasSuffix(".input_alpha") }
    if !unexpected.isEmpty { throw .unexpectedTensors(path: path, names: unexpected) }

    var hash = fnv1a64Offset
    for ((_, p), t) in zip(params, values) {
        p.value = t
        hash = t.withUnsafePointer { fnv1a64(UnsafeRawBufferPointer(start: $0, count: 4 * t.count), continuing: hash) }
    }
    return LoadedWeights(path: path, weightsHash: hash, sourceModel: h.runDescription["model"],
                         sourceMethod: h.runDescription["method"], sourceEpochs: h.epochsCompleted,
                         tensorCount: values.count, ignored: ignored)
}
