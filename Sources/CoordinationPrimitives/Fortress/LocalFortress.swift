import Synchronization

/// A fortress inside one process: a gate that a guard unlocks and locks down, and
/// guests that visit while it is open (juju's `worker/fortress`).
///
/// The fortress starts locked: visits wait at the gate. ``unlock()`` lets them in,
/// many at a time. ``lockdown()`` shuts the gate at once and returns when the last
/// guest inside has left; from then until the next unlock, nothing runs inside, so
/// the guard can change what visits rely on. ``close()`` shuts the fortress down:
/// blocked and later calls throw ``ConcurrencyError/Code/shutdown``.
///
/// ```swift
/// let charmDirectory = LocalFortress()
/// // the metrics collector, a guest:
/// try await charmDirectory.visit { try await runMetricsHook() }
/// // the uniter, the guard:
/// try await charmDirectory.lockdown()   // no hook runs after this returns
/// try await upgradeCharm()
/// try await charmDirectory.unlock()
/// ```
///
/// ``Fortress`` is the same for guests and guards in different processes.
public final class LocalFortress: FortressGuard, FortressGuest, Sendable {
    private struct State {
        var unlocked = false
        var closed = false
        /// Visits running now.
        var inside = 0
        var nextID = 0
        /// Visits waiting at the gate.
        var guests: [Int: CheckedContinuation<Void, any Error>] = [:]
        /// Lockdowns waiting for the fortress to empty.
        var guards: [Int: CheckedContinuation<Void, any Error>] = [:]

        mutating func ticket() -> Int {
            defer { nextID += 1 }
            return nextID
        }
    }

    private let state = Mutex(State())

    /// A new fortress, locked.
    public init() {}

    /// Whether the gate is open (the last guard operation was an unlock).
    public var isUnlocked: Bool { state.withLock { $0.unlocked } }

    /// The number of visits running now.
    public var visitCount: Int { state.withLock { $0.inside } }

    /// Opens the gate; part of the ``FortressGuard`` role.
    /// - Throws: ``ConcurrencyError/Code/shutdown`` when the fortress is closed.
    public func unlock() async throws {
        let admitted = try state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            if state.closed { throw FortressError.shutdown() }
            state.unlocked = true
            let waiting = Array(state.guests.values)
            state.guests = [:]
            state.inside += waiting.count
            return waiting
        }
        for guest in admitted { guest.resume() }
    }

    /// Shuts the gate and waits until the fortress is empty; part of the
    /// ``FortressGuard`` role.
    /// - Throws: ``ConcurrencyError/Code/aborted`` when cancelled before the fortress
    ///   was empty (the gate stays shut); ``ConcurrencyError/Code/shutdown`` when the
    ///   fortress is closed.
    public func lockdown() async throws {
        let id = try state.withLock { state -> Int? in
            if state.closed { throw FortressError.shutdown() }
            state.unlocked = false
            return state.inside == 0 ? nil : state.ticket()
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome = state.withLock { state -> Result<Void, any Error>? in
                    if state.closed { return .failure(FortressError.shutdown()) }
                    if state.inside == 0 { return .success(()) }
                    if Task.isCancelled { return .failure(FortressError.abortedLockdown()) }
                    state.guards[id] = continuation
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.guards.removeValue(forKey: id) }
            waiter?.resume(throwing: FortressError.abortedLockdown())
        }
    }

    /// Waits until the gate is open, then runs `body` inside; part of the
    /// ``FortressGuest`` role.
    /// - Throws: ``ConcurrencyError/Code/aborted`` when cancelled before the visit
    ///   started; ``ConcurrencyError/Code/shutdown`` when the fortress was closed
    ///   before it started; otherwise whatever `body` throws.
    public func visit<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await enter()
        defer { leave() }
        return try await body()
    }

    /// Shuts the fortress down: blocked and later calls throw
    /// ``ConcurrencyError/Code/shutdown``. Visits already inside run to completion.
    public func close() {
        let (guests, guards) = state.withLock { state in
            state.closed = true
            state.unlocked = false
            defer { state.guests = [:]; state.guards = [:] }
            return (Array(state.guests.values), Array(state.guards.values))
        }
        for waiter in guests + guards { waiter.resume(throwing: FortressError.shutdown()) }
    }

    /// Whether ``close()`` was called.
    public var isClosed: Bool { state.withLock { $0.closed } }

    private func enter() async throws {
        let id = state.withLock { $0.ticket() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome = state.withLock { state -> Result<Void, any Error>? in
                    if state.closed { return .failure(FortressError.shutdown()) }
                    if Task.isCancelled { return .failure(FortressError.abortedVisit()) }
                    if state.unlocked {
                        state.inside += 1
                        return .success(())
                    }
                    state.guests[id] = continuation
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.guests.removeValue(forKey: id) }
            waiter?.resume(throwing: FortressError.abortedVisit())
        }
    }

    private func leave() {
        let guards = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            state.inside -= 1
            guard state.inside == 0 else { return [] }
            defer { state.guards = [:] }
            return Array(state.guards.values)
        }
        for waiter in guards { waiter.resume() }
    }
}
