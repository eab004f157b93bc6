import Synchronization

/// A lock shared by every process that uses the same store and prefix (etcd's
/// `concurrency.Mutex`), with a fencing token.
///
/// Each contender writes the key `prefix/<lease hex>` attached to its session's
/// lease; the key with the lowest create revision holds the lock. Waiters queue in
/// create-revision order (first come, first served), and each one watches only the
/// waiter just ahead of it, so a release wakes one process, not all of them.
///
/// **Fencing.** A lock held through a lease can be lost without the holder noticing
/// in time: the process stalls (GC pause, SIGSTOP, a slow disk) past the TTL, the
/// lease expires and the next waiter takes over while the first still believes it
/// holds the lock. ``fencingToken`` — the create revision of the holder's key carried
/// into the store's epoch — is strictly greater for every later holder, also when
/// Redis restarts or fails over and loses writes (each new Redis process begins an
/// epoch whose tokens are above all earlier ones); a resource that remembers the
/// highest token it has seen and rejects lower ones cannot be written by a stale
/// holder. Compare tokens as plain integers; ``createRevision`` is etcd's revision of
/// the lock key.
/// Within the store itself, ``isOwner`` is a compare that makes any transaction
/// conditional on still holding the lock.
///
/// ```swift
/// let mutex = DistributedMutex(session: session, prefix: "/locks/report")
/// try await mutex.withLock { token in
///     try await storage.write(report, fencingToken: token)
/// }
/// ```
///
/// A mutex object tracks one holder; share it between tasks of one process only to
/// lock and unlock in turn (as etcd's), or give each task its own session.
public final class DistributedMutex: Sendable {
    private struct State {
        var key: [UInt8] = []
        var revision: Int64 = -1
        /// The fencing token of `revision` (see ``fencingToken``).
        var token: Int64 = -1
        var header: ResponseHeader?
    }

    /// The session whose lease the lock key is attached to.
    public let session: Session
    /// The key prefix of the waiters, ending in `/`.
    public let prefix: [UInt8]
    private let state = Mutex(State())

    /// A mutex over the keys `prefix/<lease hex>`.
    public init(session: Session, prefix: String) {
        self.session = session
        self.prefix = bytes(prefix + "/")
    }

    private var client: CoordinationClient { session.client }
    private var ownKey: [UInt8] { prefix + bytes(session.leaseKeySuffix) }

    /// The lock key of this session (empty when not locked or waiting).
    public var key: [UInt8] { state.withLock { $0.key } }

    /// The header of the request that acquired the lock.
    public var header: ResponseHeader? { state.withLock { $0.header } }

    /// The fencing token of the held lock, strictly increasing across holders, also
    /// across a Redis restart or failover that lost writes: the create revision of its
    /// key carried into the store's epoch (``CoordinationClient/fencingToken(forCreateRevision:)``).
    /// Within one epoch tokens differ as create revisions do. `nil` when not locked.
    public var fencingToken: Int64? {
        state.withLock { $0.revision > 0 && $0.header != nil ? $0.token : nil }
    }

    /// The create revision of the held lock's key (etcd's notion of the lock's
    /// revision, as etcd's Lock service reports it); `nil` when not locked.
    public var createRevision: Int64? {
        state.withLock { $0.revision > 0 && $0.header != nil ? $0.revision : nil }
    }

    /// A compare that holds while this session owns the lock; add it to a transaction
    /// to write only as the owner.
    public var isOwner: Compare {
        let (key, revision) = state.withLock { ($0.key, $0.revision) }
        return Compare(key: key.isEmpty ? [0] : key, .createRevision(revision), .equal)
    }

    /// Acquires the lock, waiting behind earlier contenders.
    ///
    /// Locking again with the same session (while holding it) returns at once.
    /// - Returns: the fencing token.
    /// - Throws: ``ConcurrencyError/Code/sessionExpired`` when the waiter's key
    ///   disappears (its lease expired or was revoked); `CancellationError` when the
    ///   task is cancelled. Either way the waiter's key is removed — as etcd's, also
    ///   when it was there before the call: mutexes of one session and prefix share
    ///   one key, so give concurrent lockers sessions of their own.
    @discardableResult
    public func lock() async throws -> Int64 {
        let (revision, _) = try await enqueue()
        let token = state.withLock { $0.token }
        if header != nil { return token }
        do {
            let header = try await client.waitDeletes(prefix: prefix, maxCreateRevision: revision - 1, ownKey: ownKey)
            state.withLock { $0.header = header }
            return token
        } catch {
            // Leave the queue even though this task may be cancelled or the connection lost.
            await session.abandon(ownKey)
            reset()
            throw error
        }
    }

