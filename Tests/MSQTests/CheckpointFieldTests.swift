import Foundation
import MSQ
import Testing

/// Checkpoints whose checksum is valid but whose fields are hostile (the causes a
/// checksum-recomputing mutation fuzzer found): each is refused naming the file and the field,
/// never trapped on, and never resumed into a wrong run (issue 14).
@Suite("Reliability: checkpoint fields")
struct CheckpointFieldTests {
    /// A finished 2-epoch run's directory and its checkpoint taken apart.
    func finishedRun() throws -> (run: SmallRun, dir: String, parts: CheckpointParts) {
        let run = try SmallRun(epochs: 2)
        let dir = freshDirectory()
        try run.trainer(out: dir).run(resume: false)
        let bytes = try DataFixtures.bytes(dir + "/" + Trainer.checkpointName)
        return (run, dir, try CheckpointParts(file: bytes))
    }

    /// The field an ``CheckpointError/invalidField(path:field:problem:)`` names, checking its path.
    func refusedField(path: String, _ body: () throws -> Void) -> String? {
        let error = thrownError(body)
        guard case let .invalidField(errorPath, field, _)? = error as? CheckpointError else {
            Issue.record("expected invalidField, got \(String(describing: error))")
            return nil
        }
        #expect(errorPath == path)
        return field
    }

    @Test("the sealed copy of an unchanged checkpoint reads back (the test's sealing is the format's)")
    func sealingRoundTrip() throws {
        let (_, dir, parts) = try finishedRun()
        let original = try DataFixtures.bytes(dir + "/" + Trainer.checkpointName)
        #expect(try parts.sealed() == original)
    }

    @Test("header lengths of 2^63, Int.max and one past the file are refused as the header length")
    func headerLength() throws {
        let (_, _, parts) = try finishedRun()
        for length in [UInt64(1) << 63, UInt64(Int.max), UInt64.max, UInt64(1) << 40] {
            let bytes = try parts.sealed(declaredLength: length)
            #expect(refusedField(path: "x.msqckpt") { _ = try Checkpoint(serialized: bytes, path: "x.msqckpt") } == "header length")
        }
    }

    @Test("a tensor shape of [2^62], an overflowing product or a negative dimension is refused by its index")
    func tensorShapes() throws {
        let (_, _, parts) = try finishedRun()
        for shape in [[1 << 62], [1 << 40, 1 << 40], [-1, 4], [parts.payload.count]] {
            var p = parts
            p.header.tensors[0].shape = shape
            let bytes = try p.sealed()
            #expect(refusedField(path: "x") { _ = try Checkpoint(serialized: bytes, path: "x") } == "tensors[0].shape", "\(shape)")
        }
    }

    @Test("counters at Int.max or negative are refused by name when read")
    func counters() throws {
        let (_, _, parts) = try finishedRun()
        let edits: [(String, (inout Checkpoint.Header) -> Void)] = [
            ("globalStep", { $0.globalStep = Int.max }), ("globalStep", { $0.globalStep = 4_600_000_000_000_000_000 }),
            ("epochsCompleted", { $0.epochsCompleted = Int.max }), ("epochsCompleted", { $0.epochsCompleted = -1 }),
            ("trainImagesSeen", { $0.trainImagesSeen = -5 }), ("rngState", { $0.rngState = [1, 2] }),
            ("rngState", { $0.rngState = [0, 0, 0, 0] }),
        ]
        for (field, edit) in edits {
            var p = parts
            edit(&p.header)
            let bytes = try p.sealed()
            #expect(refusedField(path: "c") { _ = try Checkpoint(serialized: bytes, path: "c") } == field)
        }
    }

