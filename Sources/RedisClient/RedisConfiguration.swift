import Foundation

/// Where and how to connect to Redis: endpoint, credentials, database, timeouts.
///
/// Build one from a URL:
///
/// - `redis://[user:password@]host[:port][/db]` — TCP; port defaults to 6379, db to 0.
///   `redis://:secret@host` and `redis://secret@host` give a password without a user.
///   IPv6 hosts go in brackets: `redis://[::1]:6379`. Percent-escapes in the user and
///   password are decoded.
/// - `unix:///path/to/redis.sock[?db=N][&user=U][&password=P]` — a unix domain socket.
public struct RedisConfiguration: Sendable, Hashable {
    /// The address of a Redis server.
    public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// A TCP host and port.
        case tcp(host: String, port: Int)
        /// A unix domain socket path.
        case unixSocket(path: String)

        public var description: String {
            switch self {
            case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unixSocket(let path): return path
            }
        }
    }

    /// The server's address.
    public var endpoint: Endpoint
    /// The ACL user name; `nil` authenticates as the default user.
    public var username: String?
    /// The password; `nil` skips AUTH.
    public var password: String?
    /// The logical database selected with SELECT after connecting.
    public var database: Int
    /// How long each step of connecting may take: the TCP or unix connect, then each
    /// handshake command (AUTH, SELECT, CLIENT SETNAME, PING) in turn.
    public var connectTimeout: Duration = .seconds(5)
    /// How long a request may wait for its reply; `nil` waits forever.
    ///
    /// When a request times out the connection is closed and opened again, because
    /// later replies on a pipelined connection can no longer be matched to requests.
    public var commandTimeout: Duration? = .seconds(30)
    /// Whether to turn on TCP keepalive probes (TCP endpoints only).
    public var tcpKeepAlive: Bool = true
    /// Whether concurrent requests on one connection are pipelined (written in
    /// batches without waiting for earlier replies). Turn off only to measure.
    public var pipelining: Bool = true
    /// The first delay between reconnect attempts after a connection is lost.
    public var reconnectInitialDelay: Duration = .milliseconds(20)
    /// The longest delay between reconnect attempts.
    public var reconnectMaxDelay: Duration = .seconds(2)
    /// A name set with CLIENT SETNAME, visible in CLIENT LIST.
    public var clientName: String?

    /// Creates a configuration for an endpoint.
    public init(endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
    }

    /// Parses a `redis://` or `unix://` URL.
    ///
    /// - Throws: ``RedisError`` with code ``RedisError/Code/invalidURL`` and a message
    ///   naming the part that is wrong.
    public init(url: String) throws {
        func bad(_ why: String) -> RedisError {
            RedisError(.invalidURL, "invalid Redis URL '\(Self.redact(url))': \(why); expected redis://[user:password@]host[:port][/db] or unix:///path/to/socket[?db=N]")
        }
        guard let schemeEnd = url.range(of: "://") else { throw bad("it has no scheme") }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        let rest = String(url[schemeEnd.upperBound...])
        switch scheme {
        case "redis":
            try self.init(redisURLRest: rest, bad: bad)
        case "unix":
            try self.init(unixURLRest: rest, bad: bad)
        case "rediss":
            throw bad("TLS (rediss://) is not supported by this client; connect through a local TLS proxy with redis://")
        default:
            throw bad("unknown scheme '\(scheme)'")
        }
    }

    private init(redisURLRest rest: String, bad: (String) -> RedisError) throws {
        var authority = Substring(rest)
        var path = Substring("")
        if let slash = authority.firstIndex(of: "/") {
            path = authority[authority.index(after: slash)...]
            authority = authority[..<slash]
        }
        if authority.contains("?") || path.contains("?") {
            throw bad("query parameters are not supported in redis:// URLs")
        }
        var username: String?
        var password: String?
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                let user = userInfo[..<colon]
                username = user.isEmpty ? nil : try Self.percentDecode(user, bad: bad)
                password = try Self.percentDecode(userInfo[userInfo.index(after: colon)...], bad: bad)
            } else if !userInfo.isEmpty {
                password = try Self.percentDecode(userInfo, bad: bad)
            }
        }
        var host: String
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw bad("unterminated IPv6 address") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw bad("unexpected text after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.firstIndex(of: ":") {
            host = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        } else {
            host = String(authority)
        }
        if host.isEmpty { host = "127.0.0.1" }
        if host.contains(where: { $0 == " " || $0 == "@" || $0 == "[" || $0 == "]" }) {
            throw bad("host '\(host)' contains characters that are not allowed")
        }
        var port = 6379
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw bad("port '\(portText)' is not a number from 1 to 65535")
            }
            port = value
        }
        var database = 0
        if !path.isEmpty {
            guard let value = Int(path), value >= 0 else { throw bad("database '\(path)' is not a non-negative integer") }
            database = value
        }
        self.init(endpoint: .tcp(host: host, port: port), username: username, password: password, database: database)
    }

    private init(unixURLRest rest: String, bad: (String) -> RedisError) throws {
        var path = Substring(rest)
        var query = Substring("")
        if let mark = path.firstIndex(of: "?") {
            query = path[path.index(after: mark)...]
            path = path[..<mark]
        }
        guard path.hasPrefix("/") else { throw bad("a unix socket URL needs an absolute path: unix:///path/to/socket") }
        var username: String?
        var password: String?
        var database = 0
        for item in query.split(separator: "&") where !item.isEmpty {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = parts[0]
            let value = parts.count > 1 ? parts[1] : ""
            switch name {
            case "db":
                guard let number = Int(value), number >= 0 else { throw bad("database '\(value)' is not a non-negative integer") }
                database = number
            case "user": username = try Self.percentDecode(value, bad: bad)
            case "password": password = try Self.percentDecode(value, bad: bad)
            default: throw bad("unknown parameter '\(name)' (known: db, user, password)")
            }
        }
        self.init(endpoint: .unixSocket(path: try Self.percentDecode(path, bad: bad)), username: username, password: password, database: database)
    }

    private static func percentDecode(_ text: Substring, bad: (String) -> RedisError) throws -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) else {
                    throw bad("bad percent-escape")
                }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    static func redact(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else {
            if let passwordRange = url.range(of: "password=") {
                let end = url[passwordRange.upperBound...].firstIndex(of: "&") ?? url.endIndex
                return url.replacingCharacters(in: passwordRange.upperBound..<end, with: "***")
            }
            return url
        }
        let userInfo = url[schemeEnd.upperBound..<at]
        if let colon = userInfo.firstIndex(of: ":") {
            return url.replacingCharacters(in: url.index(after: colon)..<at, with: "***")
        }
        return url.replacingCharacters(in: schemeEnd.upperBound..<at, with: "***")
    }

    /// A URL for this configuration with the password hidden, for messages and logs.
    public var redactedURL: String {
        var auth = ""
        if username != nil || password != nil { auth = "\(username ?? ""):\(password == nil ? "" : "***")@" }
        switch endpoint {
        case .tcp:
            return "redis://\(auth)\(endpoint)\(database == 0 ? "" : "/\(database)")"
        case .unixSocket(let path):
            return "unix://\(path)\(database == 0 ? "" : "?db=\(database)")"
        }
    }
}
