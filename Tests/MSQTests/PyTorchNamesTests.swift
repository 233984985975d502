import Foundation
import MSQ
import Testing

/// `Fixtures/pytorch-state-dict-keys.txt` (bench/pytorch/state_dict_keys.py): model kind → state_dict
/// name → shape, for the PyTorch twins with 1 input channel (CIFAR kinds) or 3 (ImageNet), 10 classes.
private func pytorchStateDicts() throws -> [String: [String: [Int]]] {
    let text = try String(contentsOfFile: fixturePath("pytorch-state-dict-keys.txt"), encoding: .utf8)
    var out: [String: [String: [Int]]] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        let fields = line.split(separator: " ")
        try #require(fields.count == 3, "bad fixture line: \(line)")
        let dims = fields[2].dropFirst().dropLast().split(separator: ",").map { Int($0) }
        try #require(dims.allSatisfy { $0 != nil }, "bad shape in fixture line: \(line)")
        out[String(fields[0]), default: [:]][String(fields[1])] = dims.compactMap { $0 }
    }
    return out
}

@Suite("PyTorchNames")
struct PyTorchNamesTests {
    @Test("every MSQ parameter of every model kind is a PyTorch state_dict key of the same shape, and back",
          arguments: ModelKind.allCases)
    func everyNameAndShape(kind: ModelKind) throws {
        let stateDict = try #require(try pytorchStateDicts()[kind.rawValue], "no \(kind.rawValue) in the fixture")
        let model = makeModel(kind, inputChannels: kind.isCIFARStyle ? 1 : 3, numClasses: 10, seed: 0)
        var mapped = Set<String>()
        for (path, parameter) in model.namedParameters() {
            let name = try #require(pytorchName(forParameterPath: path, model: kind), "\(path) has no PyTorch name")
            #expect(stateDict[name] == parameter.value.shape,
                    "\(kind.rawValue) \(path) → \(name): MSQ shape \(parameter.value.shape), PyTorch \(String(describing: stateDict[name]))")
            #expect(parameterPath(forPyTorchName: name, model: kind) == path)
            mapped.insert(name)
        }
        // Every PyTorch key is covered, except the BN counter and Swin's constant index, which MSQ does not keep.
        let unmapped = Set(stateDict.keys).subtracting(mapped)
        #expect(unmapped.allSatisfy { $0.hasSuffix(".num_batches_tracked") || $0.hasSuffix(".relative_position_index") },
                "PyTorch keys with no MSQ parameter: \(unmapped.sorted())")
        #expect(unmapped.allSatisfy { parameterPath(forPyTorchName: $0, model: kind) == nil })
        #expect(pytorchStateDict(of: model, kind: kind).map(\.name) == model.namedParameters().map(\.name))
    }

    @Test("MSQ-only tensors (PACT clips, BSQ/CSQ parameters) have no PyTorch name")
    func msqOnly() throws {
        let model = makeModel(.resnet20, inputChannels: 1, numClasses: 10, seed: 0)
        try quantizeActivations(model, bits: 4, excluded: defaultActivationExclusions(model))
        let alphas = model.namedParameters().map(\.name).filter { $0.hasSuffix("input_alpha") }
        #expect(!alphas.isEmpty)
        #expect(alphas.allSatisfy { pytorchName(forParameterPath: $0, model: .resnet20) == nil })
        #expect(pytorchStateDict(of: model, kind: .resnet20).allSatisfy { !$0.name.hasSuffix("input_alpha") })
        for path in ["layer1.0.conv1.bsq.planes", "fc.bsq.scale", "conv1.csq.mask"] {
            #expect(pytorchName(forParameterPath: path, model: .resnet20) == nil)
        }
        #expect(pytorchName(forParameterPath: "layer4.0.downsample.0.weight", model: .resnet18) == "layer4.0.downsample.0.weight")
    }
}
