import Foundation
import MSQ

/// The fuzzer's input as an array (libFuzzer passes a null pointer for the empty input).
public func fuzzBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    guard let data, size > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: size))
}

/// FNV-1a 64, the checksum of checkpoints and packed models.
public func fnv1a64(_ bytes: ArraySlice<UInt8>) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}

/// `bytes` with its last 8 bytes replaced by the checksum of the rest: a mutation anywhere in
/// the file then passes the checksum and reaches the field parsers, as a file written by
/// another program (or a buggy version) would.
public func resealed(_ bytes: [UInt8]) -> [UInt8] {
    guard bytes.count >= 8 else { return bytes }
    var out = Array(bytes.dropLast(8))
    withUnsafeBytes(of: fnv1a64(out[...]).littleEndian) { out += $0 }
    return out
}

/// A per-process scratch file path under /dev/shm (or the temporary directory), for readers
/// that take a path (gzip inputs).
public func scratchPath(_ name: String) -> String {
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let dir = base + "/msq-fuzz-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir + "/" + name
}

/// Writes `bytes` to `path`, replacing it.
public func writeScratch(_ bytes: [UInt8], to path: String) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// The model and MSQ method whose state the checkpoint harness restores and the seeds encode:
/// ResNet-20, 1 input channel, 4 classes, every conv/linear at 8 bits, Hessian off.
public func makeFuzzMSQMethod() -> (model: any Module, method: MSQTraining)? {
    let model = makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0)
    var options = MSQOptions(targetCompression: 10.67)
    options.hessian = false
    guard let layers = try? quantizeForMSQ(model),
          let method = try? MSQTraining(layers: layers, options: options, calibration: nil, seed: 0) else { return nil }
    return (model, method)
}

/// The plan the checkpoint harness prepares restored MSQ states with (3 steps × 2 epochs).
public func fuzzPlan() -> TrainingPlan { TrainingPlan(stepsPerEpoch: 3, epochs: 2, log: { _ in }) }
