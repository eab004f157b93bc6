import EventLoopExecution
import GRPCCore
import GRPCNIOTransportCore
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import Synchronization

/// coordproxy's own HTTP/2 server transport for grpc-swift: one plaintext listener whose
/// unary KV, Lease, Lock and Election calls are served on the connection's frames
/// (``GRPCUnaryCalls``) and whose other streams all begin with a ``GRPCFastPath``.
///
/// grpc-swift's transport sets up every HTTP/2 stream for its server before any
/// handler of ours sees the request: a stream handler, an async channel, a task on
/// Swift's global pool awaiting the method, and the stream's hand-over to the
/// connection's task. A profile of the load test's get workload put a quarter of
/// coordproxy's CPU there, for calls that the fast path then served by itself. Here
/// the hot unary calls (KV, Lease, Lock, Election) get no stream channel at all; a stream channel
/// holds only the fast path, which serves the Watch stream from the frames, and
/// every other call goes to grpc-swift's server through ``GRPCFastPath/Router`` as
/// the `RPCStream` of this transport, so that its router, interceptors and services
/// answer it as before.
///
/// The connection is configured as grpc-swift configures its own (the same HTTP/2
/// settings: 64 KiB windows, 16 KiB frames), behind a ``PingAnswerer`` and a
/// ``FlushCoalescer``. Graceful shutdown closes the listener, sends each connection a
/// GOAWAY (clients open no new streams on it and reconnect elsewhere), and closes
/// the connection once its streams have ended (the services end their long calls
/// with UNAVAILABLE), or after ``gracePeriod``.
final class EtcdHTTP2Transport: ListeningServerTransport {
    typealias Bytes = [UInt8]

    private let host: String
    private let port: Int
    private let methods: GRPCFastPath.Table
    private let streams: GRPCFastPath.StreamTable
    private let maxRequestSize: Int
    private let logger: Logger
    /// How long graceful shutdown waits for a connection's streams to end.
    static let gracePeriod: TimeAmount = .seconds(10)

    private struct State {
        var listener: (any Channel)?
        var address: Result<GRPCNIOTransportCore.SocketAddress, any Error>?
        /// The open connections, each with its count of open streams.
        var connections: [ObjectIdentifier: (channel: any Channel, streams: StreamCount)] = [:]
        var shuttingDown = false
    }

    private let state = Mutex(State())
    private let addressKnown = Latch()

    init(host: String, port: Int, methods: GRPCFastPath.Table, streams: GRPCFastPath.StreamTable, maxRequestSize: Int, logger: Logger) {
        self.host = host
        self.port = port
        self.methods = methods
        self.streams = streams
        self.maxRequestSize = maxRequestSize
        self.logger = logger
    }

    var listeningAddress: GRPCNIOTransportCore.SocketAddress {
        get async throws {
            await addressKnown.wait()
            guard let address = state.withLock({ $0.address }) else {
                throw RPCError(code: .unavailable, message: "the transport stopped before it listened")
            }
            return try address.get()
        }
    }

