import Coordination
import Foundation
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
    /// Whether the listeners are coordproxy's own HTTP/2 transport, where KV's and
    /// Lease's unary calls and Watch streams are served by ``GRPCFastPath`` and the
    /// rest by grpc-swift's server (the default), or grpc-swift's own transport, where
    /// grpc-swift serves every call.
    public let fastPath: Bool
    private let logger: Logger
    private let bound = Mutex<[Address]>([])
    private let boundSignal = Latch()
    /// Opened when graceful shutdown begins: long calls (watches, keep-alive streams,
    /// observes, waiting locks and campaigns) end with UNAVAILABLE.
    let stopping = Latch()

    /// A server for `store` on `addresses`.
    /// - Parameters:
    ///   - member: who the server says it is; by default the member `default` of the
    ///     store's namespace, advertising the listen addresses.
    ///   - fastPath: listen with ``EtcdHTTP2Transport``, which serves the KV and Lease
    ///     services' unary calls and Watch streams straight from the HTTP/2 frames
    ///     (``GRPCFastPath``: the same answers at less CPU per call and per event) and
    ///     hands every other call to grpc-swift's server; `false` listens with
    ///     grpc-swift's own transport, which serves them all.
    public init(store: CoordinationClient, listen addresses: [Address], member: EtcdMember? = nil, fastPath: Bool = true, logger: Logger) {
        self.store = store
        self.addresses = addresses
        self.fastPath = fastPath
        self.member = member ?? EtcdMember(namespace: store.namespace, clientURLs: addresses.map { "http://\($0)" })
        self.logger = logger
    }

    /// The addresses actually bound (port 0 resolved), once every listener is up;
    /// empty when ``run()`` ended before that (it throws why: an address in use, say).
    public func boundAddresses() async -> [Address] {
        await boundSignal.wait()
        return bound.withLock { $0 }
    }

    /// The services every listener serves.
    func services() -> [any RegistrableRPCService] {
        [
            KVService(store: store, member: member, logger: logger),
            WatchService(store: store, member: member, logger: logger, stopping: stopping),
            LeaseService(store: store, member: member, logger: logger, stopping: stopping),
            ClusterService(store: store, member: member, logger: logger),
            MaintenanceService(store: store, member: member, logger: logger),
            AuthService(store: store, member: member, logger: logger),
            LockService(store: store, member: member, logger: logger, stopping: stopping),
            ElectionService(store: store, member: member, logger: logger, stopping: stopping),
        ]
    }

    /// Serves until cancelled or shut down gracefully.
    public func run() async throws {
        // Whoever waits for the addresses learns that there are none if serving ends first.
        defer { boundSignal.open() }
        let servers = addresses.map { address in
            fastPath
                ? Listener(EtcdHTTP2Transport(host: address.host, port: address.port, methods: fastPathMethods(), streams: fastPathStreams(),
                                              maxRequestSize: Self.maxRequestPayloadSize, logger: logger),
                           services: services())
                : Listener(HTTP2ServerTransport.Posix(address: .ipv4(host: address.host, port: address.port), transportSecurity: .plaintext,
                                                      config: transportConfig()),
                           services: services())
        }
        // Why a listener stopped (a bind that failed: address in use, no permission), to
        // name the cause when its address never comes: grpc-swift's own error for that
        // says only that no address is bound.
        let failures = ListenFailures()
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                for (index, server) in servers.enumerated() {
                    group.addTask {
                        do {
                            try await server.serve()
                        } catch {
                            failures.causes.withLock { $0[index] = "\(error)" }
                            throw error
                        }
                    }
                }
                var resolved: [Address] = []
                for (index, (server, address)) in zip(servers, addresses).enumerated() {
                    let bound: GRPCNIOTransportCore.SocketAddress?
                    do {
                        bound = try await server.listeningAddress()
                    } catch {
                        // serve() reports the cause as it returns: wait for it briefly.
                        var cause: String?
                        for _ in 0..<50 {
                            cause = failures.causes.withLock { $0[index] }
                            if cause != nil { break }
                            try? await Task.sleep(for: .milliseconds(20))
                        }
                        throw ListenError(address: address, cause: cause ?? "\(error)")
                    }
                    guard let listening = bound?.ipv4 else {
                        throw RPCError(code: .unavailable, message: "coordproxy could not listen on \(address)")
                    }
                    resolved.append(Address(host: listening.host, port: listening.port))
                    logger.info("serving the etcd v3 API", metadata: ["address": "\(address.host):\(listening.port)"])
                }
                bound.withLock { $0 = resolved }
                boundSignal.open()
            }
        } onGracefulShutdown: {
            self.logger.info("shutting down: no new connections; watches, keep-alives, observes and waiting locks end with UNAVAILABLE (server stopped)")
            self.stopping.open()
            for server in servers { server.beginGracefulShutdown() }
        }
    }

    /// The calls ``GRPCFastPath`` serves itself: the unary calls of KV, Lease, Lock and Election.
    func fastPathMethods() -> GRPCFastPath.Table {
        KVService(store: store, member: member, logger: logger).fastPathMethods()
            .merging(LeaseService(store: store, member: member, logger: logger, stopping: stopping).fastPathMethods()) { first, _ in first }
            .merging(LockService(store: store, member: member, logger: logger, stopping: stopping).fastPathMethods()) { first, _ in first }
            .merging(ElectionService(store: store, member: member, logger: logger, stopping: stopping).fastPathMethods()) { first, _ in first }
    }

    /// The streams ``GRPCFastPath`` serves itself: Watch.
    func fastPathStreams() -> GRPCFastPath.StreamTable {
        WatchService(store: store, member: member, logger: logger, stopping: stopping).fastPathMethods()
    }

    /// grpc-swift's HTTP/2 transport settings for etcd's clients (without ``fastPath``;
    /// ``EtcdHTTP2Transport`` has the same HTTP/2 settings). Pings never cost a
    /// connection: clientv3 (grpc-go) pings for keep-alive and, under load, for
    /// bandwidth estimation after every burst of data, hundreds of times a second. A
    /// ``PingAnswerer`` first in each connection answers them before swift-nio-http2's
    /// flood limit (200 control frames in 30 s) or grpc-swift's ping policing would
    /// close the connection with GOAWAY ENHANCE_YOUR_CALM, after which grpc-go re-sent
    /// requests the server had already run (a Put applied twice, seen under the load
    /// test); etcd's grpc-go server answers such pings at any rate too. Requests up to
    /// 1.5 MiB are accepted (larger ones get etcd's "request is too large" from the
    /// store, or gRPC's RESOURCE_EXHAUSTED beyond 2 MiB).
    func transportConfig() -> HTTP2ServerTransport.Posix.Config {
        .defaults { config in
            config.connection.keepalive = .init(
                time: .seconds(2 * 60 * 60), timeout: .seconds(20),
                clientBehavior: .init(minPingIntervalWithoutCalls: .zero, allowWithoutCalls: true))
            config.rpc.maxRequestPayloadSize = Self.maxRequestPayloadSize
            // grpc-swift's flush coalescing holds each flush up to 100 µs for more writes.
            // Without it, four back-to-back load-generator runs each way gave the same
            // put and get rates and a lower watch delivery latency (p99 2.4-4.6 ms
            // against 2.9-5.6).
            config.connection.flushCoalescing = nil
            config.channelDebuggingCallbacks.onAcceptTCPConnection = { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PingAnswerer(), position: .first)
                }
            }
        }
    }

    /// gRPC's limit on a request message (etcd's own limit, 1.5 MiB, is the store's).
    static let maxRequestPayloadSize = 2 * 1024 * 1024

    /// The gRPC error for a failed request, logged with the method and the reason.
    static func refuse(_ method: String, _ error: any Error, logger: Logger) -> RPCError {
        let rpcError = EtcdErrors.rpcError(for: error)
        if error is CancellationError { return rpcError }
        if rpcError.code == .unavailable && rpcError.message == EtcdErrors.serverStopped.message {
            logger.debug("call ended by shutdown", metadata: ["method": "\(method)"])
            return rpcError
        }
        logger.notice("refused request", metadata: [
            "method": "\(method)", "code": "\(rpcError.code)", "message": "\(rpcError.message)", "reason": "\(error)",
        ])
        return rpcError
    }
}

