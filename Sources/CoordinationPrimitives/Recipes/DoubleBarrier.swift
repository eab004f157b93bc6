/// A barrier that a fixed number of participants cross together, twice: nobody
/// starts before everyone has arrived, and nobody finishes before everyone is done
/// (etcd's `recipe.DoubleBarrier`).
///
/// Picture a race: runners gather at the start line, and the start is given only
/// when all `count` have arrived (``enter()``); at the finish, each runner waits
/// until the last one is in (``leave()``).
///
/// **Keys.** Each participant writes `key/waiters/<lease hex>`, attached to its
/// session's lease, so one session is one participant. The participant whose
/// arrival makes `count` writes `key/ready`, which releases everyone blocked in
/// ``enter()``. To leave, the participant whose key is oldest waits until the others'
/// keys are gone, watching the newest one; every other participant deletes its key
/// and waits for the oldest key to go. The last one deletes `key/ready` and its own key.
///
/// **Failure.** A participant that crashes or loses its session has its key deleted
/// when its lease ends, and the others' ``leave()`` goes on without it. A participant
/// that never calls ``leave()`` holds everyone else at the finish for as long as
/// its session lives.
///
/// ```swift
/// let barrier = try DoubleBarrier(session: session, key: "/barriers/batch", count: 3)
/// try await barrier.enter()   // returns once three participants have entered
/// try await runMyShare()
/// try await barrier.leave()   // returns once all three have left
/// ```
public final class DoubleBarrier: Sendable {
    /// The session whose lease this participant's key is attached to.
    public let session: Session
    /// The barrier key; participants live under `key/waiters/`.
    public let key: [UInt8]
    /// How many participants the barrier waits for.
    public let count: Int

    /// A double barrier on `key` for `count` participants.
    /// - Throws: ``ConcurrencyError/Code/invalidArgument`` when `count` is below 1.
    public init(session: Session, key: String, count: Int) throws {
        guard count >= 1 else {
            throw ConcurrencyError(.invalidArgument, "a double barrier needs a count of at least 1, got \(count)")
        }
        self.session = session
        self.key = bytes(key)
        self.count = count
    }

    private var client: CoordinationClient { session.client }
    private var waiters: [UInt8] { key + bytes("/waiters/") }
    private var ready: [UInt8] { key + bytes("/ready") }
    /// This participant's key, `key/waiters/<lease hex>`.
    public var participantKey: [UInt8] { waiters + bytes(session.leaseKeySuffix) }

    /// Enters the barrier and returns once `count` participants have entered.
    ///
    /// Entering again with the same session counts once.
    /// - Throws: ``ConcurrencyError/Code/tooManyParticipants`` when `count`
    ///   participants were already in (this one's key is removed again);
    ///   ``ConcurrencyError/Code/sessionExpired`` when this participant's key
    ///   disappears while it waits; `CancellationError`. On any error this
    ///   participant leaves the barrier.
    public func enter() async throws {
        let own = participantKey
        let response = try await client.txn(Txn(
            compares: [Compare(key: own, .createRevision(0), .equal)],
            success: [.put(key: own, value: [], options: PutOptions(lease: session.lease)),
                      .range(key: waiters, options: Self.countAll(waiters))],
            failure: [.range(key: own, options: RangeOptions()),
                      .range(key: waiters, options: Self.countAll(waiters))]))
        guard case .range(let present)? = response.responses.last else {
            throw CoordinationError(.protocolError, "unexpected transaction response while entering a double barrier")
        }
        var revision = response.header.revision
        if !response.succeeded, case .range(let mine)? = response.responses.first, let kv = mine.kvs.first {
            revision = kv.createRevision
        }
        if present.count > count {
            if response.succeeded { await client.deleteDetached(own) }
            throw ConcurrencyError(.tooManyParticipants, "double barrier \(keyText(key)) already has its \(count) participants; wait until they have left")
        }
        do {
            if present.count == count {
                _ = try await client.put(ready, [])
                return
            }
            _ = try await client.nextEvent(.put, on: ready, from: revision + 1, ownKey: own)
        } catch {
            await client.deleteDetached(own)
            throw error
        }
    }

    /// Leaves the barrier and returns once every participant has left (its key is gone).
    ///
    /// Leaving without having entered returns once the barrier is empty.
    /// - Throws: `CancellationError` (this participant's key is removed all the same).
    public func leave() async throws {
        let own = participantKey
        do {
            while true {
                let response = try await client.get(waiters, options: .prefix(waiters))
                guard let lowest = response.kvs.min(by: { $0.createRevision < $1.createRevision }),
                      let highest = response.kvs.max(by: { $0.createRevision < $1.createRevision }) else { return }
                let from = response.header.revision + 1
                let isMember = response.kvs.contains { $0.key == own }
                if response.kvs.count == 1 && isMember {
                    // The last one out closes the barrier.
                    _ = try await client.txn(Txn(success: [
                        .delete(key: ready, rangeEnd: [], prevKV: false),
                        .delete(key: own, rangeEnd: [], prevKV: false),
                    ]))
                    return
                }
                if lowest.key == own {
                    // The oldest participant leaves last: wait for the newest to go, then look again.
                    try await client.waitDelete(highest.key, from: from, ownKey: nil)
                } else {
                    if isMember { _ = try await client.delete(own) }
                    try await client.waitDelete(lowest.key, from: from, ownKey: nil)
                }
            }
        } catch {
            await client.deleteDetached(own)
            throw error
        }
    }

    private static func countAll(_ prefix: [UInt8]) -> RangeOptions {
        var options = RangeOptions.prefix(prefix)
        options.countOnly = true
        return options
    }
}
