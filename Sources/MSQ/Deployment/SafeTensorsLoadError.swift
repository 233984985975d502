/// Why a safetensors file's tensors could not be loaded into a model, naming the file, the
/// file's tensor and the model's parameter (Swift parameter paths, not CLI flags). Nothing in the
/// model has changed when one of these is thrown.
public struct SafeTensorsLoadError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What is wrong.
    public enum Problem: Equatable, Sendable {
        /// The file could not be read or failed validation (header, dtypes, offsets).
        case unreadable(SafeTensorsError)
        /// The model's parameter `parameter` has no tensor `tensor` (its name under the map) in the file.
        case missingTensor(tensor: String, parameter: String)
        /// The file holds tensors that map to no parameter of the model (another architecture).
        case unexpectedTensors([String])
        /// The tensor has another shape in the file than the parameter has in the model.
        case shapeMismatch(tensor: String, parameter: String, fileShape: [Int], modelShape: [Int])
        /// The tensor the parameter needs is not floating point (F32, F64, F16 or BF16).
        case wrongDType(tensor: String, dtype: SafeTensorsDType)
        /// The tensor holds a NaN or an infinity.
        case nonFinite(tensor: String)
        /// Several parameters of the model map to one file name (a ``TensorNameMap`` that is not one to one).
        case ambiguousName(tensor: String, parameters: [String])
        /// The file records (metadata `msq.model`) another model than the one it is loaded into.
        case modelMismatch(fileModel: String, model: String)
    }

    /// The file, as given (or the `source` of in-memory data).
    public var source: String
    /// What is wrong.
    public var problem: Problem

    /// An error about `source`.
    public init(source: String, problem: Problem) {
        self.source = source
        self.problem = problem
    }

    /// A one-line message naming the file, the tensor and the parameter.
    public var description: String {
        let prefix = "cannot load safetensors file \(source) into the model: "
        switch problem {
        case let .unreadable(error):
            return error.description
        case let .missingTensor(tensor, parameter):
            return prefix + "it has no tensor '\(tensor)', which the model's parameter \(parameter) needs"
        case let .unexpectedTensors(names):
            let shown = names.prefix(5).map { "'\($0)'" }.joined(separator: ", ")
                + (names.count > 5 ? ", … (\(names.count) in all)" : "")
            return prefix + "it holds tensors the model has no parameter for (another architecture, or a name map that does not fit): \(shown)"
        case let .shapeMismatch(tensor, parameter, fileShape, modelShape):
            return prefix + "tensor '\(tensor)' has shape \(fileShape), the model's parameter \(parameter) has \(modelShape)"
                + " (other input channels or classes, or another architecture)"
        case let .wrongDType(tensor, dtype):
            return prefix + "tensor '\(tensor)' has dtype \(dtype.rawValue); parameters load from F32, F64, F16 or BF16"
        case let .nonFinite(tensor):
            return prefix + "tensor '\(tensor)' holds NaN or infinite values"
        case let .ambiguousName(tensor, parameters):
            return prefix + "the name map gives the parameters \(parameters.joined(separator: ", ")) one file name '\(tensor)'"
        case let .modelMismatch(fileModel, model):
            return prefix + "it records model \(fileModel) (metadata msq.model), this model is \(model)"
        }
    }
}
