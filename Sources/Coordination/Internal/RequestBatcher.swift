import RedisClient
import Synchronization

/// Which requests go to Redis now and which wait to be sent together: the state of a
/// ``RequestBatcher``, without I/O.
///
/// At most `maxInFlight` script calls are outstanding. A request that finds a free slot
/// (and nobody queued before it) is sent at once, alone: an idle store adds no delay.
/// Requests that arrive while every slot is taken queue, in arrival order; when a call
/// completes, everything queued by then (up to `maxBatch` requests or about
/// `maxBatchBytes`) leaves as one call, whose script runs the requests one after
/// another, each at revisions of its own, as a pipeline would. Queued requests leave in
/// the order they arrived (a request sent alone may still overtake a batch that is
/// about to be written: only requests that were in flight together trade places, as
/// on any pipelined connection with several writers), and a busy store pays one call's
/// overhead (the round trip, Redis's command handling, the script's setup) for many.
struct BatchQueue<Element> {
    let maxInFlight: Int
    let maxBatch: Int
    let maxBatchBytes: Int
    private(set) var inFlight = 0
    private var queue: [(element: Element, bytes: Int, id: Int)] = []
    private var head = 0
    private var nextID = 0

    init(maxInFlight: Int, maxBatch: Int, maxBatchBytes: Int) {
        precondition(maxInFlight >= 1 && maxBatch >= 1, "a batch queue needs a slot and room for a request")
        self.maxInFlight = maxInFlight
        self.maxBatch = maxBatch
        self.maxBatchBytes = maxBatchBytes
    }

    /// Requests waiting for a slot.
    var queued: Int { queue.count - head }

    /// Whether a request may be sent now, alone; if so it holds a slot until
    /// ``completed()``.
    mutating func trySend() -> Bool {
        guard inFlight < maxInFlight, queued == 0 else { return false }
        inFlight += 1
        return true
    }

    /// Queues a request of `bytes` bytes under the ID returned (for ``withdraw(_:)``).
    /// Also returns a batch to send at once (holding a slot) when a slot is free, which
    /// happens only when the request raced a call's completion; otherwise the request
    /// leaves with a later ``completed()``'s batch.
    mutating func enqueue(_ element: Element, bytes: Int) -> (id: Int, send: [Element]?) {
        let id = nextID
        nextID += 1
        queue.append((element, bytes, id))
        guard inFlight < maxInFlight else { return (id, nil) }
        inFlight += 1
        return (id, takeBatch())
    }

    /// Takes a request that is still waiting out of the queue (its caller was
    /// cancelled); `nil` when it has already left in a batch.
    mutating func withdraw(_ id: Int) -> Element? {
        guard let index = queue[head...].firstIndex(where: { $0.id == id }) else { return nil }
        return queue.remove(at: index).element
    }

    /// A call has completed: its slot goes to the next batch, returned here to be sent,
    /// or is freed when nothing is queued.
    mutating func completed() -> [Element]? {
        precondition(inFlight > 0, "completed() without a call in flight")
        if queued == 0 {
            inFlight -= 1
            return nil
        }
        return takeBatch()
    }

    private mutating func takeBatch() -> [Element] {
        var batch: [Element] = []
        var bytes = 0
        while head < queue.count, batch.count < maxBatch, batch.isEmpty || bytes + queue[head].bytes <= maxBatchBytes {
            batch.append(queue[head].element)
            bytes += queue[head].bytes
            head += 1
        }
        if head == queue.count {
            queue.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 1024 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return batch
    }
}

/// Sends the KV script's requests of one client, gathering the requests that arrive
/// while the connection is busy into one script call (see ``BatchQueue``).
///
/// Each request gets the reply its own call would have had: the script runs a batch's
/// requests in order, each atomically and at revisions of its own, and answers with an
/// array of their replies. An error of the whole call (the connection lost, Redis
/// refusing the script, a replica's `READONLY`, which kv.lua raises for the whole call
/// so that the connection follows a failover) is every request's error; any other
/// Redis error inside one request is that request's alone.
final class RequestBatcher: Sendable {
    private struct Pending: Sendable {
        let request: [UInt8]
        let continuation: CheckedContinuation<RedisReply, any Error>
    }

