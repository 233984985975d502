/// A training/test pair and its normalisation, chosen by dataset name.
public struct LoadedData: Sendable {
    /// Training images.
    public var train: any Dataset
    /// Test images.
    public var test: any Dataset
    /// Per-channel normalisation applied to both.
    public var normalization: Normalization
}

/// The datasets the `msq` command knows by name.
public enum DatasetCatalog {
    /// Names accepted by ``load(name:directory:limitTrain:limitTest:seed:)``.
    public static let names = ["fashion-mnist", "cifar10", "synthetic"]

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
                              normalization: Normalization(mean: [0.5, 0.5, 0.5], std: [0.204, 0.204, 0.204]))
        default:
            throw .invalidArgument("unknown dataset \(name); choose one of \(names.joined(separator: ", "))")
        }
    }
}
