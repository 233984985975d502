/// Per-channel normalisation `x ↦ (x − mean[c]) / std[c]`, as torchvision's `Normalize`.
public struct Normalization: Sendable, Equatable, Codable {
    /// Mean of each channel.
    public var mean: [Float]
    /// Standard deviation of each channel.
    public var std: [Float]

    /// Normalisation with one mean and one standard deviation per channel.
    public init(mean: [Float], std: [Float]) {
        self.mean = mean
        self.std = std
    }

    /// Fashion-MNIST training-set statistics.
    public static let fashionMNIST = Normalization(mean: [0.2860], std: [0.3530])
    /// CIFAR-10 training-set statistics.
    public static let cifar10 = Normalization(mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616])

    /// Number of channels.
    public var channels: Int { mean.count }

    /// Checks that this normalisation fits samples with `channels` channels and has positive stds.
    public func validate(channels: Int) throws(DataError) {
        guard mean.count == channels, std.count == channels else {
            throw .invalidArgument("normalisation has \(mean.count) means and \(std.count) stds for \(channels)-channel images")
        }
        guard std.allSatisfy({ $0 > 0 && $0.isFinite }), mean.allSatisfy(\.isFinite) else {
            throw .invalidArgument("normalisation needs finite means and positive stds (got mean \(mean), std \(std))")
        }
    }

    /// The per-channel mean and (population) standard deviation of every pixel of `dataset`.
    ///
    /// Computed on raw [0, 1] samples, as the presets were; an empty data set gives zeros.
    public static func fit(_ dataset: some Dataset) -> Normalization {
        let shape = dataset.sampleShape
        let c = shape[0], plane = shape.dropFirst().reduce(1, *)
        var sum = [Double](repeating: 0, count: c), sumSq = [Double](repeating: 0, count: c)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(c * plane, 1))
        defer { scratch.deallocate() }
        for i in 0..<dataset.count {
            dataset.copySample(i, into: scratch)
            for ch in 0..<c {
                // Double sums: 60k·784 Float additions would lose the third decimal of the mean.
                var s: Double = 0, q: Double = 0
                let p = scratch + ch * plane
                for j in 0..<plane {
                    let x = Double(p[j])
                    s += x
                    q += x * x
                }
                sum[ch] += s
                sumSq[ch] += q
            }
        }
        let n = Double(max(dataset.count * plane, 1))
        let mean = sum.map { $0 / n }
        let std = zip(sumSq, mean).map { (q, m) in (max(q / n - m * m, 0)).squareRoot() }
        return Normalization(mean: mean.map(Float.init), std: std.map(Float.init))
    }

    /// Normalises `channels` planes of `plane` floats in place.
    func apply(to p: UnsafeMutablePointer<Float>, plane: Int) {
        for ch in 0..<mean.count {
            let m = mean[ch], s = std[ch]
            let q = p + ch * plane
            // Subtract then divide, like torchvision, so values match it exactly.
            for j in 0..<plane { q[j] = (q[j] - m) / s }
        }
    }

    /// A normalised copy of `images`, shape `[N, C, H, W]` or `[C, H, W]` with `C == channels`.
    public func apply(to images: Tensor) -> Tensor {
        let shape = images.shape
        precondition(shape.count >= 3 && shape[shape.count - 3] == channels,
                     "Normalization: \(channels) channels do not fit a tensor of shape \(shape)")
        let plane = shape[shape.count - 2] * shape[shape.count - 1]
        let samples = images.count / max(channels * plane, 1)
        var out = images
        out.withUnsafeMutablePointer { p in
            for i in 0..<samples { apply(to: p + i * channels * plane, plane: plane) }
        }
        return out
    }
}
