import Foundation
import RedisClient
import Synchronization

/// The thread that refreshes a client's background leases (``LeaseKeepAlive``).
///
/// One dedicated thread sleeps in `poll(2)` until the next refresh or deadline is due;
/// refreshes are sent on a connection of the keeper's own and their replies handled
/// on that connection's thread. Nothing waits for Swift's cooperative pool, so a
/// saturated pool (tasks blocking their threads, a burst of CPU-bound work) cannot
/// starve a refresh, and other requests of the client cannot queue ahead of one.
///
/// Per lease: one refresh in flight at a time; the next is sent an interval (TTL/3)
/// after the previous confirmed one was sent; a transient error is retried after a
/// short delay; the lease ends `unconfirmed` when a TTL passes after the last
/// confirmed refresh was sent without another one confirmed, and `notFound` when the
/// store says it is gone. With the client's durability, a refresh is confirmed only
/// once `WAIT` says the replicas have it (as every other write of the client), so a
/// lease that a failover could take back ends `unconfirmed` instead of looking alive.
/// A lease with a ``LeaseActivity`` is refreshed only when its
/// owner showed activity since the previous refresh was sent (or is busy); otherwise
/// the thread waits for the activity's wake-up or the deadline.
final class LeaseKeeper: @unchecked Sendable {
    private struct Entry {
        let handle: LeaseKeepAlive
        let ttl: Duration
        let interval: Duration
        /// Refreshes wait for it (see ``LeaseActivity``); nil: always refresh.
        let activity: LeaseActivity?
        var confirmed: ContinuousClock.Instant
        var nextSend: ContinuousClock.Instant
        /// When the refresh in flight was sent; nil when none is.
        var inFlight: ContinuousClock.Instant?
        var deadline: ContinuousClock.Instant { confirmed + ttl }
    }

    private struct State {
        var entries: [Int64: Entry] = [:]
        var closed = false
        var exited = false
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// How refresh replies reach the client's storeReset detection.
    struct Identity: Sendable {
        var ticket: @Sendable () -> StoreIncarnation.Ticket
        /// Checks a reply; with `record` false its revision is not counted as seen yet.
        var check: @Sendable (CoordinationClient.ScriptReply, StoreIncarnation.Ticket, _ record: Bool) -> Void
        /// Counts a revision checked with `record` false as seen (the replicas have it).
        var confirm: @Sendable (Int64, StoreIncarnation.Ticket) -> Void
    }

    private let connection: RedisConnection
    private let namespace: String
    private let keys: [[UInt8]]
    private let identity: Identity?
    /// The client's ``CoordinationClient/Durability``: a refresh counts as confirmed
    /// only once `WAIT` says that many replicas have it.
    private let durability: CoordinationClient.Durability?
    private let state = Mutex(State())
    /// A pipe: the thread polls its read end, ``wake()`` writes a byte to the other.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private static let keepAliveScript = CoordinationClient.kvScript

    private init(connection: RedisConnection, namespace: String, keys: [[UInt8]], identity: Identity?, durability: CoordinationClient.Durability?) {
        self.connection = connection
        self.namespace = namespace
        self.keys = keys
        self.identity = identity
        self.durability = durability
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            for fd in fds {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
        } else {
            fds = [-1, -1]
        }
        (wakeRead, wakeWrite) = (fds[0], fds[1])
    }

    deinit {
        if wakeRead >= 0 { Glibc.close(wakeRead) }
        if wakeWrite >= 0 { Glibc.close(wakeWrite) }
    }

    /// Opens the keeper's connection and starts its thread.
    static func start(configuration: RedisConfiguration, namespace: String, keys: [[UInt8]], identity: Identity? = nil,
                      durability: CoordinationClient.Durability? = nil) async throws -> LeaseKeeper {
        let connection = try await RedisConnection.connect(configuration)
        let keeper = LeaseKeeper(connection: connection, namespace: namespace, keys: keys, identity: identity, durability: durability)
        guard keeper.wakeRead >= 0 else {
            await connection.close()
            throw CoordinationError(.protocolError, "could not create a pipe for the lease keeper: \(String(cString: strerror(errno)))")
        }
        let thread = Thread { keeper.loop() }
        thread.name = "coordination lease keeper"
        thread.stackSize = 1 << 20
        thread.start()
        return keeper
    }

