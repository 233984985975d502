/// Loader for Fashion-MNIST (and any MNIST-style pair of IDX files): 1-channel images, 10 classes.
public enum FashionMNIST {
    /// Where Debian's `dataset-fashion-mnist` package installs the files.
    public static let defaultDirectory = "/usr/share/datasets/fashion-mnist"
    /// Number of classes.
    public static let numClasses = 10
    /// Class names, indexed by label.
    public static let classNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    /// The image and label file names of a split, without the optional `.gz` suffix.
    public static func fileNames(for split: DataSplit) -> (images: String, labels: String) {
        let stem = split == .train ? "train" : "t10k"
        return ("\(stem)-images-idx3-ubyte", "\(stem)-labels-idx1-ubyte")
    }

    /// Loads a split as `[N, 1, rows, cols]` floats (pixels / 255) and labels in 0..<10.
    ///
    /// Each file may be gzipped (`.gz`) or plain; the plain one is used when both exist. `limit`
    /// keeps only the first `limit` samples (it must be at least 1).
    public static func load(directory: String = defaultDirectory, split: DataSplit,
                            limit: Int? = nil) throws(DataError) -> InMemoryDataset {
        let name = "fashion-mnist/\(split.rawValue)"
        try validateLimit(limit, dataset: name)
        guard FileBytes.isDirectory(directory) else { throw .missingDirectory(path: directory, dataset: "Fashion-MNIST") }
        let (imagesName, labelsName) = fileNames(for: split)
        let expected = ["\(imagesName)(.gz)", "\(labelsName)(.gz)"]
        let imagesPath = try locate(imagesName, in: directory, expected: expected)
        let labelsPath = try locate(labelsName, in: directory, expected: expected)

        let images = try IDXFile.read(path: imagesPath, expectedMagic: IDXFile.imagesMagic)
        let labels = try IDXFile.read(path: labelsPath, expectedMagic: IDXFile.labelsMagic)
        let (total, rows, cols) = (images.dimensions[0], images.dimensions[1], images.dimensions[2])
        guard rows > 0, cols > 0 else {
            throw .inconsistentHeader(path: imagesPath, reason: "image size \(rows)×\(cols) is empty")
        }
        guard total == labels.dimensions[0] else {
            throw .countMismatch(imagesPath: imagesPath, images: total, labelsPath: labelsPath, labels: labels.dimensions[0])
        }
        let n = min(total, limit ?? total)
        let labelValues = try checkedLabels(labels.data.prefix(n), path: labelsPath, numClasses: numClasses)
        let pixels = Tensor(pixelBytes: images.data, count: n * rows * cols, shape: [n, 1, rows, cols])
        return InMemoryDataset(unchecked: name, images: pixels, labels: labelValues, numClasses: numClasses)
    }

    /// The plain file if present, else the `.gz` one.
    private static func locate(_ file: String, in directory: String, expected: [String]) throws(DataError) -> String {
        for candidate in [file, file + ".gz"] {
            let path = FileBytes.join(directory, candidate)
            if FileBytes.exists(path) { return path }
        }
        throw .missingFile(directory: directory, file: "\(file) or \(file).gz", expected: expected)
    }
}

/// Label bytes as Int32, refusing any value ≥ `numClasses` with its index.
func checkedLabels(_ bytes: some Collection<UInt8>, path: String, numClasses: Int) throws(DataError) -> [Int32] {
    var out: [Int32] = []
    out.reserveCapacity(bytes.count)
    for (i, b) in bytes.enumerated() {
        guard Int(b) < numClasses else {
            throw .labelOutOfRange(path: path, index: i, value: Int(b), numClasses: numClasses)
        }
        out.append(Int32(b))
    }
    return out
}

extension Tensor {
    /// The first `count` bytes of `bytes` as floats `byte / 255`, reshaped to `shape`.
    init(pixelBytes bytes: some Collection<UInt8>, count: Int, shape: [Int]) {
        self.init(shape: shape)
        withUnsafeMutablePointer { p in
            var i = 0
            // Division rather than multiplication by 1/255 matches torchvision's ToTensor bit for bit.
            for b in bytes.prefix(count) {
                p[i] = Float(b) / 255
                i += 1
            }
        }
    }
}
