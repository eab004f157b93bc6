import Foundation
import RedisClient

/// Runs `body` with a private server and one connection to it.
func withConnection<Result: Sendable>(
    _ options: RedisServer.Options = .init(),
    _ body: (RedisServer, RedisConnection) async throws -> Result
) async throws -> Result {
    try await withConnection(options, configure: { _ in }, body)
}

/// Runs `body` with a private server and one connection to it, configured by `configure`.
func withConnection<Result: Sendable>(
    _ options: RedisServer.Options = .init(),
    configure: (inout RedisConfiguration) -> Void,
    _ body: (RedisServer, RedisConnection) async throws -> Result
) async throws -> Result {
    try await RedisServer.withServer(options) { server in
        var configuration = server.configuration
        configure(&configuration)
        let connection = try await RedisConnection.connect(configuration)
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
