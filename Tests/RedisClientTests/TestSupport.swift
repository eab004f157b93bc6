import NIOPosix
import Foundation
import RedisClient

/// Runs `body` with a private server and one connection to it.
func withConnection<Result: Sendable>(
    _ options: RedisServer.Options = .init(),
    engine: Engine = .thread,
    _ body: (RedisServer, RedisConnection) async throws -> Result
) async throws -> Result {
    try await withConnection(options, engine: engine, configure: { _ in }, body)
}

/// What serves a connection's socket: a thread of its own, or an event loop.
enum Engine: String, CaseIterable, Sendable, CustomStringConvertible {
    case thread
    case eventLoop

    var description: String { rawValue }

    /// Opens a connection served by this engine.
    func connect(_ configuration: RedisConfiguration) async throws -> RedisConnection {
        switch self {
        case .thread: return try await RedisConnection.connect(configuration)
        case .eventLoop: return try await RedisConnection.connect(configuration, on: MultiThreadedEventLoopGroup.singleton.next(), setup: { _ in })
        }
    }

    func connect(url: String) async throws -> RedisConnection {
        try await connect(RedisConfiguration(url: url))
    }
}

/// Runs `body` with a private server and one connection to it, configured by `configure`.
func withConnection<Result: Sendable>(
    _ options: RedisServer.Options = .init(),
    engine: Engine = .thread,
    configure: (inout RedisConfiguration) -> Void,
    _ body: (RedisServer, RedisConnection) async throws -> Result
) async throws -> Result {
    try await RedisServer.withServer(options) { server in
        var configuration = server.configuration
        configure(&configuration)
        let connection = try await engine.connect(configuration)
        do {
            let result = try await body(server, connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }
}

/// The error `body` throws, as a RedisError (nil when it does not throw one).
func redisError(_ body: () async throws -> Void) async -> RedisError? {
    do {
        try await body()
        return nil
    } catch let error as RedisError {
        return error
    } catch {
        return nil
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(5), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}
