import FuzzSupport
import MSQ

/// libFuzzer entry point for the IDX reader: plain inputs go to `IDXFile(parsing:)` under both
/// magics (images, labels); gzip inputs go through the file reader (CGzip) as the loaders use it.
/// A parsed file must serialize back to the input byte for byte.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIDX(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    if bytes.starts(with: [0x1F, 0x8B]) {
        let path = scratchPath("fuzz-idx.gz")
        writeScratch(bytes, to: path)
        for magic in [IDXFile.imagesMagic, IDXFile.labelsMagic] { _ = try? IDXFile.read(path: path, expectedMagic: magic) }
        return 0
    }
    for magic in [IDXFile.imagesMagic, IDXFile.labelsMagic] {
        if let file = try? IDXFile(parsing: bytes, path: "fuzz", expectedMagic: magic) {
            precondition(file.serialized() == bytes, "IDX: a parsed file does not serialize back to its bytes")
            precondition(file.data.count == file.dimensions.reduce(1, *), "IDX: data does not fill the dimensions")
        }
    }
    return 0
}
