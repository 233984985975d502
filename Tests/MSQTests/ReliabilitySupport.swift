import Foundation
import MSQ

// Builders for the reliability tests: small runs, hostile checkpoint files with a valid
// checksum, and a method that poisons one gradient.

/// A float ResNet-20 run on 8×8 synthetic images (40 train, 20 test, 4 classes; 3 steps per epoch
/// at batch 16), two threads; `edit` changes the config, `test` replaces the test split.
struct SmallRun {
    var config: TrainingConfig
    var train: any Dataset
    var test: any Dataset
    let normalization = Normalization(mean: [0.5], std: [0.3])

    init(epochs: Int = 2, edit: (inout TrainingConfig) -> Void = { _ in }) throws {
        var c = TrainingConfig(model: "resnet20", dataset: "synthetic", epochs: epochs, batchSize: 16, learningRate: 0.05)
        c.threads = 2
        edit(&c)
        config = c
        train = try SyntheticDataset(count: 40, sampleShape: [1, 8, 8], numClasses: 4, seed: 1)
        test = try SyntheticDataset(count: 20, sampleShape: [1, 8, 8], numClasses: 4, seed: 2)
    }

    /// A trainer over a fresh model (channels from the training split) writing to `out`.
    func trainer(out: String?, method: TrainingMethod = FloatTraining(), log: @escaping (String) -> Void = { _ in }) -> Trainer {
        let model = makeModel(.resnet20, inputChannels: train.sampleShape[0], numClasses: train.numClasses, seed: config.seed)
        return Trainer(config: config, model: model, method: method, train: train, test: test,
                       normalization: Normalization(mean: Array(repeating: 0.5, count: train.sampleShape[0]),
                                                    std: Array(repeating: 0.3, count: train.sampleShape[0])),
                       outDirectory: out, log: log)
    }
}

/// The error `body` throws (nil when it returns).
func thrownError(_ body: () throws -> Void) -> Error? {
    do {
        try body()
        return nil
    } catch {
        return error
    }
}

/// FNV-1a 64 as the file formats use it (the library's own is internal).
func testFNV1a64(_ bytes: ArraySlice<UInt8>) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}

/// A checkpoint file taken apart: its header and the tensor bytes after it.
struct CheckpointParts {
    var header: Checkpoint.Header
    var payload: [UInt8]

    /// Splits the bytes of a valid checkpoint file.
    init(file bytes: [UInt8]) throws {
        let length = bytes[12..<20].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        let end = 20 + Int(length)
        header = try JSONDecoder().decode(Checkpoint.Header.self, from: Data(bytes[20..<end]))
        payload = Array(bytes[end..<(bytes.count - 8)])
    }

    /// The file again, with `header` re-encoded, an optional forged header length, and a
    /// recomputed (valid) checksum: only the field checks can refuse it.
    func sealed(declaredLength: UInt64? = nil) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = [UInt8](try encoder.encode(header))
        var out = Array("MSQCKPT\0".utf8) + [1, 0, 0, 0]
        withUnsafeBytes(of: (declaredLength ?? UInt64(json.count)).littleEndian) { out += $0 }
        out += json + payload
        withUnsafeBytes(of: testFNV1a64(out[...]).littleEndian) { out += $0 }
        return out
    }
}

/// Sets one element of a parameter's gradient to NaN after the backward pass of global step
/// `poisonStep`: the optimizer then writes NaN into that weight, as a real overflow would.
final class PoisonGradient: TrainingMethod {
    let parameterName: String
    let poisonStep: Int
    init(parameterName: String, poisonStep: Int) {
        self.parameterName = parameterName
        self.poisonStep = poisonStep
    }
    var name: String { "fp" }
    func prepare(model: Module, plan: TrainingPlan) throws {}
    func afterBackward(model: Module, epoch: Int, step: Int) throws -> Double {
        if step == poisonStep, let p = model.namedParameters().first(where: { $0.name == parameterName })?.parameter {
            p.grad.withUnsafeMutablePointer { $0[0] = .nan }
        }
        return 0
    }
    func endOfEpoch(model: Module, epoch: Int, log: (String) -> Void) throws {}
    func encodeState() throws -> String { "{}" }
    func restoreState(_ json: String) throws {}
    func summaryFields() -> [String: Any] { [:] }
}
