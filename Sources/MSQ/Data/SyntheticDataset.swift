/// A seeded, deterministic data set of any shape that generates samples on demand.
///
/// Nothing is stored, so 3×224×224 sets of any size cost no memory. Sample `i` has label
/// `i % numClasses` and pixels `0.5·noise + 0.5·level`, where the noise comes from
/// `RandomSource(seed:, stream: [i])` and `level` is a per-class constant for each channel and
/// image quadrant — a weak but learnable signal, so a training smoke test can see the loss fall.
public struct SyntheticDataset: Dataset {
    /// Short name used in messages.
    public let name: String
    /// Number of samples.
    public let count: Int
    /// Shape of one sample, `[C, H, W]`.
    public let sampleShape: [Int]
    /// Number of classes.
    public let numClasses: Int
    /// Seed of every sample's generator.
    public let seed: UInt64

    /// A synthetic set of `count` samples of shape `[C, H, W]` in `numClasses` classes.
    public init(count: Int, sampleShape: [Int] = [3, 32, 32], numClasses: Int = 10, seed: UInt64 = 0,
                name: String = "synthetic") throws(DataError) {
        guard count >= 1 else { throw .invalidArgument("\(name): count must be at least 1 (got \(count))") }
        guard sampleShape.count == 3, sampleShape.allSatisfy({ $0 >= 1 }) else {
            throw .invalidArgument("\(name): sample shape must be [C, H, W] with positive sizes (got \(sampleShape))")
        }
        guard numClasses >= 1 else { throw .invalidArgument("\(name): numClasses must be at least 1 (got \(numClasses))") }
        self.name = name
        self.count = count
        self.sampleShape = sampleShape
        self.numClasses = numClasses
        self.seed = seed
    }

    /// Generates sample `index` into `destination` (`C·H·W` floats in [0, 1)).
    public func copySample(_ index: Int, into destination: UnsafeMutablePointer<Float>) {
        precondition(index >= 0 && index < count, "\(name): sample \(index) out of range 0..<\(count)")
        let (c, h, w) = (sampleShape[0], sampleShape[1], sampleShape[2])
        // Class levels use their own stream family ([tag, class]) so they never coincide with a
        // sample's noise stream ([index]).
        var classRNG = RandomSource(seed: seed, stream: [0x5EED_C1A5, UInt64(label(index))])
        let levels = (0..<(4 * c)).map { _ in classRNG.nextUnitFloat() }
        var rng = RandomSource(seed: seed, stream: [UInt64(index)])
        for ch in 0..<c {
            for y in 0..<h {
                let row = destination + (ch * h + y) * w
                let quadrantBase = 4 * ch + (2 * y >= h ? 2 : 0)
                for x in 0..<w {
                    let level = levels[quadrantBase + (2 * x >= w ? 1 : 0)]
                    row[x] = 0.5 * rng.nextUnitFloat() + 0.5 * level
                }
            }
        }
    }

    /// The label of sample `index`: `index % numClasses`, so classes are balanced.
    public func label(_ index: Int) -> Int32 { Int32(index % numClasses) }
}
