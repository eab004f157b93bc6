import Coordination
import Foundation
import Logging
import RESPFrontEnd
@testable import RedisClient
import ServiceLifecycle
import Testing

/// coordproxy's Redis-protocol listener served in process over a private
/// redis-server, with the store's background work (lease expiry) running.
struct RESPProxy: Sendable {
    let store: CoordinationClient
    let redis: RedisServer
    /// The listener's port, for `redis-cli -p` and redis-py.
    let port: Int
    /// The backing Redis's port (for comparing pass-through with Redis itself).
    var redisPort: Int {
        if case .tcp(_, let port) = (try? RedisConfiguration(url: redis.url))?.endpoint { return port }
        return 0
    }
}

func withRESPProxy<Result: Sendable>(redisPassword: String? = nil, durable: Bool = false,
                                     configure: (inout RESPFrontEnd.Configuration) -> Void = { _ in },
                                     storeURL: (RedisServer) async throws -> String = { $0.url },
                                     beforeStart: (RedisServer) async throws -> Void = { _ in },
                                     _ body: (RESPProxy) async throws -> Result) async throws -> Result {
    // `storeURL`: how the store connects (as another user, say); `beforeStart`: run
    // once the store has connected, before the listener starts (to stop Redis, say).
    // Over TCP, so that the tests can also talk to the backing Redis directly;
    // `durable`: every write fsynced to the append-only file, so that a killed Redis
    // comes back with everything it acknowledged.
    let options = RedisServer.Options(transport: .tcp(), password: redisPassword, appendOnly: durable, appendFsync: durable ? "always" : nil)
    return try await RedisServer.withServer(options) { server in
        let store = try await CoordinationClient.connect(url: try await storeURL(server))
        do { try await beforeStart(server) } catch {
            await store.close()
            throw error
        }
        var logger = Logger(label: "coordproxy-resp-test")
        logger.logLevel = .warning
        var configuration = RESPFrontEnd.Configuration(listen: [.tcp(host: "127.0.0.1", port: 0)], redis: try RedisConfiguration(url: server.url), namespace: "coord")
        configure(&configuration)
        let frontEnd = RESPFrontEnd(store: store, configuration: configuration, logger: logger)
        let group = ServiceGroup(services: [frontEnd], gracefulShutdownSignals: [], logger: logger)
        let serving = Task { try await group.run() }
        let background = Task { try await store.run(interval: .milliseconds(50)) }
        func stop() async {
            await group.triggerGracefulShutdown()
            _ = await serving.result
            background.cancel()
            _ = await background.result
            await store.close()
        }
        do {
            guard case .tcp(_, let port) = try #require(await frontEnd.boundAddresses().first) else { throw RESPFrontEndTestError("no TCP listener") }
            let result = try await body(RESPProxy(store: store, redis: server, port: port))
            await stop()
            return result
        } catch {
            await stop()
            throw error
        }
    }
}

struct RESPFrontEndTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// redis-cli's output for `arguments` against `port`, expecting it to exit 0.
func redisCLIOutput(_ port: Int, _ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
    let result = try await redisCLI(port, arguments)
    #expect(result.status == 0, "\(result.error)", sourceLocation: sourceLocation)
    return result.output
}

/// redis-cli (Debian's redis-tools) against `port`.
func redisCLI(_ port: Int, _ arguments: [String], input: String = "") async throws -> ChildProcess.Finished {
    guard let executable = ChildProcess.locate("redis-cli") else {
        throw RedisError(.serverNotFound, "redis-cli was not found on PATH; install it (Debian: apt-get install redis-tools)")
    }
    return try await ChildProcess.run(executable, ["-p", String(port)] + arguments, environment: ["PATH": "/usr/bin:/bin"], input: input)
}

/// A Python with redis-py and hiredis: $COORD_PYTHON (scripts/test.sh makes a
/// virtual environment with them), else a python3 on PATH that imports them.
func redisPython() async throws -> String {
    if let python = ProcessInfo.processInfo.environment["COORD_PYTHON"], FileManager.default.isExecutableFile(atPath: python) {
        return python
    }
    if let python = ChildProcess.locate("python3"),
       try await ChildProcess.run(python, ["-c", "import redis, hiredis"], environment: ["PATH": "/usr/bin:/bin"]).status == 0 {
        return python
    }
    throw RedisError(.serverNotFound, "no python with redis-py and hiredis: run scripts/test.sh (it makes .build/python from PyPI), or set COORD_PYTHON to a python that has them (pip install redis hiredis)")
}

/// Runs Tests/RESPFrontEndTests/Python/redispy_check.py.
func redisPy(_ arguments: [String], timeout: Duration = .seconds(120)) async throws -> ChildProcess.Finished {
    let python = try await redisPython()
    return try await ChildProcess.run(python, [redisPyScript] + arguments, environment: ["PATH": "/usr/bin:/bin"], timeout: timeout)
}

let redisPyScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Python/redispy_check.py").path

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}
