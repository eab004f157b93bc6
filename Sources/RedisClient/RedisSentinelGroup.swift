import Foundation
import Synchronization

/// A private Redis Sentinel deployment on loopback, for tests, demos and fault
/// drills: one master, its replicas and the sentinels that monitor them, each a
/// ``RedisServer`` of its own.
///
/// ```swift
/// let group = try await RedisSentinelGroup.start(replicas: 1, sentinels: 3)
/// let connection = try await RedisConnection.connect(url: group.url)
/// let old = try await group.killMaster()          // kill -9, as a crash would
/// let new = try await group.waitForFailover(from: old)
/// try await group.rejoin(old)                     // back, as the new master's replica
/// await group.stop()
/// ```
public final class RedisSentinelGroup: Sendable {
    /// The name the sentinels monitor the master under.
    public let masterName: String
    /// The data servers: the first one started as the master.
    public let servers: [RedisServer]
    /// The sentinels.
    public let sentinels: [RedisServer]

    private init(masterName: String, servers: [RedisServer], sentinels: [RedisServer]) {
        self.masterName = masterName
        self.servers = servers
        self.sentinels = sentinels
    }

    /// `redis-sentinel://` URL for the group's master, with the data servers' and the
    /// sentinels' passwords, if they have them.
    public func url(password: String? = nil, sentinelPassword: String? = nil) -> String {
        func encoded(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? text }
        let auth = password.map { ":\(encoded($0))@" } ?? ""
        return "redis-sentinel://\(auth)\(sentinels.map { "\($0.endpoint)" }.joined(separator: ","))/\(masterName)"
            + (sentinelPassword.map { "?sentinel_password=\(encoded($0))" } ?? "")
    }

    /// The URL for the group's master, with the passwords the group was started with.
    public var url: String { url(password: servers.first?.options.password, sentinelPassword: sentinels.first?.options.password) }

    /// Starts a master, `replicas` replicas of it and `sentinels` sentinels (quorum:
    /// a majority), and waits until every sentinel knows the master, the replicas
    /// (in sync) and the other sentinels, so that a failover can happen. The data
    /// servers get `options` (its password too); `sentinelPassword` is the sentinels'
    /// `requirepass` (for a single sentinel: peers would need it too).
    public static func start(replicas: Int = 1, sentinels count: Int = 3, masterName: String = "mymaster",
                             downAfter: Duration = .seconds(1), options: RedisServer.Options = RedisServer.Options(transport: .tcp()),
                             sentinelPassword: String? = nil) async throws -> RedisSentinelGroup {
        var servers: [RedisServer] = []
        var sentinels: [RedisServer] = []
        do {
            var masterOptions = options
            masterOptions.transport = .tcp()
            // A full resync starts at once instead of after Redis's 5 s wait for more
            // replicas: a replica that rejoined is empty until it has, and Sentinel may
            // promote it meanwhile (see ``RedisServer/restart(replicaOf:)``).
            if masterOptions.settings["repl-diskless-sync-delay"] == nil { masterOptions.settings["repl-diskless-sync-delay"] = "0" }
            let master = try await RedisServer.start(masterOptions)
            servers.append(master)
            guard case .tcp(let host, let port) = master.endpoint else { throw RedisError(.serverStartFailed, "the master needs a TCP port") }
            for _ in 0..<replicas {
                var replicaOptions = masterOptions
                replicaOptions.settings["replicaof"] = "\(host) \(port)"
                if let password = options.password { replicaOptions.settings["masterauth"] = "\"\(password)\"" }
                servers.append(try await RedisServer.start(replicaOptions))
            }
            let settings = RedisServer.SentinelSettings(masterName: masterName, masterHost: host, masterPort: port, quorum: count / 2 + 1,
                                                        downAfter: downAfter, masterPassword: options.password)
            for _ in 0..<count {
                sentinels.append(try await RedisServer.start(RedisServer.Options(transport: .tcp(), password: sentinelPassword, sentinel: settings)))
            }
            let group = RedisSentinelGroup(masterName: masterName, servers: servers, sentinels: sentinels)
            try await group.waitUntilReady(replicas: replicas)
            return group
        } catch {
            for server in sentinels + servers { await server.stop() }
            throw error
        }
    }

