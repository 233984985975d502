/// The models ``makeModel(_:inputChannels:numClasses:seed:inputSize:)`` builds, by their command-line names.
public enum ModelKind: String, CaseIterable, Sendable {
    /// CIFAR ResNet-20 (n = 3), 0.27 M parameters.
    case resnet20
    /// CIFAR ResNet-32 (n = 5).
    case resnet32
    /// CIFAR ResNet-56 (n = 9).
    case resnet56
    /// ImageNet ResNet-18 (BasicBlock [2, 2, 2, 2]).
    case resnet18
    /// ImageNet ResNet-50 (Bottleneck [3, 4, 6, 3]).
    case resnet50
    /// MobileNetV3-Large (torchvision's), strides adapted below 64-pixel inputs.
    case mobilenetv3Large = "mobilenetv3-large"
    /// MobileNetV3-Small (torchvision's), strides adapted below 64-pixel inputs.
    case mobilenetv3Small = "mobilenetv3-small"
    /// DeiT-Tiny (timm's vision transformer: dim 192, depth 12, 3 heads, patch 16); patch 4 and
    /// depth 6 below 64-pixel inputs.
    case deitTiny = "deit-tiny"
    /// DeiT-Small (dim 384, depth 12, 6 heads, patch 16); patch 4 and depth 6 below 64-pixel inputs.
    case deitSmall = "deit-small"
    /// Swin-T (torchvision's swin_t, v1: embed 96, depths [2, 2, 6, 2], heads [3, 6, 12, 24],
    /// window 7, patch 4); below 64-pixel inputs patch 2 and three stages of two blocks
    /// (``SwinTransformer/Configuration/swinTinySmallInput``).
    case swinTiny = "swin-t"

    /// The kind named `name` (e.g. `resnet20`).
    /// - Throws: ``ModelError/unknownModel(name:valid:)`` listing the valid names.
    public init(name: String) throws(ModelError) {
        guard let kind = ModelKind(rawValue: name) else {
            throw .unknownModel(name: name, valid: ModelKind.allCases.map(\.rawValue))
        }
        self = kind
    }

    /// Whether this is a CIFAR-style (small-image) network.
    public var isCIFARStyle: Bool {
        switch self {
        case .resnet20, .resnet32, .resnet56: return true
        case .resnet18, .resnet50, .mobilenetv3Large, .mobilenetv3Small, .deitTiny, .deitSmall, .swinTiny: return false
        }
    }

    /// Whether this is a transformer (DeiT or Swin), which `msq train` trains with AdamW by default.
    public var isTransformer: Bool {
        visionTransformerConfiguration(self, inputSize: 224) != nil || swinConfiguration(self, inputSize: 224) != nil
    }
}

/// Why a model could not be built.
public enum ModelError: Error, Equatable, CustomStringConvertible {
    /// No model has this name; `valid` lists the names that exist.
    case unknownModel(name: String, valid: [String])
    /// The model cannot take images of this size; `requirement` says which it can.
    case unsupportedImageSize(model: String, height: Int, width: Int, requirement: String)

    /// A message naming the unknown model and listing the valid names, or the image size a model
    /// cannot take and the sizes it can.
    public var description: String {
        switch self {
        case let .unknownModel(name, valid):
            return "unknown model '\(name)'; valid models: \(valid.joined(separator: ", "))"
        case let .unsupportedImageSize(model, height, width, requirement):
            return "\(model) cannot take \(height)×\(width) images: \(requirement)"
        }
    }
}

/// The random stream model initialisation draws from: `RandomSource(seed: seed, stream: [modelInitStream])`,
/// independent of any other use of the same seed (shuffling, augmentation).
public let modelInitStream: UInt64 = 0x6D6F_6465_6C69_6E69 // "modelini"

/// Below this many pixels of height, ``makeModel(_:inputChannels:numClasses:seed:inputSize:)``
/// builds MobileNetV3 with ``MobileNetV3/smallInput`` strides (28×28 and 32×32 images).
public let mobileNetSmallInputLimit = 64

/// The vision transformer shape of a DeiT kind at `inputSize`: DeiT's own at ImageNet sizes; below
/// ``mobileNetSmallInputLimit`` pixels patch 4 (a 28×28 image is 7×7 = 49 patches, where patch 16
/// would leave one) and depth 6, half DeiT's, which a few epochs on 10k images can train.
public func visionTransformerConfiguration(_ kind: ModelKind, inputSize: Int) -> VisionTransformer.Configuration? {
    var c: VisionTransformer.Configuration
    switch kind {
    case .deitTiny: c = .deitTiny
    case .deitSmall: c = .deitSmall
    default: return nil
    }
    if inputSize < mobileNetSmallInputLimit {
        c.patch = 4
        c.depth = 6
    }
    return c
}

/// The Swin shape of a Swin kind at `inputSize` (the images' height): torchvision's swin_t at
/// ImageNet sizes; below ``mobileNetSmallInputLimit`` pixels ``SwinTransformer/Configuration/swinTinySmallInput``
/// (patch 2 and three stages of two blocks: patch 4 would leave a 28×28 image 7 × 7 tokens, one
/// window, so no block would shift, and the fourth stage would be a single padded token). Nil for
/// other kinds.
public func swinConfiguration(_ kind: ModelKind, inputSize: Int) -> SwinTransformer.Configuration? {
    guard kind == .swinTiny else { return nil }
    return inputSize < mobileNetSmallInputLimit ? .swinTinySmallInput : .swinTiny
}

