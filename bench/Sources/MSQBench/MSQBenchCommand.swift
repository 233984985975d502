import ArgumentParser

@main
struct MSQBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "msq-bench",
        abstract: "Benchmarks for MSQ's kernels and training steps.",
        subcommands: [KernelsCommand.self, CostCommand.self, StepCommand.self, DataParallelStepCommand.self, QuantCommand.self, MaxBatchCommand.self, TableCommand.self,
                      CompareTableCommand.self, AccuracyTableCommand.self, HVPCommand.self, LogitsCommand.self])
}
