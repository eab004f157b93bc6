import Foundation
import Synchronization

/// A private `redis-server` for tests, demos and the load test.
///
/// It runs in a temporary directory, listens on a unix socket (default) or a free
/// loopback port, takes the settings the caller asks for, and is stopped by
/// ``stop()``, by ``withServer(_:_:)`` when its body ends, or when the process exits.
///
/// ```swift
/// try await RedisServer.withServer(.init(keyspaceEvents: "KEA")) { server in
///     let connection = try await RedisConnection.connect(server.configuration)
///     ...
/// }
/// ```
public final class RedisServer: Sendable {
    /// An ACL user created in the server's configuration.
    public struct ACLUser: Sendable, Hashable {
        /// The user name.
        public var name: String
        /// The user's password.
        public var password: String
        /// ACL rules after `on >password`, such as `~* &* +@all` or `~app:* +get +set`.
        public var rules: String

        /// Creates a user; by default it may run every command on every key and channel.
        public init(name: String, password: String, rules: String = "~* &* +@all") {
            self.name = name
            self.password = password
            self.rules = rules
        }
    }

    /// How clients reach the server.
    public enum Transport: Sendable, Hashable {
        /// A unix domain socket in the server's directory (TCP is turned off).
        case unixSocket
        /// A loopback TCP port; `nil` picks a free one.
        case tcp(port: Int? = nil)
    }

    /// Runs the server as a Redis Sentinel (`redis-server sentinel.conf --sentinel`)
    /// that monitors one master.
    public struct SentinelSettings: Sendable, Hashable {
        /// The name the master is monitored under (`sentinel monitor <name> ...`).
        public var masterName: String
        /// The master's loopback host and port.
        public var masterHost: String
        public var masterPort: Int
        /// How many sentinels must agree that the master is down.
        public var quorum: Int
        /// How long the master must not answer before it is considered down.
        public var downAfter: Duration
        /// `sentinel failover-timeout`.
        public var failoverTimeout: Duration
        /// The master's and replicas' password (`sentinel auth-pass`), if they have one.
        public var masterPassword: String?

        /// Creates sentinel settings.
        public init(masterName: String = "mymaster", masterHost: String = "127.0.0.1", masterPort: Int, quorum: Int = 1,
                    downAfter: Duration = .seconds(1), failoverTimeout: Duration = .seconds(10), masterPassword: String? = nil) {
            self.masterName = masterName
            self.masterHost = masterHost
            self.masterPort = masterPort
            self.quorum = quorum
            self.downAfter = downAfter
            self.failoverTimeout = failoverTimeout
            self.masterPassword = masterPassword
        }
    }

    /// What to launch and with which settings.
    public struct Options: Sendable {
        /// How clients reach the server.
        public var transport: Transport
        /// `requirepass`: the default user's password.
        public var password: String?
        /// Extra ACL users.
        public var aclUsers: [ACLUser]
        /// `notify-keyspace-events`, such as `"KEA"`; `nil` leaves notifications off.
        public var keyspaceEvents: String?
        /// `appendonly`.
        public var appendOnly: Bool
        /// `appendfsync` (`always`, `everysec` or `no`) when ``appendOnly`` is on.
        public var appendFsync: String?
        /// Any other `redis.conf` directives, written last (they win).
        public var settings: [String: String]
        /// The `redis-server` to run; `nil` uses `$REDIS_SERVER` or searches ``searchPath``.
        public var executable: String?
        /// Where to look for `redis-server`; `nil` uses `$PATH`.
        public var searchPath: String?
        /// How long to wait for the server to answer PING.
        public var startTimeout: Duration
        /// Run a Redis Sentinel instead of a data server (TCP transport only); ``password``
        /// is then the sentinel's own.
        public var sentinel: SentinelSettings?

        /// Creates options; the defaults give a unix-socket server without persistence.
        public init(
            transport: Transport = .unixSocket,
            password: String? = nil,
            aclUsers: [ACLUser] = [],
            keyspaceEvents: String? = nil,
            appendOnly: Bool = false,
            appendFsync: String? = nil,
            settings: [String: String] = [:],
            executable: String? = nil,
            searchPath: String? = nil,
            startTimeout: Duration = .seconds(10),
            sentinel: SentinelSettings? = nil
        ) {
            self.sentinel = sentinel
            self.transport = transport
            self.password = password
            self.aclUsers = aclUsers
            self.keyspaceEvents = keyspaceEvents
            self.appendOnly = appendOnly
            self.appendFsync = appendFsync
            self.settings = settings
            self.executable = executable
            self.searchPath = searchPath
            self.startTimeout = startTimeout
        }
    }

    /// The options the server was started with.
    public let options: Options
    /// The temporary directory holding the configuration, socket, log and data.
    public let directory: String
    /// The `redis-server` executable that was launched.
    public let executable: String
    /// Where clients connect.
    public let endpoint: RedisConfiguration.Endpoint
    private let process = Mutex<ChildProcess?>(nil)

    /// A configuration for connecting as the default user (with the password, if any).
    public var configuration: RedisConfiguration {
        RedisConfiguration(endpoint: endpoint, password: options.password)
    }

