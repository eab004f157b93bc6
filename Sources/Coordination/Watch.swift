import RedisClient
import Synchronization

/// One change to a key, as a watch reports it.
public struct WatchEvent: Sendable, Hashable {
    /// What happened.
    public enum Kind: String, Sendable, Hashable {
        case put, delete
    }

    public var kind: Kind
    /// The key after the change; for a delete, only the key and the deletion's mod revision.
    public var kv: KeyValue
    /// The pair before the change, when the watch asked for it and history still has it.
    public var prevKV: KeyValue?
}

/// Events of one or more consecutive revisions (never part of a revision), or a
/// progress notification.
public struct WatchResponse: Sendable, Hashable {
    public var header: ResponseHeader
    /// The events, in revision order.
    public var events: [WatchEvent]

    /// A progress notification: no events, and every event up to `header.revision`
    /// has been delivered.
    public var isProgressNotify: Bool { events.isEmpty }
}

/// What to watch, as etcd's WatchCreateRequest.
public struct WatchOptions: Sendable, Hashable {
    /// End of the range, exclusive: empty for one key, `[0]` for every key from `key` on.
    public var rangeEnd: [UInt8] = []
    /// The first revision to report (inclusive). 0 reports changes after the revision
    /// that is current when the watch is established, which happens asynchronously
    /// after ``CoordinationClient/watch(_:options:)`` returns: to miss nothing after a
    /// read, watch from that read's header revision + 1.
    public var startRevision: Int64 = 0
    /// Attach the previous pair to each event.
    public var prevKV = false
    /// Leave out puts.
    public var noPut = false
    /// Leave out deletes.
    public var noDelete = false
    /// Send a progress notification (a response without events, see
    /// ``WatchResponse/isProgressNotify``) every `progressInterval`.
    public var progressNotify = false
    /// How often progress notifications come (etcd's server default is 10 minutes).
    public var progressInterval: Duration = .seconds(600)

    public init(rangeEnd: [UInt8] = [], startRevision: Int64 = 0, prevKV: Bool = false, noPut: Bool = false, noDelete: Bool = false,
                progressNotify: Bool = false, progressInterval: Duration = .seconds(600)) {
        self.rangeEnd = rangeEnd
        self.startRevision = startRevision
        self.prevKV = prevKV
        self.noPut = noPut
        self.noDelete = noDelete
        self.progressNotify = progressNotify
        self.progressInterval = progressInterval
    }

    /// Every key that starts with `prefix`.
    public static func prefix(_ prefix: [UInt8], startRevision: Int64 = 0) -> WatchOptions {
        WatchOptions(rangeEnd: RangeOptions.prefixEnd(prefix), startRevision: startRevision)
    }
}

/// A revision of the event log.
struct LogEntry: Sendable {
    var revision: Int64
    var events: [WatchEvent]
}

/// Reads the namespace's event log once for every watcher of a client.
///
/// The reader keeps a position (the last revision it handed out) and reads after it
/// with a blocking `XREAD` on a connection of its own; after a lost connection it
/// reads again from the same position, so watchers see no gap and no duplicate.
/// Once no watcher has been there for ``idleLinger`` the reader stops (and closes its
/// connections), so that a client whose watches have ended stops reading the log on
/// every write; the next watch starts a reader again, at the revision of then.
/// A watcher that starts in the past first replays the log from its start revision
/// while live entries are buffered for it, then switches to the live feed.
final class WatchHub: Sendable {
    final class Watcher: Sendable {
        struct State {
            var catchingUp = true
            var buffered: [LogEntry] = []
            var delivered: Int64
        }

        let key: [UInt8]
        let options: WatchOptions
        let continuation: AsyncThrowingStream<WatchResponse, any Error>.Continuation
        let state: Mutex<State>

        init(key: [UInt8], options: WatchOptions, delivered: Int64, continuation: AsyncThrowingStream<WatchResponse, any Error>.Continuation) {
            self.key = key
            self.options = options
            self.continuation = continuation
            self.state = Mutex(State(delivered: delivered))
        }

        func matches(_ key: [UInt8]) -> Bool {
            if options.rangeEnd.isEmpty { return key == self.key }
            if !key.lexicographicallyPrecedes(self.key) {
                return options.rangeEnd == [0] || key.lexicographicallyPrecedes(options.rangeEnd)
            }
            return false
        }
    }

