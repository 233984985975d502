import ArgumentParser
import Foundation
import MSQ

/// The flag that sets each ``TrainingConfig`` property the library may name in an error.
let trainingConfigFlags: [String: String] = [
    "epochs": "--epochs", "batchSize": "--batch-size", "learningRate": "--lr", "momentum": "--momentum",
    "weightDecay": "--weight-decay", "warmupEpochs": "--warmup-epochs", "labelSmoothing": "--label-smoothing",
    "cropPadding": "--crop-padding", "limitTrain": "--limit-train", "limitTest": "--limit-test",
    "threads": "--threads", "beta1": "--beta1", "beta2": "--beta2", "epsilon": "--eps", "optimizer": "--optimizer",
]

/// `property`'s flag (the property name itself for one the CLI does not set).
func flag(for property: String) -> String { trainingConfigFlags[property] ?? property }

/// A library ``TrainingError`` in the words of `msq train`: flags instead of Swift properties and
/// calls. Messages that name no property pass through unchanged.
func cliError(for error: TrainingError) -> Error {
    switch error {
    case let .invalidProperty(property, problem):
        return ValidationError("\(flag(for: property)) \(problem)")
    case let .existingCheckpoint(directory):
        return CommandError(description: "\(directory) already holds a checkpoint: pass --resume to continue that run, or choose another --out")
    case .nonFinite:
        // The library's advice names TrainingConfig's properties; point at the flags instead.
        var text = error.description
        for property in ["learningRate", "warmupEpochs"] {
            text = text.replacingOccurrences(of: "TrainingConfig.\(property)", with: flag(for: property))
        }
        return CommandError(description: text)
    default:
        return error
    }
}

/// An error printed as its message alone (a `ValidationError` would add the usage line, which
/// does not help with a failed run).
struct CommandError: Error, CustomStringConvertible {
    /// What went wrong and what to do.
    let description: String
}
