import Synchronization

/// A leader election among every process that uses the same store and prefix
/// (etcd's `concurrency.Election`).
///
/// Each candidate writes `prefix/<lease hex>` with its proposal, attached to its
/// session's lease; the key with the lowest create revision is the leader and its
/// value is the leader's current proclamation. Candidates queue in create-revision
/// order and each watches only the one ahead of it. When the leader's session ends
/// (closed, crashed or stalled past its TTL) its key goes and the next candidate is
/// elected.
///
/// ```swift
/// let election = Election(session: session, prefix: "/elections/scheduler")
/// try await election.campaign("node-1")        // returns once elected
/// try await election.proclaim("node-1, epoch 2")
/// try await election.resign()
/// ```
///
/// Watchers use ``observe()``: every proclamation and every new leader, in order.
public final class Election: Sendable {
    private struct State {
        var leaderKey: [UInt8] = []
        var leaderRevision: Int64 = 0
        var isLeader = false
        var elected = false
        var header: ResponseHeader?
    }

    /// The session whose lease the candidate's key is attached to.
    public let session: Session
    /// The key prefix of the candidates, ending in `/`.
    public let prefix: [UInt8]
    private let state: Mutex<State>

    /// An election over the keys `prefix/<lease hex>`.
    public init(session: Session, prefix: String) {
        self.session = session
        self.prefix = bytes(prefix + "/")
        self.state = Mutex(State())
    }

    /// Resumes leadership after a restart from what a previous incarnation recorded:
    /// its leader key and that key's create revision (``key`` and ``revision``), with
    /// a session that adopted the same lease (`Session(client:lease:)`).
    /// Proclaim and resign then work as if this object had campaigned; they fail
    /// with ``ConcurrencyError/Code/notLeader`` when the key is no longer the one recorded.
    public init(resuming session: Session, prefix: String, leaderKey: [UInt8], leaderRevision: Int64) {
        self.session = session
        self.prefix = bytes(prefix + "/")
        self.state = Mutex(State(leaderKey: leaderKey, leaderRevision: leaderRevision, isLeader: true, elected: true))
    }

    private var client: CoordinationClient { session.client }

    /// This candidate's key (empty when not campaigning).
    public var key: [UInt8] { state.withLock { $0.leaderKey } }
    /// The create revision of this candidate's key (0 when not campaigning).
    public var revision: Int64 { state.withLock { $0.leaderRevision } }
    /// The header of the request that won the election.
    public var header: ResponseHeader? { state.withLock { $0.header } }
    /// Whether this object believes it leads (it campaigned successfully and has not resigned).
    public var isLeader: Bool { state.withLock { $0.isLeader && $0.elected } }

    /// Campaigns with `value` and returns once elected.
    ///
    /// Campaigning again on the same session (for instance after a restart that kept
    /// the lease) keeps its place in the queue; a different value is proclaimed.
    /// - Throws: ``ConcurrencyError/Code/sessionExpired`` when the candidate's key
    ///   disappears while waiting; `CancellationError` (after resigning) when the task
    ///   is cancelled.
    public func campaign(_ value: [UInt8]) async throws {
        let key = prefix + bytes(session.leaseKeySuffix)
        let response: TxnResponse
        do {
            response = try await client.txn(Txn(
                compares: [Compare(key: key, .createRevision(0), .equal)],
                success: [.put(key: key, value: value, options: PutOptions(lease: session.lease))],
                failure: [.range(key: key, options: RangeOptions())]))
        } catch let error as RedisError where error.code == .outcomeUnknown {
            // The candidate key may have been written: do not leave it in the queue.
            await session.abandon(key)
            throw error
        }
        var revision = response.header.revision
        var current = value
        if !response.succeeded {
            guard case .range(let mine)? = response.responses.first, let kv = mine.kvs.first else {
                throw CoordinationError(.protocolError, "candidate key vanished inside a transaction")
            }
            revision = kv.createRevision
            current = kv.value
        }
        state.withLock { state in
            state.leaderKey = key
            state.leaderRevision = revision
            state.isLeader = true
            state.elected = false
            state.header = nil
        }
        if current != value {
            do {
                try await proclaim(value)
            } catch {
                await session.abandon(key, createRevision: revision)
                state.withLock { $0 = State() }
                throw error
            }
        }
        do {
            _ = try await client.waitDeletes(prefix: prefix, maxCreateRevision: revision - 1, ownKey: key)
        } catch {
            // Leave the queue (a candidate nobody knows about must not become leader);
            // when the key is already gone this does nothing.
            await session.abandon(key, createRevision: revision)
            state.withLock { $0 = State() }
            throw error
        }
        state.withLock { state in
            state.header = response.header
            state.elected = true
        }
    }

    /// Campaigns with a text value.
    public func campaign(_ value: String) async throws { try await campaign(bytes(value)) }