    /// Acquires the lock only when nobody holds it.
    /// - Returns: the fencing token.
    /// - Throws: ``ConcurrencyError/Code/locked`` when another session holds it.
    @discardableResult
    public func tryLock() async throws -> Int64 {
        let (_, owner) = try await enqueue()
        if header != nil { return state.withLock { $0.token } }
        await session.abandon(ownKey)
        reset()
        throw ConcurrencyError(.locked, "mutex \(String(decoding: prefix, as: UTF8.self)) is locked by another session (create revision \(owner ?? 0))")
    }

    /// Releases the lock (or leaves the queue) by deleting this session's key.
    /// - Returns: whether the key was still there to delete; `false` when the lock had
    ///   already been lost with the session's lease (a stalled holder's lease expired).
    @discardableResult
    public func unlock() async throws -> Bool {
        let deleted = try await client.delete(ownKey).deleted
        reset()
        return deleted > 0
    }

    /// Runs `body` holding the lock, passing the fencing token, and releases the lock
    /// when it returns or throws.
    ///
    /// When the session is lost while `body` runs (the lease expired or was revoked,
    /// or the lock key was deleted), `body` is cancelled and, once it returns,
    /// `withLock` throws ``ConcurrencyError/Code/sessionExpired``: the work the lock
    /// protected stops instead of going on unprotected.
    public func withLock<T: Sendable>(_ body: @escaping @Sendable (Int64) async throws -> T) async throws -> T {
        let token = try await lock()
        let key = ownKey
        do {
            let value = try await session.guarded(key: key, from: (header?.revision ?? createRevision ?? 0) + 1, lost: {
                ConcurrencyError(.sessionExpired, "the session's lease was lost while holding \(String(decoding: key, as: UTF8.self)); the protected work was cancelled")
            }) {
                try await body(token)
            }
            try await unlock()
            return value
        } catch {
            await session.abandon(key)
            reset()
            throw error
        }
    }

    /// Puts this session in the queue and returns its key's create revision and the
    /// holder's; when the key is first in line, the lock is held and ``header`` is set.
    private func enqueue() async throws -> (revision: Int64, owner: Int64?) {
        let key = ownKey
        var first = RangeOptions.prefix(prefix)
        first.sortTarget = .create
        first.sortOrder = .ascend
        first.limit = 1
        let getOwner = KVOperation.range(key: prefix, options: first)
        let response: TxnResponse
        do {
            response = try await client.txn(Txn(
            compares: [Compare(key: key, .createRevision(0), .equal)],
            success: [.put(key: key, value: [], options: PutOptions(lease: session.lease)), getOwner],
            failure: [.range(key: key, options: RangeOptions()), getOwner]))
        } catch let error as RedisError where error.code == .outcomeUnknown {
            // The key may have been written: do not leave it queued.
            await session.abandon(key)
            throw error
        }
        var revision = response.header.revision
        if !response.succeeded {
            guard case .range(let mine)? = response.responses.first, let kv = mine.kvs.first else {
                throw CoordinationError(.protocolError, "lock key vanished inside a transaction")
            }
            revision = kv.createRevision
        }
        guard case .range(let owners)? = response.responses.last else {
            throw CoordinationError(.protocolError, "unexpected transaction response while locking")
        }
        let owner = owners.kvs.first?.createRevision
        let token: Int64
        do {
            token = try await client.fencingToken(forCreateRevision: revision)
        } catch {
            await session.abandon(key)
            throw error
        }
        state.withLock { state in
            state.key = key
            state.revision = revision
            state.token = token
            state.header = owner == nil || owner == revision ? response.header : nil
        }
        return (revision, owner)
    }

    private func reset() {
        state.withLock { $0 = State() }
    }
}
