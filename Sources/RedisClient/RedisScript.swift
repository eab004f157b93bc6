/// A Lua script run with EVALSHA, loaded on demand.
///
/// The SHA-1 is computed locally, so the first call already uses EVALSHA. When the
/// server does not know the script (`NOSCRIPT`: first use, `SCRIPT FLUSH`, a
/// restart or a failover) it is loaded with `SCRIPT LOAD` and the call is retried,
/// transparently, also when many calls on one pipeline fail this way at once.
public struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    public let source: String
    /// The lowercase hex SHA-1 of the source, as EVALSHA expects.
    public let sha1: String

    /// Creates a script from its Lua source.
    public init(_ source: String) {
        self.source = source
        self.sha1 = SHA1.hex(Array(source.utf8))
    }
}

extension RedisCommandExecutor {
    /// Runs `script` with EVALSHA, loading it first if the server does not have it.
    ///
    /// - Parameters:
    ///   - keys: the script's `KEYS`.
    ///   - arguments: the script's `ARGV`.
    /// - Throws: ``RedisError``; a script error has code ``RedisError/Code/server``.
    public func run(_ script: RedisScript, keys: [[UInt8]] = [], arguments: [[UInt8]] = [], timeout: Duration? = nil) async throws -> RedisReply {
        var command: [[UInt8]] = [Array("EVALSHA".utf8), Array(script.sha1.utf8), Array(String(keys.count).utf8)]
        command.append(contentsOf: keys)
        command.append(contentsOf: arguments)
        do {
            return try await send(command, timeout: timeout)
        } catch let error as RedisError where error.serverErrorPrefix == "NOSCRIPT" {
            let loaded = try await send([Array("SCRIPT".utf8), Array("LOAD".utf8), Array(script.source.utf8)], timeout: timeout)
            guard loaded.string == script.sha1 else {
                throw RedisError(.protocolError, "SCRIPT LOAD returned \(loaded) instead of the expected SHA-1 \(script.sha1)")
            }
            return try await send(command, timeout: timeout)
        }
    }

    /// Runs `script` with keys and arguments given as strings, integers or bytes.
    public func run(_ script: RedisScript, keys: [any RedisArgumentConvertible], arguments: [any RedisArgumentConvertible] = []) async throws -> RedisReply {
        try await run(script, keys: keys.map(\.redisArgument), arguments: arguments.map(\.redisArgument), timeout: nil)
    }
}
