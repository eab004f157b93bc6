import Synchronization

/// A fortress shared by every process that uses the same store and prefix: a gate
/// that guards unlock and lock down, and guests that visit while it is open
/// (juju's `worker/fortress`, distributed).
///
/// Picture a fortress with a gate. At first the gate is shut: the fortress is
/// locked and guests wait outside. A guard ``unlock()``s it and guests come and go,
/// many at a time, each for one ``visit(_:)``. A ``lockdown()`` shuts the gate at
/// once, so no new guest gets in, and returns when the last guest inside has left;
/// until a guard unlocks again nothing runs inside, so the guard can change what
/// the visits rely on. Guards do not take turns: the last operation wins.
///
/// **Keys.** The gate is `prefix/state`, `unlocked` or `locked`; a missing key is
/// locked, so a new fortress starts locked. Each visit is a key
/// `prefix/visits/<lease hex>/<unique>` attached to the guest's session lease,
/// created by a transaction that requires the gate to be `unlocked`, and deleted
/// when the visit ends. A lockdown writes `locked` and then waits, from the
/// revision of that write, until no visit key remains. A guest whose process
/// crashes or stalls loses its lease, and its visit key goes with it: a crashed
/// guest holds up a lockdown for at most its session's TTL.
///
/// For the same reason a visit whose session is lost while its body runs is no
/// longer protected (a lockdown may return while it runs): the body is then
/// cancelled and the visit throws ``ConcurrencyError/Code/sessionExpired``.
///
/// ```swift
/// let session = try await Session(client: store, ttl: 10)
/// let charmDirectory = Fortress(session: session, prefix: "/fortress/charm")
/// // in the metrics collector, a guest:
/// try await charmDirectory.visit { try await runMetricsHook() }
/// // in the uniter, the guard:
/// try await charmDirectory.lockdown()   // no hook runs anywhere after this returns
/// try await upgradeCharm()
/// try await charmDirectory.unlock()
/// ```
///
/// ``LocalFortress`` is the same within one process.
public final class Fortress: FortressGuard, FortressGuest, Sendable {
    /// The session whose lease this guest's visit keys are attached to.
    public let session: Session
    /// The key prefix of the fortress, ending in `/`.
    public let prefix: [UInt8]
    private let closed = Latch()

    static let unlockedValue = bytes("unlocked")
    static let lockedValue = bytes("locked")

    /// The fortress under `prefix`, shared with every process that uses the same
    /// store and prefix; visits made through it hang on `session`'s lease.
    public init(session: Session, prefix: String) {
        self.session = session
        self.prefix = bytes(prefix + "/")
    }

    private var client: CoordinationClient { session.client }

    /// The gate's key, `prefix/state`: `unlocked`, or `locked` (also when missing).
    public var stateKey: [UInt8] { prefix + bytes("state") }

    /// The prefix of the visit keys, `prefix/visits/`.
    public var visitPrefix: [UInt8] { prefix + bytes("visits/") }

    /// Whether the gate is open now.
    public func isUnlocked() async throws -> Bool {
        try await client.get(stateKey).kvs.first?.value == Self.unlockedValue
    }

    /// The number of visits inside now, in every process.
    public func visitCount() async throws -> Int {
        var options = RangeOptions.prefix(visitPrefix)
        options.countOnly = true
        return Int(try await client.get(visitPrefix, options: options).count)
    }

    /// Whether ``close()`` was called.
    public var isClosed: Bool { closed.isOpen }

    /// Shuts this fortress object down: its blocked and later calls throw
    /// ``ConcurrencyError/Code/shutdown``. Visits already inside run to completion.
    /// The fortress in the store, and other processes' objects, are unaffected;
    /// the session stays open (it is the caller's).
    public func close() {
        closed.open()
    }

    /// Opens the gate for every guest of the fortress; part of the ``FortressGuard``
    /// role.
    /// - Throws: ``ConcurrencyError/Code/shutdown`` when this object is closed; the
    ///   store's errors.
    public func unlock() async throws {
        let client = client, key = stateKey
        try await untilClosed(FortressError.abortedUnlock()) {
            _ = try await client.put(key, Self.unlockedValue)
        }
    }

    /// Shuts the gate for every guest of the fortress, then waits until no visit is
    /// inside in any process; part of the ``FortressGuard`` role.
    ///
    /// The gate is shut even when the task is cancelled during the call. While
    /// waiting, expired leases are reaped once a second, so that the visits of a
    /// crashed guest end within its session's TTL even where no store `run()` runs.
    /// - Throws: ``ConcurrencyError/Code/aborted`` when cancelled before the fortress
    ///   was empty (the gate stays shut); ``ConcurrencyError/Code/shutdown`` when this
    ///   object is closed; the store's errors.
    public func lockdown() async throws {
        if closed.isOpen { throw FortressError.shutdown() }
        let client = client, key = stateKey, visits = visitPrefix
        var newest = RangeOptions.prefix(visits)
        newest.sortOrder = .descend
        newest.sortTarget = .create
        newest.limit = 1
        newest.keysOnly = true
        let newestVisit = KVOperation.range(key: visits, options: newest)
        // Shut the gate even if this task is cancelled: a lockdown always locks.
        let shut = try await Task {
            try await client.txn(Txn(success: [.put(key: key, value: Self.lockedValue, options: PutOptions()), newestVisit]))
        }.value
        try await untilClosed(FortressError.abortedLockdown()) {
            var response = shut
            while true {
                guard case .range(let inside)? = response.responses.last else {
                    throw CoordinationError(.protocolError, "unexpected transaction response during a lockdown")
                }
                guard let visit = inside.kvs.first else { return }
                do {
                    try await client.waitDelete(visit.key, from: response.header.revision + 1, ownKey: nil)
                } catch let error as CoordinationError where error.code == .compacted {
                    // The history to watch from is gone: look again.
                }
                response = try await client.txn(Txn(success: [newestVisit]))
            }
        }
    }

