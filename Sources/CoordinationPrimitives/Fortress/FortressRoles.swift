// A fortress is a metaphor for a readers-writer lock (juju's worker/fortress).
//
// Picture a fortress with a gate. At first the gate is shut: the fortress is
// locked and nobody may enter. A **guard** unlocks the gate, and **guests** come
// and go, many at a time, each for one **visit**. When the guard calls a
// **lockdown**, the gate shuts at once, so no new guest gets in, and the guard
// waits at the gate until every guest already inside has left. Once the lockdown
// returns, the fortress is empty and stays empty until a guard unlocks it again:
// the guard may now do what must not overlap any visit (juju upgrades a charm
// directory that hooks otherwise read in parallel).
//
// The roles are the two protocols below; ``LocalFortress`` plays both within one
// process, ``Fortress`` plays both for every process sharing a store and a prefix.

/// The guard of a fortress: opens the gate to guests (``unlock()``) and shuts it,
/// waiting until everyone inside has left (``lockdown()``) (juju's `fortress.Guard`).
///
/// A fortress starts locked. Several guards may share one fortress; they do not
/// take turns: the last operation wins, so an unlock after a lockdown lets guests
/// back in.
public protocol FortressGuard: Sendable {
    /// Opens the gate: waiting visits start, and new ones start at once.
    /// - Throws: ``ConcurrencyError/Code/shutdown`` when the fortress is closed.
    func unlock() async throws

    /// Shuts the gate at once, so that no new visit starts, then waits until every
    /// visit inside has finished.
    ///
    /// Cancelling the calling task is juju's `Abort`: the waiting stops and the call
    /// throws ``ConcurrencyError/Code/aborted``, but the gate stays shut; the visits
    /// already inside go on, and no new one starts until a guard unlocks again.
    /// A lockdown of an empty fortress returns at once, cancelled or not.
    /// - Throws: ``ConcurrencyError/Code/aborted`` when cancelled before the fortress
    ///   was empty; ``ConcurrencyError/Code/shutdown`` when the fortress is closed.
    func lockdown() async throws
}

/// A guest of a fortress: visits it while the gate is open (juju's `fortress.Guest`).
public protocol FortressGuest: Sendable {
    /// Waits until the fortress is unlocked, then runs `body` inside it and returns
    /// its result (or rethrows its error). A lockdown waits for the visit to end.
    ///
    /// Cancelling the calling task before the visit has started is juju's `Abort`:
    /// the visit throws ``ConcurrencyError/Code/aborted`` and `body` never runs. Once
    /// the visit has started it is no longer aborted and nobody ends it from outside
    /// (a lockdown waits for it): `body` runs to completion, seeing the task's
    /// cancellation as any other async code does.
    /// - Throws: ``ConcurrencyError/Code/aborted`` when cancelled before the visit
    ///   started; ``ConcurrencyError/Code/shutdown`` when the fortress is closed
    ///   before it started; otherwise whatever `body` throws.
    func visit<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T
}

/// The errors both fortresses throw, worded once.
enum FortressError {
    static func shutdown() -> ConcurrencyError {
        ConcurrencyError(.shutdown, "the fortress was closed; its calls no longer wait or act; create a new fortress object")
    }

    static func abortedVisit() -> ConcurrencyError {
        ConcurrencyError(.aborted, "the visit was cancelled before the fortress let it in; its body did not run")
    }

    static func abortedLockdown() -> ConcurrencyError {
        ConcurrencyError(.aborted, "the lockdown was cancelled before the last visit left; the fortress stays locked and visits inside go on")
    }

    static func abortedUnlock() -> ConcurrencyError {
        ConcurrencyError(.aborted, "the unlock was cancelled before the store confirmed it; the fortress may still be locked")
    }
}
