import CHiredis
import Glibc

/// A freshly opened hiredis context in blocking mode, used on the connection
/// thread for the commands that must complete before pipelining starts
/// (AUTH, SELECT, CLIENT SETNAME, PING, and pub/sub re-subscriptions).
struct BlockingHandshake {
    let context: UnsafeMutablePointer<redisContext>
    let configuration: RedisConfiguration

    /// Connects to the configured endpoint within the connect timeout.
    static func open(_ configuration: RedisConfiguration) throws -> BlockingHandshake {
        let timeout = timevalFrom(configuration.connectTimeout)
        let context: UnsafeMutablePointer<redisContext>?
        switch configuration.endpoint {
        case .tcp(let host, let port):
            context = redisConnectWithTimeout(host, Int32(port), timeout)
        case .unixSocket(let path):
            context = redisConnectUnixWithTimeout(path, timeout)
        }
        guard let context else {
            throw RedisError(.connectionRefused, "could not allocate a hiredis context for \(configuration.redactedURL)")
        }
        if context.pointee.err != 0 {
            let detail = errorString(context)
            redisFree(context)
            let lowered = detail.lowercased()
            if lowered.contains("timed out") || lowered.contains("temporarily unavailable") || lowered.contains("in progress") {
                throw RedisError(.timeout, "connecting to \(configuration.redactedURL) took longer than the connect timeout (\(configuration.connectTimeout)); check the host and port", cause: detail)
            }
            throw RedisError(.connectionRefused, "could not connect to \(configuration.redactedURL): \(detail); is redis-server running there?", cause: detail)
        }
        // Bound every handshake read and write by the connect timeout.
        redisSetTimeout(context, timeout)
        if case .tcp = configuration.endpoint, configuration.tcpKeepAlive {
            redisEnableKeepAlive(context)
        }
        return BlockingHandshake(context: context, configuration: configuration)
    }

    /// Runs one command and waits for its reply; an error reply throws.
    func command(_ arguments: [[UInt8]]) throws -> RedisReply {
        let reply = try rawCommand(arguments)
        if case .error(let message) = reply { throw RedisError.fromServerReply(message) }
        return reply
    }

    /// Runs one command and returns its reply, error replies included.
    func rawCommand(_ arguments: [[UInt8]]) throws -> RedisReply {
        var pointers: [UnsafePointer<CChar>?] = []
        var lengths: [Int] = []
        var storage: [UnsafeMutablePointer<CChar>] = []
        defer { storage.forEach { $0.deallocate() } }
        for argument in arguments {
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(argument.count, 1))
            argument.withUnsafeBytes { raw in
                if let base = raw.baseAddress { buffer.withMemoryRebound(to: UInt8.self, capacity: argument.count) { $0.update(from: base.assumingMemoryBound(to: UInt8.self), count: argument.count) } }
            }
            storage.append(buffer)
            pointers.append(UnsafePointer(buffer))
            lengths.append(argument.count)
        }
        let raw = pointers.withUnsafeMutableBufferPointer { argv in
            lengths.withUnsafeBufferPointer { argvlen in
                redisCommandArgv(context, Int32(arguments.count), argv.baseAddress, argvlen.baseAddress)
            }
        }
        guard let raw else {
            let detail = Self.errorString(context)
            let name = String(decoding: arguments.first ?? [], as: UTF8.self)
            if detail.lowercased().contains("temporarily unavailable") || detail.lowercased().contains("timed out") {
                throw RedisError(.timeout, "no reply to \(name) from \(configuration.redactedURL) within the connect timeout", cause: detail)
            }
            throw RedisError(.connectionRefused, "the connection to \(configuration.redactedURL) failed during \(name): \(detail)", cause: detail)
        }
        defer { freeReplyObject(raw) }
        return ReplyConversion.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// AUTH (password or ACL user), SELECT, CLIENT SETNAME and a PING that proves the session works.
    func authenticate() throws {
        if let password = configuration.password {
            var arguments: [[UInt8]] = [Array("AUTH".utf8)]
            if let username = configuration.username { arguments.append(Array(username.utf8)) }
            arguments.append(Array(password.utf8))
            let reply = try rawCommand(arguments)
            if case .error(let message) = reply {
                if message.contains("without any password configured") || message.contains("no password is set") {
                    throw RedisError(.authenticationFailed, "the URL gives a password but \(configuration.redactedURL) has none configured; remove it from the URL", cause: message)
                }
                let who = configuration.username.map { "user '\($0)'" } ?? "the default user"
                throw RedisError(.authenticationFailed, "\(configuration.redactedURL) rejected the password for \(who); check the credentials in the URL", cause: message)
            }
        } else if let username = configuration.username {
            throw RedisError(.authenticationFailed, "the URL names user '\(username)' but gives no password; use redis://\(username):PASSWORD@host")
        }
        if configuration.database != 0 {
            let reply = try rawCommand([Array("SELECT".utf8), Array(String(configuration.database).utf8)])
            if case .error(let message) = reply {
                if message.hasPrefix("NOAUTH") { throw RedisError.fromServerReply(message) }
                throw RedisError(.invalidURL, "\(configuration.redactedURL) cannot select database \(configuration.database): \(message); use a database below the server's `databases` setting", cause: message)
            }
        }
        if let name = configuration.clientName {
            _ = try command([Array("CLIENT".utf8), Array("SETNAME".utf8), Array(name.utf8)])
        }
        let pong = try rawCommand([Array("PING".utf8)])
        if case .error(let message) = pong { throw RedisError.fromServerReply(message) }
    }

    private static func errorString(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }

    private static func timevalFrom(_ duration: Duration) -> timeval {
        let nanos = MonotonicClock.nanoseconds(duration)
        return timeval(tv_sec: Int(nanos / 1_000_000_000), tv_usec: Int((nanos % 1_000_000_000) / 1_000))
    }
}

extension BlockingHandshake {
    /// Reads one more reply (for commands such as SUBSCRIBE that answer several times).
    func readReply() throws -> RedisReply {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
            let detail = withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            throw RedisError(.connectionRefused, "the connection to \(configuration.redactedURL) failed while reading a reply: \(detail)", cause: detail)
        }
        defer { freeReplyObject(raw) }
        return ReplyConversion.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Sends a command without waiting for its reply.
    func sendOnly(_ arguments: [[UInt8]]) throws {
        var bytes: [UInt8] = []
        RESPEncoder.encode(arguments, into: &bytes)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.send(context.pointee.fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if written <= 0 {
                let code = chiredis_errno()
                if code == EINTR { continue }
                throw RedisError(.connectionRefused, "writing to \(configuration.redactedURL) failed: \(String(cString: strerror(code)))")
            }
            offset += written
        }
    }
}
