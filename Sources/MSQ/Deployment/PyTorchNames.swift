// MSQ's parameter paths were chosen to be PyTorch's state_dict names: CIFAR ResNets follow
// bench/pytorch/models.py (option-A shortcuts have no parameters on either side), ImageNet ResNets
// torchvision (`layerS.B.downsample.{0,1}`), and BatchNorm2d lists `weight`, `bias`, `running_mean`,
// `running_var` as torch.nn.BatchNorm2d does. So the map is the identity except for tensors only one
// side has; Tests/MSQTests/PyTorchNamesTests.swift checks every name and shape of every kind against
// the state_dicts listed by bench/pytorch/state_dict_keys.py.

/// The PyTorch state_dict name of the MSQ parameter or buffer at `path` in a model of kind `model`.
///
/// The identity for weights, biases and BatchNorm statistics (`layer1.0.conv1.weight`,
/// `bn1.running_var`, `fc.bias`). Nil for tensors PyTorch's float model does not have: PACT clip
/// levels (`….input_alpha`) and the BSQ/CSQ quantizers' own parameters (`….bsq.*`, `….csq.*`).
/// Does not check that `path` exists in the model.
public func pytorchName(forParameterPath path: String, model: ModelKind) -> String? {
    isMSQOnly(path) ? nil : path
}

/// The MSQ parameter path of the PyTorch state_dict entry `name` in a model of kind `model`: the
/// inverse of ``pytorchName(forParameterPath:model:)``.
///
/// Nil for `….num_batches_tracked`, which MSQ does not keep (BN momentum is fixed), and for Swin's
/// `….relative_position_index`, a constant MSQ computes from the window size: load such a state
/// dict with `load_state_dict(strict=False)`, or skip those keys when importing one.
/// Does not check that `name` exists in the model.
public func parameterPath(forPyTorchName name: String, model: ModelKind) -> String? {
    isPyTorchOnly(name) || isMSQOnly(name) ? nil : name
}

/// Every parameter and buffer of `model` (a model of kind `kind`) under its PyTorch state_dict
/// name, in ``Module/namedParameters()`` order; MSQ-only tensors are left out.
///
/// Values are the stored tensors as they are (latent float weights, not quantized ones).
public func pytorchStateDict(of model: any Module, kind: ModelKind) -> [(name: String, value: Tensor)] {
    model.namedParameters().compactMap { path, parameter in
        pytorchName(forParameterPath: path, model: kind).map { ($0, parameter.value) }
    }
}

/// Whether `path` names a tensor only MSQ's quantized layers have.
func isMSQOnly(_ path: String) -> Bool {
    let components = path.split(separator: ".")
    return components.last == "input_alpha" || components.contains("bsq") || components.contains("csq")
}

/// Whether `name` is a PyTorch buffer MSQ does not keep: BN's `num_batches_tracked`, Swin's
/// `relative_position_index`.
func isPyTorchOnly(_ name: String) -> Bool {
    let last = lastComponent(of: name)
    return last == "num_batches_tracked" || last == "relative_position_index"
}

func lastComponent(of path: String) -> Substring {
    path.split(separator: ".").last ?? Substring(path)
}