    /// Starts refreshing `lease`.
    func add(lease: Int64, ttl: Int64, aliveSince: ContinuousClock.Instant, activity: LeaseActivity?) throws -> LeaseKeepAlive {
        let handle = LeaseKeepAlive(lease: lease, ttl: ttl, aliveSince: aliveSince) { [weak self] lease in
            self?.remove(lease)
        }
        let interval = Duration.milliseconds(max(ttl * 1000 / 3, 100))
        let (closed, previous) = state.withLock { state -> (Bool, LeaseKeepAlive?) in
            if state.closed { return (true, nil) }
            // A second keep-alive of the same lease replaces the first, which ends stopped.
            let previous = state.entries[lease]?.handle
            state.entries[lease] = Entry(handle: handle, ttl: .seconds(ttl), interval: interval, activity: activity,
                                         confirmed: aliveSince, nextSend: aliveSince + interval, inFlight: nil)
            return (false, previous)
        }
        if closed {
            throw CoordinationError(.invalidArgument, "the client has been closed; open a new one to keep leases alive")
        }
        previous?.finish(.stopped)
        wake()
        return handle
    }

    /// Stops refreshing every lease, closes the connection and waits for the thread.
    func close() async {
        let handles = state.withLock { state -> [LeaseKeepAlive] in
            state.closed = true
            defer { state.entries = [:] }
            return state.entries.values.map(\.handle)
        }
        for handle in handles { handle.finish(.clientClosed) }
        wake()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let exited = state.withLock { state -> Bool in
                if state.exited { return true }
                state.exitWaiters.append(continuation)
                return false
            }
            if exited { continuation.resume() }
        }
        await connection.close()
    }

    private func remove(_ lease: Int64) {
        state.withLock { state in _ = state.entries.removeValue(forKey: lease) }
    }

    private func wake() {
        var one: UInt8 = 1
        _ = write(wakeWrite, &one, 1)
    }

    // MARK: - The thread

