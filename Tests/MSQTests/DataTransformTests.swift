import MSQ
import Testing

@Suite("Data: augmentation and normalisation")
struct DataTransformTests {
    /// 1×3×3 image holding 1…9 row by row.
    private let image = Tensor(shape: [1, 3, 3], scalars: [1, 2, 3, 4, 5, 6, 7, 8, 9])

    @Test("a crop shift moves the image and fills with zeros")
    func crop() {
        let down = Augmentation.apply(.init(shiftY: 1, shiftX: -1, flip: false), to: image)
        #expect(down.scalars == [0, 4, 5, 0, 7, 8, 0, 0, 0])
        let up = Augmentation.apply(.init(shiftY: -2, shiftX: 2, flip: false), to: image)
        #expect(up.scalars == [0, 0, 0, 0, 0, 0, 3, 0, 0])
        #expect(Augmentation.apply(.init(shiftY: 0, shiftX: 0, flip: false), to: image).scalars == image.scalars)
    }

    @Test("a flip mirrors each row, after the crop")
    func flip() {
        #expect(Augmentation.apply(.init(shiftY: 0, shiftX: 0, flip: true), to: image).scalars
            == [3, 2, 1, 6, 5, 4, 9, 8, 7])
        // Crop column shift +1 gives rows [2, 3, 0]…; mirrored: [0, 3, 2]….
        #expect(Augmentation.apply(.init(shiftY: 0, shiftX: 1, flip: true), to: image).scalars
            == [0, 3, 2, 0, 6, 5, 0, 9, 8])
        // Every channel gets the same treatment.
        let two = Tensor(shape: [2, 1, 2], scalars: [1, 2, 3, 4])
        #expect(Augmentation.apply(.init(shiftY: 0, shiftX: 0, flip: true), to: two).scalars == [2, 1, 4, 3])
    }

    @Test("draws stay within the padding, reach every offset, and flip about half the time")
    func draws() {
        let aug = Augmentation(randomCropPadding: 2, horizontalFlip: true)
        var shifts = Set<Int>(), flips = 0
        for i in 0..<2000 {
            var rng = RandomSource(seed: 5, stream: [0, UInt64(i)])
            let d = aug.draw(using: &rng)
            #expect((-2...2).contains(d.shiftY) && (-2...2).contains(d.shiftX))
            shifts.insert(d.shiftY)
            shifts.insert(d.shiftX + 10)
            if d.flip { flips += 1 }
        }
        #expect(shifts == Set([-2, -1, 0, 1, 2, 8, 9, 10, 11, 12]))
        #expect(flips > 900 && flips < 1100)

        var rng = RandomSource(seed: 1)
        #expect(Augmentation.none.isIdentity)
        #expect(Augmentation.none.draw(using: &rng) == .init(shiftY: 0, shiftX: 0, flip: false))
        #expect(rng == RandomSource(seed: 1), "a disabled augmentation consumes no random numbers")
    }

    @Test("normalisation subtracts the channel mean and divides by its std")
    func normalize() throws {
        let norm = Normalization(mean: [0.5, 0.25], std: [0.5, 0.125])
        let x = Tensor(shape: [1, 2, 1, 2], scalars: [0, 1, 0.25, 0.5])
        #expect(norm.apply(to: x).scalars == [-1, 1, 0, 2])
        #expect(Normalization.fashionMNIST == Normalization(mean: [0.2860], std: [0.3530]))
        #expect(Normalization.cifar10.mean == [0.4914, 0.4822, 0.4465])
        #expect(Normalization.cifar10.std == [0.2470, 0.2435, 0.2616])
        #expect(throws: DataError.self) { try norm.validate(channels: 3) }
        #expect(throws: DataError.self) { try Normalization(mean: [0], std: [0]).validate(channels: 1) }
        try norm.validate(channels: 2)
    }

    @Test("fit computes per-channel mean and population std")
    func fit() throws {
        // Channel 0 holds 0 and 1 equally often; channel 1 is constant 0.25.
        let images = Tensor(shape: [2, 2, 1, 2], scalars: [0, 1, 0.25, 0.25, 1, 0, 0.25, 0.25])
        let ds = try InMemoryDataset(name: "fit", images: images, labels: [0, 1], numClasses: 2)
        let n = Normalization.fit(ds)
        #expect(n.mean == [0.5, 0.25])
        #expect(n.std == [0.5, 0])
    }

    @Test("in-memory data sets check their shapes and labels")
    func inMemoryValidation() throws {
        let images = Tensor(shape: [2, 1, 2, 2])
        #expect(throws: DataError.labelOutOfRange(path: "m", index: 1, value: 3, numClasses: 3)) {
            try InMemoryDataset(name: "m", images: images, labels: [0, 3], numClasses: 3)
        }
        #expect(throws: DataError.self) { try InMemoryDataset(name: "m", images: images, labels: [0], numClasses: 3) }
        #expect(throws: DataError.self) {
            try InMemoryDataset(name: "m", images: Tensor(shape: [2, 4]), labels: [0, 1], numClasses: 3)
        }
        let ds = try InMemoryDataset(name: "m", images: images, labels: [0, 2], numClasses: 3)
        #expect(ds.prefix(0).count == 0)
        #expect(ds.prefix(5).count == 2)
    }
}
