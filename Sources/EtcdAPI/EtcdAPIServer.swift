import Coordination
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import ServiceLifecycle
import Synchronization

/// etcd's v3 gRPC API served from a store: the KV, Watch, Lease, Cluster,
/// Maintenance, Auth, Lock and Election services on one or more plaintext HTTP/2
/// listeners, as a ServiceLifecycle `Service`.
///
/// ```swift
/// let store = try await CoordinationClient.connect(url: "redis://127.0.0.1:6379")
/// let api = EtcdAPIServer(store: store, listen: [.init(host: "127.0.0.1", port: 2379)], logger: logger)
/// let group = ServiceGroup(services: [store, api], gracefulShutdownSignals: [.sigterm], logger: logger)
/// try await group.run()
/// ```
///
/// The store's own background work (lease reaping, `store.run()`) must run beside
/// it, as above. On graceful shutdown the listeners stop accepting, running calls
/// (watches, keep-alive streams) end with UNAVAILABLE so that clients retry
/// elsewhere, and nothing of the clients' is revoked.
public final class EtcdAPIServer: Service, Sendable {
    /// Where a listener binds.
    public struct Address: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public let store: CoordinationClient
    public let member: EtcdMember
    public let addresses: [Address]
    private let logger: Logger
    private let bound = Mutex<[Address]>([])
    private let boundSignal = BoundSignal()

    /// A server for `store` on `addresses`.
    /// - Parameters:
    ///   - member: who the server says it is; by default the member `default` of the
    ///     store's namespace, advertising the listen addresses.
    public init(store: CoordinationClient, listen addresses: [Address], member: EtcdMember? = nil, logger: Logger) {
        self.store = store
        self.addresses = addresses
        self.member = member ?? EtcdMember(namespace: store.namespace, clientURLs: addresses.map { "http://\($0)" })
        self.logger = logger
    }

    /// The addresses actually bound (port 0 resolved), once every listener is up.
    public func boundAddresses() async -> [Address] {
        await boundSignal.wait()
        return bound.withLock { $0 }
    }

    /// The services every listener serves.
    func services() -> [any RegistrableRPCService] {
        [
            KVService(store: store, member: member, logger: logger),
            WatchService(store: store, member: member, logger: logger),
            LeaseService(store: store, member: member, logger: logger),
            ClusterService(store: store, member: member, logger: logger),
            MaintenanceService(store: store, member: member, logger: logger),
            AuthService(),
            LockService(store: store, member: member, logger: logger),
            ElectionService(store: store, member: member, logger: logger),
        ]
    }

    /// Serves until cancelled or shut down gracefully.
    public func run() async throws {
        let servers = addresses.map { address in
            GRPCServer(transport: .http2NIOPosix(address: .ipv4(host: address.host, port: address.port),
                                                 transportSecurity: .plaintext, config: Self.transportConfig),
                       services: services())
        }
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                for server in servers {
                    group.addTask { try await server.serve() }
                }
                var resolved: [Address] = []
                for (server, address) in zip(servers, addresses) {
                    guard let listening = try await server.listeningAddress?.ipv4 else {
                        throw RPCError(code: .unavailable, message: "coordproxy could not listen on \(address)")
                    }
                    resolved.append(Address(host: listening.host, port: listening.port))
                    logger.info("serving the etcd v3 API", metadata: ["address": "\(address.host):\(listening.port)"])
                }
                bound.withLock { $0 = resolved }
                boundSignal.open()
            }
        } onGracefulShutdown: {
            for server in servers { server.beginGracefulShutdown() }
        }
    }

    /// HTTP/2 settings as etcd's: clients ping every few seconds (etcdctl, clientv3
    /// with keep-alive), also between calls, and requests up to 1.5 MiB are accepted
    /// (larger ones get etcd's "request is too large" from the store, or gRPC's
    /// RESOURCE_EXHAUSTED beyond 2 MiB).
    static var transportConfig: HTTP2ServerTransport.Posix.Config {
        .defaults { config in
            config.connection.keepalive = .init(
                time: .seconds(2 * 60 * 60), timeout: .seconds(20),
                clientBehavior: .init(minPingIntervalWithoutCalls: .seconds(1), allowWithoutCalls: true))
            config.rpc.maxRequestPayloadSize = 2 * 1024 * 1024
        }
    }

    /// The gRPC error for a failed request, logged with the method and the reason.
    static func refuse(_ method: String, _ error: any Error, logger: Logger) -> RPCError {
        let rpcError = EtcdErrors.rpcError(for: error)
        if error is CancellationError { return rpcError }
        logger.notice("refused request", metadata: [
            "method": "\(method)", "code": "\(rpcError.code)", "message": "\(rpcError.message)", "reason": "\(error)",
        ])
        return rpcError
    }
}

/// Opened once every listener is bound (the gRPC server's and the gateway's).
final class BoundSignal: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}