    private func loop() {
        let clock = ContinuousClock()
        while true {
            let now = clock.now
            var due: [(Int64, ContinuousClock.Instant, Duration)] = []
            var lost: [LeaseKeepAlive] = []
            let (closed, wakeAt) = state.withLock { state -> (Bool, ContinuousClock.Instant?) in
                if state.closed { return (true, nil) }
                var earliest: ContinuousClock.Instant?
                for (lease, var entry) in state.entries {
                    if now >= entry.deadline {
                        state.entries[lease] = nil
                        lost.append(entry.handle)
                        continue
                    }
                    var parked = false
                    if entry.inFlight == nil && now >= entry.nextSend {
                        // An owner without activity since the last refresh gets none:
                        // the lease runs out unless it shows a sign of life first.
                        if let activity = entry.activity, !activity.active(since: entry.confirmed, orWake: { [weak self] in self?.wake() }) {
                            parked = true
                        } else {
                            entry.inFlight = now
                            state.entries[lease] = entry
                            due.append((lease, now, entry.deadline - now))
                        }
                    }
                    let next = entry.inFlight == nil && !parked ? min(entry.nextSend, entry.deadline) : entry.deadline
                    earliest = earliest.map { min($0, next) } ?? next
                }
                return (false, earliest)
            }
            if closed { break }
            for handle in lost { handle.finish(.unconfirmed) }
            for (lease, sent, remaining) in due { refresh(lease, sentAt: sent, timeout: remaining) }
            var timeout: Int32 = -1
            if let wakeAt {
                let wait = wakeAt - clock.now
                let (seconds, attoseconds) = wait.components
                let milliseconds = max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
                timeout = Int32(min(milliseconds, 60_000))
            }
            var descriptor = pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, timeout) > 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wakeRead, &drain, drain.count) > 0 {}
            }
        }
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.exited = true
            defer { state.exitWaiters = [] }
            return state.exitWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Sends one keep-alive of `lease` through the KV script; the reply is handled on
    /// the connection's thread.
    private func refresh(_ lease: Int64, sentAt sent: ContinuousClock.Instant, timeout: Duration, loaded: Bool = false) {
        var scriptKeys = keys
        scriptKeys.append(Array("{\(namespace)}:lease:\(lease)".utf8))
        let request = MessagePack.array([.string("keepalive"), .string(String(lease))]).encoded()
        let script = Self.keepAliveScript
        var command: [[UInt8]] = loaded
            ? [Array("EVAL".utf8), Array(script.source.utf8), Array(String(scriptKeys.count).utf8)]
            : [Array("EVALSHA".utf8), Array(script.sha1.utf8), Array(String(scriptKeys.count).utf8)]
        command.append(contentsOf: scriptKeys)
        command.append(request)
        let ticket = identity?.ticket()
        connection.send(command, timeout: max(timeout, .milliseconds(1))) { [weak self] result in
            guard let self else { return }
            if !loaded, case .failure(let error as RedisError) = result, error.serverErrorPrefix == "NOSCRIPT" {
                // The server lost its scripts (restart, failover, flush): EVAL loads it again.
                self.refresh(lease, sentAt: sent, timeout: timeout, loaded: true)
                return
            }
            // Refreshes are requests too: an idle session's keeper notices a reset.
            // With durability its revision counts as seen once WAIT has confirmed it.
            var decodedRevision: Int64?
            if let identity = self.identity, let ticket, case .success(let reply) = result,
               let decoded = try? CoordinationClient.decodeScriptReply(reply) {
                identity.check(decoded, ticket, self.durability == nil)
                decodedRevision = decoded.revision
            }
            let seen = decodedRevision
            guard let durability = self.durability, case .success = result else {
                self.handle(result, lease: lease, sentAt: sent)
                return
            }
            // With durability, as every other write of the client: confirmed only once
            // the replicas have it (WAIT, on this connection, right behind the refresh).
            self.connection.send(durability.waitCommand, timeout: durability.waitCommandTimeout) { [weak self] waited in
                guard let self else { return }
                if case .success(let count) = waited, (count.int ?? 0) >= Int64(durability.replicas) {
                    if let identity = self.identity, let ticket, let seen { identity.confirm(seen, ticket) }
                    self.handle(result, lease: lease, sentAt: sent)
                } else {
                    self.handle(.failure(RedisError(.outcomeUnknown, "the keep-alive did not reach \(durability.replicas) replica(s) within \(durability.timeout)")),
                                lease: lease, sentAt: sent)
                }
            }
        }
    }

    private func handle(_ result: Result<RedisReply, any Error>, lease: Int64, sentAt sent: ContinuousClock.Instant) {
        enum Outcome { case confirmed, gone, retry }
        let outcome: Outcome
        switch result {
        case .success(let reply):
            do {
                let body = try CoordinationClient.decodeScriptReply(reply).succeeded().result
                let ttl = body.array.flatMap { $0.count == 3 ? $0[2].int : nil } ?? 0
                outcome = ttl > 0 ? .confirmed : .gone
            } catch let error as CoordinationError where error.code == .leaseNotFound {
                outcome = .gone
            } catch {
                outcome = .retry
            }
        case .failure:
            outcome = .retry
        }
        let clock = ContinuousClock()
        let ended = state.withLock { state -> LeaseKeepAlive? in
            guard var entry = state.entries[lease], entry.inFlight == sent else { return nil }
            switch outcome {
            case .confirmed:
                entry.inFlight = nil
                entry.confirmed = max(entry.confirmed, sent)
                entry.nextSend = entry.confirmed + entry.interval
                entry.handle.confirm(sentAt: sent)
                state.entries[lease] = entry
                return nil
            case .gone:
                state.entries[lease] = nil
                return entry.handle
            case .retry:
                entry.inFlight = nil
                entry.nextSend = clock.now + min(.milliseconds(500), entry.interval / 2)
                state.entries[lease] = entry
                return nil
            }
        }
        ended?.finish(.notFound)
        wake()
    }
}
