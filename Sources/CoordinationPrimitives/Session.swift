import Synchronization

/// A lease kept alive in the background: the liveness that locks, elections and
/// fortress visits hang their keys on (etcd's `concurrency.Session`).
///
/// Creating a session grants a lease (TTL 60 s unless told otherwise) or adopts an
/// existing one, and refreshes it every TTL/3. Keys written with ``lease`` vanish
/// when the lease does: when the session is closed (``close()`` revokes it at once)
/// or when the process dies or stalls past the TTL (nobody refreshes it and the
/// store reaps it). ``done()`` returns when the session has ended, for any reason;
/// ``isExpired`` tells whether the lease was lost rather than given up; a session
/// also ends, with ``Ending/storeReset``, when its client finds that Redis lost data.
///
/// Transient connection errors are retried for as long as the lease can still be
/// alive; the session ends when the store says the lease is gone or when a whole
/// TTL has passed without a successful refresh. Expiry is noticed at the next
/// refresh, up to TTL/3 late: the primitives therefore also watch their own keys
/// (a lock holder's body is cancelled as soon as its key goes).
///
/// ```swift
/// let session = try await Session(client: store, ttl: 10)
/// defer { Task { try? await session.close() } }
/// let mutex = DistributedMutex(session: session, prefix: "/locks/report")
/// ```
public final class Session: Sendable {
    /// Why a session ended.
    public enum Ending: Sendable, Hashable {
        /// ``Session/close()`` revoked the lease.
        case closed
        /// ``Session/orphan()`` stopped refreshing it; the lease lives until its TTL runs out.
        case orphaned
        /// The lease expired or was revoked by someone else.
        case expired
        /// Redis lost data behind the store's back (see `CoordinationError.Code.storeReset`):
        /// the session's history is gone, whatever became of its lease.
        case storeReset
    }

    /// The store the session's lease lives in.
    public let client: CoordinationClient
    /// The lease ID; attach keys to it with `PutOptions(lease:)`.
    public let lease: Int64
    /// The lease's TTL in seconds.
    public let ttl: Int64

    private let life = Life()
    /// `nil` for a session that never refreshed its lease (``orphaned(client:lease:ttl:)``).
    private let keeper: LeaseKeepAlive?

    /// Grants a lease of `ttl` seconds (or adopts the live lease `lease`) and starts
    /// refreshing it every TTL/3.
    ///
    /// Refreshes come from the client's keeper thread on a connection of their own
    /// (``CoordinationClient/keepAliveInBackground(_:ttl:aliveSince:activity:)``), so a busy
    /// process (a saturated cooperative pool, a burst of requests on the client)
    /// does not starve them: the session lives as long as its refreshes reach Redis.
    /// - Parameters:
    ///   - client: The store.
    ///   - ttl: The TTL of a new lease, in seconds (the store's minimum is 2).
    ///   - lease: An existing lease to adopt instead of granting one, for example
    ///     one a previous incarnation of this process left behind. Its own TTL is used.
    ///   - activity: Refresh only while it shows signs of life (``LeaseActivity``):
    ///     for a session held on behalf of someone else, such as a client connection,
    ///     which then ends a TTL after its last sign of life however long this process
    ///     runs. `nil` (the default): refresh for as long as the session is open.
    /// - Throws: `CoordinationError` `leaseNotFound` when `lease` does not exist;
    ///   `invalidArgument` for a TTL below 1.
    public init(client: CoordinationClient, ttl: Int64 = 60, lease: Int64? = nil, activity: LeaseActivity? = nil) async throws {
        self.client = client
        // The keeper's connection opens first, so that no time passes between the grant
        // and the first refresh but the grant's own reply.
        try await client.prepareBackgroundKeepAlive()
        let aliveSince: ContinuousClock.Instant
        let id: Int64, grantedTTL: Int64
        if let lease {
            let live = try await client.timeToLive(lease)
            guard live.ttl > 0 else {
                throw CoordinationError(.leaseNotFound, "lease \(String(lease, radix: 16)) does not exist or has expired; create a new session")
            }
            aliveSince = .now
            _ = try await client.keepAliveOnce(lease)
            (id, grantedTTL) = (lease, live.grantedTTL)
        } else {
            guard ttl >= 1 else { throw CoordinationError(.invalidArgument, "session TTL must be at least 1 second, got \(ttl)") }
            aliveSince = .now
            let granted = try await client.grantLease(ttl: ttl)
            (id, grantedTTL) = (granted.id, granted.ttl)
        }
        do {
            keeper = try await client.keepAliveInBackground(id, ttl: grantedTTL, aliveSince: aliveSince, activity: activity)
        } catch {
            if lease == nil { _ = try? await client.revokeLease(id) }
            throw error
        }
        self.lease = id
        self.ttl = grantedTTL
        // The forwarder does not retain the session: a session dropped without close()
        // or orphan() stops refreshing (see deinit) and its lease expires by its TTL.
        let (keeper, life) = (keeper!, life)
        Task(priority: .high) {
            if let ending = await keeper.ended(), ending != .stopped { life.finish(.expired) }
        }
        // A store reset ends the session at once: its keys belong to the old history.
        resetObserver = client.onStoreReset { _ in
            life.finish(.storeReset)
            keeper.stop()
        }
    }