    func listen(streamHandler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void) async throws {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.configure(channel, streamHandler: streamHandler)
                }
            }
        let listener: any Channel
        do {
            listener = try await bootstrap.bind(host: host, port: port).get()
        } catch {
            state.withLock { $0.address = .failure(error) }
            addressKnown.open()
            throw error
        }
        let stopNow = state.withLock { state -> Bool in
            state.listener = listener
            if let local = listener.localAddress, let ip = local.ipAddress, let port = local.port {
                state.address = .success(local.protocol == .inet6 ? .ipv6(host: ip, port: port) : .ipv4(host: ip, port: port))
            } else {
                state.address = .failure(RPCError(code: .unavailable, message: "the listener has no address"))
            }
            return state.shuttingDown
        }
        addressKnown.open()
        if stopNow { listener.close(promise: nil) }
        await withTaskCancellationHandler {
            try? await listener.closeFuture.get()
            // Then every connection's end (graceful shutdown closes each once its
            // streams are done; cancellation closes them at once).
            while let open = state.withLock({ $0.connections.values.first?.channel }) {
                try? await open.closeFuture.get()
                state.withLock { _ = $0.connections.removeValue(forKey: ObjectIdentifier(open)) }
            }
        } onCancel: {
            let (listener, connections) = self.state.withLock { state in
                state.shuttingDown = true
                return (state.listener, Array(state.connections.values))
            }
            listener?.close(promise: nil)
            for connection in connections { connection.channel.close(promise: nil) }
        }
    }

    func beginGracefulShutdown() {
        let (listener, connections) = state.withLock { state in
            state.shuttingDown = true
            return (state.listener, Array(state.connections.values))
        }
        listener?.close(promise: nil)
        for connection in connections { Self.drain(connection.channel, streams: connection.streams) }
    }

    /// A connection's pipeline: the ping answerer and flush coalescer next to the
    /// socket, then HTTP/2, the unary calls served on the connection's frames, and the
    /// multiplexer of the other streams, with a fast path first in each.
    private func configure(_ channel: any Channel, streamHandler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void) throws {
        let streams = StreamCount(channel: channel)
        let admitted = state.withLock { state -> Bool in
            guard !state.shuttingDown else { return false }
            state.connections[ObjectIdentifier(channel)] = (channel, streams)
            return true
        }
        guard admitted else {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { _ in
            self.state.withLock { _ = $0.connections.removeValue(forKey: ObjectIdentifier(channel)) }
        }
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(FlushCoalescer())
        try sync.addHandler(PingAnswerer())
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .initialWindowSize, value: Self.windowSize),
            HTTP2Setting(parameter: .maxFrameSize, value: 1 << 14),
            HTTP2Setting(parameter: .maxHeaderListSize, value: HPACKDecoder.defaultMaxHeaderListSize),
        ]
        let router = GRPCFastPath.Router(handle: streamHandler, remotePeer: Self.peer(channel.remoteAddress),
                                         localPeer: Self.peer(channel.localAddress))
        let (methods, streamMethods, maxRequestSize, logger) = (self.methods, self.streams, self.maxRequestSize, self.logger)
        let executor = EventLoopTaskExecutor.for(channel.eventLoop)
        try sync.addHandler(NIOHTTP2Handler(mode: .server, connectionConfiguration: connection))
        try sync.addHandler(GRPCUnaryCalls(methods: methods, executor: executor, maxRequestSize: maxRequestSize,
                                           windowSize: Self.windowSize, streams: streams, logger: logger))
        // The multiplexer keeps the connection's window open (for every stream's DATA)
        // and each stream channel's.
        try sync.addHandler(HTTP2StreamMultiplexer(mode: .server, channel: channel, targetWindowSize: Self.windowSize,
                                                   inboundStreamInitializer: { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(
                    GRPCFastPath(streams: streamMethods, router: router, executor: executor,
                                 maxRequestSize: maxRequestSize, logger: logger))
            }
        }))
    }

    /// grpc-swift's windows (64 KiB - 1).
    private static let windowSize = (1 << 16) - 1

    /// A peer as grpc-swift describes it (`ipv4:127.0.0.1:50000`).
    private static func peer(_ address: NIOCore.SocketAddress?) -> String {
        switch address {
        case .v4(let v4)?: return "ipv4:\(v4.host):\(address?.port ?? 0)"
        case .v6(let v6)?: return "ipv6:[\(v6.host)]:\(address?.port ?? 0)"
        case .unixDomainSocket?: return "unix:\(address?.pathname ?? "")"
        case nil: return "unknown"
        }
    }

    /// Graceful shutdown of one connection: a GOAWAY now, the close once its streams
    /// have ended (or after the grace period).
    private static func drain(_ channel: any Channel, streams: StreamCount) {
        channel.eventLoop.execute {
            guard channel.isActive else { return }
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
            channel.writeAndFlush(goAway, promise: nil)
            streams.startDraining()
            channel.eventLoop.scheduleTask(in: gracePeriod) { channel.close(promise: nil) }
        }
    }
}

/// The open streams of one connection, so that a draining connection closes when its
/// last stream ends. Told by ``GRPCUnaryCalls`` of swift-nio-http2's stream events, on
/// the connection's event loop.
final class StreamCount: Sendable {
    private struct Counts {
        var open = 0
        var draining = false
    }

    private let channel: any Channel
    private let counts: NIOLoopBoundBox<Counts>

    init(channel: any Channel) {
        self.channel = channel
        self.counts = NIOLoopBoundBox(Counts(), eventLoop: channel.eventLoop)
    }

    /// On the connection's event loop: closes it once no stream is open, now or when
    /// the last one ends.
    func startDraining() {
        counts.value.draining = true
        if counts.value.open == 0 { closeAfterThisTurn() }
    }

    func streamOpened() {
        counts.value.open += 1
    }

    func streamClosed() {
        counts.value.open -= 1
        if counts.value.draining && counts.value.open == 0 { closeAfterThisTurn() }
    }

    /// swift-nio-http2 tells of a stream's end from inside the write of its last frame,
    /// before that write is flushed: closing there would drop the last response (a
    /// call applied in Redis that its client sees fail). Closed on the loop's next
    /// turn instead, behind the flush (the flush coalescer flushes before a close).
    private func closeAfterThisTurn() {
        let channel = self.channel
        channel.eventLoop.execute { channel.close(promise: nil) }
    }
}