    struct State {
        var watchers: [Int: Watcher] = [:]
        var nextID = 0
        var position: Int64 = -1
        var reader: Task<Void, Never>?
        /// The reader's connection, and its Redis client ID (for `CLIENT UNBLOCK`).
        var connection: RedisConnection?
        var clientID: Int64?
        /// Every entry up to here has been handed to every watcher.
        var dispatched: Int64 = -1
        /// The store generation (resets detected) the position belongs to.
        var generation = 0
        /// Since when the reader has had no watcher (nil while it has one, or a watch
        /// is starting).
        var idleSince: ContinuousClock.Instant?
        /// The client closed (``stop()``): no reader starts again.
        var stopped = false
    }

    /// How long the reader goes on without watchers before it stops.
    static let idleLinger: Duration = .seconds(2)

    /// The revision up to which every watcher has been given its events.
    var dispatched: Int64 { state.withLock { $0.dispatched } }

    let store: CoordinationClient
    let logKey: [UInt8]
    let idKey: [UInt8]
    let revKey: [UInt8]
    let state = Mutex(State())

    init(store: CoordinationClient) {
        self.store = store
        self.logKey = Array("{\(store.namespace)}:log".utf8)
        self.idKey = Array("{\(store.namespace)}:id".utf8)
        self.revKey = Array("{\(store.namespace)}:rev".utf8)
    }

    /// Starts the reader on first use, at the store's current revision; returns the
    /// position and the store generation it belongs to.
    func ensureReader() async throws -> (position: Int64, generation: Int) {
        let running = state.withLock { state -> (Int64, Int)? in
            guard state.reader != nil else { return nil }
            state.idleSince = nil
            return (state.position, state.generation)
        }
        if let running { return running }
        while true {
            // The generation first: a reset noticed from here on (by the revision's own
            // reply too) changes it, and the reader is not installed at the old one.
            let generation = store.incarnation.withLock { $0.generation }
            let current = try await store.currentRevision()
            var configuration = try store.readerConfiguration
            configuration.commandTimeout = .seconds(10)
            configuration.clientName = Self.readerName(store.namespace)
            let placement = store.watchReader
            let connection: RedisConnection
            if let placement {
                connection = try await placement.open(configuration)
            } else {
                connection = try await RedisConnection.connect(configuration)
            }
            let clientID = try? await connection.send([Array("CLIENT".utf8), Array("ID".utf8)], timeout: nil).int
            enum Start { case running(Int64, Int), retry, closed }
            let started = state.withLock { state -> Start in
                // Closed while this reader connected: it must not outlive the client.
                if state.stopped { return .closed }
                if state.reader == nil {
                    // A reset noticed since the revision was read (its endAll found no
                    // reader to move on): that revision belongs to the old history, and a
                    // reader at its generation would find every later check crossing the
                    // reset and hand out nothing. Start again from the new history.
                    guard store.incarnation.withLock({ $0.generation }) == generation else { return .retry }
                    state.position = current
                    state.dispatched = current
                    state.generation = generation
                    state.connection = connection
                    state.clientID = clientID
                    state.reader = Task(executorPreference: placement?.executor) { [self] in await readLoop(connection) }
                    return .running(state.position, state.generation)
                }
                Task { await connection.close() }
                return .running(state.position, state.generation)
            }
            switch started {
            case .running(let position, let generation):
                return (position, generation)
            case .closed:
                await connection.close()
                throw RedisError(.connectionClosed, "the client was closed while its watch started")
            case .retry:
                await connection.close()
            }
        }
    }

    /// The store was reset (see ``CoordinationError/Code/storeReset``): every watch
    /// ends with `error`, and the reader goes on from `revision` of the new history.
    func endAll(_ error: CoordinationError, revision: Int64, generation: Int) {
        let watchers = state.withLock { state -> [Watcher] in
            defer { state.watchers = [:] }
            if state.reader != nil && generation > state.generation {
                state.position = revision
                state.dispatched = revision
                state.generation = generation
            }
            return Array(state.watchers.values)
        }
        for watcher in watchers { watcher.continuation.finish(throwing: error) }
    }

