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

/// The methods whose states the checkpoint harness restores and the seeds encode, each over its
/// own ResNet-20 (1 input channel, 4 classes): MSQ (8 bits, Hessian off), BSQ, CSQ, HAWQ and
/// DoReFa at 4 bits. Nil if one cannot be built (a bug the harness would report by crashing).
public func makeFuzzMethods() -> [(name: String, model: any Module, method: TrainingMethod)]? {
    func model() -> any Module { makeModel(.resnet20, inputChannels: 1, numClasses: 4, seed: 0) }
    do {
        var msqOptions = MSQOptions(targetCompression: 10.67)
        msqOptions.hessian = false
        let msqModel = model()
        let msq = try MSQTraining(layers: try quantizeForMSQ(msqModel), options: msqOptions, calibration: nil, seed: 0)
        let bsqModel = model(), csqModel = model(), hawqModel = model(), doReFaModel = model()
        let bsq = try BSQTraining(model: bsqModel, options: BSQOptions(targetCompression: 10.67))
        let csq = try CSQTraining(model: csqModel, options: CSQOptions(targetCompression: 10.67))
        let data = try SyntheticDataset(count: 4, sampleShape: [1, 8, 8], numClasses: 4)
        let calibration = try calibrationBatch(from: data, normalization: Normalization(mean: [0.5], std: [0.3]), count: 4)
        var hawqOptions = HAWQOptions(targetCompression: 10.67)
        hawqOptions.warmupEpochs = 1
        let hawq = try HAWQTraining(layers: try quantizeForMSQ(hawqModel), options: hawqOptions,
                                    calibration: calibration, seed: 0)
        let doReFa = try DoReFaTraining(model: doReFaModel, options: DoReFaOptions(weightBits: 4))
        return [("msq", msqModel, msq), ("bsq", bsqModel, bsq), ("csq", csqModel, csq),
                ("hawq", hawqModel, hawq), ("dorefa", doReFaModel, doReFa)]
    } catch {
        return nil
    }
}

/// The plan the checkpoint harness prepares restored MSQ states with (3 steps × 2 epochs).
public func fuzzPlan() -> TrainingPlan { TrainingPlan(stepsPerEpoch: 3, epochs: 2, log: { _ in }) }
