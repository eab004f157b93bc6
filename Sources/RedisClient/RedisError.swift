/// An error from the Redis client: what went wrong, a message that says what to do,
/// and the underlying cause.
///
/// Match on ``code`` (its values are static members, so new codes can be added
/// without breaking exhaustive switches):
///
/// ```swift
/// do { try await connection.send("GET", "k") }
/// catch let error as RedisError where error.code == .outcomeUnknown { ... }
/// ```
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        enum Value: String, Sendable, Hashable {
            case invalidURL, connectionRefused, authenticationFailed, timeout
            case connectionLost, outcomeUnknown, connectionClosed, server
            case protocolError, noPermission, serverNotFound, serverStartFailed
            case invalidArgument
        }

        let value: Value

        /// The URL or configuration is malformed.
        public static let invalidURL = Code(value: .invalidURL)
        /// Nothing accepts connections at the address, or the socket path does not exist.
        public static let connectionRefused = Code(value: .connectionRefused)
        /// The password or ACL user was rejected, or the server requires one and none was given.
        public static let authenticationFailed = Code(value: .authenticationFailed)
        /// Connecting, or waiting for a reply, took longer than the configured timeout.
        /// A request that timed out after it was sent may or may not have run.
        public static let timeout = Code(value: .timeout)
        /// The connection broke before the request was sent: it did not run, and retrying is safe.
        public static let connectionLost = Code(value: .connectionLost)
        /// The connection broke after the request was sent: it may or may not have run.
        public static let outcomeUnknown = Code(value: .outcomeUnknown)
        /// The connection was closed by its owner.
        public static let connectionClosed = Code(value: .connectionClosed)
        /// The server answered with an error reply (see ``RedisError/serverErrorPrefix``).
        public static let server = Code(value: .server)
        /// The server sent something that is not valid RESP.
        public static let protocolError = Code(value: .protocolError)
        /// The server refused the command because of ACL rules (`NOPERM`).
        public static let noPermission = Code(value: .noPermission)
        /// The `redis-server` executable was not found (``RedisServer`` only).
        public static let serverNotFound = Code(value: .serverNotFound)
        /// A private `redis-server` did not start (``RedisServer`` only).
        public static let serverStartFailed = Code(value: .serverStartFailed)
        /// An argument was out of range or malformed.
        public static let invalidArgument = Code(value: .invalidArgument)

        public var description: String { value.rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// A human-readable explanation that names what was wrong and what to do.
    public var message: String
    /// The underlying cause, such as a system error or the server's error text.
    public var cause: String?

    /// Creates an error.
    public init(_ code: Code, _ message: String, cause: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// For ``Code/server`` errors: the first word of the server's reply (`ERR`, `WRONGTYPE`, `NOSCRIPT`, ...).
    public var serverErrorPrefix: String? {
        guard code == .server || code == .noPermission || code == .authenticationFailed, let cause else { return nil }
        return cause.split(separator: " ", maxSplits: 1).first.map(String.init)
    }

    public var description: String {
        if let cause, !message.contains(cause) { return "\(code): \(message) (\(cause))" }
        return "\(code): \(message)"
    }

    /// Classifies an error reply from the server (also one nested in an array reply, as
    /// a script's or a transaction's), as ``RedisCommandExecutor/send(_:timeout:)``
    /// throws it: `NOPERM` and `NOAUTH`/`WRONGPASS` get codes of their own.
    public static func fromServerReply(_ text: String) -> RedisError {
        if text.hasPrefix("NOPERM") {
            return RedisError(.noPermission, "the Redis user lacks a permission: \(text); grant it with ACL SETUSER", cause: text)
        }
        if text.hasPrefix("NOAUTH") {
            return RedisError(.authenticationFailed, "the server requires a password: put it in the URL as redis://[user:]password@host", cause: text)
        }
        if text.hasPrefix("WRONGPASS") || text.hasPrefix("ERR invalid password") || text.contains("invalid username-password") {
            return RedisError(.authenticationFailed, "the server rejected the user name or password in the URL", cause: text)
        }
        return RedisError(.server, text, cause: text)
    }
}
