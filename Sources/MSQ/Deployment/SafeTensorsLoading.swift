/// What ``loadSafeTensors(_:into:names:allowExtraTensors:source:)`` loaded.
public struct SafeTensorsLoadResult: Equatable, Sendable {
    /// Parameters and buffers set (weights, biases, batch-norm statistics).
    public var tensorCount: Int
    /// FNV-1a (64-bit) over the loaded values' Float32 bytes in the model's parameter order: the
    /// same hash ``loadWeights(from:into:expectedModel:)`` gives for a checkpoint of equal weights.
    public var weightsHash: UInt64
    /// File tensors the name map skips (PyTorch's `num_batches_tracked`), sorted.
    public var skipped: [String]
    /// File tensors that map to no parameter, left unread because extra tensors were allowed; sorted.
    public var unused: [String]
}

/// Loads the floating-point tensors of `file` into `model`'s parameters and buffers by path,
/// matched through `names` (default: PyTorch `state_dict` names).
///
/// Works for any ``Module``. Every parameter the map gives a file name must be in the file with
/// the parameter's shape (batch-norm running statistics included); tensors the map skips
/// (`num_batches_tracked`) are ignored; any other tensor of the file is an error unless
/// `allowExtraTensors`. F64, F16 and BF16 tensors are converted to Float. Everything is checked
/// before anything is written, so on a throw the model is unchanged.
///
/// Load into a freshly built float model, **before** quantizers are attached: MSQ-only tensors
/// (PACT clip levels, BSQ/CSQ parameters) are not in PyTorch files and keep their values.
///
/// - Parameters:
///   - file: The tensors (``SafeTensors/read(from:)``).
///   - model: The network to set.
///   - names: How parameter paths and file names correspond.
///   - allowExtraTensors: Whether file tensors that map to no parameter are tolerated
///     (listed in ``SafeTensorsLoadResult/unused``).
///   - source: The file's name in errors.
/// - Throws: ``SafeTensorsLoadError`` naming the tensor: missing, extra, shape mismatch, a dtype
///   that is not floating point, NaN or infinity, or a map that gives two parameters one name.
@discardableResult
public func loadSafeTensors(_ file: SafeTensors, into model: any Module, names: TensorNameMap = .pytorch,
                            allowExtraTensors: Bool = false,
                            source: String = "(in memory)") throws(SafeTensorsLoadError) -> SafeTensorsLoadResult {
    func fail(_ problem: SafeTensorsLoadError.Problem) -> SafeTensorsLoadError {
        SafeTensorsLoadError(source: source, problem: problem)
    }
    let params = model.namedParameters()
    var wanted: [String: String] = [:]  // file name → parameter path
    var plan: [(parameter: Parameter, value: Tensor)] = []
    var targets: [(path: String, name: String, parameter: Parameter)] = []
    // The whole map first: a name two parameters share is the map's fault, not the file's.
    for (path, parameter) in params {
        guard let name = names.fileName(path) else { continue }
        if let other = wanted[name] { throw fail(.ambiguousName(tensor: name, parameters: [other, path])) }
        wanted[name] = path
        targets.append((path, name, parameter))
    }
    for (path, name, parameter) in targets {
        guard let entry = file.tensors[name] else { throw fail(.missingTensor(tensor: name, parameter: path)) }
        guard entry.shape == parameter.value.shape else {
            throw fail(.shapeMismatch(tensor: name, parameter: path, fileShape: entry.shape, modelShape: parameter.value.shape))
        }
        guard let value = entry.tensor() else { throw fail(.wrongDType(tensor: name, dtype: entry.dtype)) }
        guard value.scalars.allSatisfy(\.isFinite) else { throw fail(.nonFinite(tensor: name)) }
        plan.append((parameter, value))
    }
    var skipped: [String] = [], unused: [String] = []
    for name in file.tensors.keys.sorted() where wanted[name] == nil {
        if names.parameterPath(name) == nil { skipped.append(name) } else { unused.append(name) }
    }
    if !unused.isEmpty && !allowExtraTensors { throw fail(.unexpectedTensors(unused)) }

    var hash = fnv1a64Offset
    for (parameter, value) in plan {
        parameter.value = value
        hash = value.withUnsafePointer { fnv1a64(UnsafeRawBufferPointer(start: $0, count: 4 * value.count), continuing: hash) }
    }
    return SafeTensorsLoadResult(tensorCount: plan.count, weightsHash: hash, skipped: skipped, unused: unused)
}

/// Reads the safetensors file at `path` and loads it into `model`, as
/// ``loadSafeTensors(_:into:names:allowExtraTensors:source:)`` does.
/// - Throws: ``SafeTensorsLoadError`` (``SafeTensorsLoadError/Problem/unreadable(_:)`` for a file
///   that cannot be read or fails header validation), naming the file and the tensor.
@discardableResult
public func loadSafeTensors(from path: String, into model: any Module, names: TensorNameMap = .pytorch,
                            allowExtraTensors: Bool = false) throws(SafeTensorsLoadError) -> SafeTensorsLoadResult {
    let file: SafeTensors
    do {
        file = try SafeTensors.read(from: path)
    } catch {
        throw SafeTensorsLoadError(source: path, problem: .unreadable(error))
    }
    return try loadSafeTensors(file, into: model, names: names, allowExtraTensors: allowExtraTensors, source: path)
}
