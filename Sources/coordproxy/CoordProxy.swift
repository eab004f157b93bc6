import ArgumentParser
import Coordination
import EtcdAPI
import EventLoopExecution
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import RESPFrontEnd
import RedisClient
import ServiceLifecycle
import Synchronization

/// The coordination proxy: etcd's v3 API served from a Redis.
@main
struct CoordProxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordproxy",
        abstract: "Serve etcd's v3 API (gRPC, JSON gateway) and the Redis protocol with COORD.* commands from a Redis, so that every etcd client and every Redis client gets etcd's coordination.",
        discussion: """
            coordproxy keeps etcd's semantics (revisions, leases, multi-key transactions, \
            watches that never skip an event, locks and elections) in a Redis database: \
            every guarantee lives in Redis, in Lua scripts and a revision log, so several \
            coordproxy processes may front one Redis and clients may use any of them.

            The store is the namespace --namespace (default "coord"): Redis keys \
            {coord}:*. Point etcdctl, Go's clientv3 or any etcd v3 client at a listen URL, \
            and redis-cli, redis-py or any Redis client at --listen-resp: COORD.PUT/GET/DEL/TXN, \
            COORD.WATCH, COORD.LEASE, COORD.LOCK, COORD.CAMPAIGN, COORD.FORTRESS, \
            COORD.SEMAPHORE on a session bound to the connection; other commands go to Redis.

            Every flag can also be set in the environment, as etcd's: COORDPROXY_<FLAG> \
            with dashes as underscores (COORDPROXY_LISTEN_CLIENT_URLS); the Redis URL also \
            from REDIS_URL.

            Examples:
              coordproxy --redis-url redis://127.0.0.1:6379 --listen-client-urls http://127.0.0.1:2379
              coordproxy --dev                       # a private redis-server, for trying it out
              ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379 put greeting hello
              coordproxy --redis-url redis://127.0.0.1:6379 --listen-resp 127.0.0.1:6380
              redis-cli -p 6380 COORD.LOCK reports TIMEOUT 5000   # [key, fencing token]
            """)

    @Option(name: .customLong("redis-url"), help: ArgumentHelp("Redis URL: redis://[user:password@]host[:port][/db], unix:///path?db=N, or redis-sentinel://[user:password@]host:26379,host:26380/mymaster[/db] to follow the master Redis Sentinel names (failovers included).",
                               discussion: "Default: $COORDPROXY_REDIS_URL, else $REDIS_URL.", valueName: "url"))
    var redisURL: String?

    @Option(name: .customLong("listen-client-urls"), help: ArgumentHelp("Comma-separated http:// URLs to serve clients on (default http://127.0.0.1:2379).", valueName: "urls"))
    var listenClientURLs: String?

    @Option(name: .customLong("listen-client-http-urls"), help: ArgumentHelp("Comma-separated http:// URLs to serve etcd's JSON gateway on (/v3/kv/range ..., /version, /health); none by default.", valueName: "urls"))
    var listenClientHTTPURLs: String?

    @Option(name: .customLong("advertise-client-urls"), help: ArgumentHelp("Comma-separated client URLs to advertise in the member list (default: the listen URLs).", valueName: "urls"))
    var advertiseClientURLs: String?

    @Option(name: .customLong("listen-metrics-urls"), help: ArgumentHelp("Comma-separated http:// URLs to serve only /metrics (Prometheus text), /health and /version on, as etcd's; none by default (the gateway serves /metrics too).", valueName: "urls"))
    var listenMetricsURLs: String?

    @Option(name: .customLong("listen-resp"), help: ArgumentHelp("Comma-separated addresses to serve the Redis protocol on (host:port, or unix:///path.sock): COORD.* commands with sessions bound to the connection, other commands passed through to Redis; none by default.", valueName: "addresses"))
    var listenRESP: String?

    @Flag(name: .customLong("no-passthrough"), help: "On the Redis-protocol listener, serve only COORD.* commands (and PING, HELLO, AUTH): refuse every other command instead of passing it through to Redis.")
    var noPassthrough = false

    @Flag(name: .customLong("no-multiplex"), help: "On the Redis-protocol listener, give every client a Redis connection of its own from its first passed-through command. By default a client's simple key commands (GET, SET, HSET, ...: none that leaves state on the connection or blocks), and the HELLO and CLIENT SETINFO clients send on connect, share one Redis connection per thread and protocol with other clients', pipelined together, until it sends any other command (MULTI, WATCH, SELECT, AUTH, CLIENT SETNAME, SUBSCRIBE, BLPOP, EVAL, ...); then it gets its own. Always off when Redis requires AUTH.")
    var noMultiplex = false

    @Option(name: .customLong("requirepass"), help: ArgumentHelp("A password of coordproxy's own for the Redis-protocol listener, as Redis's requirepass: clients must AUTH <password> (or HELLO 3 AUTH default <password>) before any command. For a Redis without a password (with one, clients authenticate against Redis's own users and this is refused). Prefer $COORDPROXY_REQUIREPASS: a flag shows in ps.", valueName: "password"))
    var requirePass: String?

    @Flag(name: .customLong("allow-flush"), help: "Pass FLUSHALL, FLUSHDB and SWAPDB through to Redis (refused by default: they delete or move the coordination store too).")
    var allowFlush = false

    @Option(name: .customLong("session-ttl"), help: ArgumentHelp("TTL in seconds of the lease of a Redis-protocol connection's session (default 60): revoked when the connection closes, expiring after this long if coordproxy dies.", valueName: "seconds"))
    var sessionTTL: Int64?

    @Option(name: .customLong("maxclients"), help: ArgumentHelp("At most this many Redis-protocol client connections (default 10000, as Redis's maxclients); one more is answered 'ERR max number of clients reached' and closed.", valueName: "n"))
    var maxClients: Int?

    @Option(name: .customLong("wait-replicas"), help: ArgumentHelp("Acknowledge a write only once this many Redis replicas have it (Redis WAIT); when they do not within --wait-timeout, the request fails as 'request timed out' (gRPC) or TRYAGAIN (RESP): applied on the master, but a failover may lose it. Default 0: acknowledged once the master has it.", valueName: "n"))
    var waitReplicas: Int?

    @Option(name: .customLong("wait-timeout"), help: ArgumentHelp("How long a write waits for --wait-replicas, in milliseconds (default 1000).", valueName: "ms"))
    var waitTimeout: Int?

    @Option(name: .customLong("session-keepalive"), help: ArgumentHelp("What keeps a Redis-protocol connection's session alive: 'activity' (default: refreshed while the client sends commands or waits on one, so a stopped client's locks go a TTL after its last command; a holder idle longer than the TTL sends PING) or 'connection' (refreshed while the connection is open).", valueName: "activity|connection"))
    var sessionKeepAlive: String?

    @Option(name: .customLong("event-loops"), help: ArgumentHelp("Threads serving the client connections (gRPC, gateway, Redis protocol); default half the cores, at least 1.",
                                 discussion: "coordproxy usually shares its machine with Redis and with clients: on 2 cores, with one event loop redis-benchmark's 50 clients got 0.84 (SET) and 0.99 (GET) of direct Redis's rate through the proxy, with two 0.71 and 0.77 (medians of 5 rounds): two loops' threads compete with Redis's for the cores. Give more on a machine of its own.", valueName: "n"))
    var eventLoops: Int?

    @Option(help: ArgumentHelp("The member's name, as etcd's --name.", valueName: "name"))
    var name: String?

    @Option(help: ArgumentHelp("The store's namespace: its Redis keys are {namespace}:*.", valueName: "namespace"))
    var namespace: String?

    @Option(help: ArgumentHelp("Keep at least this many revisions of history, compacting older ones about once a second (0: keep all, compact on request).", valueName: "revisions"))
    var autoCompactionRetention: Int64?

    @Option(help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical.", valueName: "level"))
    var logLevel: String?

    @Flag(help: "With no Redis URL, start a private redis-server for this process (stopped on exit).")
    var dev = false

    @Flag(help: "Refuse a Redis whose maxmemory-policy may evict keys (allkeys-*) unless this is given.")
    var allowEvictingPolicy = false

    @Flag(name: .customLong("no-grpc-fast-path"), help: "Serve the etcd API on grpc-swift's own HTTP/2 transport, every call through grpc-swift, instead of coordproxy's transport, which serves the unary calls of etcd's KV, Lease, Lock and Election services (Range, Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke, LeaseTimeToLive, LeaseLeases, Lock, Unlock, Campaign, Proclaim, Leader, Resign) and Watch streams from the HTTP/2 frames and hands the rest to grpc-swift (the same answers, at less CPU per call and per watch event, but for a request that does not decode: etcd's INTERNAL there, grpc-swift's INVALID_ARGUMENT here); for comparison and diagnosis.")
    var noGRPCFastPath = false

    @Flag(name: .customLong("redis-io-thread"), help: "Serve the store's Redis connection and the watch reader's from threads of their own, as coordproxy did before, instead of from the event loop that serves the clients (with one event loop, the default on up to three cores: a reply then resumes its request, and a watch event reaches its streams, without waking another thread). For comparison and diagnosis; with several event loops, or a redis-sentinel:// URL, the threads serve them anyway.")
    var redisIOThread = false

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        func setting(_ value: String?, _ flag: String, default fallback: String? = nil) -> String? {
            if let value, !value.isEmpty { return value }
            if let fromEnvironment = environment["COORDPROXY_" + flag], !fromEnvironment.isEmpty { return fromEnvironment }
            return fallback
        }
        // Before anything uses NIO's threads: how many event loops serve the clients.
        let loopCount: Int
        if let given = eventLoops ?? setting(nil, "EVENT_LOOPS").flatMap({ Int($0) }) {
            guard given >= 1 else { throw ValidationError("--event-loops must be at least 1") }
            loopCount = given
        } else if let fromNIO = environment["NIO_SINGLETON_GROUP_LOOP_COUNT"].flatMap({ Int($0) }), fromNIO >= 1 {
            loopCount = fromNIO
        } else {
            loopCount = max(1, System.coreCount / 2)
        }
        NIOSingletons.groupLoopCountSuggestion = loopCount
        let levelName = setting(logLevel, "LOG_LEVEL", default: "info")!
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ValidationError("unknown log level \(levelName); use trace, debug, info, notice, warning, error or critical")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "coordproxy")

        let listen = try Self.addresses(setting(listenClientURLs, "LISTEN_CLIENT_URLS", default: "http://127.0.0.1:2379")!)
        let gatewayListen = try setting(listenClientHTTPURLs, "LISTEN_CLIENT_HTTP_URLS").map(Self.addresses) ?? []
        let metricsListen = try setting(listenMetricsURLs, "LISTEN_METRICS_URLS").map(Self.addresses) ?? []
        let respListen = try (setting(listenRESP, "LISTEN_RESP") ?? "").split(separator: ",").map { try RESPFrontEnd.Address(parsing: String($0)) }
        let respSessionTTL = sessionTTL ?? setting(nil, "SESSION_TTL").flatMap { Int64($0) } ?? 60
        guard respSessionTTL >= 1 else { throw ValidationError("--session-ttl must be at least 1 second") }
        let respMaxClients = maxClients ?? setting(nil, "MAXCLIENTS").flatMap { Int($0) } ?? 10_000
        guard respMaxClients >= 1 else { throw ValidationError("--maxclients must be at least 1") }
        let replicas = waitReplicas ?? setting(nil, "WAIT_REPLICAS").flatMap { Int($0) } ?? 0
        let replicaTimeout = waitTimeout ?? setting(nil, "WAIT_TIMEOUT").flatMap { Int($0) } ?? 1000
        guard replicas >= 0, replicaTimeout >= 1 else { throw ValidationError("--wait-replicas must be 0 or more and --wait-timeout at least 1 ms") }
        let durability = replicas > 0 ? CoordinationClient.Durability(replicas: replicas, timeout: .milliseconds(replicaTimeout)) : nil
        let storeIOThread = redisIOThread || setting(nil, "REDIS_IO_THREAD") == "1"
        let keepAliveText = setting(sessionKeepAlive, "SESSION_KEEPALIVE", default: "activity")!
        guard let respKeepAlive = RESPFrontEnd.SessionKeepAlive(rawValue: keepAliveText.lowercased()) else {
            throw ValidationError("--session-keepalive is 'activity' or 'connection', not '\(keepAliveText)'")
        }
        let registry = Self.bootstrapMetrics()
        let advertised = setting(advertiseClientURLs, "ADVERTISE_CLIENT_URLS")?
            .split(separator: ",").map { String($0) } ?? listen.map { "http://\($0)" }
        let namespace = setting(namespace, "NAMESPACE", default: "coord")!
        let memberName = setting(name, "NAME", default: "default")!
        let retention = autoCompactionRetention ?? setting(nil, "AUTO_COMPACTION_RETENTION").flatMap { Int64($0) } ?? 0

        var privateServer: RedisServer?
        var url = setting(redisURL, "REDIS_URL") ?? environment["REDIS_URL"].flatMap { $0.isEmpty ? nil : $0 }
        if url == nil {
            guard dev || setting(nil, "DEV") == "1" else {
                throw ValidationError("give the Redis to serve from: --redis-url redis://host:port (or $REDIS_URL), or --dev for a private redis-server")
            }
            let server = try await RedisServer.start()
            privateServer = server
            url = server.url
            logger.info("started a private redis-server (--dev)", metadata: ["url": "\(server.url)"])
        }
        defer { if let privateServer { Task { await privateServer.stop() } } }

        // A Redis that does not answer yet (started after coordproxy, restarting) is
        // waited for, as a running coordproxy waits for it to come back; one that
        // refuses (a wrong password, missing permissions, an unsafe configuration)
        // is a mistake to fix: coordproxy exits.
        let store: CoordinationClient
        var waiting = false
        var storeIO = "thread"
        while true {
            do {
                // With one event loop (the default on two cores) the calls all run on
                // it, and so do the batches that answer them under load, and the loop
                // serves the store's Redis socket too; with several, batches stay on
                // Swift's pool rather than load one loop with all, and the connection
                // keeps its thread.
                let configuration = try RedisConfiguration(url: url!)
                let loop = loopCount == 1 ? MultiThreadedEventLoopGroup.singleton.next() : nil
                // Sentinel's connections keep their threads (they follow the master).
                let ioLoop = storeIOThread || configuration.sentinel != nil ? nil : loop
                if let ioLoop {
                    store = try await CoordinationClient.connect(configuration, namespace: namespace, allowEvictingPolicy: allowEvictingPolicy, durability: durability) { configuration, setup in
                        try await RedisConnection.connect(configuration, on: ioLoop, setup: setup)
                    }
                    store.readWatchLog(on: EventLoopTaskExecutor.for(ioLoop)) { configuration in
                        try await RedisConnection.connect(configuration, on: ioLoop, setup: { _ in })
                    }
                    storeIO = "event loop"
                } else {
                    store = try await CoordinationClient.connect(configuration, namespace: namespace, allowEvictingPolicy: allowEvictingPolicy, durability: durability)
                }
                if let loop {
                    store.runBatches(on: EventLoopTaskExecutor.for(loop))
                }
                break
            } catch let error as RedisError where Self.unreachable(error) && privateServer == nil {
                if !waiting {
                    waiting = true
                    logger.warning("Redis does not answer; waiting for it (a try a second; SIGTERM to give up)", metadata: [
                        "redis": "\(Self.redacted(url!))", "error": "\(error.message)"])
                }
                try await Task.sleep(for: .seconds(1))
            } catch {
                logger.critical("cannot use the Redis at \(Self.redacted(url!)): \(error)")
                if let privateServer { await privateServer.stop() }
                throw ExitCode(1)
            }
        }
        let status = try await store.status(allowEvictingPolicy: allowEvictingPolicy)
        logger.info("connected to Redis", metadata: [
            "redis": "\(Self.redacted(url!))", "redis_version": "\(status.redisVersion)",
            "namespace": "\(namespace)", "revision": "\(status.revision)",
            "appendonly": "\(status.appendOnly)", "appendfsync": "\(status.appendFsync ?? "unknown")",
            "replicas": "\(status.connectedReplicas)", "wait_replicas": "\(replicas)", "maxmemory_policy": "\(status.maxmemoryPolicy)",
        ])
        if replicas > status.connectedReplicas {
            logger.warning("--wait-replicas is \(replicas) but Redis has \(status.connectedReplicas) replica(s) connected: every write will fail as timed out until enough replicas connect")
        }
        for warning in status.warnings { logger.warning("\(warning)") }

        let member = EtcdMember(name: memberName, namespace: namespace, clientURLs: advertised)
        let fastPath = !(noGRPCFastPath || setting(nil, "NO_GRPC_FAST_PATH") == "1")
        let api = EtcdAPIServer(store: store, listen: listen, member: member, fastPath: fastPath, logger: logger)
        let background = StoreBackground(store: store, retainRevisions: retention > 0 ? retention : nil)
        let availability = RedisAvailabilityLog(store: store, redisDescription: Self.redacted(url!), logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: background), .init(service: availability), .init(service: api)]
        let exposition = Self.exposition(registry: registry, store: store)
        if !gatewayListen.isEmpty {
            services.append(.init(service: EtcdGateway(api: api, listen: gatewayListen, metrics: exposition, logger: logger)))
        }
        if !respListen.isEmpty {
            var configuration = RESPFrontEnd.Configuration(listen: respListen, redis: try RedisConfiguration(url: url!), namespace: namespace)
            configuration.passthrough = !(noPassthrough || setting(nil, "NO_PASSTHROUGH") == "1")
            configuration.allowFlush = allowFlush || setting(nil, "ALLOW_FLUSH") == "1"
            configuration.multiplex = !(noMultiplex || setting(nil, "NO_MULTIPLEX") == "1")
            configuration.sessionTTL = respSessionTTL
            configuration.maxClients = respMaxClients
            configuration.sessionKeepAlive = respKeepAlive
            configuration.requirePassword = setting(requirePass, "REQUIREPASS").flatMap { $0.isEmpty ? nil : $0 }
            services.append(.init(service: RESPFrontEnd(store: store, configuration: configuration, logger: logger)))
        }
        if !metricsListen.isEmpty {
            services.append(.init(service: EtcdGateway(api: api, listen: metricsListen, routes: .metrics, metrics: exposition, logger: logger)))
        }
        let group = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        logger.info("coordproxy starting", metadata: [
            "name": "\(memberName)", "member_id": "\(String(member.memberID, radix: 16))",
            "listen": "\(listen.map(\.description).joined(separator: ","))",
            "grpc_fast_path": "\(fastPath ? "on" : "off")", "event_loops": "\(loopCount)",
            "store_redis_io": "\(storeIO)",
        ])
        do {
            try await group.run()
        } catch {
            logger.error("coordproxy stopped on an error: \(error)")
            await store.close()
            if let privateServer { await privateServer.stop() }
            throw ExitCode(1)
        }
        await store.close()
        if let privateServer { await privateServer.stop() }
        privateServer = nil
        logger.info("coordproxy stopped")
    }

    /// Errors of a Redis that is not there (yet): nothing answered.
    static func unreachable(_ error: RedisError) -> Bool {
        [.connectionRefused, .connectionLost, .connectionClosed, .timeout, .outcomeUnknown].contains(error.code)
    }

    /// Prometheus behind swift-metrics, with latency buckets fine enough for requests
    /// that take tens of microseconds.
    static func bootstrapMetrics() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
            .milliseconds(1), .microseconds(2500), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .microseconds(2_500_000), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }

    /// `/metrics`: the registry, after refreshing what is read from Redis at scrape
    /// time (the store's revision and live leases, whether Redis answers).
    static func exposition(registry: PrometheusCollectorRegistry, store: CoordinationClient) -> @Sendable () async -> String {
        func gauge(_ name: String, _ help: String) -> Prometheus.Gauge {
            registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help))
        }
        let up = gauge("coordproxy_redis_up", "1 when the backing Redis answered the last scrape's queries, else 0")
        let revision = gauge("coordproxy_store_revision", "The store's current revision")
        let leases = gauge("coordproxy_store_leases", "Live leases in the store")
        return {
            // At most a second for Redis: a scrape answers (with coordproxy_redis_up 0)
            // while Redis is paused or stalled. A task group would wait for its query at
            // its end, and a request already written to Redis is awaited whatever the
            // cancellation: the queries run in tasks of their own and are left behind.
            let answered: (Int64, Int)? = await withCheckedContinuation { continuation in
                let resumed = Mutex(false)
                let answer: @Sendable ((Int64, Int)?) -> Void = { value in
                    if resumed.withLock({ done in defer { done = true }; return !done }) { continuation.resume(returning: value) }
                }
                Task { answer(try? await (store.currentRevision(), store.leases().count)) }
                Task { try? await Task.sleep(for: .seconds(1)); answer(nil) }
            }
            if let (current, count) = answered {
                up.set(to: 1)
                revision.set(to: Double(current))
                leases.set(to: Double(count))
            } else {
                up.set(to: 0)
            }
            return registry.emitToString()
        }
    }

    /// The URL with its password hidden, for logs.
    static func redacted(_ url: String) -> String {
        (try? RedisConfiguration(url: url))?.redactedURL ?? "(an unparsable Redis URL)"
    }

    /// Listen addresses from etcd-style URLs (`http://127.0.0.1:2379,http://0.0.0.0:2380`).
    static func addresses(_ list: String) throws -> [EtcdAPIServer.Address] {
        try list.split(separator: ",").map { item in
            let text = item.trimmingCharacters(in: .whitespaces)
            guard let url = URLComponents(string: text), let scheme = url.scheme, let host = url.host, !host.isEmpty else {
                throw ValidationError("listen URL \(text) is not a URL; give http://host:port, e.g. http://127.0.0.1:2379")
            }
            guard scheme == "http" else {
                throw ValidationError("listen URL \(text): only http:// (plaintext) is served; put a TLS terminator in front for https")
            }
            guard let port = url.port, (0...65535).contains(port) else {
                throw ValidationError("listen URL \(text) has no port; give http://host:port, e.g. http://127.0.0.1:2379")
            }
            let address = host == "localhost" ? "127.0.0.1" : host
            guard address.split(separator: ".").count == 4, address.split(separator: ".").allSatisfy({ UInt8($0) != nil }) else {
                throw ValidationError("listen URL \(text): give an IPv4 address (such as 127.0.0.1 or 0.0.0.0) as the host")
            }
            return EtcdAPIServer.Address(host: address, port: port)
        }
    }
}