/// One listener's server, whichever its transport: grpc-swift's server for `services`
/// on it, with etcd's answers to unknown methods and the API metrics.
private struct Listener: Sendable {
    var serve: @Sendable () async throws -> Void
    var listeningAddress: @Sendable () async throws -> GRPCNIOTransportCore.SocketAddress?
    var beginGracefulShutdown: @Sendable () -> Void

    init<Transport: ListeningServerTransport>(_ transport: Transport, services: [any RegistrableRPCService]) {
        let server = GRPCServer(transport: MethodCheckingTransport(transport), services: services, interceptors: [MetricsInterceptor(), CallEndInterceptor()])
        serve = { try await server.serve() }
        listeningAddress = { try await server.listeningAddress }
        beginGracefulShutdown = { server.beginGracefulShutdown() }
    }
}

/// Why each listener's serve() ended, by listener index.
final class ListenFailures: Sendable {
    let causes = Mutex<[Int: String]>([:])
}

/// A client listener that could not be opened, with the reason (the socket error).
public struct ListenError: Error, CustomStringConvertible, Sendable {
    public var address: EtcdAPIServer.Address
    public var reason: String

    init(address: EtcdAPIServer.Address, cause text: String) {
        self.address = address
        // The socket error inside grpc-swift's wrapping ("... bind(descriptor:ptr:bytes:):
        // Address already in use (errno: 98) ..."): its errno, in the system's words.
        if let range = text.range(of: #"errno: [0-9]+"#, options: .regularExpression),
           let number = Int32(text[range].dropFirst("errno: ".count)) {
            self.reason = String(cString: strerror(number)) + " (errno \(number))"
        } else {
            self.reason = text
        }
    }

    public var description: String {
        "cannot listen for clients on \(address): \(reason); choose another --listen-client-urls, or stop what listens there"
    }
}

/// A one-shot latch: opened once (every listener bound, shutdown begun), waited on
/// by any number of tasks; a waiting task that is cancelled stops waiting.
final class Latch: Sendable {
    private enum Waiter {
        case waiting(CheckedContinuation<Void, Never>)
        case cancelled
    }

