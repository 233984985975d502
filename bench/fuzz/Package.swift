// swift-tools-version: 6.1
import PackageDescription

// libFuzzer harnesses for MSQ's file readers (IDX, CIFAR-10, checkpoints, .msqmodel), a separate
// package so that neither `swift build` nor `swift test` of MSQ, nor the bench/ build, ever sees
// them: the fuzz-* executables define LLVMFuzzerTestOneInput and no main, so they only link with
// `--sanitize=fuzzer`. Run one with bench/scripts/fuzz.sh TARGET SECONDS (README, "Fuzzing").
let package = Package(
    name: "MSQFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [.package(name: "MSQ", path: "../..")],
    targets: [
        .target(name: "FuzzSupport", dependencies: [.product(name: "MSQ", package: "MSQ")]),
        .executableTarget(name: "fuzz-idx", dependencies: ["FuzzSupport", .product(name: "MSQ", package: "MSQ")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-cifar", dependencies: ["FuzzSupport", .product(name: "MSQ", package: "MSQ")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-checkpoint", dependencies: ["FuzzSupport", .product(name: "MSQ", package: "MSQ")],
                          swiftSettings: harness),
        .executableTarget(name: "fuzz-model", dependencies: ["FuzzSupport", .product(name: "MSQ", package: "MSQ")],
                          swiftSettings: harness),
        // Writes the seed corpora; built without sanitizers (it has a main).
        .executableTarget(name: "fuzz-seeds", dependencies: ["FuzzSupport", .product(name: "MSQ", package: "MSQ")]),
    ]
)

// libFuzzer supplies main; the harness file is a library file with an @_cdecl entry point.
var harness: [SwiftSetting] { [.unsafeFlags(["-parse-as-library"])] }
