/// Training-time augmentation: random crop with zero padding, then random horizontal flip.
///
/// Runs on raw [0, 1] pixels *before* normalisation, as torchvision's
/// `RandomCrop(padding:) → RandomHorizontalFlip → ToTensor → Normalize` does, so padded pixels
/// are raw 0 and become `(0 − mean) / std` after normalisation.
public struct Augmentation: Sendable, Equatable, Codable {
    /// Pixels of zero padding on each side before cropping back to the original size (0 = off).
    public var randomCropPadding: Int
    /// Mirror left–right with probability 1/2.
    public var horizontalFlip: Bool

    /// An augmentation; `randomCropPadding` 0 and `horizontalFlip` false turn the parts off.
    public init(randomCropPadding: Int = 0, horizontalFlip: Bool = false) {
        self.randomCropPadding = randomCropPadding
        self.horizontalFlip = horizontalFlip
    }

    /// No augmentation.
    public static let none = Augmentation()

    /// Whether every sample passes through unchanged.
    public var isIdentity: Bool { randomCropPadding == 0 && !horizontalFlip }

    /// The random choices for one sample.
    public struct Draw: Sendable, Equatable {
        /// Row shift in `-padding...padding`: output row `y` shows input row `y + shiftY`.
        public var shiftY: Int
        /// Column shift in `-padding...padding`: output column `x` shows input column `x + shiftX`
        /// (before the flip).
        public var shiftX: Int
        /// Whether the cropped image is mirrored left–right.
        public var flip: Bool

        /// A draw with explicit choices.
        public init(shiftY: Int, shiftX: Int, flip: Bool) {
            self.shiftY = shiftY
            self.shiftX = shiftX
            self.flip = flip
        }
    }

    /// Draws the crop offset (row, then column) and then the flip, skipping disabled parts.
    public func draw(using rng: inout RandomSource) -> Draw {
        var d = Draw(shiftY: 0, shiftX: 0, flip: false)
        if randomCropPadding > 0 {
            let span = 2 * randomCropPadding + 1
            d.shiftY = rng.nextInt(below: span) - randomCropPadding
            d.shiftX = rng.nextInt(below: span) - randomCropPadding
        }
        if horizontalFlip { d.flip = rng.next() >> 63 == 1 }
        return d
    }

    /// Writes the shifted (zero-filled) and optionally mirrored `[C, H, W]` image to `destination`.
    ///
    /// `source` and `destination` must not overlap.
    public static func apply(_ draw: Draw, source: UnsafePointer<Float>, destination: UnsafeMutablePointer<Float>,
                             channels: Int, height: Int, width: Int) {
        for c in 0..<channels {
            let src = source + c * height * width, dst = destination + c * height * width
            for y in 0..<height {
                let row = dst + y * width
                let sy = y + draw.shiftY
                guard sy >= 0 && sy < height else {
                    row.update(repeating: 0, count: width)
                    continue
                }
                let srcRow = src + sy * width
                for x in 0..<width {
                    // With the flip, output column x is cropped column width−1−x.
                    let sx = (draw.flip ? width - 1 - x : x) + draw.shiftX
                    row[x] = sx >= 0 && sx < width ? srcRow[sx] : 0
                }
            }
        }
    }

    /// An augmented copy of a `[C, H, W]` image under explicit choices.
    public static func apply(_ draw: Draw, to image: Tensor) -> Tensor {
        precondition(image.shape.count == 3, "Augmentation: expected a [C, H, W] image, got \(image.shape)")
        var out = Tensor(shape: image.shape)
        image.withUnsafePointer { src in
            out.withUnsafeMutablePointer { dst in
                apply(draw, source: src, destination: dst,
                      channels: image.shape[0], height: image.shape[1], width: image.shape[2])
            }
        }
        return out
    }

    /// An augmented copy of a `[C, H, W]` image, drawing the choices from `rng`.
    public func apply(to image: Tensor, using rng: inout RandomSource) -> Tensor {
        Augmentation.apply(draw(using: &rng), to: image)
    }
}
