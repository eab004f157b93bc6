/// An error of a coordination primitive (a lock, an election, an STM transaction or a
/// fortress), with etcd's and juju's meanings.
///
/// Match on ``code``; new codes may be added later. Errors of the store itself (a
/// lost connection, a compacted revision) are passed through unchanged.
public struct ConcurrencyError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        let name: String

        /// ``DistributedMutex/tryLock()`` found the mutex held by another session, or
        /// ``Semaphore/tryAcquire()`` found no permit free.
        public static let locked = Code(name: "locked")
        /// The session's lease is gone (expired, revoked, or the waiter's key was deleted).
        public static let sessionExpired = Code(name: "sessionExpired")
        /// A proclaim or resign by a campaigner that is not (or no longer) the leader.
        public static let notLeader = Code(name: "notLeader")
        /// The election has no leader.
        public static let noLeader = Code(name: "noLeader")
        /// An STM transaction conflicted more often than its retry bound allows.
        public static let conflictRetriesExhausted = Code(name: "conflictRetriesExhausted")
        /// A fortress call was cancelled before it took effect (juju's `ErrAborted`).
        public static let aborted = Code(name: "aborted")
        /// The fortress was shut down (juju's `ErrShutdown`).
        public static let shutdown = Code(name: "shutdown")
        /// An argument was out of range (a count or number of permits below 1, a
        /// retry bound below 1, a key under a sequential prefix that is not a sequence number).
        public static let invalidArgument = Code(name: "invalidArgument")
        /// ``Barrier/hold()`` found the barrier already held (etcd's `ErrKeyExists`).
        public static let keyExists = Code(name: "keyExists")
        /// More participants entered a ``DoubleBarrier`` than its count (etcd's `ErrTooManyClients`).
        public static let tooManyParticipants = Code(name: "tooManyParticipants")

        public var description: String { name }
    }

    /// What went wrong.
    public var code: Code
    /// What was wrong and what to do.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