    private struct State {
        var open = false
        var nextID = 0
        var waiters: [Int: Waiter] = [:]
    }

    private let state = Mutex(State())

    var isOpen: Bool { state.withLock { $0.open } }

    func open() {
        let waiters = state.withLock { state -> [Waiter] in
            state.open = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for case .waiting(let waiter) in waiters { waiter.resume() }
    }

    /// Returns once the latch is open, or at once when the task is cancelled.
    func wait() async {
        let id = state.withLock { state -> Int in
            defer { state.nextID += 1 }
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state -> Bool in
                    if state.open { return true }
                    if case .cancelled = state.waiters[id] {
                        state.waiters[id] = nil
                        return true
                    }
                    state.waiters[id] = .waiting(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                if state.open { return nil }
                let waiter = state.waiters[id]
                state.waiters[id] = waiter == nil ? .cancelled : nil
                return waiter
            }
            if case .waiting(let continuation) = waiter { continuation.resume() }
        }
    }

    /// Runs `body` until it finishes or the latch opens (shutdown began); then the call
    /// ends with etcd's "server stopped" (UNAVAILABLE), which clients retry elsewhere.
    func untilOpen<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                await self.wait()
                if Task.isCancelled { return nil }
                throw EtcdErrors.serverStopped
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            throw CancellationError()
        }
    }
}
