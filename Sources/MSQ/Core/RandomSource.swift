/// A small, fast, seedable generator (xoshiro256**) whose whole state can be saved and restored.
///
/// Checkpoints store ``state`` so a resumed run draws exactly the numbers an uninterrupted one would.
public struct RandomSource: RandomNumberGenerator, Sendable, Equatable {
    /// The four 64-bit words of generator state.
    public var state: (UInt64, UInt64, UInt64, UInt64)

    /// Seeds the state with SplitMix64, as the xoshiro authors recommend.
    public init(seed: UInt64) {
        var sm = seed
        func next() -> UInt64 {
            sm &+= 0x9E37_79B9_7F4A_7C15
            var z = sm
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = (next(), next(), next(), next())
    }

    /// A generator for an independent stream derived from `seed` and a list of stream keys
    /// (e.g. `[epoch, batchIndex]`), so work can be reproduced without replaying earlier draws.
    public init(seed: UInt64, stream: [UInt64]) {
        var h = seed
        for k in stream { h = RandomSource.mix(h ^ RandomSource.mix(k &+ 0x632B_E59B_D9B4_E019)) }
        self.init(seed: h)
    }

    /// Restores a saved state.
    public init(state: (UInt64, UInt64, UInt64, UInt64)) { self.state = state }

    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = rotl(state.1 &* 5, 7) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = rotl(state.3, 45)
        return result
    }

    @inline(__always) private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// Uniform in [0, 1) with 24 bits of precision.
    public mutating func nextUnitFloat() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// Standard normal by Box–Muller.
    public mutating func nextGaussian() -> Float {
        let u1 = max(Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0), 1e-300)
        let u2 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
        return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
    }

    /// Uniform integer in 0..<bound (bound > 0), unbiased.
    public mutating func nextInt(below bound: Int) -> Int {
        precondition(bound > 0, "RandomSource.nextInt(below:) needs a positive bound")
        return Int(next(upperBound: UInt64(bound)))
    }

    public static func == (a: RandomSource, b: RandomSource) -> Bool {
        a.state.0 == b.state.0 && a.state.1 == b.state.1 && a.state.2 == b.state.2 && a.state.3 == b.state.3
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func _log(_ x: Double) -> Double { Glibc.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Glibc.cos(x) }
#elseif canImport(Darwin)
import Darwin
@inline(__always) func _log(_ x: Double) -> Double { Darwin.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Darwin.cos(x) }
#endif

extension Tensor {
    /// Normal(0, std²) samples drawn from `rng`.
    public static func randomNormal(_ shape: [Int], std: Float, using rng: inout RandomSource) -> Tensor {
        var t = Tensor(shape: shape)
        let n = t.count
        t.withUnsafeMutablePointer { p in
            for i in 0..<n { p[i] = rng.nextGaussian() * std }
        }
        return t
    }

    /// Uniform(-bound, bound) samples drawn from `rng`.
    public static func randomUniform(_ shape: [Int], bound: Float, using rng: inout RandomSource) -> Tensor {
        var t = Tensor(shape: shape)
        let n = t.count
        t.withUnsafeMutablePointer { p in
            for i in 0..<n { p[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
        }
        return t
    }
}