    /// Stops the reader and ends every watch.
    func stop() async {
        let (reader, connection, clientID, watchers) = state.withLock { state -> (Task<Void, Never>?, RedisConnection?, Int64?, [Watcher]) in
            defer { state.reader = nil; state.connection = nil; state.clientID = nil; state.watchers = [:]; state.stopped = true }
            return (state.reader, state.connection, state.clientID, Array(state.watchers.values))
        }
        reader?.cancel()
        // A read blocked in Redis holds the connection (and its close) for up to a
        // second: unblock it from the client's own connection, once Redis confirms the
        // ID is still the reader's (a reconnect, to another server after a failover,
        // gives it a new one, and the old one may be another application's client
        // there). Where the user may not run CLIENT, the read runs out by itself.
        if reader != nil, let clientID {
            let id = Array(String(clientID).utf8)
            let listed = try? await store.redis.send([Array("CLIENT".utf8), Array("LIST".utf8), Array("ID".utf8), id], timeout: .seconds(1)).string
            if let listed, listed.contains(" name=\(Self.readerName(store.namespace)) ") {
                _ = try? await store.redis.send([Array("CLIENT".utf8), Array("UNBLOCK".utf8), id], timeout: .seconds(1))
            }
        }
        await connection?.close()
        await reader?.value
        for watcher in watchers { watcher.continuation.finish() }
    }

    /// What ``add(_:generation:)`` did.
    enum Admission {
        /// The watcher is in, with this ID.
        case added(Int)
        /// The store has been reset since the watcher's start position was read (its
        /// start belongs to the old history).
        case storeReset
        /// The reader stopped (idle) since the position was read: start it again.
        case readerStopped
    }

    /// Adds a watcher that started from a position of store generation `generation`.
    func add(_ watcher: Watcher, generation: Int) -> Admission {
        state.withLock { state in
            guard state.generation == generation else { return .storeReset }
            guard state.reader != nil else { return .readerStopped }
            let id = state.nextID
            state.nextID += 1
            state.watchers[id] = watcher
            return .added(id)
        }
    }

    /// Whether the reader ends now: it has had no watcher for ``idleLinger``. Decided
    /// under the lock, where ``ensureReader()`` sees it and starts a new one.
    private func stopIfIdle() -> Bool {
        state.withLock { state in
            guard state.watchers.isEmpty else {
                state.idleSince = nil
                return false
            }
            let now = ContinuousClock.now
            guard let since = state.idleSince else {
                state.idleSince = now
                return false
            }
            guard now - since >= Self.idleLinger else { return false }
            state.reader = nil
            state.connection = nil
            state.clientID = nil
            state.idleSince = nil
            return true
        }
    }

    func remove(_ id: Int) {
        _ = state.withLock { $0.watchers.removeValue(forKey: id) }
    }

