import FuzzSupport
import MSQ

/// The methods whose states restored checkpoints are loaded into (built once).
nonisolated(unsafe) let fuzzMethods = makeFuzzMethods()

/// Reads `bytes` as a checkpoint; one that is accepted must hold finite tensors of its declared
/// shapes, and its method state, offered to every method, is refused or restores and prepares
/// without trapping.
func check(_ bytes: [UInt8]) {
    guard let checkpoint = try? Checkpoint(serialized: bytes, path: "fuzz") else { return }
    for (entry, tensor) in zip(checkpoint.header.tensors, checkpoint.tensorData) {
        precondition(tensor.shape == entry.shape && tensor.allFinite, "checkpoint: accepted a bad tensor \(entry.name)")
    }
    _ = checkpoint.weightsHash()
    guard let methods = fuzzMethods else { preconditionFailure("the fuzz methods cannot be built") }
    for (_, model, method) in methods where (try? method.restoreState(checkpoint.header.methodState)) != nil {
        // prepare applies a restored state to the model: bits to the quantizers, k to the LSB
        // regulariser (where k = -2^31 once reached a precondition), planes to BSQ's quantizers.
        _ = try? method.prepare(model: model, plan: fuzzPlan())
        _ = try? method.encodeState()
    }
}

/// libFuzzer entry point for the checkpoint reader: each input is read as is (the checksum
/// refuses most mutations) and resealed (checksum recomputed, so the field parsers see it).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpoint(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    check(bytes)
    check(resealed(bytes))
    return 0
}
