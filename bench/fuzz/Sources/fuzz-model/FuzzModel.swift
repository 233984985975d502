import FuzzSupport
import MSQ

/// Reads `bytes` as a packed model; one that is accepted must decode every tensor, report its
/// sizes, serialize back to the same bytes (format 2), and build its network or refuse to.
func check(_ bytes: [UInt8]) {
    guard let packed = try? PackedModel(serialized: bytes, source: "fuzz") else { return }
    for entry in packed.header.tensors {
        if let tensor = try? packed.tensor(named: entry.name) {
            precondition(tensor.shape == entry.shape, "model: decoded \(entry.name) has the wrong shape")
        }
    }
    precondition(packed.sizeBreakdown.totalBytes == bytes.count, "model: size breakdown disagrees with the file")
    if bytes.count > 8 && bytes[8] == 2 {
        precondition(packed.serialized() == bytes, "model: does not serialize back to its bytes")
    }
    _ = try? packed.makeModule()
}

/// libFuzzer entry point for the .msqmodel reader: each input is read as is and resealed
/// (checksum recomputed, so the header and table checks see every mutation).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzModel(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    check(bytes)
    check(resealed(bytes))
    return 0
}
