/// A readers-writer lock shared by every process that uses the same store and
/// prefix (etcd's `recipe.RWMutex`): many readers at once, or one writer alone.
///
/// **Keys.** A reader writes `prefix/read/<lease hex>`, a writer
/// `prefix/write/<lease hex>`, both attached to the session's lease. Everyone queues
/// in create-revision order (first come, first served):
/// - a reader holds the lock once no *writer* that came before it is left: readers
///   share, but a reader that arrives after a waiting writer queues behind it, so a
///   stream of readers cannot starve writers;
/// - a writer holds the lock once nobody (reader or writer) that came before it is left.
///
/// Each waiter watches only the newest key it waits for, so a release wakes the
/// processes right behind it, not all of them. A holder that crashes or loses its
/// session has its key deleted when its lease ends, and the queue moves on.
///
/// One `RWMutex` tracks one session: it can hold a read lock or a write lock, not
/// both (a write lock requested while holding a read lock with the same session
/// waits for itself). Give each concurrent task its own session.
///
/// ```swift
/// let lock = RWMutex(session: session, prefix: "/locks/catalog")
/// try await lock.rlock()
/// let catalog = try await store.get("/catalog")
/// try await lock.runlock()
/// ```
public final class RWMutex: Sendable {
    /// The session whose lease the lock keys are attached to.
    public let session: Session
    /// The key prefix of the lock, ending in `/`.
    public let prefix: [UInt8]

    /// A readers-writer lock over the keys `prefix/read/…` and `prefix/write/…`.
    public init(session: Session, prefix: String) {
        self.session = session
        self.prefix = bytes(prefix + "/")
    }

    private var client: CoordinationClient { session.client }
    /// This session's reader key, `prefix/read/<lease hex>`.
    public var readKey: [UInt8] { prefix + bytes("read/" + session.leaseKeySuffix) }
    /// This session's writer key, `prefix/write/<lease hex>`.
    public var writeKey: [UInt8] { prefix + bytes("write/" + session.leaseKeySuffix) }

    /// Acquires the lock for reading: waits until every writer that queued earlier has
    /// unlocked. Read-locking again with the same session returns at once.
    /// - Throws: ``ConcurrencyError/Code/sessionExpired`` when the waiter's key
    ///   disappears; `CancellationError`. Either way the waiter's key is removed.
    public func rlock() async throws {
        try await acquire(readKey, behind: prefix + bytes("write/"))
    }

    /// Releases a read lock (or leaves the queue).
    public func runlock() async throws {
        _ = try await client.delete(readKey)
    }

    /// Acquires the lock for writing: waits until every reader and writer that queued
    /// earlier has unlocked. Locking again with the same session returns at once.
    /// - Throws: ``ConcurrencyError/Code/sessionExpired`` when the waiter's key
    ///   disappears; `CancellationError`. Either way the waiter's key is removed.
    public func lock() async throws {
        try await acquire(writeKey, behind: prefix)
    }

    /// Releases the write lock (or leaves the queue).
    public func unlock() async throws {
        _ = try await client.delete(writeKey)
    }

    /// Queues `key` and waits until no key under `blockers` created before it is left.
    private func acquire(_ key: [UInt8], behind blockers: [UInt8]) async throws {
        let (revision, _) = try await client.createOrFindKey(key, lease: session.lease)
        do {
            _ = try await client.waitDeletes(prefix: blockers, maxCreateRevision: revision - 1, ownKey: key)
        } catch {
            await client.deleteDetached(key)
            throw error
        }
    }
}
