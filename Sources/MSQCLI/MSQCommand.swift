import ArgumentParser
import MSQ

@main
struct MSQCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "msq",
        abstract: "Train mixed-precision quantized networks with MSQ on the CPU.",
        subcommands: [TrainCommand.self, InspectCommand.self, ExportCommand.self, EvalCommand.self])
}
