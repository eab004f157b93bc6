import CHiredis
import DequeModule
import Glibc
import NIOCore
import NIOPosix
import Synchronization

/// What a ``RedisConnection`` runs on: a thread of its own (``ConnectionEngine``) or
/// a SwiftNIO event loop (``EventLoopEngine``).
protocol RedisEngine: AnyObject, Sendable {
    var configuration: RedisConfiguration { get }
    /// Queues one command; its reply (or error) resumes `continuation`. Returns an id
    /// for ``withdraw(_:)`` (0: the request cannot be withdrawn).
    @discardableResult
    func enqueue(_ arguments: [[UInt8]], deadline: UInt64, continuation: ConnectionEngine.Completion) -> UInt64
    /// Queues several commands, in order, as one write where the engine can (their
    /// replies resume the continuations in the same order).
    func enqueueAll(_ commands: [(arguments: [[UInt8]], continuation: ConnectionEngine.Completion)], deadline: UInt64)
    func send(_ arguments: [[UInt8]], timeout: Duration?) async throws -> RedisReply
    func shutdown()
    func waitForTermination() async
    /// Whether SO_KEEPALIVE is on for the current socket; `nil` when disconnected.
    func keepAliveEnabled() -> Bool?
}

extension ConnectionEngine: RedisEngine {}

/// One Redis connection whose socket is served by a SwiftNIO event loop.
///
/// A server whose requests run on an event loop (coordproxy with one loop) gets each
/// reply where its caller waits: the loop reads the socket in the same `epoll_wait`
/// that serves its clients, and resumes the caller without a wake-up of another
/// thread. ``ConnectionEngine``'s thread costs, per round trip, its own wake-up for
/// the reply and the wake-up of the loop it hands the reply to; on two cores shared
/// with Redis and the clients, each is a context switch.
///
/// The connect is the engine's: hiredis's blocking handshake (connect timeout, AUTH,
/// SELECT, CLIENT SETNAME, PING, the setup hook) runs on NIO's thread pool, and the
/// loop then adopts the socket. Replies are parsed by hiredis's reader, as on the
/// engine's thread. Requests are written as they come; a request that finds no
/// connection waits for one connect, started at once (a failed connect fails the
/// requests that waited for it, with its error). A lost connection fails the requests
/// it carried as ``ConnectionEngine`` does: ``RedisError/Code/outcomeUnknown`` when
/// their bytes were written, ``RedisError/Code/connectionLost`` when they were not,
/// ``RedisError/Code/timeout`` past their deadline. Without Sentinel and with
/// pipelining only (``RedisConnection`` uses the thread otherwise). Cancelling a
/// caller of ``send(_:timeout:)`` withdraws its request while it waits for a connect
/// (it throws `CancellationError` and never runs, as on the thread); a request
/// written is awaited. A connection that dies while the requests that waited are
/// being written leaves the rest waiting for the next connect (never sent, they run
/// once).
final class EventLoopEngine: RedisEngine, @unchecked Sendable {
    let configuration: RedisConfiguration
    let eventLoop: any EventLoop
    private let setup: (@Sendable (BlockingHandshake) throws -> Void)?

    private struct Waiting {
        /// For ``withdraw(_:)``; 0 for a request that cannot be withdrawn.
        let id: UInt64
        let arguments: [[UInt8]]
        let continuation: ConnectionEngine.Completion
        let deadline: UInt64
    }

    private struct InFlight {
        let continuation: ConnectionEngine.Completion
        let deadline: UInt64
        /// When the request was written (MonotonicClock), for the round-trip metric.
        let queued: UInt64
        let sequence: UInt64
    }

    private enum State {
        case idle
        case connecting
        case connected(any Channel, UnsafeMutablePointer<redisReader>)
        case closed
    }

    // Everything below is touched on `eventLoop` only.
    private var state = State.idle
    private var waiting = Deque<Waiting>()
    private var inFlight = Deque<InFlight>()
    /// Tells the callbacks of a connection that is gone from those of the current one.
    private var generation: UInt64 = 0
    private var nextSequence: UInt64 = 1
    /// The last request whose bytes the socket took (writes complete in order).
    private var lastWritten: UInt64 = 0
    private var closing = false
    private var finished = false
    private var terminationWaiters: [CheckedContinuation<Void, Never>] = []
    private var timer: Scheduled<Void>?
    private var timerDeadline: UInt64 = .max
    /// The socket of the current connection, for ``keepAliveEnabled()``.
    private let socket = Mutex<Int32>(-1)
    /// Ids of the requests of ``send(_:timeout:)``, which cancelling withdraws.
    private let nextID = Atomic<UInt64>(1)

