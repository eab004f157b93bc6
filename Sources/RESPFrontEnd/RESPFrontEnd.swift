import Coordination
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RedisClient
import ServiceLifecycle

/// coordproxy's Redis-protocol listener: every Redis client gets the store's
/// COORD.* commands, with a session bound to its connection, and every other
/// command passed through to the backing Redis on a connection of its own.
///
/// Run it in a `ServiceGroup`; graceful shutdown stops accepting and closes the
/// client connections (their sessions are revoked, as when the clients go away).
public final class RESPFrontEnd: Service, Sendable {
    /// Where to listen.
    public enum Address: Sendable, Hashable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unixSocket(path: String)

        public var description: String {
            switch self {
            case .tcp(let host, let port): return "\(host):\(port)"
            case .unixSocket(let path): return "unix:\(path)"
            }
        }

        /// `host:port`, `redis://host:port`, `unix:///path` or a path starting with `/`.
        public init(parsing text: String) throws {
            var rest = Substring(text)
            if rest.hasPrefix("unix://") { self = .unixSocket(path: String(rest.dropFirst(7))); return }
            if rest.hasPrefix("/") { self = .unixSocket(path: String(rest)); return }
            if rest.hasPrefix("redis://") { rest = rest.dropFirst(8) }
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (0...65535).contains(port) else {
                throw RESPFrontEndError("bad RESP listen address \(text): give host:port (127.0.0.1:6380) or unix:///path/to.sock")
            }
            let host = String(rest[..<colon])
            self = .tcp(host: host.isEmpty ? "127.0.0.1" : host, port: port)
        }
    }

    /// What keeps a connection's session lease alive. Either way the lease is revoked
    /// the moment the connection closes, and expires by its TTL if coordproxy dies.
    public enum SessionKeepAlive: String, Sendable, CaseIterable {
        /// The client's own activity: the lease is refreshed while a command of the
        /// connection is in progress (a blocked COORD.LOCK too), and otherwise only if
        /// the client sent a command since the previous refresh. A client that stops
        /// (SIGSTOP, a debugger, a hung process) with its connection open loses its
        /// session between one and four thirds of a TTL after its last command; a
        /// client that holds a lock longer than the TTL sends PING (or any command)
        /// more often than the TTL, as etcd clients send keep-alives.
        case activity
        /// The connection alone: the lease is refreshed for as long as the connection
        /// is open, whatever the client does.
        case connection
    }

    /// What the listener serves and how.
    public struct Configuration: Sendable {
        /// The listen addresses.
        public var listen: [Address]
        /// The backing Redis, for pass-through (each client authenticates itself; the
        /// proxy's own credentials are never used for clients' commands).
        public var redis: RedisConfiguration
        /// The store's namespace: pass-through refuses commands whose keys contain
        /// `{namespace}` (every argument is checked for a command whose keys Redis's
        /// `COMMAND` does not place, such as EVAL and SORT).
        public var namespace: String
        /// Forward other commands to Redis (`--no-passthrough` turns it off).
        public var passthrough = true
        /// Pass FLUSHALL, FLUSHDB and SWAPDB through (they delete or move the store too).
        public var allowFlush = false
        /// Clients that have sent only commands which leave no state on their Redis
        /// connection share one connection per event loop, their commands pipelined
        /// together (`--no-multiplex` turns it off: a connection of its own for every
        /// client from its first pass-through command). Never when Redis requires AUTH.
        public var multiplex = true
        /// The TTL of a connection's session lease, in seconds.
        public var sessionTTL: Int64 = 60
        /// What keeps a connection's session alive (`--session-keepalive`).
        public var sessionKeepAlive = SessionKeepAlive.activity
        /// At most this many client connections (Redis's maxclients).
        public var maxClients = 10_000
        /// coordproxy's own password (`--requirepass`): clients must `AUTH <password>`
        /// (or `AUTH default <password>`, or `HELLO 3 AUTH default <password>`) before
        /// any command, as with Redis's requirepass; coordproxy checks it. Only for a
        /// Redis that does not require AUTH itself: with one that does, clients
        /// authenticate against Redis's own users through coordproxy, and ``run()``
        /// refuses to start with both.
        public var requirePassword: String?

        public init(listen: [Address], redis: RedisConfiguration, namespace: String) {
            self.listen = listen
            self.redis = redis
            self.namespace = namespace
        }
    }

    /// The open client connections.
    final class Connections: Sendable {
        private let channels = NIOLockedValueBox([ObjectIdentifier: any Channel]())
        func add(_ channel: any Channel) { channels.withLockedValue { $0[ObjectIdentifier(channel)] = channel } }
        func remove(_ channel: any Channel) { channels.withLockedValue { _ = $0.removeValue(forKey: ObjectIdentifier(channel)) } }
        var count: Int { channels.withLockedValue { $0.count } }
        func closeAll() { for channel in channels.withLockedValue({ Array($0.values) }) { channel.close(promise: nil) } }
        /// Sentinel switched the master: pass-through connections to the old one close.
        func masterSwitched(to master: RedisConfiguration.Endpoint) {
            for channel in channels.withLockedValue({ Array($0.values) }) {
                channel.eventLoop.execute {
                    (try? channel.pipeline.syncOperations.handler(type: RESPConnectionHandler.self))?.masterSwitched(to: master)
                }
            }
        }
    }

    private let store: CoordinationClient
    private let configuration: Configuration
    private let logger: Logger
    private let connections = Connections()
    private let bound = NIOLockedValueBox<[Address]?>(nil)
    private let boundWaiters = NIOLockedValueBox<[CheckedContinuation<[Address], Never>]>([])

    /// A listener serving `store`.
    public init(store: CoordinationClient, configuration: Configuration, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    /// The addresses listened on (with the ports the system chose for port 0), once
    /// listening; empty when ``run()`` could not listen (it throws why).
    public func boundAddresses() async -> [Address] {
        if let bound = bound.withLockedValue({ $0 }) { return bound }
        return await withCheckedContinuation { continuation in
            let ready: [Address]? = bound.withLockedValue { value in
                if let value { return value }
                boundWaiters.withLockedValue { $0.append(continuation) }
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    public func run() async throws {
        let requiresAuth = await Self.redisRequiresAuth(configuration.redis)
        if requiresAuth && configuration.requirePassword != nil {
            bound.withLockedValue { $0 = [] }
            for waiter in boundWaiters.withLockedValue({ value in defer { value = [] }; return value }) { waiter.resume(returning: []) }
            throw RESPFrontEndError("--requirepass: Redis at \(configuration.redis.redactedURL) requires AUTH itself, and RESP clients then authenticate against Redis's own users through coordproxy; drop --requirepass, or use it with a Redis that has no password")
        }
        var tag = Array("{\(configuration.namespace)}".utf8)
        if tag.isEmpty { tag = Array("{coord}".utf8) }
        // Which arguments are keys, from Redis's COMMAND, read before listening; if
        // Redis does not answer (down at the start), every argument is checked until a
        // later read succeeds.
        let commandKeys = CommandKeys()
        var keyTableReader: Task<Void, Never>?
        if await commandKeys.load(from: store.redis, first: true, logger: logger) {
            let store = self.store
            let logger = self.logger
            keyTableReader = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(5))
                    if Task.isCancelled { return }
                    guard await commandKeys.load(from: store.redis, first: false, logger: logger) else { return }
                }
            }
        }
        defer { keyTableReader?.cancel() }
        // With AUTH, each client's commands must run as the user it authenticated as.
        let sharedBackends = configuration.passthrough && configuration.multiplex && !requiresAuth ? SharedBackends(configuration: configuration.redis) : nil
        let shared = RESPFrontEndContext(store: store, configuration: configuration, namespaceTag: tag, commandKeys: commandKeys,
                                         requiresAuth: requiresAuth || configuration.requirePassword != nil,
                                         localPassword: configuration.requirePassword.map { Array($0.utf8) },
                                         logger: logger, connections: connections, sharedBackends: sharedBackends)
        let maxClients = configuration.maxClients
        let connections = self.connections
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 511)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if connections.count >= maxClients {
                        // Redis's answer, then the connection closes.
                        try channel.pipeline.syncOperations.addHandler(RefuseHandler(message: "-ERR max number of clients reached\r\n"))
                        return
                    }
                    try channel.pipeline.syncOperations.addHandler(RESPConnectionHandler(shared: shared))
                }
            }
        var listeners: [any Channel] = []
        do {
            for address in configuration.listen {
                switch address {
                case .tcp(let host, let port): listeners.append(try await bootstrap.bind(host: host, port: port).get())
                case .unixSocket(let path):
                    listeners.append(try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get())
                }
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            // Whoever waits for the addresses learns that there are none.
            bound.withLockedValue { $0 = [] }
            for waiter in boundWaiters.withLockedValue({ value in defer { value = [] }; return value }) { waiter.resume(returning: []) }
            throw RESPFrontEndError("cannot listen for RESP clients: \(error)")
        }
        let addresses = zip(configuration.listen, listeners).map { address, channel -> Address in
            if case .tcp = address, let local = channel.localAddress { return .tcp(host: local.ipAddress ?? "?", port: local.port ?? 0) }
            return address
        }
        bound.withLockedValue { $0 = addresses }
        for waiter in boundWaiters.withLockedValue({ value in defer { value = [] }; return value }) { waiter.resume(returning: addresses) }
        for address in addresses {
            logger.info("serving the Redis protocol (COORD.* commands\(configuration.passthrough ? ", other commands passed through to Redis" : ""))",
                        metadata: ["address": "\(address)", "redis_requires_auth": "\(requiresAuth)", "requirepass": "\(configuration.requirePassword != nil)", "session_ttl": "\(configuration.sessionTTL)", "session_keepalive": "\(configuration.sessionKeepAlive.rawValue)", "shared_redis_connections": "\(sharedBackends != nil)"])
        }
        let open = listeners
        var observation: UInt64?
        if let sentinel = configuration.redis.sentinel {
            observation = SentinelMonitor.observe(sentinel, connectTimeout: configuration.redis.connectTimeout) { master in
                connections.masterSwitched(to: master)
                sharedBackends?.masterSwitched(to: master)
            }
        }
        defer { if let observation, let sentinel = configuration.redis.sentinel { SentinelMonitor.stopObserving(observation, of: sentinel) } }
        // Graceful shutdown closes the listeners, and so does cancellation: the service
        // group cancels the other services when one fails (the etcd API's port taken,
        // say), and a listener left open kept coordproxy running, silent, forever.
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withTaskGroup(of: Void.self) { group in
                    for listener in open {
                        group.addTask { try? await listener.closeFuture.get() }
                    }
                }
            } onGracefulShutdown: {
                for listener in open { listener.close(promise: nil) }
                connections.closeAll()
            }
        } onCancel: {
            for listener in open { listener.close(promise: nil) }
            connections.closeAll()
        }
        connections.closeAll()
        sharedBackends?.closeAll()
        logger.info("stopped serving the Redis protocol")
    }

    /// Whether Redis answers an unauthenticated PING with NOAUTH.
    static func redisRequiresAuth(_ configuration: RedisConfiguration) async -> Bool {
        var probe = RedisConfiguration(endpoint: configuration.endpoint)
        probe.sentinel = configuration.sentinel
        probe.connectTimeout = .seconds(2)
        probe.commandTimeout = .seconds(2)
        do {
            let connection = try await RedisConnection.connect(probe)
            defer { Task { await connection.close() } }
            _ = try await connection.send(["PING"].map { Array($0.utf8) })
            return false
        } catch {
            return "\(error)".contains("NOAUTH") || "\(error)".lowercased().contains("auth")
        }
    }
}

/// An error of the RESP listener's setup.
public struct RESPFrontEndError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

private final class RefuseHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let message: String
    init(message: String) { self.message = message }
    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: message))).whenComplete { _ in channel.close(promise: nil) }
    }
}
