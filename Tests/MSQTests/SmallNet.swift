import MSQ

/// A model not in the catalog, built as a library user would: conv-BN-ReLU twice, global average
/// pooling, linear. Input `[N, 1, H, W]`, output `[N, classes]`.
func makeSmallNet(classes: Int = 4, seed: UInt64) -> Sequential {
    var rng = RandomSource(seed: seed)
    return Sequential(named: [
        ("conv1", Conv2d(inChannels: 1, outChannels: 8, kernelSize: 3, padding: 1, bias: false, rng: &rng)),
        ("bn1", BatchNorm2d(channels: 8)),
        ("relu1", Activation(.relu)),
        ("conv2", Conv2d(inChannels: 8, outChannels: 16, kernelSize: 3, stride: 2, padding: 1, bias: false, rng: &rng)),
        ("bn2", BatchNorm2d(channels: 16)),
        ("relu2", Activation(.relu)),
        ("pool", GlobalAvgPool2d()),
        ("fc", Linear(inFeatures: 16, outFeatures: classes, rng: &rng)),
    ])
}
