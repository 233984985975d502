/// The samples of another data set at given indices, in that order (a view: nothing is copied).
public struct DatasetSubset: Dataset {
    /// The data set the indices refer to.
    public let base: any Dataset
    /// The base's sample indices, in this view's order.
    public let indices: [Int]
    /// `<base name>/<part>`, e.g. `fashion-mnist/train/validation`.
    public let name: String

    /// The samples of `base` at `indices` (each in `0..<base.count`), named `base.name + "/" + part`.
    /// - Throws: ``DataError/invalidArgument(_:)`` for an index outside the base.
    public init(_ base: any Dataset, indices: [Int], part: String) throws(DataError) {
        if let bad = indices.first(where: { !(0..<base.count).contains($0) }) {
            throw .invalidArgument("\(base.name) has \(base.count) samples; index \(bad) is outside them")
        }
        self.base = base
        self.indices = indices
        self.name = base.name + "/" + part
    }

    /// Number of samples in the view.
    public var count: Int { indices.count }
    /// The base's sample shape.
    public var sampleShape: [Int] { base.sampleShape }
    /// The base's class count.
    public var numClasses: Int { base.numClasses }
    /// Copies the base's sample `indices[index]`.
    public func copySample(_ index: Int, into destination: UnsafeMutablePointer<Float>) {
        base.copySample(indices[index], into: destination)
    }
    /// The base's label of sample `indices[index]`.
    public func label(_ index: Int) -> Int32 { base.label(indices[index]) }
}

/// Splits `dataset` at random into a training part and a validation part of
/// round(`validationFraction` · N) samples (SMPQ-SPEC §2: α and the Shapley values are fitted on
/// data the weights never train on). The same seed gives the same split; both parts keep the base's
/// order, so a split is a selection, not a shuffle.
/// - Throws: ``DataError/invalidArgument(_:)`` when the fraction is not in (0, 1) or leaves a part empty.
public func randomSplit(_ dataset: any Dataset, validationFraction: Double,
                        seed: UInt64) throws(DataError) -> (train: DatasetSubset, validation: DatasetSubset) {
    guard validationFraction > 0 && validationFraction < 1 else {
        throw .invalidArgument("the validation fraction must be in (0, 1) (got \(validationFraction))")
    }
    let n = dataset.count
    let held = Int((validationFraction * Double(n)).rounded())
    guard held >= 1 && held < n else {
        throw .invalidArgument("a validation fraction of \(validationFraction) of \(dataset.name)'s \(n) samples leaves a part empty")
    }
    var rng = RandomSource(seed: seed, stream: [0x7661_6C69_64])
    var order = Array(0..<n)
    // A partial Fisher–Yates: the first `held` positions are a uniform random subset.
    for i in 0..<held { order.swapAt(i, i + rng.nextInt(below: n - i)) }
    let validation = Array(order[..<held]).sorted()
    var isHeld = [Bool](repeating: false, count: n)
    for i in validation { isHeld[i] = true }
    let train = (0..<n).filter { !isHeld[$0] }
    return (try DatasetSubset(dataset, indices: train, part: "train"), try DatasetSubset(dataset, indices: validation, part: "validation"))
}
