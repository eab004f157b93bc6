import Synchronization

/// A lease refreshed in the background by its client's keeper thread, until stopped
/// or lost.
///
/// Sessions, locks and elections hang their keys on a lease that must outlive
/// a loaded machine: refreshes that wait for a free thread of Swift's cooperative
/// pool, or queue behind a burst of requests on the client's pipelined connection,
/// can miss the TTL although Redis itself is answering. The keeper avoids both: one
/// dedicated thread per client times the refreshes, and they travel on a connection
/// of their own whose replies are handled on that connection's thread. The lease is
/// therefore kept as long as a refresh reaches Redis within the TTL and its answer
/// comes back, whatever the cooperative pool is doing.
///
/// Get one from ``CoordinationClient/keepAliveInBackground(_:ttl:aliveSince:activity:)``.
public final class LeaseKeepAlive: Sendable {
    /// Why background refreshing ended.
    public enum Ending: Sendable, Hashable {
        /// ``LeaseKeepAlive/stop()`` was called.
        case stopped
        /// The client was closed: nothing refreshes the lease any more, and it expires
        /// by its TTL.
        case clientClosed
        /// The store answered that the lease does not exist: it expired or was revoked.
        case notFound
        /// No refresh was confirmed within a TTL of the last confirmed one (a stalled
        /// connection or an unreachable Redis): the lease may have expired.
        case unconfirmed
    }

    /// The lease being refreshed.
    public let lease: Int64
    /// Its TTL in seconds.
    public let ttl: Int64

    private struct State {
        var ending: Ending?
        var confirmed: ContinuousClock.Instant
        var nextID = 0
        var waiters: [Int: CheckedContinuation<Ending?, Never>] = [:]
    }

    private let state: Mutex<State>
    private let onStop: @Sendable (Int64) -> Void

    init(lease: Int64, ttl: Int64, aliveSince: ContinuousClock.Instant, onStop: @escaping @Sendable (Int64) -> Void) {
        self.lease = lease
        self.ttl = ttl
        self.state = Mutex(State(confirmed: aliveSince))
        self.onStop = onStop
    }

    /// Why refreshing ended; `nil` while the lease is being kept alive.
    public var ending: Ending? { state.withLock { $0.ending } }

    /// When the last confirmed refresh was sent: the lease lives at least a TTL past it.
    public var lastConfirmed: ContinuousClock.Instant { state.withLock { $0.confirmed } }

    /// Waits until refreshing has ended and returns why (or `nil` when the calling task
    /// is cancelled first).
    public func ended() async -> Ending? {
        let id = state.withLock { state -> Int in
            defer { state.nextID += 1 }
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Ending?, Never>) in
                let now = state.withLock { state -> Ending?? in
                    if let ending = state.ending { return .some(ending) }
                    if Task.isCancelled { return .some(nil) }
                    state.waiters[id] = continuation
                    return .none
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(returning: nil)
        }
    }

    /// Stops refreshing; the lease then lives until its TTL runs out (revoke it to end
    /// it at once).
    public func stop() {
        if finish(.stopped) { onStop(lease) }
    }

    /// Records a confirmed refresh sent at `sent`.
    func confirm(sentAt sent: ContinuousClock.Instant) {
        state.withLock { state in
            if sent > state.confirmed { state.confirmed = sent }
        }
    }

    /// Ends refreshing for `reason`; returns whether this was the first ending.
    @discardableResult
    func finish(_ reason: Ending) -> Bool {
        let waiters = state.withLock { state -> [CheckedContinuation<Ending?, Never>]? in
            if state.ending != nil { return nil }
            state.ending = reason
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        guard let waiters else { return false }
        for waiter in waiters { waiter.resume(returning: reason) }
        return true
    }
}

extension CoordinationClient {
    /// Opens the lease keeper's connection and thread now (they open on first use
    /// otherwise), so that a lease granted next is refreshed without waiting for them:
    /// call it before granting a short lease that must not lapse.
    /// - Throws: ``CoordinationError`` when the connection cannot be opened.
    public func prepareBackgroundKeepAlive() async throws {
        _ = try await leaseKeeper
    }

    /// Refreshes `lease` every TTL/3 from the client's keeper thread, on a connection of
    /// its own, until the returned handle is stopped or the lease is lost.
    ///
    /// Unlike ``keepAlive(_:)``, nothing here waits for Swift's cooperative pool or for
    /// other requests of this client: a lease refreshed this way survives a busy
    /// process as long as its refreshes reach Redis within the TTL. The handle ends
    /// with ``LeaseKeepAlive/Ending/notFound`` when the store says the lease is gone,
    /// and with ``LeaseKeepAlive/Ending/unconfirmed`` when no refresh has been confirmed
    /// for a whole TTL after the last confirmed one (transient errors are retried
    /// until then).
    ///
    /// - Parameters:
    ///   - lease: The lease ID.
    ///   - ttl: Its granted TTL in seconds (refreshes go every TTL/3, at least every 100 ms).
    ///   - aliveSince: A moment at which the lease was surely alive with a full TTL
    ///     ahead, such as just before the grant or the last keep-alive was sent.
    ///   - activity: When given, a refresh is sent only if the activity showed a sign
    ///     of life since the previous one (see ``LeaseActivity``): the lease then lives
    ///     as long as its owner is active, not merely as long as this process runs.
    /// - Throws: ``CoordinationError`` when the keeper's connection cannot be opened, or
    ///   `invalidArgument` for a client without a connection of its own to copy.
    public func keepAliveInBackground(_ lease: Int64, ttl: Int64, aliveSince: ContinuousClock.Instant = .now,
                                      activity: LeaseActivity? = nil) async throws -> LeaseKeepAlive {
        guard ttl >= 1 else { throw CoordinationError(.invalidArgument, "a lease kept alive needs a TTL of at least 1 second, got \(ttl)") }
        return try await leaseKeeper.add(lease: lease, ttl: ttl, aliveSince: aliveSince, activity: activity)
    }
}