    /// Reads the log after the position and hands entries out: a blocking `XREAD`
    /// (it returns as soon as an entry is written, or after a second without one) with
    /// the store's identity check behind it in the same write, so that one round trip
    /// both waits for entries and checks, as soon as they are read, that they belong to
    /// the history the position does. The check is `MULTI`, `HMGET` of the identity,
    /// `GET` of the revision, `EXEC` (about half a script's cost in Redis); where the
    /// Redis user may not run `MULTI` or `EXEC`, a script reads the same.
    private func readLoop(_ connection: RedisConnection) async {
        // With durability, what a read saw counts as seen only once the replicas have it.
        let record = store.durability == nil
        var checkByScript = false
        while !Task.isCancelled && !stopIfIdle() {
            let (position, generation) = state.withLock { ($0.position, $0.generation) }
            do {
                // Entries read before (or with) a check that finds the history unchanged
                // belong to it; otherwise they are never handed out.
                let read: [[UInt8]] = [Array("XREAD".utf8), Array("COUNT".utf8), Array("512".utf8), Array("BLOCK".utf8), Array("1000".utf8),
                                       Array("STREAMS".utf8), logKey, Array("\(position)-0".utf8)]
                let reply: RedisReply
                let same: Bool
                if checkByScript {
                    let outcome = ReadOutcome()
                    connection.send(read, timeout: .seconds(10)) { result in outcome.result.withLock { $0 = result } }
                    // Redis runs it once the read returns: replies come back in order.
                    let check = try await connection.run(Self.identityScript, keys: [idKey, revKey], timeout: .seconds(10))
                    guard let result = outcome.result.withLock({ $0 }) else {
                        throw CoordinationError(.protocolError, "the log read had no reply before the identity check sent behind it")
                    }
                    reply = try result.get()
                    same = try checkHistory(Self.identityParts(check), position: position, generation: generation, record: record)
                } else {
                    let results = await connection.pipeline([
                        read,
                        [Array("MULTI".utf8)],
                        [Array("HMGET".utf8), idKey, Array("id".utf8), Array("epoch".utf8), Array("base".utf8)],
                        [Array("GET".utf8), revKey],
                        [Array("EXEC".utf8)],
                    ], timeout: .seconds(10))
                    if results.contains(where: { outcome in
                        if case .failure(let error as RedisError) = outcome { return error.code == .noPermission }
                        return false
                    }) {
                        // The user may not run MULTI or EXEC: the script from now on.
                        checkByScript = true
                        continue
                    }
                    reply = try results[0].get()
                    let exec = try results[4].get()
                    guard let values = exec.array, values.count == 2, let identity = values[0].array, identity.count == 3 else {
                        throw CoordinationError(.protocolError, "the identity check returned \(exec)")
                    }
                    // A missing revision (no write yet) reads as 1 in the check, as in the script.
                    same = try checkHistory(identity + [values[1]], position: position, generation: generation, record: record)
                }
                guard same else { continue }
                let entries = Self.parseXRead(reply)
                guard let last = entries.last else { continue }
                if let durability = store.durability {
                    // Handed out only once the replicas have them, as etcd's watchers see
                    // only committed revisions: a failover cannot take back an event a
                    // watcher was given. Short of that, read them again (the WAIT paces it).
                    guard try await durability.replicasReached(on: connection, namespace: store.namespace) >= Int64(durability.replicas) else { continue }
                    store.incarnation.withLock {
                        $0.confirm(last.revision, sentWith: StoreIncarnation.Ticket(highest: max(position, 0), generation: generation))
                    }
                }
                if let first = entries.first, first.revision > position + 1, position >= 1 {
                    // Compaction trimmed entries this reader had not read yet: the watchers
                    // cannot be given a complete history any more.
                    let (watchers, compacted) = state.withLock { state -> ([Watcher], Int64) in
                        // After a reset the watchers are the new history's: not these entries' to end.
                        guard state.generation == generation else { return ([], first.revision) }
                        defer { state.watchers = [:] }
                        return (Array(state.watchers.values), first.revision)
                    }
                    for watcher in watchers {
                        watcher.continuation.finish(throwing: CoordinationError(.compacted, "required revision \(position + 1) has been compacted; the oldest available is \(compacted)", compactRevision: compacted))
                    }
                }
                let watchers = state.withLock { state -> [Watcher] in
                    guard state.generation == generation else { return [] }
                    state.position = last.revision
                    return Array(state.watchers.values)
                }
                for watcher in watchers { await deliver(entries, to: watcher) }
                state.withLock { state in
                    // After a reset the position and what was dispatched are the new history's.
                    if state.generation == generation { state.dispatched = last.revision }
                }
            } catch {
                // Lost connection or timeout: read again from the same position.
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        await connection.close()
    }

    /// The reader connection's client name.
    static func readerName(_ namespace: String) -> String { "coord-watch-\(namespace)" }

    /// The blocking read's reply, handed over from the connection's thread.
    private final class ReadOutcome: Sendable {
        let result = Mutex<Result<RedisReply, any Error>?>(nil)
    }

    /// The identity script's reply as the check takes it: the store's ID, epoch and
    /// base, and its revision.
    private static func identityParts(_ reply: RedisReply) throws -> [RedisReply] {
        guard let parts = reply.array, parts.count == 4 else {
            throw CoordinationError(.protocolError, "the identity check returned \(reply)")
        }
        return parts
    }

    /// Checks the store's identity and revision read with the log (`parts`: its ID,
    /// epoch, base and revision) against what the client knows, with `position` as a
    /// revision already seen; false (and every watch ended, by the client) when the
    /// store was reset.
    private func checkHistory(_ parts: [RedisReply], position: Int64, generation: Int, record: Bool) throws -> Bool {
        let revision = parts[3].int ?? 1
        let verdict = store.incarnation.withLock { incarnation -> StoreIncarnation.Verdict in
            let ticket = StoreIncarnation.Ticket(highest: max(position, 0), generation: generation)
            guard let id = parts[0].string, let start = parts[1].int, let base = parts[2].int else {
                return incarnation.observeMissing(sentWith: ticket)
            }
            return incarnation.observe(id: id, revision: revision, epoch: StoreIncarnation.Epoch(base: base, start: start), sentWith: ticket, record: record)
        }
        switch verdict {
        case .consistent:
            return true
        case .crossedReset:
            return false
        case .reset:
            try? store.act(on: verdict, revision: revision)
            return false
        }
    }

    /// The store's ID, epoch and base, and its revision, in one round trip (for a Redis
    /// user that may not run MULTI and EXEC).
    static let identityScript = RedisScript("local i = redis.call('HMGET', KEYS[1], 'id', 'epoch', 'base'); return {i[1], i[2], i[3], redis.call('GET', KEYS[2]) or '1'}")

    /// Hands live entries to a watcher, or buffers them while it replays history.
    func deliver(_ entries: [LogEntry], to watcher: Watcher) async {
        let ready = watcher.state.withLock { state -> [LogEntry] in
            if state.catchingUp {
                state.buffered.append(contentsOf: entries)
                return []
            }
            let fresh = entries.filter { $0.revision > state.delivered }
            if let last = fresh.last { state.delivered = last.revision }
            return fresh
        }
        await send(ready, to: watcher)
    }

    /// Filters, adds previous pairs, and yields one response per batch.
    func send(_ entries: [LogEntry], to watcher: Watcher) async {
        guard let lastRevision = entries.last?.revision else { return }
        var events: [WatchEvent] = []
        for entry in entries {
            for var event in entry.events where watcher.matches(event.kv.key) {
                if event.kind == .put && watcher.options.noPut { continue }
                if event.kind == .delete && watcher.options.noDelete { continue }
                if watcher.options.prevKV {
                    event.prevKV = try? await store.get(event.kv.key, options: RangeOptions(revision: entry.revision - 1)).kvs.first
                }
                events.append(event)
            }
        }
        if !events.isEmpty {
            watcher.continuation.yield(WatchResponse(header: ResponseHeader(revision: lastRevision), events: events))
        }
    }

    static func parseXRead(_ reply: RedisReply) -> [LogEntry] {
        guard let streams = reply.array, let stream = streams.first?.array, stream.count == 2, let items = stream[1].array else { return [] }
        return items.compactMap(parseEntry)
    }

    static func parseEntry(_ item: RedisReply) -> LogEntry? {
        guard let pair = item.array, pair.count == 2, let id = pair[0].string,
              let revision = id.split(separator: "-").first.flatMap({ Int64($0) }), let fields = pair[1].array else { return nil }
        var events: [WatchEvent] = []
        var index = 0
        while index + 1 < fields.count {
            defer { index += 2 }
            guard fields[index].string == "e", let bytes = fields[index + 1].bytes, let packed = (try? MessagePack.decode(bytes))?.array else { continue }
            for item in packed {
                guard let f = item.array, f.count == 7,
                      let kind = f[0].text.flatMap(WatchEvent.Kind.init(rawValue:)), let key = f[1].bytes,
                      let create = f[2].int, let mod = f[3].int, let version = f[4].int,
                      let lease = f[5].text.flatMap({ Int64($0) }), let value = f[6].bytes else { continue }
                events.append(WatchEvent(kind: kind, kv: KeyValue(key: key, value: value, createRevision: create, modRevision: mod, version: version, lease: lease), prevKV: nil))
            }
        }
        return LogEntry(revision: revision, events: events)
    }
}

extension CoordinationClient {
    /// Watches a key or a range for changes: an AsyncSequence of responses, in revision
    /// order, with no gaps and no duplicates, every revision's events together.
    ///
    /// With `options.startRevision` the watch first replays history from that revision
    /// (inclusive). When that history has been compacted the sequence throws
    /// ``CoordinationError/Code/compacted`` naming the oldest revision available.
    /// The sequence ends when the consumer stops iterating.
    public func watch(_ key: [UInt8], options: WatchOptions = WatchOptions()) -> AsyncThrowingStream<WatchResponse, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: WatchResponse.self)
        let hub = watchHub
        let registration = WatchRegistration()
        let task = Task {
            do {
                // Returns once the watch is live (or, with progress notifications, when it ends).
                try await self.startWatch(key, options: options, hub: hub, registration: registration, continuation: continuation)
            } catch {
                continuation.finish(throwing: error)
                if let id = registration.end() { hub.remove(id) }
            }
        }
        continuation.onTermination = { _ in
            task.cancel()
            if let id = registration.end() { hub.remove(id) }
        }
        return stream
    }

