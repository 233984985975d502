import Foundation
import MSQ
import Testing

/// `Tests/MSQTests/Fixtures/NAME`, found from this source file's path: the test target declares no
/// resources (Package.swift excludes `Fixtures`), and the tests always run from a checkout.
func fixturePath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)").path
}

private func temporaryDirectory() throws -> String {
    let dir = NSTemporaryDirectory() + "msq-safetensors-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// The contents of `Fixtures/small.safetensors`, as bench/pytorch/make_safetensors_fixture.py writes them.
private func fixtureContents() throws -> SafeTensors {
    var st = SafeTensors()
    st.tensors["weight"] = try SafeTensor(shape: [2, 3], float32: (0..<6).map { Float($0) * 0.5 - 1.25 })
    st.tensors["bias"] = try SafeTensor(shape: [3], float32: [0.1, -2.0, 3.5])
    st.tensors["labels"] = try SafeTensor(shape: [4], int64: [0, 9, -1, 1 << 40])
    st.tensors["scale"] = try SafeTensor(shape: [], float64: [1.0 / 3.0])
    st.tensors["counts"] = try SafeTensor(shape: [2, 2], int32: [1, -2, 3, Int32.max])
    st.tensors["empty"] = try SafeTensor(shape: [0, 3], float32: [])
    st.metadata = ["note": "a/b \"c\" é"]
    return st
}

/// A file from a literal header and data bytes (header padded with spaces to a multiple of 8).
private func file(header: String, data: [UInt8]) -> [UInt8] {
    var h = Array(header.utf8)
    h += [UInt8](repeating: 0x20, count: (8 - h.count % 8) % 8)
    var out: [UInt8] = []
    withUnsafeBytes(of: UInt64(h.count).littleEndian) { out += $0 }
    return out + h + data
}

/// The error parsing `bytes` throws (nil if it parses).
private func parseError(_ bytes: [UInt8]) -> SafeTensorsError? {
    do {
        _ = try SafeTensors(serialized: bytes, source: "bad.safetensors")
        return nil
    } catch {
        return error
    }
}

@Suite("SafeTensors")
struct SafeTensorsTests {
    @Test("write then read gives back every dtype, shape, value and metadata")
    func roundTrip() throws {
        let dir = try temporaryDirectory()
        var st = try fixtureContents()
        var rng = RandomSource(seed: 3)
        let w = Tensor.randomNormal([4, 2, 3, 3], std: 1, using: &rng)
        st.add(w, named: "layer1.0.conv1.weight")
        st.metadata = ["model": "resnet20", "classes": "10", "z": "", "a\nb": "\u{01}"]
        let url = URL(fileURLWithPath: dir + "/x.safetensors")
        try st.write(to: url)
        let back = try SafeTensors.read(contentsOf: url)
        #expect(back == st)
        #expect(try back.tensor(named: "layer1.0.conv1.weight").scalars.map(\.bitPattern) == w.scalars.map(\.bitPattern))
        #expect(try back.tensor(named: "layer1.0.conv1.weight").shape == [4, 2, 3, 3])
        #expect(try back.int64s(named: "labels") == [0, 9, -1, 1 << 40])
        #expect(try back.int64s(named: "counts") == [1, -2, 3, Int64(Int32.max)])
        #expect(back.tensors["scale"]?.doubles() == [1.0 / 3.0])
        #expect(back.tensors["scale"]?.floats() == [Float(1.0 / 3.0)])
        // The same bytes twice (sorted order, no hash-order dependence) and no temporary file left.
        #expect(try back.serialized() == (try st.serialized()))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["x.safetensors"])
    }

    @Test("the writer reproduces Python safetensors' file byte for byte")
    func matchesPython() throws {
        let expected = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixturePath("small.safetensors"))))
        let st = try fixtureContents()
        #expect(try st.serialized() == expected)
        let path = try temporaryDirectory() + "/small.safetensors"
        try st.write(to: path)
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == expected)
    }

    @Test("reading Python's file gives its values")
    func readsPython() throws {
        let st = try SafeTensors.read(from: fixturePath("small.safetensors"))
        #expect(Set(st.tensors.keys) == ["weight", "bias", "labels", "scale", "counts", "empty"])
        #expect(st.metadata == ["note": "a/b \"c\" é"])
        let w = try st.tensor(named: "weight")
        #expect(w.shape == [2, 3])
        #expect(w.scalars == [-1.25, -0.75, -0.25, 0.25, 0.75, 1.25])
        #expect(try st.tensor(named: "bias").scalars == [0.1, -2.0, 3.5])
        #expect(st.tensors["labels"]?.dtype == .int64)
        #expect(try st.int64s(named: "labels") == [0, 9, -1, 1 << 40])
        #expect(st.tensors["scale"]?.shape == [])
        #expect(st.tensors["scale"]?.doubles() == [1.0 / 3.0])
        #expect(st.tensors["counts"]?.dtype == .int32)
        #expect(try st.int64s(named: "counts") == [1, -2, 3, 2_147_483_647])
        #expect(try st.tensor(named: "empty").shape == [0, 3])
        #expect(try st.serialized() == (try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixturePath("small.safetensors"))))))
    }

    @Test("a truncated file is refused as truncated, wherever it is cut")
    func truncated() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixturePath("small.safetensors"))))
        for cut in [0, 5, 8, 100, 407, 408 + 31, bytes.count - 1] {
            let error = parseError(Array(bytes.prefix(cut)))
            guard case .truncated = error else {
                Issue.record("cut at \(cut): expected .truncated, got \(String(describing: error))")
                continue
            }
        }
        // The message names the file; so does reading it from disk.
        let path = try temporaryDirectory() + "/cut.safetensors"
        try Data(bytes.prefix(450)).write(to: URL(fileURLWithPath: path))
        do {
            _ = try SafeTensors.read(from: path)
            Issue.record("a truncated file was read")
        } catch {
            #expect(error.description.contains(path))
            #expect(error.description.contains("truncated"))
        }
    }

    @Test("malformed JSON and malformed entries are refused as malformed headers")
    func badJSON() {
        let data = [UInt8](repeating: 0, count: 8)
        let headers = [
            "not json at all",
            "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}",  // unterminated
            "[1, 2]",
            "{\"a\": {\"dtype\": \"F32\", \"shape\": [2]}}",                           // no offsets
            "{\"a\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 8]}}",
            "{\"a\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}",
            "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4, 8]}}",
            "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, \"__metadata__\": {\"k\": 1}}",
        ]
        for header in headers {
            let error = parseError(file(header: header, data: data))
            guard case .malformedHeader = error else {
                Issue.record("\(header): expected .malformedHeader, got \(String(describing: error))")
                continue
            }
            #expect(error?.description.contains("bad.safetensors") == true)
        }
        // A length field that is really something else (e.g. not a safetensors file at all).
        let huge = [UInt8](repeating: 0xFF, count: 8) + data
        guard case .malformedHeader = parseError(huge) else {
            Issue.record("a huge header length was not refused as malformed")
            return
        }
    }

    @Test("unknown dtypes and spans that do not fit the shape are refused")
    func badDTypes() {
        let eight = [UInt8](repeating: 0, count: 8)
        #expect(parseError(file(header: "{\"a\":{\"dtype\":\"F4\",\"shape\":[16],\"data_offsets\":[0,8]}}", data: eight))
                == .unknownDType(path: "bad.safetensors", tensor: "a", dtype: "F4"))
        #expect(parseError(file(header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,8]}}", data: eight))
                == .sizeMismatch(path: "bad.safetensors", tensor: "a", dtype: .float32, shape: [4], expectedBytes: 16, actualBytes: 8))
        #expect(parseError(file(header: "{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]}}", data: eight))
                == .sizeMismatch(path: "bad.safetensors", tensor: "a", dtype: .int64, shape: [2], expectedBytes: 16, actualBytes: 8))
        let message = parseError(file(header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,8]}}", data: eight))?.description ?? ""
        #expect(message.contains("bad.safetensors") && message.contains("'a'") && message.contains("16 bytes"))
    }

    @Test("reversed, overlapping, gapped, out-of-range and short offsets are refused")
    func badOffsets() {
        let entry = { (name: String, b: Int, e: Int) in
            "\"\(name)\":{\"dtype\":\"F32\",\"shape\":[\((e - b) / 4)],\"data_offsets\":[\(b),\(e)]}"
        }
        let data = [UInt8](repeating: 0, count: 16)
        let cases: [(String, String)] = [
            ("{" + entry("a", 0, 8) + "," + entry("b", 4, 12) + "," + entry("c", 12, 16) + "}", "b"),  // overlap
            ("{" + entry("a", 0, 8) + "," + entry("b", 12, 16) + "}", "b"),                            // gap
            ("{" + entry("a", 4, 16) + "}", "a"),                                                      // not from 0
            ("{" + entry("a", 0, 8) + "}", "a"),                                                       // bytes left over
            ("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", "a"),                // reversed
            ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", "a"),               // negative
        ]
        for (header, tensor) in cases {
            let error = parseError(file(header: header, data: data))
            guard case let .badOffsets(path, name, _) = error else {
                Issue.record("\(header): expected .badOffsets, got \(String(describing: error))")
                continue
            }
            #expect(path == "bad.safetensors" && name == tensor, "\(header)")
        }
        // Past the end of the data: the file lost its tail.
        guard case .truncated = parseError(file(header: "{" + entry("a", 0, 16) + "," + entry("b", 16, 24) + "}", data: data)) else {
            Issue.record("offsets past the end were not reported as truncation")
            return
        }
    }

    @Test("a tensor named twice, and a shape whose byte size overflows, are refused naming the tensor")
    func duplicateAndOverflow() {
        let data = [UInt8](repeating: 0, count: 16)
        // Whichever entry the JSON decoder keeps, the other's bytes belong to no tensor.
        let twice = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            + "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}"
        switch parseError(file(header: twice, data: data)) {
        case let .badOffsets(_, tensor, _)?: #expect(tensor == "a")
        case .malformedHeader?: break
        case let other: Issue.record("a header naming one tensor twice: expected a refusal, got \(String(describing: other))")
        }
        let huge = "{\"big\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}"
        let overflow = parseError(file(header: huge, data: data))
        guard case .malformedHeader = overflow else {
            Issue.record("expected .malformedHeader for an overflowing size, got \(String(describing: overflow))")
            return
        }
        #expect(overflow?.description.contains("'big'") == true)
    }

    @Test("accessors, constructors and the writer refuse what does not fit, with messages")
    func misuse() throws {
        let st = try SafeTensors.read(from: fixturePath("small.safetensors"))
        #expect(throws: SafeTensorsError.missingTensor(name: "nope")) { try st.tensor(named: "nope") }
        #expect(throws: SafeTensorsError.wrongDType(name: "labels", dtype: .int64, wanted: "a Float tensor")) {
            try st.tensor(named: "labels")
        }
        #expect(throws: SafeTensorsError.wrongDType(name: "weight", dtype: .float32, wanted: "Int64")) {
            try st.int64s(named: "weight")
        }
        #expect(throws: SafeTensorsError.elementCountMismatch(shape: [2, 2], count: 3)) {
            try SafeTensor(shape: [2, 2], float32: [1, 2, 3])
        }
        #expect(throws: SafeTensorsError.self) { try SafeTensor(dtype: .float64, shape: [2], bytes: [0, 0, 0]) }
        var reserved = SafeTensors()
        reserved.add(Tensor(shape: [1]), named: "__metadata__")
        #expect(throws: SafeTensorsError.self) { try reserved.serialized() }
        let dir = try temporaryDirectory()
        #expect(throws: SafeTensorsError.self) { try st.write(to: dir + "/no/such/dir/x.safetensors") }
        #expect(throws: SafeTensorsError.unreadable(path: dir + "/missing", reason: "no such file")) {
            try SafeTensors.read(from: dir + "/missing")
        }
    }

    @Test("half and bfloat16 entries convert to Float exactly")
    func halfPrecision() throws {
        // 1.0, -2.0, 65504 (max half), 2^-24 (smallest subnormal) as F16; 1.0 and -0.5 as BF16.
        let half = try SafeTensor(dtype: .float16, shape: [4], bytes: [0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00])
        #expect(half.floats() == [1, -2, 65504, 0x1p-24])
        let bf = try SafeTensor(dtype: .bfloat16, shape: [2], bytes: [0x80, 0x3F, 0x00, 0xBF])
        #expect(bf.floats() == [1, -0.5])
        #expect(bf.int64s() == nil)
    }
}
