import Synchronization

/// A counting semaphore shared by every process that uses the same store and
/// prefix: at most `permits` holders at once, the rest wait their turn in arrival
/// order. Not an etcd recipe; built from the same parts.
///
/// **The ticket line.** Picture a room with `permits` seats and a ticket dispenser at
/// the door. Whoever arrives draws the next ticket: a key
/// `prefix/<16-digit sequence number>` attached to the session's lease, its value the
/// lease ID in hex. Tickets are numbered in arrival order (a ticket is only issued
/// while no higher number exists, so key order is creation order). A ticket holder
/// sits down as soon as fewer than `permits` earlier tickets are still out; leaving
/// the room (``release()``) tears the ticket up (deletes the key). So:
/// - never more than `permits` holders: only the `permits` oldest tickets can be seated;
/// - first come, first served: a later ticket never sits down before an earlier one
///   that is still waiting;
/// - a crashed holder's seat frees itself: its ticket is attached to its lease, and
///   the store deletes it when the lease expires (TTL) or is revoked.
///
/// **Who watches what.** A waiter with `k ≥ permits` earlier tickets cannot sit down
/// until one of the `permits` newest of them goes: the older ones may go first
/// (holders leave in any order), but that leaves those `permits` still ahead of it.
/// So each waiter watches one window, the key range from the `permits`-th newest
/// earlier ticket up to its own, for deletes, and looks again when one comes. A
/// release wakes at most `permits` waiters, whatever the length of the line, and a
/// waiter never sleeps through a free seat. (Watching only the single ticket
/// `permits` places ahead would not do: with two seats, if the newer holder leaves
/// first, the next waiter would keep waiting on the older one while a seat is free.)
///
/// ```swift
/// let pool = try Semaphore(session: session, prefix: "/semaphores/db", permits: 4)
/// try await pool.acquire()
/// defer { Task { try? await pool.release() } }
/// try await runQuery()
/// ```
///
/// A semaphore object tracks one permit: share it between tasks of one process only
/// to acquire and release in turn, or give each task its own object (tasks can share
/// a session, since every ticket is a new key). Every participant must use the same
/// `permits`; the line is counted by each waiter with its own number.
public final class Semaphore: Sendable {
    private struct State {
        var key: [UInt8] = []
        var held = false
    }

    /// The session whose lease the permit keys are attached to.
    public let session: Session
    /// The key prefix of the tickets, ending in `/`.
    public let prefix: [UInt8]
    /// How many holders the semaphore admits at once.
    public let permits: Int
    private let state = Mutex(State())

    /// A semaphore of `permits` permits over the keys `prefix/<sequence number>`.
    /// - Throws: ``ConcurrencyError/Code/invalidArgument`` when `permits` is below 1.
    public init(session: Session, prefix: String, permits: Int) throws {
        guard permits >= 1 else {
            throw ConcurrencyError(.invalidArgument, "a semaphore needs at least 1 permit, got \(permits)")
        }
        self.session = session
        self.prefix = bytes(prefix + "/")
        self.permits = permits
    }

    private var client: CoordinationClient { session.client }

    /// The key of this object's ticket, held or waiting (empty when it has none).
    public var key: [UInt8] { state.withLock { $0.key } }

    /// Whether this object holds a permit.
    public var isHolding: Bool { state.withLock { $0.held } }

    /// Takes a permit, waiting behind earlier arrivals while all permits are taken.
    ///
    /// Acquiring again while holding a permit returns at once.
    /// - Throws: ``ConcurrencyError/Code/sessionExpired`` when the waiter's key
    ///   disappears (its lease expired or was revoked); `CancellationError` when the
    ///   task is cancelled. Either way the waiter's key is removed.
    public func acquire() async throws {
        if isHolding { return }
        let (key, _) = try await client.createSequentialKey(under: prefix, value: bytes(session.leaseKeySuffix), lease: session.lease)
        state.withLock { $0.key = key }
        do {
            let ahead = RangeOptions(rangeEnd: key, limit: Int64(permits), sortOrder: .descend, sortTarget: .key, keysOnly: true)
            while true {
                let response = try await client.txn(Txn(success: [
                    .range(key: prefix, options: ahead),
                    .range(key: key, options: RangeOptions(countOnly: true)),
                ]))
                guard case .range(let earlier)? = response.responses.first,
                      case .range(let own)? = response.responses.last else {
                    throw CoordinationError(.protocolError, "unexpected transaction response while acquiring a permit")
                }
                if own.count == 0 { throw CoordinationClient.lostKey(key) }
                if earlier.count < Int64(permits) {
                    state.withLock { $0.held = true }
                    return
                }
                // The `permits` newest earlier tickets: one of them must go before this one sits down.
                let window = earlier.kvs[permits - 1].key
                _ = try await client.nextEvent(.delete, on: window, rangeEnd: key, from: response.header.revision + 1, ownKey: key)
            }
        } catch {
            await client.deleteDetached(key)
            reset()
            throw error
        }
    }

    /// Takes a permit only when one is free and nobody is waiting for one.
    ///
    /// Returns at once when this object already holds a permit.
    /// - Throws: ``ConcurrencyError/Code/locked`` when all permits are taken (no key is left behind).
    public func tryAcquire() async throws {
        if isHolding { return }
        let prefix = prefix
        let (key, response) = try await client.createSequentialKey(under: prefix, value: bytes(session.leaseKeySuffix), lease: session.lease) { key in
            [.range(key: prefix, options: RangeOptions(rangeEnd: key, countOnly: true))]
        }
        guard case .range(let earlier)? = response.responses.last else {
            throw CoordinationError(.protocolError, "unexpected transaction response while acquiring a permit")
        }
        if earlier.count < Int64(permits) {
            state.withLock { state in
                state.key = key
                state.held = true
            }
            return
        }
        _ = try await client.delete(key)
        throw ConcurrencyError(.locked, "all \(permits) permits of semaphore \(keyText(prefix)) are taken (\(earlier.count) holders and waiters)")
    }

    /// Gives the permit back (or leaves the line) by deleting this object's ticket.
    /// Releasing without a ticket does nothing.
    public func release() async throws {
        let key = key
        if !key.isEmpty { _ = try await client.delete(key) }
        reset()
    }

    private func reset() {
        state.withLock { $0 = State() }
    }
}