    /// Waits until the gate is open, then runs `body` inside the fortress, holding a
    /// visit key on the session's lease until it ends; part of the ``FortressGuest``
    /// role.
    /// - Throws: ``ConcurrencyError/Code/aborted`` when cancelled before the visit
    ///   started; ``ConcurrencyError/Code/shutdown`` when this object was closed before
    ///   it started; ``ConcurrencyError/Code/sessionExpired`` when the session was
    ///   lost (before the visit, or during it: then `body` was cancelled); otherwise
    ///   whatever `body` throws.
    public func visit<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        if closed.isOpen { throw FortressError.shutdown() }
        let key = visitPrefix + bytes(session.leaseKeySuffix + "/" + String(UInt64.random(in: .min ... .max), radix: 16))
        let header: ResponseHeader
        do {
            header = try await untilClosed(FortressError.abortedVisit()) { try await self.enter(key) }
        } catch {
            // The visit key may have been written just before the call gave up.
            await remove(key)
            throw error
        }
        // Inside: from here on the visit is not aborted, only the session can end it.
        let prefix = prefix
        do {
            let value = try await session.guarded(key: key, from: header.revision + 1, lost: {
                ConcurrencyError(.sessionExpired, "the session's lease was lost during a visit to \(String(decoding: prefix, as: UTF8.self)); a lockdown no longer waited for it, so the visit was cancelled")
            }, body)
            await remove(key)
            return value
        } catch {
            await remove(key)
            throw error
        }
    }

    /// Writes the visit key once the gate is open; returns the header of that write.
    private func enter(_ key: [UInt8]) async throws -> ResponseHeader {
        let gateOpen = Compare(key: stateKey, .value(Self.unlockedValue), .equal)
        while true {
            if session.isDone { throw Self.sessionLost(session) }
            let response: TxnResponse
            do {
                response = try await client.txn(Txn(
                    compares: [gateOpen],
                    success: [.put(key: key, value: [], options: PutOptions(lease: session.lease))]))
            } catch let error as CoordinationError where error.code == .leaseNotFound {
                throw Self.sessionLost(session)
            }
            if response.succeeded {
                // Cancelled while being let in: the visit has not begun.
                try Task.checkCancellation()
                return response.header
            }
            do {
                try await nextChange(of: stateKey, from: response.header.revision + 1)
            } catch let error as CoordinationError where error.code == .compacted {
                // The history to watch from is gone: try the gate again.
            }
        }
    }

    /// Returns at the first change of `key` from `revision` on.
    private func nextChange(of key: [UInt8], from revision: Int64) async throws {
        for try await response in client.watch(key, options: WatchOptions(startRevision: revision)) where !response.events.isEmpty {
            return
        }
        try Task.checkCancellation()
        throw CoordinationError(.protocolError, "the watch on \(String(decoding: key, as: UTF8.self)) ended without an event")
    }

    /// Deletes a visit key, even when the calling task is cancelled.
    private func remove(_ key: [UInt8]) async {
        let client = client
        _ = try? await Task { try await client.delete(key) }.value
    }

    /// Runs `operation` until it ends or this object is closed; maps a cancelled
    /// operation to `aborted` and a closed object to `shutdown`.
    private func untilClosed<T: Sendable>(
        _ aborted: @autoclosure () -> ConcurrencyError,
        _ operation: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        if closed.isOpen { throw FortressError.shutdown() }
        let closed = closed
        do {
            return try await withThrowingTaskGroup(of: T?.self) { group -> T in
                group.addTask { try await operation() }
                group.addTask {
                    await closed.wait()  // returns when closed, or when cancelled
                    return nil
                }
                defer { group.cancelAll() }
                while let next = try await group.next() {
                    if let value = next { return value }
                    if closed.isOpen { throw FortressError.shutdown() }
                }
                throw CancellationError()
            }
        } catch {
            if closed.isOpen { throw FortressError.shutdown() }
            if Task.isCancelled { throw aborted() }
            throw error
        }
    }

    static func sessionLost(_ session: Session) -> ConcurrencyError {
        ConcurrencyError(.sessionExpired, "the session's lease \(session.leaseKeySuffix) is gone, so no visit can hang on it; create a new session")
    }
}
