import Synchronization

/// A fixed number of ``RedisConnection``s that share the load.
///
/// Requests go to the connections in turn; each connection pipelines what it
/// receives. A pool helps when one connection's thread is the bottleneck; on a
/// small machine one pipelined connection is often as fast.
public final class RedisConnectionPool: RedisCommandExecutor {
    /// The pool's connections, in the order requests visit them.
    public let connections: [RedisConnection]
    private let next = Atomic<Int>(0)

    private init(connections: [RedisConnection]) {
        self.connections = connections
    }

    /// Opens `size` connections to the configured server.
    ///
    /// - Throws: the first connection's error; connections already opened are closed.
    public static func connect(_ configuration: RedisConfiguration, size: Int) async throws -> RedisConnectionPool {
        guard size >= 1 else { throw RedisError(.invalidArgument, "a pool needs at least one connection, not \(size)") }
        var connections: [RedisConnection] = []
        do {
            for index in 0..<size {
                var perConnection = configuration
                if let name = configuration.clientName { perConnection.clientName = "\(name)-\(index)" }
                connections.append(try await RedisConnection.connect(perConnection))
            }
        } catch {
            for connection in connections { await connection.close() }
            throw error
        }
        return RedisConnectionPool(connections: connections)
    }

    public func send(_ arguments: [[UInt8]], timeout: Duration?) async throws -> RedisReply {
        let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
        return try await connections[Int(UInt(bitPattern: index) % UInt(connections.count))].send(arguments, timeout: timeout)
    }

    /// Closes every connection after its queued requests finish.
    public func close() async {
        for connection in connections { await connection.close() }
    }
}
