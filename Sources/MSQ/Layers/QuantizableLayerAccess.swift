// What quantizers attach to is a Conv2d or a Linear; these read and set their quantizer slots
// without every caller spelling out both types (methods, deployment, Hessian inspection).

/// The stored weight of a Conv2d or Linear (nil for other modules).
func layerWeight(of module: any Module) -> Parameter? {
    (module as? Conv2d)?.weight ?? (module as? Linear)?.weight
}

/// The weight transform of a Conv2d or Linear (nil for other modules and float layers).
func layerWeightTransform(of module: any Module) -> (any WeightTransform)? {
    (module as? Conv2d)?.weightTransform ?? (module as? Linear)?.weightTransform
}

/// The PACT input quantizer of a Conv2d or Linear (nil for other modules and float inputs).
func layerInputQuantizer(of module: any Module) -> PACTQuantizer? {
    (module as? Conv2d)?.inputQuantizer ?? (module as? Linear)?.inputQuantizer
}

/// Sets the weight transform of a Conv2d or Linear (nothing for other modules); nil makes it float.
func setWeightTransform(_ transform: (any WeightTransform)?, of module: any Module) {
    if let conv = module as? Conv2d {
        conv.weightTransform = transform
    } else if let linear = module as? Linear {
        linear.weightTransform = transform
    }
}

/// Attaches `transform` as the weight transform of a Conv2d or Linear (nothing for other modules).
func attachWeightTransform(_ transform: any WeightTransform, to module: any Module) {
    setWeightTransform(transform, of: module)
}

/// Removes a Conv2d's or Linear's weight transform and input quantizer: the layer computes in float.
func removeQuantizers(from module: any Module) {
    setWeightTransform(nil, of: module)
    (module as? Conv2d)?.inputQuantizer = nil
    (module as? Linear)?.inputQuantizer = nil
}