    @Test("a NaN or infinite weight is refused with the tensor's index and name")
    func nonFiniteWeight() throws {
        let (_, _, parts) = try finishedRun()
        for bits: UInt32 in [0x7FC0_0000, 0x7F80_0000] {
            var p = parts
            let at = 4 * 7  // element 7 of the first tensor
            withUnsafeBytes(of: bits.littleEndian) { for i in 0..<4 { p.payload[at + i] = $0[i] } }
            let bytes = try p.sealed()
            let error = thrownError { _ = try Checkpoint(serialized: bytes, path: "c") }
            #expect(error as? CheckpointError == .invalidField(path: "c", field: "tensors[0]",
                                                               problem: "(\(parts.header.tensors[0].name)) holds a NaN or infinite value"))
        }
    }

    /// Writes `parts` (sealed) over the run's checkpoint and resumes, returning the refused field.
    func resumeField(_ run: SmallRun, _ dir: String, _ parts: CheckpointParts) throws -> String? {
        let path = dir + "/" + Trainer.checkpointName
        try DataFixtures.write(try parts.sealed(), to: path)
        return refusedField(path: path) { try run.trainer(out: dir).run(resume: true) }
    }

    @Test("on --resume, counters that contradict the run's plan are refused naming the field")
    func countersAgainstPlan() throws {
        let (run, dir, parts) = try finishedRun()
        // 40 images at batch 16: 3 steps per epoch; the run has 2 epochs.
        var beyond = parts
        beyond.header.epochsCompleted = 5
        beyond.header.globalStep = 15
        beyond.header.trainImagesSeen = 200
        #expect(try resumeField(run, dir, beyond) == "epochsCompleted")
        var step = parts
        step.header.globalStep = 7
        #expect(try resumeField(run, dir, step) == "globalStep")
        var huge = parts
        huge.header.globalStep = 1 << 31
        #expect(try resumeField(run, dir, huge) == "globalStep")
        var images = parts
        images.header.trainImagesSeen = 81
        #expect(try resumeField(run, dir, images) == "trainImagesSeen")
    }

    @Test("MSQ method state with k = −2^31, bits or λ out of range is refused naming the field")
    func msqMethodState() throws {
        let setup = try TinyTrainingSetup(method: "msq", epochs: 1)
        var options = MSQOptions(targetCompression: 10.67)
        options.hessian = false
        let method = try MSQTraining(layers: try quantizeForMSQ(setup.makeModel()), options: options, calibration: nil, seed: 0)
        let json = try method.encodeState()
        func edited(_ edit: (inout [String: Any]) -> Void) throws -> String {
            var object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            edit(&object)
            return String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
        }
        let cases: [(String, (inout [String: Any]) -> Void)] = [
            ("methodState.k[0]", { o in var k = o["k"] as! [Int]; k[0] = -(1 << 31); o["k"] = k }),
            ("methodState.k[1]", { o in var k = o["k"] as! [Int]; k[1] = 3; o["k"] = k }),
            ("methodState.lambda", { $0["lambda"] = -1.0 }),
            ("methodState.phase", { $0["phase"] = "elsewhere" }),
            ("methodState.intervals", { $0["intervals"] = Int.max }),
            ("methodState.hessianEstimates", { $0["hessianEstimates"] = -3 }),
            ("methodState.scheme.layers[2].bits", { o in
                var scheme = o["scheme"] as! [String: Any]
                var layers = scheme["layers"] as! [[String: Any]]
                layers[2]["bits"] = 40
                scheme["layers"] = layers
                o["scheme"] = scheme
            }),
        ]
        for (field, edit) in cases {
            let state = try edited(edit)
            #expect(refusedField(path: "method state") { try method.restoreState(state) } == field)
        }
        try method.restoreState(json)  // the unedited state still restores
    }

    /// `json` (a method state) with `edit` applied to its top-level object.
    func editedState(_ json: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
        var object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        edit(&object)
        return String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
    }

    @Test("BSQ, CSQ and HAWQ states with overflowing planes, counters or precisions are refused naming the field")
    func baselineMethodStates() throws {
        let setup = try TinyTrainingSetup(method: "bsq", epochs: 1)
        let bsq = try BSQTraining(model: setup.makeModel(), options: BSQOptions(targetCompression: 10.67))
        let bsqState = try bsq.encodeState()
        let planes = try editedState(bsqState) { o in var p = o["lowestPlanes"] as! [Int]; p[0] = Int.max; o["lowestPlanes"] = p }
        #expect(refusedField(path: "method state") { try bsq.restoreState(planes) } == "methodState.lowestPlanes[0]")
        let intervals = try editedState(bsqState) { $0["intervals"] = Int.max }
        #expect(refusedField(path: "method state") { try bsq.restoreState(intervals) } == "methodState.intervals")
        try bsq.restoreState(bsqState)

        let csq = try CSQTraining(model: setup.makeModel(), options: CSQOptions(targetCompression: 10.67))
        let csqState = try csq.encodeState()
        let steps = try editedState(csqState) { $0["stepsDone"] = -1 }
        #expect(refusedField(path: "method state") { try csq.restoreState(steps) } == "methodState.stepsDone")
        try csq.restoreState(csqState)

        let model = setup.makeModel()
        let calibration = try calibrationBatch(from: setup.train, normalization: setup.normalization, count: 8)
        let hawq = try HAWQTraining(layers: try quantizeForMSQ(model), options: HAWQOptions(targetCompression: 10.67),
                                    calibration: calibration, seed: 0)
        let hawqState = try hawq.encodeState()
        let bits = try editedState(hawqState) { o in
            var scheme = o["scheme"] as! [String: Any]
            var layers = scheme["layers"] as! [[String: Any]]
            layers[0]["bits"] = 40
            scheme["layers"] = layers
            o["scheme"] = scheme
        }
        #expect(refusedField(path: "method state") { try hawq.restoreState(bits) } == "methodState.scheme.layers[0].bits")
        try hawq.restoreState(hawqState)
    }
}
