import ArgumentParser
import MSQ

@main
struct MSQCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "msq",
        abstract: "Train mixed-precision quantized networks with MSQ on the CPU.",
        subcommands: [TrainCommand.self, InspectCommand.self, ExportCommand.self, EvalCommand.self])
}

/// `--threads` capped at the available cores (``RunLimits/cappedThreads(_:)``), with the warning
/// every subcommand prints when it caps.
func cappedThreads(_ requested: Int) -> Int {
    let used = RunLimits.cappedThreads(requested)
    if used < requested {
        writeLine("warning: --threads \(requested) is more than the \(RunLimits.availableCores) cores available; using \(used)")
    }
    return used
}

/// Sets the kernels' thread count to `--threads` capped at the available cores, warning when capped.
func setCappedKernelThreads(_ requested: Int) {
    setKernelThreads(cappedThreads(requested))
}
