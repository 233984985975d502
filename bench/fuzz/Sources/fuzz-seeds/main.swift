import Foundation
import FuzzSupport
import MSQ

// Writes the seed corpora of the four harnesses into DIR/{idx,cifar,checkpoint,model}: small
// valid files of each format (bench/scripts/fuzz-seeds.sh adds gzip variants), so that
// libFuzzer starts from inputs every parser accepts and mutates inward from there.

func write(_ bytes: [UInt8], _ dir: String, _ name: String) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name))
}

func floats(_ values: [Float]) -> [UInt8] {
    var out: [UInt8] = []
    for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
    return out
}

func idxSeeds(_ dir: String) throws {
    let images = try IDXFile(dimensions: [3, 8, 8], data: (0..<192).map { UInt8($0 % 256) })
    try write(images.serialized(), dir, "images-3x8x8")
    try write(try IDXFile(dimensions: [5], data: [0, 1, 2, 9, 3]).serialized(), dir, "labels-5")
    try write(try IDXFile(dimensions: [0, 28, 28], data: []).serialized(), dir, "images-empty")
}

func cifarSeeds(_ dir: String) throws {
    var records: [UInt8] = []
    for (r, label) in [UInt8(3), 9].enumerated() {
        records.append(label)
        records += (0..<3072).map { UInt8(($0 * 7 + r * 13) % 256) }
    }
    try write(records, dir, "records-2")
    try write(Array(records.prefix(3073)), dir, "records-1")
}

func checkpointSeeds(_ dir: String) throws {
    guard let methods = makeFuzzMethods() else { throw CocoaError(.featureUnsupported) }
    let tensors = [CheckpointTensor(name: "a", shape: [2, 3]), CheckpointTensor(name: "b", shape: [4]),
                   CheckpointTensor(name: "optimizer.momentum.a", shape: [2, 3])]
    let data = [Tensor(shape: [2, 3], scalars: [1, -2, 3, 0.5, 0, -0.25]), Tensor(shape: [4], scalars: [1, 0, 2, 3]),
                Tensor(shape: [2, 3], repeating: 0.125)]
    let states = try methods.map { ("\($0.name)-state", try $0.method.encodeState()) } + [("float-state", "{}")]
    for (name, state) in states {
        let header = Checkpoint.Header(
            runFingerprint: "model=resnet20", runDescription: ["model": "resnet20", "dataset": "synthetic"],
            epochsCompleted: 1, globalStep: 3, trainSeconds: 0.5, trainImagesSeen: 40, rngState: [1, 2, 3, 4],
            methodState: state, tensors: tensors)
        let path = dir + "/" + name
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Checkpoint(header: header, tensorData: data).write(to: path)
    }
}

func tinyModel(packed: PackedModel.TensorEntry?, packedBytes: [UInt8]) throws -> PackedModel {
    let floatOffset = packedBytes.count
    var entries = packed.map { [$0] } ?? []
    entries.append(.init(name: "bn1.running_var", shape: [2], kind: .float32, offset: floatOffset, length: 8))
    let header = PackedModel.Header(
        model: "resnet20", dataset: "synthetic", inputShape: [1, 8, 8], numClasses: 4,
        normalization: Normalization(mean: [0.5], std: [0.3]), activationBits: nil, activationExcluded: [],
        source: ["seed": "0"], tensors: entries)
    return try PackedModel(header: header, payload: packedBytes + floats([1, 2]))
}

func modelSeeds(_ dir: String) throws {
    try write(try tinyModel(packed: nil, packedBytes: []).serialized(), dir, "float-only")
    let codes: [Int32] = (0..<18).map { Int32($0 % 7) - 3 }
    let packedCodes = try bitPack(codes: codes, bits: 3)
    let perTensor = PackedModel.TensorEntry(name: "conv1.weight", shape: [2, 1, 3, 3], kind: .packed, layer: "conv1",
                                            bits: 3, scaleBits: Float(0.75).bitPattern, offset: 0, length: packedCodes.count)
    try write(try tinyModel(packed: perTensor, packedBytes: packedCodes).serialized(), dir, "per-tensor")
    let perChannel = PackedModel.TensorEntry(name: "conv1.weight", shape: [2, 1, 3, 3], kind: .packed, layer: "conv1",
                                             bits: 3, scaleGranularity: .perChannel, scaleCount: 2, offset: 0,
                                             length: packedCodes.count + 8)
    try write(try tinyModel(packed: perChannel, packedBytes: packedCodes + floats([0.5, 0.25])).serialized(), dir, "per-channel")
    // A whole network at 2 bits, so the mutations that stay consistent reach makeModule.
    let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
    let scheme = QuantizationScheme(layers: quantizableLayers(of: model).map { .init(path: $0.path, bits: 2) })
    _ = try scheme.apply(to: model)
    var entries: [CheckpointTensor] = [], data: [Tensor] = []
    for (name, p) in model.namedParameters() {
        entries.append(CheckpointTensor(name: name, shape: p.value.shape))
        data.append(p.value)
    }
    let schemeJSON = String(decoding: try JSONEncoder().encode(scheme), as: UTF8.self)
    let header = Checkpoint.Header(
        runFingerprint: "fuzz", runDescription: ["model": "resnet20", "dataset": "fashion-mnist", "seed": "0"],
        epochsCompleted: 1, globalStep: 1, trainSeconds: 0, trainImagesSeen: 1, rngState: [1, 2, 3, 4],
        methodState: "{\"scheme\": \(schemeJSON)}", tensors: entries)
    try write(try PackedModel.export(checkpoint: Checkpoint(header: header, tensorData: data)).serialized(), dir, "resnet20-2bit")
}

let arguments = CommandLine.arguments
guard arguments.count == 2 else {
    FileHandle.standardError.write(Data("usage: fuzz-seeds DIR\n".utf8))
    exit(2)
}
let out = arguments[1]
do {
    try idxSeeds(out + "/idx")
    try cifarSeeds(out + "/cifar")
    try checkpointSeeds(out + "/checkpoint")
    try modelSeeds(out + "/model")
    print("seed corpora written to \(out)/{idx,cifar,checkpoint,model}")
} catch {
    FileHandle.standardError.write(Data("fuzz-seeds: \(error)\n".utf8))
    exit(1)
}
