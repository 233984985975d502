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

/// The flag that sets each method option the library may name in an error, by options type and
/// property (HAWQ's `warmupEpochs` is --hawq-warmup, TrainingConfig's --warmup-epochs).
let methodOptionFlags: [String: [String: String]] = {
    let schedule = ["targetCompression": "--target-compression", "minBits": "--min-bits", "lambda": "--lambda",
                    "pruneThreshold": "--prune-threshold", "pruneIntervalEpochs": "--prune-interval",
                    "deadlineFraction": "--prune-deadline", "initialBits": "--weight-bits"]
    let hessian = ["hessian": "--hessian", "hessianBatch": "--hessian-batch", "hessianProbes": "--hessian-probes"]
    return [
        "MSQOptions": schedule.merging(hessian) { a, _ in a }.merging(["lambdaGrowth": "--lambda-growth", "scheduledPull": "--scheduled-pull"]) { a, _ in a },
        "BSQOptions": schedule, "CSQOptions": schedule,
        "DoReFaOptions": ["weightBits": "--weight-bits"],
        "HAWQOptions": ["targetCompression": "--target-compression", "minBits": "--min-bits", "maxBits": "--weight-bits",
                        "warmupEpochs": "--hawq-warmup", "hessianBatch": "--hessian-batch", "hessianProbes": "--hessian-probes"],
        "SMPQOptions": ["targetCompression": "--target-compression", "validationFraction": "--validation-fraction",
                        "searchFraction": "--search-fraction", "budgetWeight": "--budget-weight",
                        "shapleyBatch": "--shapley-batch", "shapleyPermutations": "--shapley-permutations", "selection": "--selection",
                        "validationBatchSize": "--batch-size"],
        "MethodContext": ["activationBits": "--act-bits"],
    ]
}()

/// A method option's error with flags for the property and any other property of the same options
/// the problem mentions (`minBits 2` → `--min-bits 2`); options without a flag keep their Swift name.
func methodOptionMessage(options: String, property: String, problem: String) -> String {
    let flags = methodOptionFlags[options] ?? [:]
    guard let flag = flags[property] else { return "\(options).\(property) \(problem)" }
    // Whole words only: `lambda` must not match inside `lambdaGrowth` or a flag already written.
    var text = "", word = ""
    for character in problem + " " {
        if character.isLetter || character.isNumber {
            word.append(character)
        } else {
            text += flags[word] ?? word
            word = ""
            text.append(character)
        }
    }
    text.removeLast()
    return "\(flag) \(text)"
}

/// A library ``TrainingError`` in the words of `msq train`: flags instead of Swift properties and
/// calls. Messages that name no property pass through unchanged.
func cliError(for error: TrainingError) -> Error {
    switch error {
    case let .invalidProperty(property, problem):
        return ValidationError("\(flag(for: property)) \(problem)")
    case let .invalidMethodOption(options, property, problem):
        return ValidationError(methodOptionMessage(options: options, property: property, problem: problem))
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