    /// A URL for connecting as the default user.
    public var url: String {
        let auth = options.password.map { ":\(Self.percentEncode($0))@" } ?? ""
        switch endpoint {
        case .tcp(let host, let port): return "redis://\(auth)\(host):\(port)"
        case .unixSocket(let path):
            return "unix://\(path)" + (options.password.map { "?password=\(Self.percentEncode($0))" } ?? "")
        }
    }

    /// The process id of the running server, or 0 when it is stopped.
    public var pid: pid_t { process.withLock { $0?.pid ?? 0 } }

    private init(options: Options, directory: String, executable: String, endpoint: RedisConfiguration.Endpoint) {
        self.options = options
        self.directory = directory
        self.executable = executable
        self.endpoint = endpoint
    }

    /// Launches a server and waits until it answers PING.
    ///
    /// - Throws: ``RedisError`` with ``RedisError/Code/serverNotFound`` when
    ///   `redis-server` is missing, ``RedisError/Code/serverStartFailed`` (with the
    ///   end of the server's log) when it does not start.
    public static func start(_ options: Options = Options()) async throws -> RedisServer {
        let executable = try locate(options)
        removeAbandonedDirectories()
        var attempt = 1
        while true {
            let directory = try ChildProcess.makeTemporaryDirectory(prefix: Self.directoryPrefix)
            // Whose it is, for removeAbandonedDirectories() after an owner killed with SIGKILL.
            try? "\(getpid())\n".write(toFile: directory + "/owner.pid", atomically: true, encoding: .utf8)
            let endpoint: RedisConfiguration.Endpoint
            switch options.transport {
            case .unixSocket: endpoint = .unixSocket(path: directory + "/redis.sock")
            case .tcp(let port): endpoint = .tcp(host: "127.0.0.1", port: try port ?? ChildProcess.freeLoopbackPort())
            }
            let server = RedisServer(options: options, directory: directory, executable: executable, endpoint: endpoint)
            do {
                try server.writeConfiguration()
                try await server.launch()
                return server
            } catch {
                await server.stop()
                // A port picked as free can be taken by another process before redis-server binds it.
                if case .tcp(nil) = options.transport, attempt < 5, let error = error as? RedisError,
                   error.message.contains("Address already in use") {
                    attempt += 1
                    continue
                }
                throw error
            }
        }
    }

    private static let directoryPrefix = "coord-redis"