    /// Publishes a new value as the leader, without another election.
    /// - Throws: ``ConcurrencyError/Code/notLeader`` when this candidate is not (or no
    ///   longer) the leader.
    public func proclaim(_ value: [UInt8]) async throws {
        let (key, revision, leading) = state.withLock { ($0.leaderKey, $0.leaderRevision, $0.isLeader) }
        guard leading else { throw notLeader() }
        let response = try await client.txn(Txn(
            compares: [Compare(key: key, .createRevision(revision), .equal)],
            success: [.put(key: key, value: value, options: PutOptions(lease: session.lease))]))
        guard response.succeeded else {
            state.withLock { $0 = State() }
            throw notLeader()
        }
        state.withLock { $0.header = response.header }
    }

    /// Proclaims a text value.
    public func proclaim(_ value: String) async throws { try await proclaim(bytes(value)) }

    /// Gives up leadership (or the place in the queue) so that the next candidate is
    /// elected. Does nothing when not campaigning.
    public func resign() async throws {
        let (key, revision, leading) = state.withLock { ($0.leaderKey, $0.leaderRevision, $0.isLeader) }
        guard leading else { return }
        defer { state.withLock { $0 = State() } }
        let response = try await client.txn(Txn(
            compares: [Compare(key: key, .createRevision(revision), .equal)],
            success: [.delete(key: key, rangeEnd: [], prevKV: false)]))
        state.withLock { $0.header = response.header }
    }

    /// The current leader's key and proclaimed value.
    /// - Throws: ``ConcurrencyError/Code/noLeader`` when nobody is campaigning.
    public func leader() async throws -> KeyValue {
        let response = try await client.get(prefix, options: firstCreated)
        guard let kv = response.kvs.first else {
            throw ConcurrencyError(.noLeader, "election \(String(decoding: prefix, as: UTF8.self)) has no leader")
        }
        return kv
    }

    /// The leader's values as they change: the current leader's value first (once
    /// there is a leader), then every proclamation and every new leader's value, in
    /// revision order — never an older value after a newer one, and none skipped.
    ///
    /// - Parameter startRevision: observe from this revision instead of now (the
    ///   leader as of that revision first), for example the `modRevision` of the last
    ///   value a restarted observer saw.
    /// - Returns: a sequence that ends with `CoordinationError` `compacted` when the
    ///   history it needs was compacted away (observe again, from now, to continue),
    ///   and finishes when the consumer stops iterating.
    public func observe(startRevision: Int64 = 0) -> AsyncThrowingStream<KeyValue, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: KeyValue.self)
        let task = Task {
            do {
                try await self.observe(from: startRevision, into: continuation)
                continuation.finish()
            } catch is CancellationError {
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    private func observe(from startRevision: Int64, into continuation: AsyncThrowingStream<KeyValue, any Error>.Continuation) async throws {
        // The revision at which the last yielded value became the leader's value: a
        // new leader's value counts from when it took over, not from when it was written.
        var lastRevision: Int64 = 0
        func emit(_ kv: KeyValue, since revision: Int64) {
            guard revision > lastRevision else { return }
            lastRevision = revision
            continuation.yield(kv)
        }
        // The revision to read the leader at: 0 for now, else right after the
        // previous leader's key was deleted (so the next leader's first value is seen).
        var readAt = startRevision
        while !Task.isCancelled {
            var options = firstCreated
            options.revision = readAt
            let response = try await client.get(prefix, options: options)
            let seen = readAt > 0 ? readAt : response.header.revision
            var leader: KeyValue
            if let kv = response.kvs.first {
                leader = kv
            } else {
                // No leader: the first put under the prefix is the next leader.
                var found: KeyValue?
                for try await update in client.watch(prefix, options: .prefix(prefix, startRevision: seen + 1)) {
                    if let put = update.events.first(where: { $0.kind == .put }) {
                        found = put.kv
                        break
                    }
                }
                guard let found else { try Task.checkCancellation(); throw Self.watchEnded() }
                leader = found
            }
            emit(leader, since: max(leader.modRevision, readAt))
            // Follow this leader until its key is deleted.
            var deletedAt: Int64?
            for try await update in client.watch(leader.key, options: WatchOptions(startRevision: max(seen, leader.modRevision) + 1)) {
                for event in update.events {
                    if event.kind == .delete {
                        deletedAt = event.kv.modRevision
                        break
                    }
                    emit(event.kv, since: event.kv.modRevision)
                }
                if deletedAt != nil { break }
            }
            guard let deletedAt else { try Task.checkCancellation(); throw Self.watchEnded() }
            readAt = deletedAt
        }
    }

    private var firstCreated: RangeOptions {
        var options = RangeOptions.prefix(prefix)
        options.sortTarget = .create
        options.sortOrder = .ascend
        options.limit = 1
        return options
    }

    private static func watchEnded() -> CoordinationError {
        CoordinationError(.protocolError, "the election's watch ended (the client was closed); observe again to continue")
    }

    private func notLeader() -> ConcurrencyError {
        ConcurrencyError(.notLeader, "this candidate is not the leader of \(String(decoding: prefix, as: UTF8.self)) (it resigned, lost its session, or never won); campaign again")
    }
}
