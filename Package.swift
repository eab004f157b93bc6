// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "swift-coordination",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RedisClient", targets: ["RedisClient"]),
        .library(name: "Coordination", targets: ["Coordination"]),
        .library(name: "CoordinationPrimitives", targets: ["CoordinationPrimitives"]),
        .executable(name: "coordctl", targets: ["coordctl"]),
        .executable(name: "coordbench", targets: ["coordbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "RedisClient",
            dependencies: [
                "CHiredis",
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .target(
            name: "Coordination",
            dependencies: ["RedisClient", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            resources: [.embedInCode("../../lua/kv.lua"), .embedInCode("../../lua/compact.lua")]
        ),
        .target(name: "CoordinationPrimitives", dependencies: ["Coordination"]),
        .executableTarget(
            name: "coordctl",
            dependencies: [
                "Coordination",
                "CoordinationPrimitives",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "coordbench",
            dependencies: [
                "Coordination",
                "CoordinationPrimitives",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "RedisClientTests", dependencies: ["RedisClient"]),
        .testTarget(name: "CoordinationTests", dependencies: ["Coordination", "RedisClient"]),
        // A worker process for the multi-process tests of the primitives (mutual
        // exclusion across processes, holders killed or stopped, crashed guests).
        .executableTarget(
            name: "PrimitivesWorker",
            dependencies: ["CoordinationPrimitives", "RedisClient"],
            path: "Tests/PrimitivesWorker"
        ),
        .testTarget(name: "CoordinationPrimitivesTests", dependencies: ["CoordinationPrimitives", "RedisClient"]),
    ],
    swiftLanguageModes: [.v6]
)
