/// What a client knows of the store's identity and history, and the rules by which a
/// reply proves that Redis lost data behind the store's back
/// (``CoordinationError/Code/storeReset``). No I/O: the client feeds it every reply.
///
/// The store keeps an identity (`{ns}:id`, see kv.lua): a random ID, new whenever the
/// data is found missing, and an *epoch* that begins anew whenever a connection reaches
/// a different Redis process (a restart, a failover). A reply proves a reset when:
/// - its store ID differs from the one known (the data was recreated), or the ID is
///   missing where one was known;
/// - its revision is below one this client had seen before it sent the request (a
///   linearizable store never goes back: a restore from an older RDB, a failover to a
///   replica that lagged);
/// - it shows a new epoch whose base revision is below one the client had seen: the
///   store was at that base after having been past it.
/// Requests sent before a reset and answered after it are reported too, so that no
/// caller carries on with the old history unawares.
struct StoreIncarnation: Sendable, Hashable {
    /// An epoch of the store: tokens of keys created at revision r > base are
    /// start + (r - base).
    struct Epoch: Sendable, Hashable {
        var base: Int64
        var start: Int64
    }

    /// What a request remembers when it is sent.
    struct Ticket: Sendable, Hashable {
        var highest: Int64
        var generation: Int
    }

    enum Verdict: Sendable, Hashable {
        case consistent
        /// This reply shows a reset, described by the message.
        case reset(String)
        /// A reset was detected after the request was sent.
        case crossedReset
    }

    private(set) var id: String?
    /// The highest revision seen in this generation.
    private(set) var highest: Int64 = 0
    /// Counts the resets detected.
    private(set) var generation = 0
    /// The newest epoch seen.
    private(set) var current: Epoch?

    func ticket() -> Ticket { Ticket(highest: highest, generation: generation) }

    /// Takes in a reply of store `id` at `revision` in `epoch`, for a request sent with `ticket`.
    ///
    /// With `record` false the revision is checked but not yet counted as seen: with
    /// durability, a revision counts once the replicas have it (``confirm(_:sentWith:)``),
    /// so that a failover which takes back only writes that were never acknowledged
    /// (their WAIT fell short) is not taken for a loss.
    mutating func observe(id: String, revision: Int64, epoch: Epoch, sentWith ticket: Ticket, record: Bool = true) -> Verdict {
        if ticket.generation != generation { return .crossedReset }
        if let known = self.id, known != id {
            return reset(to: id, revision: revision, epoch: epoch,
                         "the store's identity changed from \(known) to \(id): Redis lost the store's data (a restart without persistence, FLUSHALL or FLUSHDB, a failover to an empty replica)")
        }
        if revision < ticket.highest {
            return reset(to: id, revision: revision, epoch: epoch,
                         "the store's revision went back from \(ticket.highest) to \(revision): Redis lost acknowledged writes (a restore from an older RDB or AOF, a failover to a replica that lagged)")
        }
        if epoch != current, current.map({ epoch.start > $0.start }) ?? true, epoch.base < ticket.highest {
            return reset(to: id, revision: revision, epoch: epoch,
                         "Redis restarted or failed over at revision \(epoch.base), below revision \(ticket.highest) already seen: acknowledged writes were lost (a restore from an older RDB or AOF, a failover to a replica that lagged)")
        }
        self.id = id
        if record { highest = max(highest, revision) }
        if current.map({ epoch.start > $0.start }) ?? true { current = epoch }
        return .consistent
    }

    /// Counts `revision`, observed with `record` false for a request sent with `ticket`,
    /// as seen: the replicas have it now. Nothing, if a reset came in between.
    mutating func confirm(_ revision: Int64, sentWith ticket: Ticket) {
        guard ticket.generation == generation else { return }
        highest = max(highest, revision)
    }

    /// Takes in the finding that the store has no identity (its data is gone) where
    /// this client knew one.
    mutating func observeMissing(sentWith ticket: Ticket) -> Verdict {
        if ticket.generation != generation { return .crossedReset }
        guard let known = id else { return .consistent }
        generation += 1
        id = nil
        highest = 0
        current = nil
        return .reset("the store \(known) is gone: Redis lost its data (a restart without persistence, FLUSHALL or FLUSHDB, a failover to an empty replica)")
    }

    private mutating func reset(to id: String, revision: Int64, epoch: Epoch, _ message: String) -> Verdict {
        generation += 1
        self.id = id
        highest = revision
        current = epoch
        return .reset(message)
    }

    /// The fencing token of a key created at `createRevision` in the current epoch;
    /// nil when it was created before it began (the store's list of epochs tells).
    func token(createRevision: Int64) -> Int64? {
        guard let current, createRevision > current.base else { return nil }
        return current.start + (createRevision - current.base)
    }

    /// The token of a key created at `createRevision`, from the store's own list of
    /// epochs (oldest first): the epoch with the greatest base below it.
    static func token(createRevision: Int64, epochs: [Epoch]) -> Int64? {
        guard let epoch = epochs.last(where: { $0.base < createRevision }) else { return nil }
        return epoch.start + (createRevision - epoch.base)
    }
}
