/// A training/test pair and its normalisation, chosen by dataset name.
public struct LoadedData: Sendable {
    /// Training images.
    public var train: any Dataset
    /// Test images.
    public var test: any Dataset
    /// Per-channel normalisation applied to both.
    public var normalization: Normalization
}

/// Shape, classes and normalisation of a named dataset (see ``DatasetCatalog/info(name:)``).
public struct DatasetInfo: Sendable, Equatable {
    /// Catalog name, e.g. `fashion-mnist`.
    public var name: String
    /// Shape of one sample, `[C, H, W]`.
    public var sampleShape: [Int]
    /// Number of classes.
    public var numClasses: Int
    /// Per-channel normalisation the catalog applies to this dataset.
    public var normalization: Normalization

    /// A description of data the catalog does not know (a packed model's input, for example).
    public init(name: String, sampleShape: [Int], numClasses: Int, normalization: Normalization) {
        self.name = name
        self.sampleShape = sampleShape
        self.numClasses = numClasses
        self.normalization = normalization
    }

    /// The name, sample shape and class count of `dataset`, with the `normalization` its images get.
    public init(_ dataset: any Dataset, normalization: Normalization) {
        self.init(name: dataset.name, sampleShape: dataset.sampleShape, numClasses: dataset.numClasses,
                  normalization: normalization)
    }
}

/// The datasets the `msq` command knows by name.
public enum DatasetCatalog {
    /// Names accepted by ``load(name:directory:limitTrain:limitTest:seed:)``.
    public static let names = ["fashion-mnist", "cifar10", "synthetic"]

    /// The `synthetic` set's normalisation (its pixels are 0.5·noise + 0.5·level, so mean ≈ 0.5).
    static let syntheticNormalization = Normalization(mean: [0.5, 0.5, 0.5], std: [0.204, 0.204, 0.204])

    /// What a model needs to know about dataset `name` without loading it: sample shape `[C, H, W]`,
    /// class count and the normalisation ``load(name:directory:limitTrain:limitTest:seed:)`` applies
    /// (fashion-mnist `[1, 28, 28]`, cifar10 and synthetic `[3, 32, 32]`, 10 classes each).
    /// `msq export` records these in the packed model, so `msq eval` needs nothing but the file.
    /// - Throws: ``DataError/invalidArgument(_:)`` for an unknown name, listing the valid ones.
    public static func info(name: String) throws(DataError) -> DatasetInfo {
        switch name {
        case "fashion-mnist":
            return DatasetInfo(name: name, sampleShape: [1, 28, 28], numClasses: 10, normalization: .fashionMNIST)
        case "cifar10":
            return DatasetInfo(name: name, sampleShape: [3, 32, 32], numClasses: 10, normalization: .cifar10)
        case "synthetic":
            return DatasetInfo(name: name, sampleShape: [3, 32, 32], numClasses: 10, normalization: syntheticNormalization)
        default:
            throw .invalidArgument("unknown dataset \(name); choose one of \(names.joined(separator: ", "))")
        }
    }

    /// Loads `name` from `directory` (Fashion-MNIST defaults to Debian's install location; CIFAR-10
    /// needs a directory; `synthetic` makes 3×32×32 images, `limitTrain` of them, default 1024; its test split repeats the
    /// first training images, so it measures speed, not generalisation).
    public static func load(name: String, directory: String?, limitTrain: Int?, limitTest: Int?,
                            seed: UInt64) throws(DataError) -> LoadedData {
        switch name {
        case "fashion-mnist":
            let dir = directory ?? FashionMNIST.defaultDirectory
            return LoadedData(train: try FashionMNIST.load(directory: dir, split: .train, limit: limitTrain),
                              test: try FashionMNIST.load(directory: dir, split: .test, limit: limitTest),
                              normalization: .fashionMNIST)
        case "cifar10":
            guard let dir = directory else {
                throw .invalidArgument("cifar10 needs --data-dir: the folder with data_batch_1.bin … data_batch_5.bin and test_batch.bin")
            }
            return LoadedData(train: try CIFAR10.load(directory: dir, split: .train, limit: limitTrain),
                              test: try CIFAR10.load(directory: dir, split: .test, limit: limitTest),
                              normalization: .cifar10)
        case "synthetic":
            return LoadedData(train: try SyntheticDataset(count: limitTrain ?? 1024, seed: seed, name: "synthetic/train"),
                              test: try SyntheticDataset(count: limitTest ?? 256, seed: seed, name: "synthetic/test"),
                              normalization: syntheticNormalization)
        default:
            throw .invalidArgument("unknown dataset \(name); choose one of \(names.joined(separator: ", "))")
        }
    }
}
