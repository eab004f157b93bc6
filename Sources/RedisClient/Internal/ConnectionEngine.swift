import CHiredis
import DequeModule
import Foundation
import Metrics
import Synchronization

/// One hiredis context driven by a dedicated thread.
///
/// Callers enqueue encoded commands under a lock and wake the thread through an
/// eventfd. The thread writes everything queued in one batch (automatic
/// pipelining), reads replies with hiredis's reader and hands each one to the
/// oldest waiting request. Nothing here runs on Swift's cooperative pool, and the
/// pool never blocks on the socket.
///
/// While the thread is parked in `poll` with nothing left to write, a caller writes
/// its command to the socket itself (non-blocking, under the lock) instead of waking
/// the thread to do it: the thread wakes once per request, for the reply, not twice.
///
/// A lost connection fails the requests it carried: with ``RedisError/Code/outcomeUnknown``
/// when their bytes reached the socket, ``RedisError/Code/connectionLost`` when they
/// did not. The thread then reconnects in the background with backoff, and at once
/// when a new request arrives.
final class ConnectionEngine: @unchecked Sendable {
    /// How a request's reply is delivered.
    enum Completion: Sendable {
        case continuation(UnsafeContinuation<RedisReply, any Error>)
        case callback(@Sendable (Result<RedisReply, any Error>) -> Void)

        func resume(returning reply: RedisReply) {
            switch self {
            case .continuation(let continuation): continuation.resume(returning: reply)
            case .callback(let callback): callback(.success(reply))
            }
        }

        func resume(throwing error: any Error) {
            switch self {
            case .continuation(let continuation): continuation.resume(throwing: error)
            case .callback(let callback): callback(.failure(error))
            }
        }
    }

    /// Extension points for pub/sub.
    struct Hooks: Sendable {
        /// Runs on the connection thread after AUTH and SELECT, in blocking mode; throwing fails the connect.
        var setup: (@Sendable (BlockingHandshake) throws -> Void)? = nil
        /// Sees every reply first; a reply for which it returns `true` is not matched to a request.
        var push: (@Sendable (RedisReply) -> Bool)? = nil
        /// Called on the connection thread after each successful reconnect (not after the first connect).
        var reconnected: (@Sendable () -> Void)? = nil
    }

    private struct Pending {
        let id: UInt64
        let continuation: Completion
        let deadline: UInt64
        /// Bytes of the command still in `pendingBytes`.
        let length: Int
        /// Bytes of the command the caller wrote to the socket itself (see ``Shared/parked``):
        /// they precede `length` in the stream, and such a request cannot be withdrawn.
        var written: Int = 0
    }

    private struct InFlight {
        let continuation: Completion
        let deadline: UInt64
        /// When the request was queued for writing (MonotonicClock), for the round-trip metric.
        let queued: UInt64
        /// Offset just past this request's last byte in the output stream of the current connection.
        let end: UInt64
    }

    private struct Shared {
        var pendingBytes: [UInt8] = []
        var pending = Deque<Pending>()
        var sleeping = false
        /// The thread is blocked in `poll` with its output written out: a caller may write
        /// to `socket` itself (see ``ConnectionEngine/enqueue(_:deadline:continuation:)``).
        var parked = false
        /// When the parked thread's `poll` times out by itself (MonotonicClock): a request
        /// due earlier wakes it.
        var parkedUntil: UInt64 = 0
        var closing = false
        var finished = false
        var terminationWaiters: [CheckedContinuation<Void, Never>] = []
        /// The socket of the current connection (-1 when disconnected), for diagnostics.
        var socket: Int32 = -1
        /// Request ids start at 1; 0 means "not queued".
        var nextID: UInt64 = 1
        /// Set when the connection must be dropped and opened again (Sentinel switched
        /// the master); the reason, for the errors of the requests it carried.
        var reconnectRequested: String?
        /// The server of the current connection (the master, with Sentinel).
        var connectedEndpoint: RedisConfiguration.Endpoint?
    }

    let configuration: RedisConfiguration
    private let hooks: Hooks
    private let shared = Mutex(Shared())
    private let wakeFD: Int32

