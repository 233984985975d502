// Dense bit packing of n-bit two's-complement codes, the storage of a deployed quantized layer.
//
// Layout (the `.msqmodel` payload uses exactly this): code i occupies stream bits
// `[i·n, (i+1)·n)`, least significant bit first, and stream bit k is bit `k mod 8` of byte
// `k / 8`. Equivalently, the bytes are the little-endian integer
//
//     Σ_i (j_i mod 2^n) · 2^(i·n)
//
// so `count` codes take exactly `ceil(count·n / 8)` bytes; the unused high bits of the last byte
// are zero. Example, n = 3, codes [−1, 2, −4] → fields 0b111, 0b010, 0b100 → bits
// `1,1,1, 0,1,0, 0,0,1` (stream order) → bytes `[0b0001_0111, 0b0000_0001]` = `[0x17, 0x01]`.

/// The bit widths ``bitPack(codes:bits:)`` and ``bitUnpack(_:count:bits:)`` accept: 1…16
/// (RoundClamp's range; MSQ schemes use 2…16).
public let bitPackRange: ClosedRange<Int> = 1...16

/// Number of bytes `count` codes of `bits` bits occupy when packed: `ceil(count · bits / 8)`.
/// - Precondition: `count ≥ 0` and `bits ≥ 0` (sizes, not user data; callers validate first).
public func packedByteCount(count: Int, bits: Int) -> Int {
    precondition(count >= 0 && bits >= 0, "packedByteCount: negative count \(count) or bits \(bits)")
    return (count * bits + 7) / 8
}

/// Packs n-bit two's-complement codes densely, LSB first (see the layout above).
///
/// Shapes: `codes.count` codes → `ceil(codes.count · bits / 8)` bytes.
/// - Parameters:
///   - codes: integers in `[−2^(n−1), 2^(n−1) − 1]`, e.g. RoundClamp's j_n.
///   - bits: n, in ``bitPackRange``.
/// - Throws: ``PackedModelError/invalidBits(_:)`` for n outside 1…16;
///   ``PackedModelError/codeOutOfRange(index:code:bits:)`` for the first code that does not fit
///   n bits (nothing is silently truncated: that would change the model).
public func bitPack(codes: [Int32], bits: Int) throws(PackedModelError) -> [UInt8] {
    guard bitPackRange.contains(bits) else { throw .invalidBits(bits) }
    let low = -(Int32(1) << (bits - 1)), high = (Int32(1) << (bits - 1)) - 1
    if let bad = codes.firstIndex(where: { $0 < low || $0 > high }) {
        throw .codeOutOfRange(index: bad, code: Int(codes[bad]), bits: bits)
    }
    let mask = (UInt64(1) << bits) - 1
    var out = [UInt8]()
    out.reserveCapacity(packedByteCount(count: codes.count, bits: bits))
    // A 64-bit accumulator holds < 8 pending bits plus one ≤ 16-bit field, so it never overflows.
    var acc: UInt64 = 0
    var pending = 0
    for j in codes {
        acc |= (UInt64(UInt32(bitPattern: j)) & mask) << pending
        pending += bits
        while pending >= 8 {
            out.append(UInt8(truncatingIfNeeded: acc))
            acc >>= 8
            pending -= 8
        }
    }
    if pending > 0 { out.append(UInt8(truncatingIfNeeded: acc)) }
    return out
}

/// Unpacks `count` n-bit codes written by ``bitPack(codes:bits:)``, sign-extending each to Int32
/// (a field f ≥ 2^(n−1) becomes f − 2^n).
///
/// Shapes: exactly `ceil(count · bits / 8)` bytes → `count` codes in `[−2^(n−1), 2^(n−1) − 1]`.
/// - Throws: ``PackedModelError/invalidBits(_:)`` for n outside 1…16 (or a negative count);
///   ``PackedModelError/packedLengthMismatch(expected:actual:)`` when the byte count is not
///   `ceil(count · bits / 8)`; ``PackedModelError/nonzeroPadding`` when the unused high bits of
///   the last byte are set (the bytes were not written by ``bitPack(codes:bits:)``).
public func bitUnpack<Bytes: Collection>(_ bytes: Bytes, count: Int, bits: Int) throws(PackedModelError) -> [Int32]
where Bytes.Element == UInt8 {
    guard bitPackRange.contains(bits), count >= 0 else { throw .invalidBits(bits) }
    let expected = packedByteCount(count: count, bits: bits)
    guard bytes.count == expected else { throw .packedLengthMismatch(expected: expected, actual: bytes.count) }
    let mask = (UInt64(1) << bits) - 1
    let signBit = UInt64(1) << (bits - 1)
    var out = [Int32]()
    out.reserveCapacity(count)
    var it = bytes.makeIterator()
    var acc: UInt64 = 0
    var available = 0
    for _ in 0..<count {
        while available < bits {
            // The length check above guarantees the iterator has the bytes this loop asks for.
            guard let b = it.next() else { throw .packedLengthMismatch(expected: expected, actual: bytes.count) }
            acc |= UInt64(b) << available
            available += 8
        }
        let field = acc & mask
        acc >>= bits
        available -= bits
        // Sign extension: the field is an n-bit two's-complement integer.
        out.append(field & signBit != 0 ? Int32(Int64(field) - Int64(mask) - 1) : Int32(field))
    }
    guard acc == 0 else { throw .nonzeroPadding }
    return out
}
