// swift-tools-version: 6.1
import PackageDescription

// Benchmarks for MSQ, a separate package so that it consumes MSQ the way a user does (by path).
let package = Package(
    name: "MSQBench",
    platforms: [.macOS(.v14)],
    products: [.executable(name: "msq-bench", targets: ["MSQBench"])],
    dependencies: [
        .package(name: "MSQ", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // Direct access to cblas_sgemm, the yardstick every kernel is compared with.
        // OpenMP, so the memcpy yardstick runs on the same thread pool as MSQ's kernels.
        .target(name: "CBLASBench", path: "Sources/CBLASBench",
                cSettings: [.unsafeFlags(["-O2", "-fopenmp", "-I/usr/lib/llvm-14/lib/clang/14.0.6/include"])],
                linkerSettings: [.linkedLibrary("openblas"), .linkedLibrary("omp")]),
        .executableTarget(
            name: "MSQBench",
            dependencies: [
                .product(name: "MSQ", package: "MSQ"),
                .product(name: "CKernels", package: "MSQ"),
                // Open MPI, for `dp-step` under mpirun (libopenmpi-dev, as for `msq`).
                .product(name: "MSQDistributed", package: "MSQ"),
                "CBLASBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
    ]
)
