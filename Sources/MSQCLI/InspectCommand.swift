import ArgumentParser
import Foundation
import MSQ

/// `msq inspect`: what a checkpoint holds, and a hash of its weights for comparing runs.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Print a checkpoint's progress, run options, tensors and a hash of its model weights.")

    @Argument(help: "Path of a checkpoint file (checkpoint.msqckpt).")
    var checkpoint: String
    @Flag(help: "List every tensor with its shape.")
    var tensors = false

    func run() throws {
        let ckpt = try Checkpoint.read(from: checkpoint)
        let h = ckpt.header
        writeLine("checkpoint \(checkpoint)")
        writeLine("  epochs completed \(h.epochsCompleted), step \(h.globalStep), " +
              "\(h.trainImagesSeen) images, \(String(format: "%.1f", h.trainSeconds)) s training")
        writeLine("  run: " + h.runDescription.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        let model = zip(h.tensors, ckpt.tensorData).filter { !$0.0.name.hasPrefix("optimizer.") }
        writeLine("  model tensors \(model.count), optimizer tensors \(h.tensors.count - model.count)")
        writeLine("  weights_fnv1a64 " + String(ckpt.weightsHash(), radix: 16))
        if tensors {
            for (entry, _) in model { writeLine("    \(entry.name) \(entry.shape)") }
        }
    }
}
