import Coordination
import Foundation
import GRPCCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import SwiftProtobuf
import Synchronization

/// etcd's JSON gateway (grpc-gateway) on HTTP/1.1: `POST /v3/kv/range` and the rest,
/// answered by the same services as the gRPC API.
///
/// Bodies are the request messages in protobuf's JSON mapping (bytes as base64,
/// int64 as strings; field names as in the .proto, as etcd's gateway writes them,
/// camelCase accepted too). Streaming calls (`/v3/watch`, `/v3/lease/keepalive`,
/// `/v3/election/observe`) answer newline-delimited `{"result":{...}}` chunks.
/// Errors are grpc-gateway's: `{"error":..., "message":..., "code":N}` with the
/// HTTP status of the gRPC code. `GET /version` and `GET /health` answer as etcd's;
/// `GET /metrics` answers the Prometheus text that `metrics` returns, when given.
///
/// With `routes: .metrics` a listener serves only `/metrics`, `/health` and
/// `/version`, as etcd's `--listen-metrics-urls`.
public final class EtcdGateway: Service, Sendable {
    /// What a gateway's listeners answer.
    public enum Routes: Sendable {
        /// The JSON gateway, `/metrics`, `/health` and `/version`.
        case gateway
        /// Only `/metrics`, `/health` and `/version`.
        case metrics
    }