    /// Removes the directories of servers whose owner and server are both gone: an
    /// owner killed with SIGKILL stops its server (see `launch`) but cannot remove the
    /// directory, so the next server started on the machine does. Only directories this
    /// type made (with an `owner.pid`) are looked at; an owner or server that still
    /// runs, or that this process may not signal, keeps its directory.
    static func removeAbandonedDirectories() {
        let base = ChildProcess.temporaryBase
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: base) else { return }
        func gone(_ pidFile: String) -> Bool {
            guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8) else { return true }
            guard let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else { return false }
            return ChildProcess.hasExited(pid)
        }
        for entry in entries where entry.hasPrefix(directoryPrefix + "-") {
            let directory = base + "/" + entry
            guard FileManager.default.fileExists(atPath: directory + "/owner.pid"),
                  gone(directory + "/owner.pid"), gone(directory + "/redis.pid") else { continue }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// Runs `body` with a fresh server and stops the server afterwards.
    public static func withServer<Result: Sendable>(
        _ options: Options = Options(),
        _ body: (RedisServer) async throws -> Result
    ) async throws -> Result {
        let server = try await start(options)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its directory.
    public func stop() async {
        await terminate(signal: SIGTERM)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Kills the server with SIGKILL, as a crash would, and keeps its directory for ``restart()``.
    public func kill() async {
        await terminate(signal: SIGKILL)
    }

    /// Starts the server again at the same address after ``kill()`` or a crash.
    public func restart() async throws {
        await terminate(signal: SIGKILL)
        try await launch()
    }

    /// Starts the server again at the same address after ``kill()`` or a crash, as a
    /// replica of `master` (`replicaof` in its configuration from now on): how a failed
    /// master without persistence must rejoin a Sentinel group. Restarted as a master it
    /// comes back empty and claims to be one until the sentinels make it a replica (8 s
    /// or more later), and until it has resynced after that, Sentinel may promote it,
    /// empty, and make the others its replicas: everything is lost.
    public func restart(replicaOf master: RedisConfiguration.Endpoint) async throws {
        guard case .tcp(let host, let port) = master else {
            throw RedisError(.serverStartFailed, "a replica follows a master over TCP; \(master) is a unix socket")
        }
        await terminate(signal: SIGKILL)
        try writeConfiguration(extra: ["replicaof": "\(host) \(port)"])
        try await launch()
    }

    // MARK: - Launching

    private static func locate(_ options: Options) throws -> String {
        if let executable = options.executable {
            guard FileManager.default.isExecutableFile(atPath: executable) else {
                throw RedisError(.serverNotFound, "redis-server was not found at \(executable); install it (Debian: apt-get install redis-server) or pass the right path")
            }
            return executable
        }
        if options.searchPath == nil, let fromEnvironment = ProcessInfo.processInfo.environment["REDIS_SERVER"], !fromEnvironment.isEmpty {
            guard FileManager.default.isExecutableFile(atPath: fromEnvironment) else {
                throw RedisError(.serverNotFound, "REDIS_SERVER=\(fromEnvironment) is not an executable; fix or unset it")
            }
            return fromEnvironment
        }
        if let found = ChildProcess.locate("redis-server", searchPath: options.searchPath) { return found }
        let searchPath = options.searchPath ?? ProcessInfo.processInfo.environment["PATH"] ?? ""
        throw RedisError(.serverNotFound, "redis-server was not found on PATH (\(searchPath)); install it (Debian: apt-get install redis-server) or set REDIS_SERVER to its path")
    }

    private func writeConfiguration(extra: [String: String] = [:]) throws {
        var lines = [
            "daemonize no",
            "dir \(Self.quote(directory))",
            "logfile \(Self.quote(directory + "/redis.log"))",
            "pidfile \(Self.quote(directory + "/redis.pid"))",
        ]
        if let sentinel = options.sentinel {
            let name = sentinel.masterName
            lines += [
                "sentinel monitor \(name) \(sentinel.masterHost) \(sentinel.masterPort) \(sentinel.quorum)",
                "sentinel down-after-milliseconds \(name) \(MonotonicClock.nanoseconds(sentinel.downAfter) / 1_000_000)",
                "sentinel failover-timeout \(name) \(MonotonicClock.nanoseconds(sentinel.failoverTimeout) / 1_000_000)",
                "sentinel parallel-syncs \(name) 1",
            ]
            if let password = sentinel.masterPassword { lines.append("sentinel auth-pass \(name) \(Self.quote(password))") }
        } else {
            lines += ["save \"\"", "appendonly \(options.appendOnly ? "yes" : "no")", "databases 16"]
        }
        switch endpoint {
        case .unixSocket(let path):
            lines += ["port 0", "unixsocket \(path)", "unixsocketperm 700"]
        case .tcp(let host, let port):
            lines += ["bind \(host)", "port \(port)", "protected-mode no"]
        }
        if let fsync = options.appendFsync { lines.append("appendfsync \(fsync)") }
        if let events = options.keyspaceEvents { lines.append("notify-keyspace-events \"\(events)\"") }
        if let password = options.password { lines.append("requirepass \(Self.quote(password))") }
        for user in options.aclUsers {
            lines.append("user \(Self.quote(user.name)) on \(Self.quote(">" + user.password)) \(user.rules)")
        }
        for (name, value) in options.settings.merging(extra, uniquingKeysWith: { $1 }).sorted(by: { $0.key < $1.key }) { lines.append("\(name) \(value)") }
        try (lines.joined(separator: "\n") + "\n").write(toFile: directory + "/redis.conf", atomically: true, encoding: .utf8)
    }

    private func launch() async throws {
        if case .unixSocket(let path) = endpoint { unlink(path) }
        // A private server ends with its owner, even one killed by SIGKILL (atexit does
        // not run then): SIGTERM when this process dies.
        let child = try ChildProcess.spawn(executable, arguments: [directory + "/redis.conf"] + (options.sentinel == nil ? [] : ["--sentinel"]),
                                           logPath: directory + "/stdout.log", parentDeathSignal: "TERM")
        process.withLock { $0 = child }

        let deadline = ContinuousClock.now + options.startTimeout
        var lastError: (any Error)?
        while ContinuousClock.now < deadline {
            if child.hasExited() {
                process.withLock { $0 = nil }
                throw RedisError(.serverStartFailed, "redis-server exited during start-up; its log says:\n\(logTail())")
            }
            do {
                var probe = configuration
                probe.connectTimeout = .seconds(1)
                probe.commandTimeout = .seconds(2)
                let connection = try await RedisConnection.connect(probe)
                _ = try await connection.send("PING")
                await connection.close()
                return
            } catch let error as RedisError where error.code == .connectionRefused || error.code == .timeout
                        || error.message.hasPrefix("LOADING") || "\(error)".contains("LOADING") {
                // LOADING: a restarted server is reading its append-only file back.
                lastError = error
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        await terminate(signal: SIGKILL)
        throw RedisError(.serverStartFailed, "redis-server did not answer PING within \(options.startTimeout) (\(lastError.map { "\($0)" } ?? "no attempt")); its log says:\n\(logTail())")
    }

    private func terminate(signal: Int32) async {
        let child = process.withLock { current -> ChildProcess? in
            defer { current = nil }
            return current
        }
        await child?.terminate(signal: signal)
    }

    private func logTail() -> String {
        logTail(lines: 12)
    }

    /// The last `lines` lines of the server's log (its `redis.log`), then the last lines
    /// of what it wrote to stdout and stderr: for reports of fault drills and failed
    /// tests.
    public func logTail(lines: Int) -> String {
        ChildProcess.tail(of: directory + "/redis.log", lines: lines) + "\n" + ChildProcess.tail(of: directory + "/stdout.log", lines: 4)
    }

    private static func quote(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    private static func percentEncode(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? text
    }
}
