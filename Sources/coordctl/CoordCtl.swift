import Foundation
import ArgumentParser
import Coordination

/// coordctl: an etcdctl lookalike for the Redis-backed store.
@main
struct CoordCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordctl",
        abstract: "An etcdctl lookalike for etcd v3 semantics stored in Redis.",
        discussion: """
            The etcd commands (put, get, del, txn, watch, lease, compaction, endpoint \
            status) arrive with the Coordination module. Today coordctl can check that \
            a Redis server is reachable:

              coordctl ping --endpoints redis://127.0.0.1:6379
            """,
        subcommands: [Ping.self]
    )
}

/// `coordctl ping`: connects, authenticates and reports the round trip.
struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Connect to Redis and report the round-trip time of PING.")

    @Option(name: .long, help: "Redis URL: redis://[user:password@]host[:port][/db] or unix:///path?db=N (default: $REDIS_URL or redis://127.0.0.1:6379).")
    var endpoints: String?

    func run() async throws {
        let url = endpoints ?? ProcessInfo.processInfo.environment["REDIS_URL"] ?? "redis://127.0.0.1:6379"
        do {
            let connection = try await RedisConnection.connect(url: url)
            let clock = ContinuousClock()
            var reply = RedisReply.null
            let elapsed = try await clock.measure { reply = try await connection.send("PING") }
            print("\(connection.configuration.redactedURL) is healthy: \(reply) in \(elapsed)")
            await connection.close()
        } catch let error as RedisError {
            throw ValidationError(error.message)
        }
    }
}