    public let addresses: [EtcdAPIServer.Address]
    private let routes: Routes
    private let metrics: (@Sendable () async -> String)?
    private let kv: KVService
    private let watchService: WatchService
    private let lease: LeaseService
    private let cluster: ClusterService
    private let maintenance: MaintenanceService
    private let auth: AuthService
    private let lockService: LockService
    private let election: ElectionService
    private let store: CoordinationClient
    private let logger: Logger
    private let bound = Mutex<[EtcdAPIServer.Address]>([])
    private let boundSignal = Latch()
    /// The API server's: opened when either begins shutting down.
    private let stopping: Latch
    /// Open connections, closed a second after shutdown begins.
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])

    /// A gateway for the services of `api`, on `addresses`.
    /// - Parameters:
    ///   - metrics: the Prometheus text exposition that `GET /metrics` answers (for
    ///     example a `PrometheusCollectorRegistry`'s `emitToString()`); without it
    ///     `/metrics` answers 404.
    ///   - routes: `.metrics` to serve only `/metrics`, `/health` and `/version`.
    public init(api: EtcdAPIServer, listen addresses: [EtcdAPIServer.Address], routes: Routes = .gateway,
                metrics: (@Sendable () async -> String)? = nil, logger: Logger) {
        self.addresses = addresses
        self.routes = routes
        self.metrics = metrics
        self.store = api.store
        let (store, member) = (api.store, api.member)
        stopping = api.stopping
        kv = KVService(store: store, member: member, logger: logger)
        watchService = WatchService(store: store, member: member, logger: logger, stopping: api.stopping)
        lease = LeaseService(store: store, member: member, logger: logger, stopping: api.stopping)
        cluster = ClusterService(store: store, member: member, logger: logger)
        maintenance = MaintenanceService(store: store, member: member, logger: logger)
        auth = AuthService(store: store, member: member, logger: logger)
        lockService = LockService(store: store, member: member, logger: logger, stopping: api.stopping)
        election = ElectionService(store: store, member: member, logger: logger, stopping: api.stopping)
        self.logger = logger
    }

    /// The addresses actually bound (port 0 resolved), once every listener is up;
    /// empty when ``run()`` ended before that (it throws why: an address in use, say).
    public func boundAddresses() async -> [EtcdAPIServer.Address] {
        await boundSignal.wait()
        return bound.withLock { $0 }
    }

    public func run() async throws {
        // Whoever waits for the addresses learns that there are none if serving ends first.
        defer { boundSignal.open() }
        typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
        let listeners = try await withThrowingTaskGroup(of: NIOAsyncChannel<Connection, Never>.self) { group in
            for address in addresses {
                group.addTask {
                    try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                        .bind(host: address.host, port: address.port) { channel in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                                return try Connection(wrappingChannelSynchronously: channel)
                            }
                        }
                }
            }
            var all: [NIOAsyncChannel<Connection, Never>] = []
            for try await listener in group { all.append(listener) }
            return all
        }
        let resolved = listeners.map { listener in
            EtcdAPIServer.Address(host: listener.channel.localAddress?.ipAddress ?? "?", port: listener.channel.localAddress?.port ?? 0)
        }
        bound.withLock { $0 = resolved }
        boundSignal.open()
        for address in resolved {
            logger.info(routes == .gateway ? "serving the etcd JSON gateway" : "serving metrics", metadata: ["address": "\(address)"])
        }

        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    // Shutdown: streams end at once (the latch), other requests get a
                    // second, then idle keep-alive connections are closed.
                    await self.stopping.wait()
                    if Task.isCancelled { return }
                    try? await Task.sleep(for: .seconds(1))
                    for channel in self.connections.withLock({ Array($0.values) }) { channel.close(promise: nil) }
                }
                for listener in listeners {
                    group.addTask {
                        try await withThrowingDiscardingTaskGroup { connections in
                            try await listener.executeThenClose { inbound in
                                for try await connection in inbound {
                                    connections.addTask { await self.serve(connection) }
                                }
                            }
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            self.stopping.open()
            for listener in listeners { listener.channel.close(promise: nil) }
        }
    }

    // MARK: - HTTP

    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        let id = ObjectIdentifier(connection.channel)
        connections.withLock { $0[id] = connection.channel }
        defer { connections.withLock { _ = $0.removeValue(forKey: id) } }
        if stopping.isOpen {
            // Every accepted channel must go through executeThenClose (NIO traps otherwise).
            try? await connection.executeThenClose { _, _ in }
            return
        }
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        body.clear()
                    case .body(var chunk):
                        if body.readableBytes + chunk.readableBytes > Self.maxBodyBytes {
                            // Far past what any request under the limit takes in JSON.
                            let error = Self.messageTooLarge(body.readableBytes + chunk.readableBytes)
                            try await respond(outbound, status: Self.httpStatus(error.code), json: Self.errorBody(error), keepAlive: false)
                            return
                        }
                        body.writeBuffer(&chunk)
                    case .end:
                        guard let requestHead = head else { continue }
                        let keepAlive = try await handle(requestHead, body: Array(body.readableBytesView), outbound: outbound)
                        head = nil
                        if !keepAlive || !requestHead.isKeepAlive { return }
                    }
                }
            }
        } catch {
            logger.debug("gateway connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// Answers one request; returns whether the connection may carry another.
    private func handle(_ head: HTTPRequestHead, body: [UInt8], outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws -> Bool {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        if head.method == .GET {
            switch path {
            case "/version":
                try await respond(outbound, status: .ok, json: "{\"etcdserver\":\"\(EtcdMember.apiVersion)\",\"etcdcluster\":\"\(EtcdMember.apiVersion)\"}", keepAlive: true)
            case "/health":
                let healthy = (try? await store.currentRevision()) != nil
                try await respond(outbound, status: healthy ? .ok : .serviceUnavailable,
                                  json: healthy ? "{\"health\":\"true\"}" : "{\"health\":\"false\"}", keepAlive: true)
            case "/metrics" where metrics != nil:
                let text = await metrics!()
                try await respond(outbound, status: .ok, body: text, contentType: "text/plain; version=0.0.4; charset=utf-8", keepAlive: true)
            default:
                try await respond(outbound, status: .notFound, json: Self.errorBody(RPCError(code: .unimplemented, message: "Not Found")), keepAlive: true)
            }
            return true
        }
        guard routes == .gateway else {
            try await respond(outbound, status: .notFound, json: Self.errorBody(RPCError(code: .unimplemented, message: "Not Found")), keepAlive: true)
            return true
        }
        guard head.method == .POST else {
            try await respond(outbound, status: .methodNotAllowed, json: Self.errorBody(RPCError(code: .unimplemented, message: "Method Not Allowed")), keepAlive: true)
            return true
        }
        let context = ServerContext(descriptor: MethodDescriptor(fullyQualifiedService: "gateway", method: path),
                                    remotePeer: "gateway", localPeer: "gateway", cancellation: ServerContext.RPCCancellationHandle())
        do {
            switch path {
            case "/v3/kv/range": try await unary(outbound, body, path: path) { try await self.kv.range(request: $0, context: context) }
            case "/v3/kv/put": try await unary(outbound, body, path: path) { try await self.kv.put(request: $0, context: context) }
            case "/v3/kv/deleterange": try await unary(outbound, body, path: path) { try await self.kv.deleteRange(request: $0, context: context) }
            case "/v3/kv/txn": try await unary(outbound, body, path: path) { try await self.kv.txn(request: $0, context: context) }
            case "/v3/kv/compaction": try await unary(outbound, body, path: path) { try await self.kv.compact(request: $0, context: context) }
            case "/v3/lease/grant": try await unary(outbound, body, path: path) { try await self.lease.leaseGrant(request: $0, context: context) }
            case "/v3/lease/revoke", "/v3/kv/lease/revoke":
                try await unary(outbound, body, path: path) { try await self.lease.leaseRevoke(request: $0, context: context) }
            case "/v3/lease/timetolive", "/v3/kv/lease/timetolive":
                try await unary(outbound, body, path: path) { try await self.lease.leaseTimeToLive(request: $0, context: context) }
            case "/v3/lease/leases", "/v3/kv/lease/leases":
                try await unary(outbound, body, path: path) { try await self.lease.leaseLeases(request: $0, context: context) }
            case "/v3/lease/keepalive":
                let request: Etcdserverpb_LeaseKeepAliveRequest = try Self.decode(body)
                try await stream(outbound, path: path) { writer in
                    try await self.lease.leaseKeepAlive(request: RPCAsyncSequence(wrapping: Self.once(request)), response: writer, context: context)
                }
                // The answer is complete (one request, one answer, the chunked body's
                // end): the connection carries the client's next request, as etcd's.
                return true
            case "/v3/watch":
                let request: Etcdserverpb_WatchRequest = try Self.decode(body)
                try await stream(outbound, path: path) { writer in
                    try await self.watchService.watch(request: RPCAsyncSequence(wrapping: Self.onceThenWait(request)), response: writer, context: context)
                }
                return false
            case "/v3/lock/lock": try await unary(outbound, body, path: path) { try await self.lockService.lock(request: $0, context: context) }
            case "/v3/lock/unlock": try await unary(outbound, body, path: path) { try await self.lockService.unlock(request: $0, context: context) }
            case "/v3/election/campaign": try await unary(outbound, body, path: path) { try await self.election.campaign(request: $0, context: context) }
            case "/v3/election/proclaim": try await unary(outbound, body, path: path) { try await self.election.proclaim(request: $0, context: context) }
            case "/v3/election/leader": try await unary(outbound, body, path: path) { try await self.election.leader(request: $0, context: context) }
            case "/v3/election/resign": try await unary(outbound, body, path: path) { try await self.election.resign(request: $0, context: context) }
            case "/v3/election/observe":
                let request: V3electionpb_LeaderRequest = try Self.decode(body)
                try await stream(outbound, path: path) { writer in try await self.election.observe(request: request, response: writer, context: context) }
                return false
            case "/v3/maintenance/status": try await unary(outbound, body, path: path) { try await self.maintenance.status(request: $0, context: context) }
            case "/v3/maintenance/alarm": try await unary(outbound, body, path: path) { try await self.maintenance.alarm(request: $0, context: context) }
            case "/v3/cluster/member/list": try await unary(outbound, body, path: path) { try await self.cluster.memberList(request: $0, context: context) }
            // etcd 3.4 maps Hash and HashKV to this one path; Hash answers it.
            case "/v3/maintenance/hash": try await unary(outbound, body, path: path) { try await self.maintenance.hash(request: $0, context: context) }
            case "/v3/maintenance/defragment": try await unary(outbound, body, path: path) { try await self.maintenance.defragment(request: $0, context: context) }
            case "/v3/maintenance/transfer-leadership": try await unary(outbound, body, path: path) { try await self.maintenance.moveLeader(request: $0, context: context) }
            case "/v3/auth/authenticate": try await unary(outbound, body, path: path) { try await self.auth.authenticate(request: $0, context: context) }
            case "/v3/auth/enable": try await unary(outbound, body, path: path) { try await self.auth.authEnable(request: $0, context: context) }
            case "/v3/auth/disable": try await unary(outbound, body, path: path) { try await self.auth.authDisable(request: $0, context: context) }
            case "/v3/auth/user/get": try await unary(outbound, body, path: path) { try await self.auth.userGet(request: $0, context: context) }
            case "/v3/auth/user/list": try await unary(outbound, body, path: path) { try await self.auth.userList(request: $0, context: context) }
            case "/v3/auth/role/get": try await unary(outbound, body, path: path) { try await self.auth.roleGet(request: $0, context: context) }
            case "/v3/auth/role/list": try await unary(outbound, body, path: path) { try await self.auth.roleList(request: $0, context: context) }
            case let unserved where UnservedMethods.byGatewayPath[unserved] != nil:
                let error = RPCError(code: .unimplemented, message: UnservedMethods.byGatewayPath[unserved]!)
                try await respond(outbound, status: Self.httpStatus(error.code), json: Self.errorBody(error), keepAlive: true)
            default:
                try await respond(outbound, status: .notFound, json: Self.errorBody(RPCError(code: .unimplemented, message: "Not Found")), keepAlive: true)
            }
        } catch let error as GatewayBadRequest {
            try await respond(outbound, status: .badRequest, json: Self.errorBody(RPCError(code: .invalidArgument, message: error.message)), keepAlive: true)
        } catch let error as RPCError where error.code == .resourceExhausted {
            try await respond(outbound, status: Self.httpStatus(error.code), json: Self.errorBody(error), keepAlive: true)
        }
        return true
    }

    /// etcd's limit on a request message (its gRPC server's: 1.5 MiB plus 512 KiB of
    /// headroom), which its gateway's requests meet as gRPC messages.
    static let maxRequestBytes = 2 * 1024 * 1024
    /// The most JSON read for one request: base64 and field names make a request under
    /// ``maxRequestBytes`` up to about 2.7 MiB of JSON; past four times the limit the
    /// request cannot be under it.
    static let maxBodyBytes = 4 * maxRequestBytes

    /// etcd's (grpc-go's) answer to a request message over the limit: RESOURCE_EXHAUSTED,
    /// HTTP 429 from the gateway.
    static func messageTooLarge(_ size: Int) -> RPCError {
        RPCError(code: .resourceExhausted, message: "grpc: received message larger than max (\(size) vs. \(maxRequestBytes))")
    }

    private struct GatewayBadRequest: Error {
        var message: String
    }

    private static let jsonDecoding: JSONDecodingOptions = {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true
        return options
    }()

    private static let jsonEncoding: JSONEncodingOptions = {
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        return options
    }()

    private static func decode<Request: SwiftProtobuf.Message>(_ body: [UInt8]) throws -> Request {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }) { return Request() }
        let request: Request
        do {
            request = try Request(jsonUTF8Bytes: body, options: jsonDecoding)
        } catch {
            throw GatewayBadRequest(message: "invalid request body: \(error)")
        }
        // JSON is larger than the message it carries: only a large body can be over.
        if body.count > maxRequestBytes, let bytes: [UInt8] = try? request.serializedBytes(), bytes.count > maxRequestBytes {
            throw messageTooLarge(bytes.count)
        }
        return request
    }

    private static func encode(_ message: some SwiftProtobuf.Message) -> String {
        (try? message.jsonString(options: jsonEncoding)) ?? "{}"
    }

    /// grpc-gateway's error body.
    static func errorBody(_ error: RPCError) -> String {
        let message = Self.jsonString(error.message)
        return "{\"error\":\(message),\"message\":\(message),\"code\":\(error.code.rawValue)}"
    }

    static func jsonString(_ text: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: [text], options: [])) ?? Data("[\"\"]".utf8)
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }

    /// grpc-gateway's HTTP status for a gRPC code.
    static func httpStatus(_ code: RPCError.Code) -> HTTPResponseStatus {
        switch code {
        case .cancelled: return .requestTimeout
        case .invalidArgument, .outOfRange: return .badRequest
        case .deadlineExceeded: return .gatewayTimeout
        case .notFound: return .notFound
        case .alreadyExists, .aborted: return .conflict
        case .permissionDenied: return .forbidden
        case .unauthenticated: return .unauthorized
        case .resourceExhausted: return .tooManyRequests
        case .failedPrecondition: return .preconditionFailed
        case .unimplemented: return .notImplemented
        case .unavailable: return .serviceUnavailable
        default: return .internalServerError
        }
    }

    private func unary<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, _ body: [UInt8], path: String,
        _ call: (Request) async throws -> Response
    ) async throws {
        let recorder = APIMetrics.start(service: "gateway", method: path)
        let request: Request
        do {
            request = try Self.decode(body)
        } catch {
            recorder.finish((error as? RPCError)?.code ?? .invalidArgument)
            throw error
        }
        do {
            let response = try await call(request)
            try await respond(outbound, status: .ok, json: Self.encode(response), keepAlive: true)
            recorder.finish(nil)
        } catch {
            let rpcError = EtcdErrors.rpcError(for: error)
            try await respond(outbound, status: Self.httpStatus(rpcError.code), json: Self.errorBody(rpcError), keepAlive: true)
            recorder.finish(rpcError.code)
        }
    }

    /// A streaming answer: `{"result":...}` lines as the call writes them; an error ends
    /// the stream with grpc-gateway's `{"error":{...}}` chunk.
    private func stream<Response: SwiftProtobuf.Message>(
        _ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, path: String,
        _ call: (RPCWriter<Response>) async throws -> Void
    ) async throws {
        let recorder = APIMetrics.start(service: "gateway", method: path)
        var head = HTTPResponseHead(version: .http1_1, status: .ok)
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Transfer-Encoding", value: "chunked")
        try await outbound.write(.head(head))
        let writer = RPCWriter(wrapping: ChunkWriter<Response>(outbound: outbound))
        do {
            try await call(writer)
            recorder.finish(nil)
        } catch {
            let rpcError = EtcdErrors.rpcError(for: error)
            recorder.finish(rpcError.code)
            let status = Self.httpStatus(rpcError.code)
            let line = "{\"error\":{\"grpc_code\":\(rpcError.code.rawValue),\"http_code\":\(status.code),\"message\":\(Self.jsonString(rpcError.message)),\"http_status\":\(Self.jsonString(status.reasonPhrase))}}\n"
            try? await outbound.write(.body(.byteBuffer(ByteBuffer(string: line))))
        }
        try? await outbound.write(.end(nil))
    }

    private struct ChunkWriter<Element: SwiftProtobuf.Message>: RPCWriterProtocol {
        let outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>

        func write(_ element: Element) async throws {
            let line = "{\"result\":" + EtcdGateway.encode(element) + "}\n"
            try await outbound.write(.body(.byteBuffer(ByteBuffer(string: line))))
        }

        func write(contentsOf elements: some Sequence<Element>) async throws {
            for element in elements { try await write(element) }
        }
    }

    private func respond(_ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, status: HTTPResponseStatus, json: String, keepAlive: Bool) async throws {
        try await respond(outbound, status: status, body: json, contentType: "application/json", keepAlive: keepAlive)
    }

    private func respond(_ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, status: HTTPResponseStatus, body text: String,
                         contentType: String, keepAlive: Bool) async throws {
        var head = HTTPResponseHead(version: .http1_1, status: status)
        let body = ByteBuffer(string: text)
        head.headers.add(name: "Content-Type", value: contentType)
        head.headers.add(name: "Content-Length", value: String(body.readableBytes))
        if !keepAlive { head.headers.add(name: "Connection", value: "close") }
        try await outbound.write(.head(head))
        try await outbound.write(.body(.byteBuffer(body)))
        try await outbound.write(.end(nil))
    }

    /// One request, then the end of the stream.
    private static func once<Element: Sendable>(_ element: Element) -> AsyncThrowingStream<Element, any Error> {
        AsyncThrowingStream { continuation in
            continuation.yield(element)
            continuation.finish()
        }
    }

    /// One request, then nothing more until the call is cancelled (the HTTP client
    /// goes away): a watch over the gateway lives as long as its connection.
    private static func onceThenWait<Element: Sendable>(_ element: Element) -> AsyncThrowingStream<Element, any Error> {
        AsyncThrowingStream { continuation in
            continuation.yield(element)
        }
    }
}
