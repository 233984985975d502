import Foundation

extension SafeTensors {
    /// Whether the file at `path` is to be read as safetensors: its name ends in `.safetensors`,
    /// or it starts like one (an 8-byte little-endian header length, then `{`). False for a file
    /// that cannot be opened and is not so named, and for MSQ checkpoints.
    public static func isSafeTensorsFile(atPath path: String) -> Bool {
        if path.lowercased().hasSuffix(".safetensors") { return true }
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        guard let head = try? handle.read(upToCount: 9), head.count == 9 else { return false }
        let bytes = [UInt8](head)
        guard bytes[8] == UInt8(ascii: "{") else { return false }
        let length = bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        return length >= 2 && length <= UInt64(maximumHeaderBytes)
    }
}

/// Loads a freshly built model's starting weights from `path`, an MSQ training checkpoint or a
/// safetensors file (PyTorch `state_dict` names; ``SafeTensors/isSafeTensorsFile(atPath:)``
/// decides): what `msq train --init-from` does.
///
/// A checkpoint goes through ``loadWeights(from:into:expectedModel:)``. A safetensors file goes
/// through ``loadSafeTensors(from:into:names:allowExtraTensors:)`` with the PyTorch map and no
/// extra tensors allowed; if its metadata records `msq.model` (an `msq export --format
/// safetensors` file) it must equal `expectedModel`. The result records the content hash that
/// enters the run fingerprint, so `--resume` accepts only the same weights, whatever the file format.
///
/// - Parameters:
///   - path: The checkpoint or safetensors file.
///   - model: A freshly built network, without weight quantizers attached.
///   - expectedModel: The new run's model name (`resnet20`, …); nil skips that check.
/// - Throws: ``WeightLoadError`` for a checkpoint, ``SafeTensorsLoadError`` for a safetensors
///   file, each naming the file and the tensor. The model is unchanged on a throw.
@discardableResult
public func loadInitialWeights(from path: String, into model: any Module, expectedModel: String? = nil) throws -> LoadedWeights {
    guard SafeTensors.isSafeTensorsFile(atPath: path) else {
        return try loadWeights(from: path, into: model, expectedModel: expectedModel)
    }
    let file: SafeTensors
    do {
        file = try SafeTensors.read(from: path)
    } catch {
        throw SafeTensorsLoadError(source: path, problem: .unreadable(error))
    }
    let recordedModel = file.metadata[SafeTensorsExportKeys.model]
    if let expectedModel, let recordedModel, recordedModel != expectedModel {
        throw SafeTensorsLoadError(source: path, problem: .modelMismatch(fileModel: recordedModel, model: expectedModel))
    }
    let result = try loadSafeTensors(file, into: model, source: path)
    return LoadedWeights(path: path, weightsHash: result.weightsHash, sourceModel: recordedModel,
                         sourceMethod: file.metadata[SafeTensorsExportKeys.sourcePrefix + "method"],
                         sourceEpochs: file.metadata[SafeTensorsExportKeys.sourcePrefix + "epochs"].flatMap { Int($0) } ?? 0,
                         tensorCount: result.tensorCount, ignored: [])
}
