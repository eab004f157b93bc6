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
/// - `redis-sentinel://[user:password@]host1[:port1],host2[:port2]/mymaster[/db][?sentinel_user=U&sentinel_password=P]`
///   — the master that Redis Sentinel names `mymaster`, asked of the sentinels in
///   turn (port 26379 by default). The user and password are the master's; the
///   sentinels' own credentials, if they have any, go in the query. Connections
///   follow a failover: see ``Sentinel``.
public struct RedisConfiguration: Sendable, Hashable {
    /// Redis Sentinel: where the sentinels are and which master to ask them for.
    ///
    /// Every connection (and every reconnect) asks the sentinels, in order, for the
    /// master's address (`SENTINEL get-master-addr-by-name`), connects there, and
    /// checks with `ROLE` that it reached a master. A connection is dropped, and
    /// opened again at the new master, when a sentinel announces `+switch-master`
    /// or when the server answers `READONLY` (it was demoted to a replica); requests
    /// it carried fail with ``RedisError/Code/outcomeUnknown``, as on any lost
    /// connection.
    public struct Sentinel: Sendable, Hashable {
        /// The sentinels, asked in this order.
        public var endpoints: [Endpoint]
        /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
        public var masterName: String
        /// The ACL user for the sentinels; `nil` authenticates as their default user.
        public var username: String?
        /// The sentinels' password (`requirepass` in sentinel.conf); `nil` skips AUTH.
        public var password: String?

        /// Creates a Sentinel configuration.
        public init(endpoints: [Endpoint], masterName: String, username: String? = nil, password: String? = nil) {
            self.endpoints = endpoints
            self.masterName = masterName
            self.username = username
            self.password = password
        }
    }

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

    /// The server's address. With ``sentinel``, the address the sentinels last
    /// named (the first sentinel's until a connection has asked them).
    public var endpoint: Endpoint
    /// Redis Sentinel to ask for the master's address; `nil` connects to ``endpoint``.
    public var sentinel: Sentinel?
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
            RedisError(.invalidURL, "invalid Redis URL '\(Self.redact(url))': \(why); expected redis://[user:password@]host[:port][/db], unix:///path/to/socket[?db=N] or redis-sentinel://[user:password@]host[:port][,host[:port]...]/master-name[/db]")
        }
        guard let schemeEnd = url.range(of: "://") else { throw bad("it has no scheme") }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        let rest = String(url[schemeEnd.upperBound...])
        switch scheme {
        case "redis":
            try self.init(redisURLRest: rest, bad: bad)
        case "unix":
            try self.init(unixURLRest: rest, bad: bad)
        case "redis-sentinel":
            try self.init(sentinelURLRest: rest, bad: bad)
        case "rediss", "rediss-sentinel":
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

    private init(sentinelURLRest rest: String, bad: (String) -> RedisError) throws {
        var main = Substring(rest)
        var query = Substring("")
        if let mark = main.firstIndex(of: "?") {
            query = main[main.index(after: mark)...]
            main = main[..<mark]
        }
        var authority = main
        var path = Substring("")
        if let slash = main.firstIndex(of: "/") {
            authority = main[..<slash]
            path = main[main.index(after: slash)...]
        }
        var userInfo = ""
        if let at = authority.lastIndex(of: "@") {
            userInfo = String(authority[..<at]) + "@"
            authority = authority[authority.index(after: at)...]
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard let name = parts.first, !name.isEmpty else {
            throw bad("a Sentinel URL names the master after the hosts: redis-sentinel://host:26379/mymaster")
        }
        guard parts.count <= 2 else { throw bad("unexpected path '/\(path)' after the master name") }
        let masterName = try Self.percentDecode(name, bad: bad)
        var endpoints: [Endpoint] = []
        for host in authority.split(separator: ",", omittingEmptySubsequences: false) {
            guard !host.isEmpty else { throw bad("an empty sentinel address in the host list") }
            let hasPort = host.hasPrefix("[") ? host.contains("]:") : host.contains(":")
            let parsed = try RedisConfiguration(redisURLRest: String(host) + (hasPort ? "" : ":26379"), bad: bad)
            endpoints.append(parsed.endpoint)
        }
        guard !endpoints.isEmpty else { throw bad("no sentinel addresses") }
        // The master's credentials and database, parsed as a redis:// URL's.
        let database = parts.count == 2 ? String(parts[1]) : ""
        let master = try RedisConfiguration(redisURLRest: userInfo + "127.0.0.1" + (database.isEmpty ? "" : "/" + database), bad: bad)
        var sentinelUser: String?
        var sentinelPassword: String?
        for item in query.split(separator: "&") where !item.isEmpty {
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let value = pair.count > 1 ? pair[1] : ""
            switch pair[0] {
            case "sentinel_user", "sentinel_username": sentinelUser = try Self.percentDecode(value, bad: bad)
            case "sentinel_password": sentinelPassword = try Self.percentDecode(value, bad: bad)
            default: throw bad("unknown parameter '\(pair[0])' (known: sentinel_user, sentinel_password)")
            }
        }
        self.init(endpoint: endpoints[0], username: master.username, password: master.password, database: master.database)
        self.sentinel = Sentinel(endpoints: endpoints, masterName: masterName, username: sentinelUser, password: sentinelPassword)
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
        var result = url
        if let schemeEnd = result.range(of: "://") {
            let queryStart = result[schemeEnd.upperBound...].firstIndex(of: "?") ?? result.endIndex
            if let at = result[schemeEnd.upperBound..<queryStart].lastIndex(of: "@") {
                let userInfo = result[schemeEnd.upperBound..<at]
                if let colon = userInfo.firstIndex(of: ":") {
                    result.replaceSubrange(result.index(after: colon)..<at, with: "***")
                } else {
                    result.replaceSubrange(schemeEnd.upperBound..<at, with: "***")
                }
            }
        }
        if let mark = result.firstIndex(of: "?") {
            let items = result[result.index(after: mark)...].split(separator: "&", omittingEmptySubsequences: false).map { item -> String in
                let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if pair.count == 2, ["password", "sentinel_password"].contains(pair[0]) { return "\(pair[0])=***" }
                return String(item)
            }
            result = String(result[...mark]) + items.joined(separator: "&")
        }
        return result
    }

    /// A URL for this configuration with the password hidden, for messages and logs.
    public var redactedURL: String {
        var auth = ""
        if username != nil || password != nil { auth = "\(username ?? ""):\(password == nil ? "" : "***")@" }
        if let sentinel {
            var query: [String] = []
            if let user = sentinel.username { query.append("sentinel_user=\(user)") }
            if sentinel.password != nil { query.append("sentinel_password=***") }
            return "redis-sentinel://\(auth)\(sentinel.endpoints.map(\.description).joined(separator: ","))/\(sentinel.masterName)"
                + (database == 0 ? "" : "/\(database)") + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        }
        switch endpoint {
        case .tcp:
            return "redis://\(auth)\(endpoint)\(database == 0 ? "" : "/\(database)")"
        case .unixSocket(let path):
            return "unix://\(path)\(database == 0 ? "" : "?db=\(database)")"
        }
    }
}