    // State below is touched only by the connection thread.
    private var context: UnsafeMutablePointer<redisContext>?
    private var inFlight = Deque<InFlight>()
    private var output: [UInt8] = []
    private var outputOffset = 0
    private var bytesAppended: UInt64 = 0
    private var bytesWritten: UInt64 = 0
    private var earliestDeadline: UInt64 = .max
    private var everConnected = false
    private var backoff: ReconnectBackoff
    private var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)
    /// Swapped with the shared pending buffer on each batch, so that taking a batch allocates nothing.
    private var spareBytes: [UInt8] = []
    private var spareRequests = Deque<Pending>()
    /// The Sentinel monitor observation of this connection, if it uses Sentinel.
    private var sentinelObservation: UInt64?

    init(configuration: RedisConfiguration, hooks: Hooks = Hooks()) {
        self.configuration = configuration
        self.hooks = hooks
        self.wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        self.backoff = ReconnectBackoff(
            initialDelay: MonotonicClock.nanoseconds(configuration.reconnectInitialDelay),
            maxDelay: MonotonicClock.nanoseconds(configuration.reconnectMaxDelay))
    }

    deinit {
        if let context { redisFree(context) }
        close(wakeFD)
    }

    // MARK: - Caller side

    /// A name for the connection's thread that the kernel keeps (at most 15 bytes: a
    /// longer one is refused, and the thread shows its creator's name in `top -H` and
    /// /proc): `kind`, then the port of a TCP endpoint ("redis:6379", "redis-sub:6379").
    static func threadName(_ kind: String, _ endpoint: RedisConfiguration.Endpoint) -> String {
        let name: String
        switch endpoint {
        case .tcp(_, let port): name = "\(kind):\(port)"
        case .unixSocket: name = "\(kind):unix"
        }
        return String(decoding: name.utf8.prefix(15), as: UTF8.self)
    }

    /// Starts the thread and waits for the first connect; throws its error.
    func start(name: String) async throws {
        try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
            let thread = Thread { [self] in
                // Foundation's Thread.name does not reach the kernel on Linux.
                _ = chiredis_set_thread_name(name)
                blockSIGPIPEOnThisThread()
                guard wakeFD >= 0 else {
                    shared.withLock { $0.closing = true }
                    finish()
                    continuation.resume(throwing: RedisError(.connectionRefused, "could not create an eventfd for the connection: \(String(cString: strerror(chiredis_errno())))"))
                    return
                }
                do {
                    try connect()
                    everConnected = true
                    followSentinel()
                    continuation.resume()
                } catch {
                    shared.withLock { state in
                        state.closing = true
                    }
                    finish()
                    continuation.resume(throwing: error)
                    return
                }
                runLoop()
            }
            thread.name = name
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Queues one command; its reply (or error) resumes `continuation`. Returns the
    /// request's id, which ``withdraw(_:)`` accepts until the request is written.
    @discardableResult
    func enqueue(_ arguments: [[UInt8]], deadline: UInt64, continuation: Completion) -> UInt64 {
        let (outcome, id) = queue(count: 1, deadline: deadline) { _, bytes in
            RESPEncoder.encode(arguments, into: &bytes)
            return continuation
        }
        if outcome < 0 {
            continuation.resume(throwing: RedisError(.connectionClosed, "the connection to \(configuration.redactedURL) has been closed"))
        } else if outcome > 0 {
            wake()
        }
        return id
    }

    /// Queues several commands, in order, written together: by the caller in one
    /// `send` when the thread is parked (as ``enqueue(_:deadline:continuation:)`` writes
    /// one), else by the thread with whatever else is queued.
    func enqueueAll(_ commands: [(arguments: [[UInt8]], continuation: Completion)], deadline: UInt64) {
        guard !commands.isEmpty else { return }
        let (outcome, _) = queue(count: commands.count, deadline: deadline) { index, bytes in
            RESPEncoder.encode(commands[index].arguments, into: &bytes)
            return commands[index].continuation
        }
        if outcome < 0 {
            for command in commands {
                command.continuation.resume(throwing: RedisError(.connectionClosed, "the connection to \(configuration.redactedURL) has been closed"))
            }
        } else if outcome > 0 {
            wake()
        }
    }

    /// Queues `count` requests, the `index`th encoded by `encode` (which returns its
    /// continuation). Returns -1 when the connection is closing (nothing queued), 1
    /// when the thread must be woken, else 0; and the first request's id.
    private func queue(count: Int, deadline: UInt64, encode: (Int, inout [UInt8]) -> Completion) -> (outcome: Int, firstID: UInt64) {
        shared.withLock { state -> (outcome: Int, firstID: UInt64) in
            if state.closing { return (-1, 0) }
            let firstID = state.nextID
            let before = state.pendingBytes.count
            let first = state.pending.count
            for index in 0..<count {
                let start = state.pendingBytes.count
                let continuation = encode(index, &state.pendingBytes)
                state.pending.append(Pending(id: state.nextID, continuation: continuation, deadline: deadline, length: state.pendingBytes.count - start))
                state.nextID &+= 1
            }
            if state.parked && before == 0 && state.socket >= 0 {
                // The thread waits in poll for the socket too: written here, the reply
                // wakes it, and no eventfd wake-up is needed for the write.
                let written = state.pendingBytes.withUnsafeBytes { raw in
                    Glibc.send(state.socket, raw.baseAddress!, raw.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                }
                if written > 0 {
                    // The requests' bytes in order: those the socket took are written.
                    var left = written
                    var index = first
                    while left > 0 && index < state.pending.count {
                        let request = state.pending[index]
                        let taken = min(left, request.length)
                        state.pending[index] = Pending(id: request.id, continuation: request.continuation, deadline: deadline,
                                                       length: request.length - taken, written: taken)
                        left -= taken
                        index += 1
                    }
                    if written == state.pendingBytes.count {
                        state.pendingBytes.removeAll(keepingCapacity: true)
                    } else {
                        state.pendingBytes.removeFirst(written)
                    }
                }
                // The rest of a partial write, or a failed one (the thread finds out why),
                // and a deadline before the thread's own wake-up need the thread.
                if state.pending[state.pending.count - 1].length == 0 && deadline &+ Self.deadlineSlackNanoseconds >= state.parkedUntil { return (0, firstID) }
                state.parked = false
                state.sleeping = false
                return (1, firstID)
            }
            if state.sleeping {
                state.sleeping = false
                state.parked = false
                return (1, firstID)
            }
            return (0, firstID)
        }
    }

    /// Removes a request that has not been handed to the socket yet and fails it with
    /// `CancellationError`. Does nothing once the request is on its way.
    func withdraw(_ id: UInt64) {
        guard id != 0 else { return }
        let withdrawn = shared.withLock { state -> Pending? in
            var offset = 0
            for index in state.pending.indices {
                let request = state.pending[index]
                if request.id == id {
                    // Already (partly) on the socket: its reply is awaited.
                    if request.written > 0 { return nil }
                    state.pendingBytes.removeSubrange(offset..<(offset + request.length))
                    state.pending.remove(at: index)
                    return request
                }
                offset += request.length
            }
            return nil
        }
        withdrawn?.continuation.resume(throwing: CancellationError())
    }

    /// Sends one command and waits for its reply.
    ///
    /// Cancelling the calling task withdraws the request if it is still queued (it then
    /// throws `CancellationError` and never runs); once written, the reply is awaited.
    func send(_ arguments: [[UInt8]], timeout: Duration?) async throws -> RedisReply {
        let deadline = MonotonicClock.deadline(after: timeout ?? configuration.commandTimeout)
        let id = Mutex<UInt64?>(nil)
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                if Task.isCancelled {
                    continuation.resume(throwing: CancellationError())
                    return
                }
                let assigned = enqueue(arguments, deadline: deadline, continuation: .continuation(continuation))
                let cancelledMeanwhile = id.withLock { slot -> Bool in
                    defer { slot = assigned }
                    return slot == .max
                }
                if cancelledMeanwhile { withdraw(assigned) }
            }
        } onCancel: {
            // Either the id is known (withdraw it) or enqueue has not happened yet
            // (leave a mark so that enqueue withdraws it right after).
            let known = id.withLock { slot -> UInt64? in
                if let value = slot { return value }
                slot = .max
                return nil
            }
            if let known { withdraw(known) }
        }
    }

    /// Stops accepting requests; the thread finishes what is queued and exits.
    func shutdown() {
        let needsWake = shared.withLock { state -> Bool in
            if state.closing { return false }
            state.closing = true
            return true
        }
        if needsWake { wake() }
    }

    /// Waits until the connection thread has exited.
    func waitForTermination() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = shared.withLock { state -> Bool in
                if state.finished { return true }
                state.terminationWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Whether SO_KEEPALIVE is on for the current socket; `nil` when disconnected.
    func keepAliveEnabled() -> Bool? {
        shared.withLock { state -> Bool? in
            guard state.socket >= 0 else { return nil }
            let value = chiredis_keepalive_enabled(state.socket)
            return value < 0 ? nil : value == 1
        }
    }

    /// With Sentinel: a connection to a server that is no longer the master is dropped
    /// when a sentinel announces the switch, and opened again at the new master.
    private func followSentinel() {
        guard let sentinel = configuration.sentinel else { return }
        sentinelObservation = SentinelMonitor.observe(sentinel, connectTimeout: configuration.connectTimeout) { [weak self] master in
            self?.masterSwitched(to: master)
        }
    }

    private func masterSwitched(to master: RedisConfiguration.Endpoint) {
        let needsWake = shared.withLock { state -> Bool in
            guard let connected = state.connectedEndpoint, connected != master, !state.closing else { return false }
            state.reconnectRequested = "Sentinel switched the master of '\(configuration.sentinel?.masterName ?? "")' from \(connected) to \(master)"
            return true
        }
        if needsWake { wake() }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(wakeFD, $0.baseAddress, 8) }
    }

    // MARK: - Connection thread

    private func runLoop() {
        while true {
            if context == nil {
                if !runDisconnected() { break }
                continue
            }
            takePending()
            if !flushOutput() { continue }
            if !pollAndRead() { continue }
            checkDeadlines()
            // One lock for both: whether to exit, and a reconnect Sentinel asked for.
            let (exit, reconnect) = shared.withLock { state -> (Bool, String?) in
                defer { state.reconnectRequested = nil }
                return (state.closing && state.pending.isEmpty, state.reconnectRequested)
            }
            if context != nil, let reconnect {
                connectionLost(reason: reconnect)
                continue
            }
            if exit && inFlight.isEmpty && outputOffset == output.count { break }
        }
        if let context {
            redisFree(context)
            self.context = nil
        }
        finish()
    }

    private func finish() {
        if let sentinelObservation, let sentinel = configuration.sentinel {
            SentinelMonitor.stopObserving(sentinelObservation, of: sentinel)
            self.sentinelObservation = nil
        }
        let (waiters, leftovers) = shared.withLock { state -> ([CheckedContinuation<Void, Never>], Deque<Pending>) in
            state.finished = true
            state.closing = true
            let waiters = state.terminationWaiters
            state.terminationWaiters = []
            let leftovers = state.pending
            state.pending = []
            state.pendingBytes = []
            return (waiters, leftovers)
        }
        let closed = RedisError(.connectionClosed, "the connection to \(configuration.redactedURL) has been closed")
        for request in leftovers { request.continuation.resume(throwing: closed) }
        for request in inFlight { request.continuation.resume(throwing: closed) }
        inFlight.removeAll()
        for waiter in waiters { waiter.resume() }
    }

    /// Handles one step while there is no connection. Returns `false` when the thread should exit.
    private func runDisconnected() -> Bool {
        let (hasRequests, closing) = shared.withLock { state in
            (!state.pending.isEmpty, state.closing)
        }
        if closing && !hasRequests { return false }
        let now = MonotonicClock.now()
        if hasRequests || backoff.isDue(now: now) {
            do {
                try connect()
                if everConnected { hooks.reconnected?() }
                everConnected = true
                _ = dispatchReplies()
            } catch {
                let failure = (error as? RedisError) ?? RedisError(.connectionRefused, "\(error)")
                backoff.attemptFailed(now: MonotonicClock.now())
                if hasRequests { failPending(with: failure) }
                if closing { return false }
            }
            return true
        }
        // Sleep until the next background attempt or until a request arrives.
        let shouldSleep = shared.withLock { state -> Bool in
            if !state.pending.isEmpty || state.closing { return false }
            state.sleeping = true
            return true
        }
        if shouldSleep {
            let waitNanos = backoff.nextAttempt > now ? backoff.nextAttempt - now : 0
            var descriptor = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, Int32(min(waitNanos / 1_000_000 + 1, 60_000)))
            drainWake()
        }
        return true
    }

    private func failPending(with error: RedisError) {
        let failed = shared.withLock { state -> Deque<Pending> in
            let failed = state.pending
            state.pending = []
            state.pendingBytes = []
            return failed
        }
        for request in failed { request.continuation.resume(throwing: error) }
    }

    /// Moves queued requests into the output buffer (all of them, or one at a time without pipelining).
    private func takePending() {
        let pipelining = configuration.pipelining
        if !pipelining && (!inFlight.isEmpty || outputOffset < output.count) { return }
        spareBytes.removeAll(keepingCapacity: spareBytes.capacity <= 1 << 20)
        spareRequests.removeAll(keepingCapacity: true)
        shared.withLock { state in
            state.sleeping = false
            state.parked = false
            if state.pending.isEmpty { return }
            if pipelining {
                swap(&state.pendingBytes, &spareBytes)
                swap(&state.pending, &spareRequests)
                return
            }
            let first = state.pending.removeFirst()
            spareBytes.append(contentsOf: state.pendingBytes[0..<first.length])
            state.pendingBytes.removeFirst(first.length)
            spareRequests.append(first)
        }
        if spareRequests.isEmpty { return }
        let now = MonotonicClock.now()
        if outputOffset == output.count {
            output.removeAll(keepingCapacity: true)
            outputOffset = 0
        }
        output.append(contentsOf: spareBytes)
        var end = bytesAppended
        for request in spareRequests {
            // Bytes a caller wrote come first in the stream (written while the output
            // was empty), and they count as written.
            bytesWritten += UInt64(request.written)
            end += UInt64(request.written + request.length)
            inFlight.append(InFlight(continuation: request.continuation, deadline: request.deadline, queued: now, end: end))
            if request.deadline < earliestDeadline { earliestDeadline = request.deadline }
        }
        bytesAppended = end
    }

    /// Writes as much of the output buffer as the socket takes. Returns `false` when the connection was lost.
    private func flushOutput() -> Bool {
        guard let context else { return false }
        while outputOffset < output.count {
            let written = output.withUnsafeBytes { raw in
                Glibc.send(context.pointee.fd, raw.baseAddress! + outputOffset, raw.count - outputOffset, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                outputOffset += written
                bytesWritten += UInt64(written)
            } else {
                let code = chiredis_errno()
                if code == EAGAIN || code == EWOULDBLOCK { return true }
                if code == EINTR { continue }
                connectionLost(reason: "writing to the socket failed: \(String(cString: strerror(code)))")
                return false
            }
        }
        return true
    }

    /// Waits for the socket, a wake-up or a deadline, then reads and dispatches replies.
    /// Returns `false` when the connection was lost.
    private func pollAndRead() -> Bool {
        guard let context else { return false }
        let canTakeMore = configuration.pipelining || (inFlight.isEmpty && outputOffset == output.count)
        // The thread sleeps in poll as soon as it has nothing to do. (It used to poll
        // without sleeping for 50 µs after each batch; on two cores shared with Redis and
        // the clients that spinning cost more than the wake-ups it saved: coordproxy's CPU
        // per put, txn and STM operation fell 9-19 % without it, coordbench resp's lock
        // pairs per second rose from about 4,300 to 6,100.)
        let now = MonotonicClock.now()
        var timeout: Int32 = 0
        if earliestDeadline == .max {
            // Idle: wake by itself no later than a new request's deadline would need.
            timeout = Int32(min(configuration.commandTimeout.map { MonotonicClock.nanoseconds($0) / 1_000_000 } ?? 60_000, 60_000))
        } else {
            timeout = earliestDeadline <= now ? 0 : Int32(min((earliestDeadline - now) / 1_000_000 + 1, 60_000))
        }
        let drained = outputOffset == output.count
        let parkedUntil = now &+ UInt64(timeout) * 1_000_000
        let block = shared.withLock { state -> Bool in
            if (!state.pending.isEmpty && canTakeMore) || (state.closing && state.pending.isEmpty && inFlight.isEmpty) {
                return false
            }
            state.sleeping = true
            state.parked = drained && configuration.pipelining
            state.parkedUntil = parkedUntil
            return true
        }
        if !block { timeout = 0 }
        var descriptors = [
            pollfd(fd: context.pointee.fd, events: Int16(POLLIN) | (outputOffset < output.count ? Int16(POLLOUT) : 0), revents: 0),
            pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
        ]
        let ready = poll(&descriptors, 2, timeout)
        if block {
            // Requests callers wrote while the thread was parked: in flight before their
            // replies are read.
            takePending()
        }
        if ready < 0 {
            let code = chiredis_errno()
            if code == EINTR { return true }
            connectionLost(reason: "poll failed: \(String(cString: strerror(code)))")
            return false
        }
        if descriptors[1].revents != 0 { drainWake() }
        if descriptors[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            return readReplies()
        }
        return true
    }

    /// A caller's request due this much after the parked thread wakes by itself does not
    /// wake it (deadlines are checked to the millisecond, from a coarse clock).
    static let deadlineSlackNanoseconds: UInt64 = 20_000_000

    private func drainWake() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { read(wakeFD, $0.baseAddress, 8) }
    }

    /// Reads what the socket has (a bounded amount per pass, so that writes and
    /// deadlines are not starved) and dispatches every complete reply. Replies that
    /// arrived before an EOF are delivered before the connection is declared lost.
    private func readReplies() -> Bool {
        guard let context else { return false }
        let fd = context.pointee.fd
        let reader = context.pointee.reader
        for _ in 0..<16 {
            let count = readBuffer.withUnsafeMutableBytes { raw in
                read(fd, raw.baseAddress, raw.count)
            }
            if count > 0 {
                let fed = readBuffer.withUnsafeBytes { raw in
                    redisReaderFeed(reader, raw.baseAddress!.assumingMemoryBound(to: CChar.self), count)
                }
                if fed != REDIS_OK {
                    connectionLost(reason: "the reply could not be buffered", code: .protocolError)
                    return false
                }
                if !dispatchReplies() { return false }
                if count < readBuffer.count { break }
            } else if count == 0 {
                connectionLost(reason: "the server closed the connection")
                return false
            } else {
                let code = chiredis_errno()
                if code == EAGAIN || code == EWOULDBLOCK { break }
                if code == EINTR { continue }
                connectionLost(reason: "reading from the socket failed: \(String(cString: strerror(code)))")
                return false
            }
        }
        return true
    }

    /// Hands every complete reply in hiredis's reader to its request (or to the push hook).
    private func dispatchReplies() -> Bool {
        guard let context else { return false }
        let reader = context.pointee.reader
        var dispatched = false
        /// A reply said the server is a read-only replica now (with Sentinel: reconnect).
        var sawReadOnly = false
        var now: UInt64 = 0
        while true {
            var raw: UnsafeMutableRawPointer?
            if redisReaderGetReply(reader, &raw) != REDIS_OK {
                let detail = withUnsafeBytes(of: reader!.pointee.errstr) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                connectionLost(reason: "the server sent a reply this client cannot parse (hiredis 0.14 nests at most 7 levels): \(detail)", code: .protocolError)
                return false
            }
            guard let raw else { break }
            dispatched = true
            let reply = ReplyConversion.convert(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            if let push = hooks.push, push(reply) { continue }
            guard let request = inFlight.popFirst() else {
                connectionLost(reason: "the server sent a reply nobody asked for: \(reply)", code: .protocolError)
                return false
            }
            if now == 0 { now = MonotonicClock.now() }
            RedisMetrics.roundTrip.recordNanoseconds(Int64(truncatingIfNeeded: now &- request.queued))
            if case .error(let message) = reply {
                if configuration.sentinel != nil && (message.hasPrefix("READONLY") || message.contains("write against a read only replica")) {
                    sawReadOnly = true
                }
                request.continuation.resume(throwing: RedisError.fromServerReply(message))
            } else {
                request.continuation.resume(returning: reply)
            }
        }
        guard dispatched else { return true }
        if sawReadOnly {
            // Demoted to a replica by a failover: the master is elsewhere now.
            connectionLost(reason: "\(shared.withLock { $0.connectedEndpoint.map { "\($0)" } ?? "the server" }) answered READONLY: it is a replica now, after a failover")
            return false
        }
        if inFlight.isEmpty {
            earliestDeadline = .max
            if outputOffset == output.count {
                output.removeAll(keepingCapacity: output.capacity <= 1 << 20)
                outputOffset = 0
                bytesAppended = 0
                bytesWritten = 0
            }
        }
        return true
    }

    private func checkDeadlines() {
        guard earliestDeadline != .max else { return }
        let now = MonotonicClock.now()
        guard now >= earliestDeadline else { return }
        var earliest: UInt64 = .max
        for request in inFlight where request.deadline < earliest { earliest = request.deadline }
        earliestDeadline = earliest
        if earliest <= now {
            connectionLost(reason: "a reply took longer than the command timeout", timedOutAt: now)
        }
    }

    /// Fails what the connection carried and schedules an immediate reconnect.
    private func connectionLost(reason: String, code: RedisError.Code = .outcomeUnknown, timedOutAt: UInt64? = nil) {
        if context != nil { RedisMetrics.connectionsLost.increment() }
        shared.withLock { state in
            state.socket = -1
            state.connectedEndpoint = nil
            state.reconnectRequested = nil
        }
        if let context { redisFree(context) }
        context = nil
        let endpoint = configuration.redactedURL
        for request in inFlight {
            let timedOut = timedOutAt.map { request.deadline <= $0 } ?? false
            request.continuation.resume(throwing: Self.lostRequestError(endpoint: endpoint, written: request.end <= bytesWritten, timedOut: timedOut, code: code, reason: reason))
        }
        inFlight.removeAll()
        output.removeAll()
        outputOffset = 0
        bytesAppended = 0
        bytesWritten = 0
        earliestDeadline = .max
        backoff.connectionLost(now: MonotonicClock.now())
    }

    /// The error of a request that a lost connection carried: not sent (retrying is
    /// safe), past its deadline, after a protocol error, or sent with its outcome unknown.
    static func lostRequestError(endpoint: String, written: Bool, timedOut: Bool, code: RedisError.Code, reason: String) -> RedisError {
        if !written {
            return RedisError(.connectionLost, "the connection to \(endpoint) was lost before the request was sent, so it did not run; retrying is safe", cause: reason)
        } else if timedOut {
            return RedisError(.timeout, "no reply from \(endpoint) within the command timeout; the request may or may not have run", cause: reason)
        } else if code == .protocolError {
            return RedisError(.protocolError, "protocol error on the connection to \(endpoint); the request may or may not have run", cause: reason)
        }
        return RedisError(.outcomeUnknown, "the connection to \(endpoint) was lost after the request was sent; it may or may not have run", cause: reason)
    }

    /// Opens a context, authenticates, selects the database, runs the setup hook and
    /// switches the socket to non-blocking mode.
    private func connect() throws {
        var target = configuration
        if let sentinel = configuration.sentinel {
            // Asked again at every connect: after a failover the master is elsewhere.
            target.endpoint = try SentinelResolver.master(of: sentinel, connectTimeout: configuration.connectTimeout)
            target.sentinel = nil
        }
        let handshake = try BlockingHandshake.open(target)
        do {
            try handshake.authenticate()
            if let sentinel = configuration.sentinel { try SentinelResolver.checkIsMaster(handshake, masterName: sentinel.masterName) }
            try hooks.setup?(handshake)
            guard chiredis_set_nonblocking(handshake.context) == 0 else {
                throw RedisError(.connectionRefused, "could not make the socket non-blocking", cause: String(cString: strerror(chiredis_errno())))
            }
        } catch {
            redisFree(handshake.context)
            throw error
        }
        context = handshake.context
        shared.withLock { state in
            state.socket = handshake.context.pointee.fd
            state.connectedEndpoint = target.endpoint
        }
        backoff.connected()
    }
}

/// Converts hiredis reply objects into ``RedisReply`` values.
enum ReplyConversion {
    static func convert(_ reply: UnsafePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STRING:
            return .bulkString(bytes(value.str, value.len))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(value.integer))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(value.elements)
            for index in 0..<value.elements {
                if let element = value.element[index] { elements.append(convert(element)) } else { elements.append(.null) }
            }
            return .array(elements)
        default:
            return .null
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ length: Int) -> [UInt8] {
        guard let pointer, length > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: length))
    }
}
