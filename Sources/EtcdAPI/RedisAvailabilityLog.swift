import Coordination
import Logging
import RedisClient
import ServiceLifecycle

/// Logs when the backing Redis stops answering and when it answers again: one line
/// each way, for the operator (every refused request is logged too, with its
/// reason, but a burst of those does not say when the outage began or ended).
///
/// It asks Redis a `PING` every `interval` on a connection of its own (a slow answer
/// there ends no request of the store's; the connection reconnects by itself), with
/// `timeout` for the answer; the line about a loss names the error, the line about the
/// return how long Redis was away. A ServiceLifecycle service: it stops on graceful
/// shutdown.
public struct RedisAvailabilityLog: Service {
    public let store: CoordinationClient
    /// The Redis as the log lines name it (without its password).
    public let redisDescription: String
    public let interval: Duration
    public let timeout: Duration
    public let logger: Logger

    public init(store: CoordinationClient, redisDescription: String, interval: Duration = .seconds(1), timeout: Duration = .seconds(5), logger: Logger) {
        self.store = store
        self.redisDescription = redisDescription
        self.interval = interval
        self.timeout = timeout
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            let clock = ContinuousClock()
            var lostAt: ContinuousClock.Instant?
            var connection: RedisConnection?
            defer { if let connection { Task { await connection.close() } } }
            while !Task.isCancelled {
                do {
                    if connection == nil {
                        var configuration = try store.redisConfiguration
                        configuration.clientName = "coordproxy-probe"
                        connection = try await RedisConnection.connect(configuration)
                    }
                    do {
                        _ = try await connection!.send([Array("PING".utf8)], timeout: timeout)
                    } catch let error as RedisError where error.code == .noPermission {
                        // A user that may not PING: Redis answered all the same.
                    }
                    if let since = lostAt {
                        lostAt = nil
                        logger.notice("Redis answers again: serving from it", metadata: [
                            "redis": "\(redisDescription)", "unavailable_ms": "\(Int(since.duration(to: clock.now) / .milliseconds(1)))",
                        ])
                    }
                } catch is CancellationError {
                    return
                } catch {
                    if lostAt == nil {
                        lostAt = clock.now
                        logger.warning("lost Redis: requests fail with UNAVAILABLE until it answers again", metadata: [
                            "redis": "\(redisDescription)", "error": "\(error)",
                        ])
                    }
                }
                do { try await Task.sleep(for: interval) } catch { return }
            }
        }
    }
}