    private init(client: CoordinationClient, orphanedLease lease: Int64, ttl: Int64) {
        self.client = client
        self.lease = lease
        self.ttl = ttl
        self.keeper = nil
        self.resetObserver = nil
        life.finish(.orphaned)
    }

    /// A session on `lease` that nothing refreshes, as etcd's Lock and Election services
    /// use one (`NewSession(WithLease(lease))`, then `Orphan()`): the caller owns the
    /// lease and keeps it alive. The lease is not checked here; a key written on a lease
    /// that does not exist fails with `CoordinationError` `leaseNotFound`, as etcd's does.
    ///
    /// Lease 0 grants a lease of `ttl` seconds, which is not refreshed either (etcd's
    /// services do the same with its default session TTL, 60 s).
    /// - Parameters:
    ///   - ttl: The TTL of a lease granted for lease 0; otherwise how long a failed
    ///     lock or campaign keeps trying to remove its key (see ``DistributedMutex/lock()``).
    public static func orphaned(client: CoordinationClient, lease: Int64, ttl: Int64 = 60) async throws -> Session {
        if lease != 0 { return Session(client: client, orphanedLease: lease, ttl: ttl) }
        let granted = try await client.grantLease(ttl: ttl)
        return Session(client: client, orphanedLease: granted.id, ttl: granted.ttl)
    }

    private let resetObserver: Int?

    deinit {
        keeper?.stop()
        life.finish(.orphaned)
        if let resetObserver { client.removeStoreResetObserver(resetObserver) }
    }

    /// The lease ID in lowercase hex, as etcd names the keys of a session (`prefix/<hex>`).
    public var leaseKeySuffix: String { String(lease, radix: 16) }

    /// Whether the session has ended (closed, orphaned or expired).
    public var isDone: Bool { endedBecause != nil }

    /// Whether the lease was lost (expired, or revoked by someone else).
    public var isExpired: Bool { endedBecause == .expired }

    /// Why the session ended; `nil` while it is live.
    public var endedBecause: Ending? {
        if let ending = keeper?.ending, ending != .stopped { life.finish(.expired) }
        return life.ending.withLock { $0 }
    }

    /// Returns when the session has ended (or the calling task is cancelled).
    public func done() async {
        await life.ended.wait()
    }

    /// Stops refreshing the lease without revoking it: its keys stay until the TTL runs
    /// out, so another process can adopt it with `Session(client:lease:)`.
    public func orphan() async {
        life.finish(.orphaned)
        keeper?.stop()
        if let resetObserver { client.removeStoreResetObserver(resetObserver) }
    }

    /// Stops refreshing and revokes the lease, deleting every key attached to it (also
    /// after ``orphan()``, as etcd's `Close`). A session that ended with a store reset
    /// (``Ending/storeReset``) revokes nothing: its lease went with the lost history.
    /// - Throws: the store's error when the revoke fails (the lease then expires by its TTL).
    public func close() async throws {
        life.finish(.closed)
        keeper?.stop()
        if let resetObserver { client.removeStoreResetObserver(resetObserver) }
        // After a store reset the lease belongs to a history Redis lost: the new one has
        // no such lease, or another client's (an ID the store chose is never reused, but
        // one the caller chose may be), which is not this session's to revoke.
        if endedBecause == .storeReset { return }
        do {
            _ = try await client.revokeLease(lease)
        } catch let error as CoordinationError where error.code == .leaseNotFound {
            // Already gone: what close wanted.
        }
    }
}

/// How a session ends, shared by the session and its refresher.
private final class Life: Sendable {
    let ended = Latch()
    let ending = Mutex<Session.Ending?>(nil)

    /// Records the first reason the session ended and wakes `done()` waiters.
    func finish(_ reason: Session.Ending) {
        let first = ending.withLock { ending -> Bool in
            if ending != nil { return false }
            ending = reason
            return true
        }
        if first { ended.open() }
    }
}
