import Coordination
import Foundation
import GRPCCore
import Logging
import Synchronization
import SwiftProtobuf

/// etcd's `Watch` service (v3rpc `watch.go`): one bidirectional stream carries any
/// number of watchers, created, cancelled and asked for progress by the client.
///
/// Every watcher of every stream reads the client's one log reader (the store's
/// watch hub), so events arrive in revision order with no gap and no duplicate.
/// Answers are etcd's: a create is answered `created` with the current revision
/// before any event; a start revision below the compacted one gets a response with
/// `compact_revision` and `canceled`; a cancel is answered `canceled`; a progress
/// request is answered with the current revision and watch ID -1.
public struct WatchService: Etcdserverpb_Watch.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger
    /// etcd's request limit (`--max-request-bytes`, 1.5 MiB): a batch of revisions is
    /// sent in responses of at most this size, split between revisions; and a revision
    /// whose response passes it plus etcd's gRPC headroom (512 KiB) is split into
    /// fragments when the watcher asked for them, as etcd's `sendFragments` splits it.
    let maxResponseBytes: Int

    /// The size past which a response is sent in fragments (etcd's `maxRequestBytes +
    /// grpcOverheadBytes`).
    var fragmentBytes: Int { maxResponseBytes + 512 * 1024 }

    /// Opened when the server begins shutting down: the stream ends with UNAVAILABLE.
    let stopping: Latch

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger, maxResponseBytes: Int = 1_572_864) {
        self.init(store: store, member: member, logger: logger, maxResponseBytes: maxResponseBytes, stopping: Latch())
    }

    init(store: CoordinationClient, member: EtcdMember, logger: Logger, maxResponseBytes: Int = 1_572_864, stopping: Latch) {
        self.store = store
        self.member = member
        self.logger = logger
        self.maxResponseBytes = maxResponseBytes
        self.stopping = stopping
    }

    /// The watchers of one stream, by watch ID.
    private final class Watchers: Sendable {
        private struct State {
            var tasks: [Int64: Task<Void, Never>] = [:]
            var nextID: Int64 = 0
        }
        private let state = Mutex(State())

        /// Reserves `requested` (0: the next free ID); nil when it is taken.
        func reserve(_ requested: Int64) -> Int64? {
            let id = state.withLock { state -> Int64? in
                if requested != 0 {
                    if state.tasks[requested] != nil { return nil }
                    state.tasks[requested] = Task {}
                    return requested
                }
                while state.tasks[state.nextID] != nil { state.nextID += 1 }
                let id = state.nextID
                state.nextID += 1
                state.tasks[id] = Task {}
                return id
            }
            if id != nil { APIMetrics.watchers.increment() }
            return id
        }

        func start(_ id: Int64, _ task: Task<Void, Never>) {
            state.withLock { $0.tasks[id] = task }
        }

        /// Removes a watcher; returns whether it existed (and cancels it).
        @discardableResult
        func cancel(_ id: Int64) -> Bool {
            let task = state.withLock { $0.tasks.removeValue(forKey: id) }
            task?.cancel()
            if task != nil { APIMetrics.watchers.decrement() }
            return task != nil
        }

        func forget(_ id: Int64) {
            if state.withLock({ $0.tasks.removeValue(forKey: id) }) != nil { APIMetrics.watchers.decrement() }
        }

        func cancelAll() {
            let tasks = state.withLock { state -> [Task<Void, Never>] in
                defer { state.tasks = [:] }
                return Array(state.tasks.values)
            }
            for task in tasks { task.cancel() }
            if !tasks.isEmpty { APIMetrics.watchers.decrement(by: Double(tasks.count)) }
        }
    }

    public func watch(
        request: RPCAsyncSequence<Etcdserverpb_WatchRequest, any Error>,
        response: RPCWriter<Etcdserverpb_WatchResponse>,
        context: ServerContext
    ) async throws {
        let (outgoing, send) = AsyncStream.makeStream(of: Etcdserverpb_WatchResponse.self)
        defer { send.finish() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // One writer, so that responses keep the order in which they were queued.
            group.addTask {
                for await message in outgoing { try await response.write(message) }
            }
            group.addTask {
                try await serve(request, send: { send.yield($0) })
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    /// One watch stream, whatever carries it (grpc-swift's stream, or
    /// ``GRPCFastPath``'s): the client's requests in, `send` for every response, in
    /// order. Returns only by throwing: the server stopping (UNAVAILABLE), a failed
    /// request, or cancellation when the client goes away. Every watcher of the stream
    /// is cancelled when it ends. Its watchers' tasks prefer `executor` (the fast path
    /// gives the stream's event loop, where their responses are written).
    func serve<Requests: AsyncSequence & Sendable>(
        _ requests: Requests, executor: (any TaskExecutor)? = nil, send: @escaping @Sendable (Etcdserverpb_WatchResponse) -> Void
    ) async throws where Requests.Element == Etcdserverpb_WatchRequest {
        let watchers = Watchers()
        APIMetrics.watchStreams.increment()
        defer {
            watchers.cancelAll()
            APIMetrics.watchStreams.decrement()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for try await message in requests {
                    try await handle(message, watchers: watchers, executor: executor, send: send)
                }
                // The client closed its side; its watchers go on until it cancels the call.
                while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
            }
            group.addTask {
                await stopping.wait()
                if !Task.isCancelled { throw EtcdErrors.serverStopped }
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    /// The Watch method for ``GRPCFastPath``, by gRPC path: request messages decoded
    /// (one that does not decode ends the stream with INTERNAL, as on etcd), responses
    /// encoded.
    func fastPathMethods() -> GRPCFastPath.StreamTable {
        ["/etcdserverpb.Watch/Watch": GRPCFastPath.StreamMethod(service: "etcdserverpb.Watch", name: "Watch", deadlineCode: .unknown) { messages, sink in
            let requests = GRPCFastPath.Messages<Etcdserverpb_WatchRequest>(bytes: messages)
            try await serve(requests, executor: sink.executor, send: { response in
                if let bytes: [UInt8] = try? response.serializedBytes() { sink.send(bytes) }
            })
        }]
    }

    private func handle(_ message: Etcdserverpb_WatchRequest, watchers: Watchers, executor: (any TaskExecutor)?,
                        send: @escaping @Sendable (Etcdserverpb_WatchResponse) -> Void) async throws {
        switch message.requestUnion {
        case .createRequest(let create):
            try await self.create(create, watchers: watchers, executor: executor, send: send)
        case .cancelRequest(let cancel):
            if watchers.cancel(cancel.watchID) {
                var answer = Etcdserverpb_WatchResponse()
                answer.header = member.header(try await revision())
                answer.watchID = cancel.watchID
                answer.canceled = true
                send(answer)
            }
        case .progressRequest:
            var answer = Etcdserverpb_WatchResponse()
            answer.header = member.header(try await revision())
            answer.watchID = -1
            send(answer)
        case nil:
            break
        }
    }

    private func create(_ create: Etcdserverpb_WatchCreateRequest, watchers: Watchers, executor: (any TaskExecutor)?,
                        send: @escaping @Sendable (Etcdserverpb_WatchResponse) -> Void) async throws {
        let current = try await revision()
        var created = Etcdserverpb_WatchResponse()
        created.header = member.header(current)
        created.created = true
        if !create.rangeEnd.isEmpty && create.rangeEnd != Data([0]) && !(create.key.lexicographicallyPrecedes(create.rangeEnd)) {
            created.watchID = -1
            created.canceled = true
            created.cancelReason = "mvcc: watcher range is empty"
            send(created)
            return
        }
        guard let id = watchers.reserve(create.watchID) else {
            created.watchID = -1
            created.canceled = true
            created.cancelReason = "mvcc: duplicate watch ID provided on the WatchStream"
            send(created)
            return
        }
        created.watchID = id
        send(created)

        let options = WatchOptions(
            rangeEnd: create.rangeEnd.bytes,
            startRevision: create.startRevision == 0 ? current + 1 : create.startRevision,
            prevKV: create.prevKv,
            noPut: create.filters.contains(.noput),
            noDelete: create.filters.contains(.nodelete),
            progressNotify: create.progressNotify)
        let key = create.key.bytes
        let fragment = create.fragment
        let (store, member, logger, limit, fragmentLimit) = (store, member, logger, maxResponseBytes, fragmentBytes)
        let task = Task(executorPreference: executor) {
            do {
                for try await events in store.watch(key, options: options) {
                    var answer = Etcdserverpb_WatchResponse()
                    answer.header = member.header(events.header.revision)
                    answer.watchID = id
                    answer.events = events.events.map(WireConversion.event)
                    for batch in Self.revisionBatches(of: answer, limit: limit) {
                        for part in fragment ? Self.fragments(of: batch, limit: fragmentLimit) : [batch] { send(part) }
                    }
                }
            } catch is CancellationError {
                return
            } catch let error as CoordinationError where error.code == .compacted || error.code == .storeReset {
                // etcd: a response with the compact revision, canceled, header revision 0.
                // A store reset is told the same way (the old history is gone, as if
                // compacted up to the new history's revision), so that clients re-list.
                if error.code == .storeReset {
                    logger.warning("watch cancelled: Redis lost the store's data", metadata: ["watch_id": "\(id)", "error": "\(error.message)"])
                }
                var answer = Etcdserverpb_WatchResponse()
                answer.header = member.header(0)
                answer.watchID = id
                answer.compactRevision = error.compactRevision ?? 0
                answer.canceled = true
                send(answer)
            } catch {
                if Task.isCancelled { return }
                logger.warning("watch ended", metadata: ["watch_id": "\(id)", "error": "\(error)"])
                var answer = Etcdserverpb_WatchResponse()
                answer.header = member.header(0)
                answer.watchID = id
                answer.canceled = true
                answer.cancelReason = EtcdErrors.rpcError(for: error).message
                send(answer)
            }
            watchers.forget(id)
        }
        watchers.start(id, task)
    }

    private func revision() async throws -> Int64 {
        do {
            return try await store.currentRevision()
        } catch {
            throw EtcdAPIServer.refuse("Watch", error, logger: logger)
        }
    }

    /// Events of several revisions (a batch the watch reader took from the log at once)
    /// split at revision boundaries into responses under `limit` each, as etcd sends a
    /// watcher that keeps up one response per revision: a client that falls behind is
    /// not sent one message of many megabytes (a raw gRPC client refuses one over its
    /// 4 MiB receive limit). A revision is never split here (that is `fragment`'s), so
    /// one larger than `limit` still goes whole. Each part's header revision is its last
    /// event's.
    static func revisionBatches(of response: Etcdserverpb_WatchResponse, limit: Int) -> [Etcdserverpb_WatchResponse] {
        guard let groups = split(response, limit: limit, together: { $0.kv.modRevision == $1.kv.modRevision }) else { return [response] }
        return groups.enumerated().map { index, events in
            var part = response
            part.events = events
            let last = events.last!.kv.modRevision
            part.header.revision = index == groups.count - 1 ? max(last, response.header.revision) : last
            return part
        }
    }

    /// etcd's `sendFragments`: events split so that each response stays under `limit`;
    /// every part but the last is marked `fragment`.
    static func fragments(of response: Etcdserverpb_WatchResponse, limit: Int) -> [Etcdserverpb_WatchResponse] {
        guard let groups = split(response, limit: limit, together: { _, _ in false }) else { return [response] }
        return groups.enumerated().map { index, events in
            var part = response
            part.events = events
            part.fragment = index < groups.count - 1
            return part
        }
    }

    /// `response`'s events in consecutive parts of at most `limit` bytes each (a part
    /// holds at least one run of events for which `together` holds, whatever its size);
    /// nil when the response has one event or is within `limit` already.
    private static func split(_ response: Etcdserverpb_WatchResponse, limit: Int,
                              together: (Mvccpb_Event, Mvccpb_Event) -> Bool) -> [[Mvccpb_Event]]? {
        let events = response.events
        guard events.count > 1, !within(response, limit: limit) else { return nil }
        var parts: [[Mvccpb_Event]] = []
        var current: [Mvccpb_Event] = []
        var size = 0
        var index = 0
        while index < events.count {
            var end = index + 1
            while end < events.count && together(events[end - 1], events[end]) { end += 1 }
            let runSize = events[index..<end].reduce(0) { $0 + ((try? $1.serializedBytes() as [UInt8])?.count ?? 0) }
            if !current.isEmpty && size + runSize > limit {
                parts.append(current)
                current = []
                size = 0
            }
            current.append(contentsOf: events[index..<end])
            size += runSize
            index = end
        }
        parts.append(current)
        return parts
    }

    /// Whether `response` encodes to at most `limit` bytes: first from a bound on its
    /// size (keys and values plus the most the other fields of an event and of the
    /// header can take), so that the usual small batch is not encoded an extra time.
    private static func within(_ response: Etcdserverpb_WatchResponse, limit: Int) -> Bool {
        // The header, watch ID, flags and compact revision: under 128 bytes.
        var bound = 128 + response.cancelReason.utf8.count
        for event in response.events {
            // Per event, beside keys and values: its framing (6), type (2), and for kv
            // and prev_kv their framing (6), four int64 fields (11 each) and the key's
            // and value's framing (6 each): 132 bytes at most.
            bound += 160 + event.kv.key.count + event.kv.value.count + event.prevKv.key.count + event.prevKv.value.count
        }
        if bound <= limit { return true }
        return ((try? response.serializedBytes() as [UInt8])?.count ?? 0) <= limit
    }
}