    private let redis: any RedisCommandExecutor
    private let function: StoreFunction
    private let keys: [[UInt8]]
    private let state: Mutex<BatchQueue<Pending>>
    /// Where the task that sends batches runs (nil: Swift's global concurrent executor).
    private let batchExecutor = Mutex<(any TaskExecutor)?>(nil)

    init(redis: any RedisCommandExecutor, function: StoreFunction, keys: [[UInt8]],
         maxInFlight: Int = 2, maxBatch: Int = 64, maxBatchBytes: Int = 1 << 20) {
        self.redis = redis
        self.function = function
        self.keys = keys
        self.state = Mutex(BatchQueue(maxInFlight: maxInFlight, maxBatch: maxBatch, maxBatchBytes: maxBatchBytes))
    }

    /// Requests waiting for a call to complete.
    var queued: Int { state.withLock { $0.queued } }

    /// Runs the batches' task on `executor` from now on (see
    /// ``CoordinationClient/runBatches(on:)``).
    func runBatches(on executor: (any TaskExecutor)?) {
        batchExecutor.withLock { $0 = executor }
    }

    /// Runs one request (the script's ARGV element) and returns its reply.
    func run(_ request: [UInt8]) async throws -> RedisReply {
        if state.withLock({ $0.trySend() }) {
            // The common case on an idle store: sent alone, from the caller's task (a
            // cancelled caller withdraws it while it is still queued in a connection
            // with a thread of its own; one an event loop serves writes it at once).
            defer { sendNext(state.withLock { $0.completed() }) }
            return try await function.run(on: redis, keys: keys, arguments: [request])
        }
        // A caller cancelled while its request waits withdraws it (it never runs), as a
        // command still queued in the connection is withdrawn; once the request has
        // left in a batch, the caller gets its reply.
        let ticket = Mutex(Ticket.arriving)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                if Task.isCancelled {
                    continuation.resume(throwing: CancellationError())
                    return
                }
                let pending = Pending(request: request, continuation: continuation)
                let (queued, batch) = state.withLock { $0.enqueue(pending, bytes: request.count) }
                let cancelledMeanwhile = ticket.withLock { ticket -> Bool in
                    if case .cancelled = ticket { return true }
                    ticket = .queued(queued)
                    return false
                }
                // A cancellation between the check above and the queueing found nothing
                // to withdraw: withdraw here (unless the request has just left).
                if cancelledMeanwhile {
                    state.withLock { $0.withdraw(queued) }?.continuation.resume(throwing: CancellationError())
                }
                sendNext(batch)
            }
        } onCancel: {
            let queued = ticket.withLock { ticket -> Int? in
                if case .queued(let id) = ticket { return id }
                ticket = .cancelled
                return nil
            }
            guard let queued else { return }
            state.withLock { $0.withdraw(queued) }?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Where a waiting request stands, for its cancellation handler.
    private enum Ticket {
        case arriving
        case queued(Int)
        case cancelled
    }

    /// Sends `batch` (which holds a slot) and every batch that takes the slot after it.
    private func sendNext(_ batch: [Pending]?) {
        guard let batch else { return }
        Task(executorPreference: batchExecutor.withLock { $0 }) {
            var next: [Pending]? = batch
            while let batch = next {
                await self.send(batch)
                next = self.state.withLock { $0.completed() }
            }
        }
    }

    private func send(_ batch: [Pending]) async {
        let reply: RedisReply
        do {
            reply = try await function.run(on: redis, keys: keys, arguments: batch.map(\.request))
        } catch {
            for pending in batch { pending.continuation.resume(throwing: error) }
            return
        }
        guard batch.count > 1 else {
            batch[0].continuation.resume(returning: reply)
            return
        }
        guard let replies = reply.array, replies.count == batch.count else {
            let error = RedisError(.protocolError, "the store script answered \(batch.count) requests with \(reply)")
            for pending in batch { pending.continuation.resume(throwing: error) }
            return
        }
        for (pending, reply) in zip(batch, replies) {
            if case .error(let message) = reply {
                pending.continuation.resume(throwing: RedisError.fromServerReply(message))
            } else {
                pending.continuation.resume(returning: reply)
            }
        }
    }
}