    init(configuration: RedisConfiguration, eventLoop: any EventLoop, setup: (@Sendable (BlockingHandshake) throws -> Void)?) {
        precondition(configuration.sentinel == nil && configuration.pipelining, "an event loop engine serves a pipelined connection to one server")
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.setup = setup
    }

    /// Connects and waits for the first connect; throws its error.
    func start() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            eventLoop.execute {
                self.connect { error in
                    if let error { continuation.resume(throwing: error) } else { continuation.resume() }
                }
            }
        }
    }

    // MARK: - Caller side

    @discardableResult
    func enqueue(_ arguments: [[UInt8]], deadline: UInt64, continuation: ConnectionEngine.Completion) -> UInt64 {
        enqueue(arguments, id: 0, deadline: deadline, continuation: continuation)
        return 0
    }

    /// Written with one flush when the connection is up; otherwise they wait for the
    /// connect together, in order.
    func enqueueAll(_ commands: [(arguments: [[UInt8]], continuation: ConnectionEngine.Completion)], deadline: UInt64) {
        if eventLoop.inEventLoop {
            submitAll(commands, deadline: deadline)
        } else {
            eventLoop.execute { self.submitAll(commands, deadline: deadline) }
        }
    }

    private func submitAll(_ commands: [(arguments: [[UInt8]], continuation: ConnectionEngine.Completion)], deadline: UInt64) {
        guard case .connected(let channel, _) = state, !closing else {
            for command in commands { submit(command.arguments, id: 0, deadline: deadline, continuation: command.continuation) }
            return
        }
        for (index, command) in commands.enumerated() {
            write(command.arguments, id: 0, deadline: deadline, continuation: command.continuation, on: channel, flush: index == commands.count - 1)
        }
    }

    private func enqueue(_ arguments: [[UInt8]], id: UInt64, deadline: UInt64, continuation: ConnectionEngine.Completion) {
        if eventLoop.inEventLoop {
            submit(arguments, id: id, deadline: deadline, continuation: continuation)
        } else {
            eventLoop.execute { self.submit(arguments, id: id, deadline: deadline, continuation: continuation) }
        }
    }

    /// Sends one command and waits for its reply. Cancelling the calling task withdraws
    /// the request while it waits for a connect (it then throws `CancellationError` and
    /// never runs); once written, the reply is awaited.
    func send(_ arguments: [[UInt8]], timeout: Duration?) async throws -> RedisReply {
        try Task.checkCancellation()
        let deadline = MonotonicClock.deadline(after: timeout ?? configuration.commandTimeout)
        let id = nextID.add(1, ordering: .relaxed).oldValue
        // The withdrawal runs on the loop after the request's submission (queued behind
        // it, or after it on the loop), so it finds the request if it still waits.
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                enqueue(arguments, id: id, deadline: deadline, continuation: .continuation(continuation))
            }
        } onCancel: {
            withdraw(id)
        }
    }

    /// Fails the request `id` with `CancellationError` if it still waits for a connect;
    /// does nothing once it is written (or done).
    func withdraw(_ id: UInt64) {
        guard id != 0 else { return }
        if eventLoop.inEventLoop {
            withdrawOnLoop(id)
        } else {
            eventLoop.execute { self.withdrawOnLoop(id) }
        }
    }

    private func withdrawOnLoop(_ id: UInt64) {
        guard let index = waiting.firstIndex(where: { $0.id == id }) else { return }
        let request = waiting.remove(at: index)
        request.continuation.resume(throwing: CancellationError())
        finishIfDone()
    }

    func shutdown() {
        // At once on the loop: a request sent there after `close` is refused.
        if eventLoop.inEventLoop {
            beginClosing()
        } else {
            eventLoop.execute { self.beginClosing() }
        }
    }

    private func beginClosing() {
        guard !closing else { return }
        closing = true
        finishIfDone()
    }

    func waitForTermination() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            eventLoop.execute {
                if self.finished { continuation.resume() } else { self.terminationWaiters.append(continuation) }
            }
        }
    }

    func keepAliveEnabled() -> Bool? {
        socket.withLock { fd -> Bool? in
            guard fd >= 0 else { return nil }
            let value = chiredis_keepalive_enabled(fd)
            return value < 0 ? nil : value == 1
        }
    }

    // MARK: - Event loop

    private func submit(_ arguments: [[UInt8]], id: UInt64, deadline: UInt64, continuation: ConnectionEngine.Completion) {
        switch state {
        case .connected(let channel, _) where !closing:
            write(arguments, id: id, deadline: deadline, continuation: continuation, on: channel)
        case .idle where !closing:
            waiting.append(Waiting(id: id, arguments: arguments, continuation: continuation, deadline: deadline))
            connect(then: nil)
        case .connecting where !closing:
            waiting.append(Waiting(id: id, arguments: arguments, continuation: continuation, deadline: deadline))
        default:
            continuation.resume(throwing: RedisError(.connectionClosed, "the connection to \(configuration.redactedURL) has been closed"))
        }
    }

    private func write(_ arguments: [[UInt8]], id: UInt64, deadline: UInt64, continuation: ConnectionEngine.Completion, on channel: any Channel, flush: Bool = true) {
        // A write fails synchronously when the socket does (EPIPE): NIO closes the
        // channel inside it, and the connection is lost before the next write. Only
        // the current connection takes requests.
        guard case .connected(let current, _) = state, current === channel else {
            submit(arguments, id: id, deadline: deadline, continuation: continuation)
            return
        }
        var buffer = channel.allocator.buffer(capacity: RESPEncoder.capacity(for: arguments))
        RESPEncoder.encode(arguments, into: &buffer)
        let sequence = nextSequence
        nextSequence += 1
        inFlight.append(InFlight(continuation: continuation, deadline: deadline, queued: MonotonicClock.now(), sequence: sequence))
        armTimer(for: deadline)
        let written = eventLoop.makePromise(of: Void.self)
        written.futureResult.whenSuccess {
            if sequence > self.lastWritten { self.lastWritten = sequence }
        }
        if flush {
            channel.writeAndFlush(buffer, promise: written)
        } else {
            channel.write(buffer, promise: written)
        }
    }

    /// Opens a connection: the handshake on NIO's thread pool, then the loop adopts the
    /// socket. `done` (the first connect) gets the outcome; requests that waited are
    /// written, or failed with the connect's error.
    private func connect(then done: (@Sendable (RedisError?) -> Void)?) {
        state = .connecting
        generation += 1
        let attempt = generation
        let configuration = self.configuration
        let setup = self.setup
        let loop = eventLoop
        NIOThreadPool.singleton.runIfActive(eventLoop: loop) { () throws -> Int32 in
            blockSIGPIPEOnThisThread()
            let handshake = try BlockingHandshake.open(configuration)
            defer { redisFree(handshake.context) }
            try handshake.authenticate()
            try setup?(handshake)
            let fd = dup(handshake.context.pointee.fd)
            guard fd >= 0 else {
                throw RedisError(.connectionRefused, "could not take over the socket to \(configuration.redactedURL)", cause: String(cString: strerror(chiredis_errno())))
            }
            return fd
        }.flatMap { (fd: Int32) -> EventLoopFuture<(any Channel, Int32)> in
            var bootstrap = ClientBootstrap(group: loop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ReplyHandler(engine: self, generation: attempt))
                    }
                }
            if case .tcp = configuration.endpoint {
                bootstrap = bootstrap.channelOption(.socketOption(.tcp_nodelay), value: 1)
            }
            return bootstrap.withConnectedSocket(fd).map { channel in (channel, fd) }
        }.whenComplete { result in
            self.connected(result, attempt: attempt, done: done)
        }
    }

    private func connected(_ result: Result<(any Channel, Int32), any Error>, attempt: UInt64, done: (@Sendable (RedisError?) -> Void)?) {
        guard attempt == generation, case .connecting = state else {
            if case .success(let (channel, _)) = result { channel.close(promise: nil) }
            return
        }
        switch result {
        case .failure(let error):
            connectFailed((error as? RedisError) ?? RedisError(.connectionRefused, "could not connect to \(configuration.redactedURL): \(error)"), done: done)
        case .success(let (channel, fd)):
            guard let reader = redisReaderCreate() else {
                channel.close(promise: nil)
                connectFailed(RedisError(.connectionRefused, "could not allocate a reply reader for \(configuration.redactedURL)"), done: done)
                return
            }
            state = .connected(channel, reader)
            socket.withLock { $0 = fd }
            done?(nil)
            let ready = waiting
            waiting.removeAll()
            // In order; should the connection die meanwhile, the rest wait for the next
            // (never sent, they run once).
            for request in ready {
                write(request.arguments, id: request.id, deadline: request.deadline, continuation: request.continuation, on: channel)
            }
            finishIfDone()
        }
    }

    /// A connect failed: the requests that waited for it fail with its error.
    private func connectFailed(_ failure: RedisError, done: (@Sendable (RedisError?) -> Void)?) {
        state = .idle
        let failed = waiting
        waiting.removeAll()
        for request in failed { request.continuation.resume(throwing: failure) }
        done?(failure)
        finishIfDone()
    }

    fileprivate func received(_ buffer: ByteBuffer, generation attempt: UInt64) {
        guard attempt == generation, case .connected(_, let reader) = state else { return }
        let fed = buffer.withUnsafeReadableBytes { raw -> Int32 in
            guard let base = raw.baseAddress, raw.count > 0 else { return REDIS_OK }
            return redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), raw.count)
        }
        if fed != REDIS_OK {
            lost(reason: "the reply could not be buffered", code: .protocolError)
            return
        }
        var now: UInt64 = 0
        while true {
            var raw: UnsafeMutableRawPointer?
            if redisReaderGetReply(reader, &raw) != REDIS_OK {
                let detail = withUnsafeBytes(of: reader.pointee.errstr) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                lost(reason: "the server sent a reply this client cannot parse (hiredis 0.14 nests at most 7 levels): \(detail)", code: .protocolError)
                return
            }
            guard let raw else { break }
            let reply = ReplyConversion.convert(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            guard let request = inFlight.popFirst() else {
                lost(reason: "the server sent a reply nobody asked for: \(reply)", code: .protocolError)
                return
            }
            if now == 0 { now = MonotonicClock.now() }
            RedisMetrics.roundTrip.recordNanoseconds(Int64(truncatingIfNeeded: now &- request.queued))
            if case .error(let message) = reply {
                request.continuation.resume(throwing: RedisError.fromServerReply(message))
            } else {
                request.continuation.resume(returning: reply)
            }
            // A callback may have sent a request that lost the connection meanwhile.
            guard attempt == generation else { return }
        }
        finishIfDone()
    }

    fileprivate func channelLost(reason: String, generation attempt: UInt64) {
        guard attempt == generation else { return }
        lost(reason: reason)
    }

    /// Fails what the connection carried; the next request connects again.
    private func lost(reason: String, code: RedisError.Code = .outcomeUnknown, timedOutAt: UInt64? = nil) {
        guard case .connected(let channel, let reader) = state else { return }
        generation += 1
        state = .idle
        socket.withLock { $0 = -1 }
        redisReaderFree(reader)
        channel.close(promise: nil)
        RedisMetrics.connectionsLost.increment()
        let endpoint = configuration.redactedURL
        let carried = inFlight
        inFlight.removeAll()
        for request in carried {
            let timedOut = timedOutAt.map { request.deadline <= $0 } ?? false
            request.continuation.resume(throwing: ConnectionEngine.lostRequestError(
                endpoint: endpoint, written: request.sequence <= lastWritten, timedOut: timedOut, code: code, reason: reason))
        }
        if !waiting.isEmpty, case .idle = state, !closing {
            connect(then: nil)
        }
        finishIfDone()
    }

    /// Keeps one timer, at the earliest deadline of a request in flight (a request's
    /// deadline is seldom earlier than those before it).
    private func armTimer(for deadline: UInt64) {
        guard deadline < timerDeadline else { return }
        timer?.cancel()
        timerDeadline = deadline
        let now = MonotonicClock.now()
        let delay = deadline > now ? deadline - now : 0
        timer = eventLoop.scheduleTask(in: .nanoseconds(Int64(min(delay, UInt64(Int64.max))))) {
            self.deadlinePassed()
        }
    }

    private func deadlinePassed() {
        timer = nil
        timerDeadline = .max
        let now = MonotonicClock.now()
        var earliest: UInt64 = .max
        for request in inFlight where request.deadline < earliest { earliest = request.deadline }
        if earliest <= now {
            lost(reason: "a reply took longer than the command timeout", timedOutAt: now)
        } else if earliest != .max {
            armTimer(for: earliest)
        }
    }

    /// After ``shutdown()``: once nothing is in flight or waiting, closes the socket and
    /// ends.
    private func finishIfDone() {
        guard closing, !finished, inFlight.isEmpty, waiting.isEmpty else { return }
        switch state {
        case .connecting:
            return
        case .connected(let channel, let reader):
            generation += 1
            socket.withLock { $0 = -1 }
            redisReaderFree(reader)
            channel.close(promise: nil)
        case .idle, .closed:
            break
        }
        state = .closed
        finished = true
        timer?.cancel()
        timer = nil
        let waiters = terminationWaiters
        terminationWaiters = []
        for waiter in waiters { waiter.resume() }
    }
}

/// Hands what the socket reads to its engine.
private final class ReplyHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let engine: EventLoopEngine
    private let generation: UInt64

    init(engine: EventLoopEngine, generation: UInt64) {
        self.engine = engine
        self.generation = generation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        engine.received(unwrapInboundIn(data), generation: generation)
    }

    func channelInactive(context: ChannelHandlerContext) {
        engine.channelLost(reason: "the server closed the connection", generation: generation)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        engine.channelLost(reason: "the socket failed: \(error)", generation: generation)
        context.close(promise: nil)
    }
}
