// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "swift-coordination",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RedisClient", targets: ["RedisClient"]),
        .library(name: "Coordination", targets: ["Coordination"]),
        .library(name: "CoordinationPrimitives", targets: ["CoordinationPrimitives"]),
        .library(name: "EtcdAPI", targets: ["EtcdAPI"]),
        .executable(name: "coordproxy", targets: ["coordproxy"]),
        .executable(name: "coordctl", targets: ["coordctl"]),
        .executable(name: "coordbench", targets: ["coordbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
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
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "Coordination",
            dependencies: ["RedisClient", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            resources: [.embedInCode("../../lua/kv.lua"), .embedInCode("../../lua/compact.lua")]
        ),
        .target(name: "CoordinationPrimitives", dependencies: ["Coordination"]),
        .target(name: "EventLoopExecution", dependencies: [.product(name: "NIOCore", package: "swift-nio")]),
        // etcd's v3 gRPC API served from the store: our own .proto files (Protos/) and
        // the committed generated code (Generated/, from scripts/generate-protos.sh).
        .target(
            name: "EtcdAPI",
            dependencies: [
                "RedisClient",
                "Coordination",
                "CoordinationPrimitives",
                "EventLoopExecution",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            exclude: ["Protos"]
        ),
        .target(
            name: "RESPFrontEnd",
            dependencies: [
                "RedisClient",
                "Coordination",
                "CoordinationPrimitives",
                "EventLoopExecution",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            // The pass-through path runs for every command a Redis client sends; in
            // release builds the runtime's exclusivity checks (class properties and
            // ByteBuffer storage touched per command) cost about a tenth of
            // coordproxy's CPU there (perf, redis-benchmark -P 16). Debug builds, and
            // so the test suite, keep them.
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "coordproxy",
            dependencies: [
                "EtcdAPI",
                "RESPFrontEnd",
                "Coordination",
                "RedisClient",
                "EventLoopExecution",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
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
        .testTarget(name: "RedisClientTests", dependencies: ["RedisClient", .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(name: "CoordinationTests", dependencies: ["Coordination", "RedisClient", "EtcdTestSupport"]),
        // What the test targets that start a reference etcd share (no dependencies).
        .target(name: "EtcdTestSupport", path: "Tests/EtcdTestSupport"),
        // A worker process for the multi-process tests of the primitives (mutual
        // exclusion across processes, holders killed or stopped, crashed guests).
        .executableTarget(
            name: "PrimitivesWorker",
            dependencies: ["CoordinationPrimitives", "RedisClient"],
            path: "Tests/PrimitivesWorker"
        ),
        .testTarget(name: "CoordinationPrimitivesTests", dependencies: ["CoordinationPrimitives", "RedisClient"]),
        .testTarget(
            name: "EtcdAPITests",
            dependencies: ["EtcdAPI", "Coordination", "RedisClient", "EtcdTestSupport", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            exclude: ["GoClient", "Python"]),
        .testTarget(
            name: "RESPFrontEndTests",
            dependencies: ["RESPFrontEnd", "Coordination", "RedisClient", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            exclude: ["Python"]),
    ],
    swiftLanguageModes: [.v6]
)
