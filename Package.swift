// swift-tools-version: 6.0
// fem-client: the node half of a Federated Execution Manager.
// Layers (who may import whom) are described in docs/architecture.md.
import PackageDescription

let package = Package(
    name: "fem-client",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fem-client", targets: ["fem-client"]),
        .executable(name: "femctl", targets: ["femctl"]),
        .executable(name: "fem-bench", targets: ["fem-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        // [metrics]: swift-metrics API, the Prometheus exposition backend, and Hummingbird serving /metrics.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // [trust]: Ed25519 signatures on tool plans.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // [console]: bcrypt password hashes and sessions for the steward's console.
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth", from: "2.5.0"),
    ],
    targets: [
        // 1. C system libraries: a module map and a shim.h each, nothing else.
        .systemLibrary(name: "CRabbitMQ", path: "Sources/CRabbitMQ", pkgConfig: "librabbitmq",
                       providers: [.apt(["librabbitmq-dev"])]),
        .systemLibrary(name: "CCurl", path: "Sources/CCurl", pkgConfig: "libcurl",
                       providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CGit2", path: "Sources/CGit2", pkgConfig: "libgit2",
                       providers: [.apt(["libgit2-dev"])]),

        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),

        // glibc functions that need _GNU_SOURCE (posix_spawn chdir, pipe2).
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),

        // 2. The one Swift layer that owns C pointers and raw system calls. Knows nothing of tasks.
        .target(name: "FEMSystem", dependencies: ["CRabbitMQ", "CCurl", "CGit2", "CCrypto", "CLinux"]),

        // 3. The core: task model, tool-plan language, state machine, runner, ports. No I/O.
        .target(name: "FEMCore", dependencies: [.product(name: "Logging", package: "swift-log")]),

        // 4. Implementations of the core's ports. Siblings never import each other.
        .target(name: "FEMJournal", dependencies: ["FEMCore", .product(name: "GRDB", package: "GRDB.swift")]),
        .target(name: "FEMTransport", dependencies: ["FEMCore", "FEMSystem"]),
        .target(name: "FEMStaging", dependencies: ["FEMCore", "FEMSystem"]),
        .target(name: "FEMLaunchers", dependencies: ["FEMCore", "FEMSystem"]),

        // 5. Composition root (config, wiring, commands) and the two thin executables.
        // The command-line tools' shared entry point (errors as one line, exit codes).
        .target(name: "FEMCommandLine", dependencies: [
            "FEMCore", "FEMSystem", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .target(name: "FEMNode", dependencies: [
            "FEMCore", "FEMSystem", "FEMJournal", "FEMTransport", "FEMStaging", "FEMLaunchers", "FEMCommandLine",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "TOMLKit", package: "TOMLKit"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
            .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .executableTarget(name: "fem-client", dependencies: ["FEMNode"]),
        // femctl, the operator's side: broker only (no journal, no TOML, no launchers).
        .target(name: "FEMCtl", dependencies: [
            "FEMCore", "FEMSystem", "FEMTransport", "FEMCommandLine",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "femctl", dependencies: ["FEMCtl"]),
        // Benchmarks' driver (bench/*.sh build it with `swift build -c release --product fem-bench`).
        .executableTarget(name: "fem-bench", dependencies: ["FEMCore", "FEMSystem", "FEMLaunchers", "FEMStaging"],
                          path: "bench/fem-bench"),

        .testTarget(name: "FEMCoreTests", dependencies: ["FEMCore"], exclude: ["Corpus", "schema_check.py"]),
        .testTarget(name: "FEMSystemTests", dependencies: ["FEMSystem"]),
        .testTarget(name: "FEMJournalTests", dependencies: ["FEMJournal", "FEMCore"]),
        .testTarget(name: "FEMStagingTests", dependencies: ["FEMStaging", "FEMCore", "FEMSystem"]),
        .testTarget(name: "FEMLaunchersTests", dependencies: ["FEMLaunchers", "FEMCore", "FEMSystem"]),
        .testTarget(name: "FEMNodeTests", dependencies: ["FEMNode", "FEMCore", "FEMSystem"]),
        .testTarget(name: "FEMCtlTests", dependencies: ["FEMCtl", "FEMCore", "FEMTransport"]),
        .testTarget(name: "IntegrationTests", dependencies: ["FEMCore", "FEMSystem", "FEMJournal", "FEMLaunchers", "FEMNode"],
                    exclude: ["Support/flaky_server.py", "Flower", "Console"]),
    ],
    swiftLanguageModes: [.v6]
)
