import FuzzSupport
import MSQ

/// libFuzzer entry point for the CIFAR-10 reader: plain inputs go to `CIFAR10.parseRecords`;
/// gzip inputs are written as `test_batch.bin` and loaded as a split (gunzip, records, tensor).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCIFAR(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    if bytes.starts(with: [0x1F, 0x8B]) {
        let path = scratchPath("test_batch.bin")
        writeScratch(bytes, to: path)
        let directory = String(path.dropLast("/test_batch.bin".count))
        if let split = try? CIFAR10.load(directory: directory, split: .test) {
            precondition(split.sampleShape == CIFAR10.sampleShape, "CIFAR-10: wrong sample shape")
            precondition((0..<split.count).allSatisfy { (0..<10).contains(split.label($0)) }, "CIFAR-10: label out of range")
        }
        return 0
    }
    for limit in [Int.max, 1] {
        if let records = try? CIFAR10.parseRecords(bytes, path: "fuzz", limit: limit) {
            precondition(records.pixels.count == records.labels.count * 3072, "CIFAR-10: pixels and labels disagree")
            precondition(records.labels.allSatisfy { (0..<10).contains($0) }, "CIFAR-10: label out of range")
        }
    }
    return 0
}