    /// Watches a text key.
    public func watch(_ key: String, options: WatchOptions = WatchOptions()) -> AsyncThrowingStream<WatchResponse, any Error> {
        watch(Array(key.utf8), options: options)
    }

    /// Adds the watcher to the hub, from the reader's position (or the start revision);
    /// again from a new reader's when the one it read stopped meanwhile.
    private func admit(_ key: [UInt8], options: WatchOptions, hub: WatchHub,
                       continuation: AsyncThrowingStream<WatchResponse, any Error>.Continuation) async throws -> (Int, WatchHub.Watcher, Int64) {
        while true {
            let (position, generation) = try await hub.ensureReader()
            let start = options.startRevision > 0 ? options.startRevision : position + 1
            let watcher = WatchHub.Watcher(key: key, options: options, delivered: start - 1, continuation: continuation)
            switch hub.add(watcher, generation: generation) {
            case .added(let id):
                return (id, watcher, start)
            case .storeReset:
                throw CoordinationError(.storeReset, "the store was reset while this watch started (Redis lost data); re-read the state and watch again")
            case .readerStopped:
                try Task.checkCancellation()
            }
        }
    }

    private func startWatch(_ key: [UInt8], options: WatchOptions, hub: WatchHub, registration: WatchRegistration,
                            continuation: AsyncThrowingStream<WatchResponse, any Error>.Continuation) async throws {
        guard !key.isEmpty else { throw CoordinationError(.emptyKey, "key is not provided: a watch needs a key") }
        let (id, watcher, start) = try await admit(key, options: options, hub: hub, continuation: continuation)
        guard registration.begin(id) else {
            // The consumer left before the watch was registered.
            hub.remove(id)
            return
        }
        // Replay history from `start` while the hub buffers live entries for this watcher.
        let compacted = try await compactedRevision()
        if start < compacted {
            throw CoordinationError(.compacted, "required revision \(start) has been compacted; the oldest available is \(compacted)", compactRevision: compacted)
        }
        var cursor = start - 1
        while true {
            let reply = try await redis.send(
                [Array("XRANGE".utf8), hub.logKey, Array("(\(cursor)-0".utf8), Array("+".utf8), Array("COUNT".utf8), Array("512".utf8)], timeout: nil)
            let entries = (reply.array ?? []).compactMap(WatchHub.parseEntry)
            if start > 1 || cursor > start - 1, let first = entries.first, first.revision > max(cursor + 1, 2) {
                // History after the cursor was trimmed by compaction (the log has one entry per revision).
                throw CoordinationError(.compacted, "required revision \(start) has been compacted; the oldest available is \(max(compacted, first.revision))", compactRevision: max(compacted, first.revision))
            }
            let fresh = watcher.state.withLock { state -> [LogEntry] in
                let fresh = entries.filter { $0.revision > state.delivered }
                if let last = fresh.last { state.delivered = last.revision }
                return fresh
            }
            await hub.send(fresh, to: watcher)
            guard let last = entries.last, entries.count == 512 else { break }
            cursor = last.revision
        }
        // Switch to the live feed: drain what was buffered meanwhile, in order.
        while true {
            let buffered = watcher.state.withLock { state -> [LogEntry] in
                let fresh = state.buffered.filter { $0.revision > state.delivered }
                state.buffered = []
                if let last = fresh.last { state.delivered = last.revision }
                if fresh.isEmpty { state.catchingUp = false }
                return fresh
            }
            if buffered.isEmpty { break }
            await hub.send(buffered, to: watcher)
        }
        // Progress: once the hub has handed out everything up to R (so this watcher
        // has every event up to R), say so.
        while options.progressNotify && !Task.isCancelled {
            try await Task.sleep(for: options.progressInterval)
            // hub.dispatched only advances after every watcher's events up to it were yielded.
            let revision = hub.dispatched
            continuation.yield(WatchResponse(header: ResponseHeader(revision: revision), events: []))
        }
    }
}

/// Links a watch's consumer to its hub registration, whichever side ends first.
final class WatchRegistration: Sendable {
    private struct State {
        var id: Int?
        var ended = false
    }

    private let state = Mutex(State())

    /// Records the hub id; `false` when the watch already ended (the caller removes it).
    func begin(_ id: Int) -> Bool {
        state.withLock { state in
            if state.ended { return false }
            state.id = id
            return true
        }
    }

    /// Marks the watch ended and returns the id to remove from the hub, once.
    func end() -> Int? {
        state.withLock { state in
            state.ended = true
            defer { state.id = nil }
            return state.id
        }
    }
}