/// Refuses an image size `kind` cannot be built for: a DeiT needs square images whose side is a
/// multiple of its patch (``visionTransformerConfiguration(_:inputSize:)``); a Swin needs sides
/// that are multiples of its patch (``swinConfiguration(_:inputSize:)``; it pads to its windows
/// and merges itself). The convolutional kinds take any size from ``RunLimits/minimumImageSize``
/// up (the trainer checks that).
/// - Throws: ``ModelError/unsupportedImageSize(model:height:width:requirement:)``.
public func checkImageSize(_ kind: ModelKind, height: Int, width: Int) throws(ModelError) {
    if let c = swinConfiguration(kind, inputSize: height) {
        guard height >= c.patch, width >= c.patch, height % c.patch == 0, width % c.patch == 0 else {
            throw .unsupportedImageSize(model: kind.rawValue, height: height, width: width,
                                        requirement: "its sides must be multiples of its patch size \(c.patch) at this size")
        }
        return
    }
    guard let c = visionTransformerConfiguration(kind, inputSize: height) else { return }
    guard height == width, height >= c.patch, height % c.patch == 0 else {
        throw .unsupportedImageSize(model: kind.rawValue, height: height, width: width,
                                    requirement: "it needs square images whose side is a multiple of its patch size \(c.patch) at this size")
    }
}

/// Builds a freshly initialised model; the same seed always gives the same parameters.
///
/// CIFAR kinds are ``CIFARResNet``s, ImageNet kinds ``ImageNetResNet``s, MobileNetV3 kinds
/// ``MobileNetV3``s, with the small-input strides and ``MobileNetV3/shortRunBatchNormMomentum``
/// when `inputSize` (the images' height) is below ``mobileNetSmallInputLimit``; nil means
/// ImageNet-sized (torchvision's strides and batch-norm momentum). DeiT kinds are
/// ``VisionTransformer``s for square `inputSize` images (nil: 224), shaped by
/// ``visionTransformerConfiguration(_:inputSize:)`` (a size it cannot take is a programming error
/// here; ``checkImageSize(_:height:width:)`` refuses it with a message). The Swin kind is a
/// ``SwinTransformer`` shaped by ``swinConfiguration(_:inputSize:)``. Input
/// `[N, inputChannels, H, W]`, output logits `[N, numClasses]`.
public func makeModel(_ kind: ModelKind, inputChannels: Int, numClasses: Int, seed: UInt64,
                      inputSize: Int? = nil) -> any Module {
    var rng = RandomSource(seed: seed, stream: [modelInitStream])
    switch kind {
    case .resnet20: return CIFARResNet(depth: 20, inputChannels: inputChannels, numClasses: numClasses, rng: &rng)
    case .resnet32: return CIFARResNet(depth: 32, inputChannels: inputChannels, numClasses: numClasses, rng: &rng)
    case .resnet56: return CIFARResNet(depth: 56, inputChannels: inputChannels, numClasses: numClasses, rng: &rng)
    case .resnet18:
        return ImageNetResNet(block: .basic, layers: [2, 2, 2, 2], inputChannels: inputChannels,
                              numClasses: numClasses, rng: &rng)
    case .resnet50:
        return ImageNetResNet(block: .bottleneck, layers: [3, 4, 6, 3], inputChannels: inputChannels,
                              numClasses: numClasses, rng: &rng)
    case .mobilenetv3Large, .mobilenetv3Small:
        let small = (inputSize ?? 224) < mobileNetSmallInputLimit
        return MobileNetV3(kind == .mobilenetv3Large ? .large : .small, inputChannels: inputChannels, numClasses: numClasses,
                           smallInput: small,
                           batchNormMomentum: small ? MobileNetV3.shortRunBatchNormMomentum : MobileNetV3.torchvisionBatchNormMomentum,
                           rng: &rng)
    case .swinTiny:
        // swinConfiguration covers every Swin kind
        let c = swinConfiguration(kind, inputSize: inputSize ?? 224) ?? .swinTiny
        return SwinTransformer(c, inputChannels: inputChannels, numClasses: numClasses, rng: &rng)
    case .deitTiny, .deitSmall:
        let size = inputSize ?? 224
        // visionTransformerConfiguration covers every DeiT kind
        let c = visionTransformerConfiguration(kind, inputSize: size) ?? .deitTiny
        return VisionTransformer(c, inputChannels: inputChannels, numClasses: numClasses, imageSize: size, rng: &rng)
    }
}

/// Builds a model by name (`resnet20`, …) for square images of side `inputSize`; see
/// ``makeModel(_:inputChannels:numClasses:seed:inputSize:)``.
/// - Throws: ``ModelError/unknownModel(name:valid:)`` listing the valid names, or
///   ``ModelError/unsupportedImageSize(model:height:width:requirement:)``.
public func makeModel(named name: String, inputChannels: Int, numClasses: Int, seed: UInt64,
                      inputSize: Int? = nil) throws(ModelError) -> any Module {
    let kind = try ModelKind(name: name)
    if let inputSize { try checkImageSize(kind, height: inputSize, width: inputSize) }
    return makeModel(kind, inputChannels: inputChannels, numClasses: numClasses, seed: seed, inputSize: inputSize)
}