    /// Waits until every sentinel names one master, sees `replicas` replicas in sync
    /// with it and knows every other sentinel.
    public func waitUntilReady(replicas: Int, timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        var last = "no answer yet"
        while ContinuousClock.now < deadline {
            do {
                if let problem = try await readiness(replicas: replicas) { last = problem } else { return }
            } catch {
                last = "\(error)"
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw RedisError(.timeout, "the sentinel group did not become ready within \(timeout): \(last)")
    }

    /// Why the group is not ready for a failover, or nil when it is.
    private func readiness(replicas: Int) async throws -> String? {
        var masters: Set<String> = []
        for sentinel in sentinels {
            let connection = try await RedisConnection.connect(sentinel.configuration)
            defer { Task { await connection.close() } }
            let fields = SentinelResolver.fields(try await connection.send("SENTINEL", "master", masterName))
            masters.insert("\(fields["ip"] ?? "?"):\(fields["port"] ?? "?")")
            if fields["flags"] != "master" { return "sentinel \(sentinel.endpoint) flags the master \(fields["flags"] ?? "?")" }
            if Int(fields["num-other-sentinels"] ?? "") != sentinels.count - 1 {
                return "sentinel \(sentinel.endpoint) knows \(fields["num-other-sentinels"] ?? "?") other sentinels"
            }
            let known = try await connection.send("SENTINEL", "replicas", masterName).array ?? []
            let good = known.map { SentinelResolver.fields($0) }.filter { $0["flags"] == "slave" && $0["master-link-status"] == "ok" }
            if good.count < replicas { return "sentinel \(sentinel.endpoint) sees \(good.count) of \(replicas) replicas in sync" }
        }
        guard masters.count == 1, let named = masters.first else { return "the sentinels disagree on the master: \(masters.sorted())" }
        // The sentinels' view of a replica is an INFO they polled up to 10 s ago: a
        // replica that came back empty can look in sync while its full resync is still
        // under way. Ask the replicas themselves.
        var synced = 0
        for server in servers where "\(server.endpoint)" != named && server.pid > 0 {
            guard let connection = try? await RedisConnection.connect(server.configuration) else { continue }
            defer { Task { await connection.close() } }
            let info = (try? await connection.send("INFO", "replication").string) ?? ""
            let lines = Set(info.split(whereSeparator: \.isNewline).map(String.init))
            if lines.contains("role:slave") && lines.contains("master_link_status:up") && lines.contains("master_sync_in_progress:0"),
               let host = lines.first(where: { $0.hasPrefix("master_host:") })?.dropFirst("master_host:".count),
               let port = lines.first(where: { $0.hasPrefix("master_port:") })?.dropFirst("master_port:".count),
               "\(host):\(port)" == named {
                synced += 1
            }
        }
        return synced >= replicas ? nil : "\(synced) of \(replicas) replicas report a finished sync with \(named)"
    }

    /// The master each sentinel names now (one entry per sentinel that answered).
    private func mastersNamed() async -> [String] {
        var named: [String] = []
        for sentinel in sentinels {
            guard let connection = try? await RedisConnection.connect(sentinel.configuration) else { continue }
            defer { Task { await connection.close() } }
            if let address = try? await connection.send("SENTINEL", "get-master-addr-by-name", masterName).array,
               address.count == 2, let host = address[0].string, let port = address[1].string {
                named.append("\(host):\(port)")
            }
        }
        return named
    }

    /// The data server the sentinels name as master now.
    public func master() async throws -> RedisServer {
        let sentinel = RedisConfiguration.Sentinel(endpoints: sentinels.map(\.endpoint), masterName: masterName, password: sentinels.first?.options.password)
        let endpoint = try SentinelResolver.master(of: sentinel, connectTimeout: .seconds(2))
        guard let server = servers.first(where: { $0.endpoint == endpoint }) else {
            throw RedisError(.protocolError, "the sentinels name \(endpoint), which is not one of the group's servers")
        }
        return server
    }

    /// Kills the master with SIGKILL (keeping its directory for ``RedisServer/restart()``)
    /// and returns it.
    @discardableResult
    public func killMaster() async throws -> RedisServer {
        let master = try await master()
        await master.kill()
        return master
    }

    /// Restarts `server` (killed, see ``killMaster()``) as a replica of the master the
    /// sentinels name now, and waits until it reports its resync finished and every
    /// sentinel sees it in sync: how a failed master without persistence must rejoin
    /// (see ``RedisServer/restart(replicaOf:)``).
    public func rejoin(_ server: RedisServer, timeout: Duration = .seconds(60)) async throws {
        let current = try await master()
        guard current !== server else {
            throw RedisError(.serverStartFailed, "the sentinels still name \(server.endpoint) as the master; wait for the failover first (waitForFailover(from:))")
        }
        try await server.restart(replicaOf: current.endpoint)
        try await waitUntilReady(replicas: servers.count - 1, timeout: timeout)
    }

    /// Waits until every sentinel names one master other than `old`, and returns it.
    /// Every sentinel is asked: a caller that restarts `old` once one sentinel has
    /// moved on could otherwise be sent to it, empty and claiming to be a master, by
    /// a sentinel that has not.
    public func waitForFailover(from old: RedisServer, timeout: Duration = .seconds(60)) async throws -> RedisServer {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let named = await mastersNamed()
            if named.count == sentinels.count, let first = named.first, Set(named).count == 1, first != "\(old.endpoint)",
               let current = servers.first(where: { "\($0.endpoint)" == first }) {
                return current
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw RedisError(.timeout, "the sentinels did not all fail over from \(old.endpoint) within \(timeout)")
    }

    /// The tail of every member's log, data servers first, each under its address and
    /// role at start: what a failed fault drill reports.
    public func logs(lines: Int = 40) -> String {
        let members = servers.enumerated().map { index, server in ("data server \(server.endpoint)\(index == 0 ? " (the first master)" : "")", server) }
            + sentinels.map { ("sentinel \($0.endpoint)", $0) }
        return members.map { title, server in "--- \(title), pid \(server.pid):\n\(server.logTail(lines: lines))" }.joined(separator: "\n")
    }

    /// Runs `body` with a fresh group (as ``start(replicas:sentinels:masterName:downAfter:options:sentinelPassword:)``)
    /// and stops every server of it afterwards, whether `body` returns or throws.
    public static func withGroup<Result: Sendable>(
        replicas: Int = 1, sentinels count: Int = 3, masterName: String = "mymaster",
        downAfter: Duration = .seconds(1), options: RedisServer.Options = RedisServer.Options(transport: .tcp()),
        sentinelPassword: String? = nil, _ body: (RedisSentinelGroup) async throws -> Result
    ) async throws -> Result {
        let group = try await start(replicas: replicas, sentinels: count, masterName: masterName, downAfter: downAfter,
                                    options: options, sentinelPassword: sentinelPassword)
        do {
            let result = try await body(group)
            await group.stop()
            return result
        } catch {
            await group.stop()
            throw error
        }
    }

    /// Stops every server of the group.
    public func stop() async {
        for server in sentinels + servers { await server.stop() }
    }
}
