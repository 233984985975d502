// swift-tools-version: 6.1
import PackageDescription

// OpenMP comes from Debian's libomp-dev (LLVM 14's runtime); OpenBLAS from libopenblas-dev.
// These are unsafe flags, so SwiftPM refuses this package as a versioned dependency:
// depend on MSQ by `path:` or `branch:` (see README, "Using MSQ as a library").
let openMPInclude = "/usr/lib/llvm-14/lib/clang/14.0.6/include"
let openMPLib = "/usr/lib/llvm-14/lib"

let package = Package(
    name: "MSQ",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "MSQ", targets: ["MSQ"]),
        .library(name: "CKernels", targets: ["CKernels"]),
        // Open MPI's Collective, a product of its own so that `MSQ` stays MPI-free for its users.
        .library(name: "MSQDistributed", targets: ["MSQDistributed"]),
        .executable(name: "msq", targets: ["MSQCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // `swift package generate-documentation --target MSQ` builds Sources/MSQ/MSQ.docc.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "CKernels",
            path: "CKernels",
            cSettings: [
                // -O2 even in debug builds: the tests train small models. No -ffast-math and no FMA
                // contraction: quantizer rounding must match MSQ-SPEC bit for bit.
                .unsafeFlags(["-O2", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-I\(openMPInclude)"]),
            ],
            linkerSettings: [
                .linkedLibrary("omp"),
                .linkedLibrary("openblas"),
                .unsafeFlags(["-L\(openMPLib)", "-Xlinker", "-rpath", "-Xlinker", openMPLib]),
            ]
        ),
        .target(
            name: "CGzip",
            path: "Sources/CGzip",
            linkerSettings: [.linkedLibrary("z")]
        ),
        // MSQ's dependencies stay MPI-free: linking the MSQ library needs no MPI. Data-parallel
        // training over Open MPI is MSQDistributed's, which `msq` and msq-bench link.
        .target(name: "MSQ", dependencies: ["CKernels", "CGzip"]),
        // Open MPI's headers and library, found by `pkg-config ompi-c` (Debian's libopenmpi-dev).
        .systemLibrary(
            name: "CMPI",
            path: "Sources/CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        // Swift cannot import Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM are casts of
        // global symbols' addresses), so C calls MPI; depending on CMPI gives it pkg-config's flags.
        .target(name: "CMPIShim", dependencies: ["CMPI"], path: "Sources/CMPIShim"),
        .target(name: "MSQDistributed", dependencies: ["MSQ", "CMPIShim"]),
        .executableTarget(
            name: "MSQCLI",
            dependencies: [
                "MSQ", "MSQDistributed", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "CKernelsTests", dependencies: ["CKernels"]),
        // Fixtures are read from the source tree (`#filePath`), not bundled as resources.
        .testTarget(name: "MSQTests", dependencies: ["MSQ", "CKernels"], exclude: ["Fixtures"]),
        // Starts the `msq` executable under `mpirun` (`swift test` builds every product first).
        .testTarget(name: "MSQDistributedTests", dependencies: ["MSQ"]),
    ]
)
