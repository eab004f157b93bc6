/// A first-in, first-out queue shared by every process that uses the same store and
/// prefix, with any number of producers and consumers (etcd's `recipe.Queue`).
///
/// **Keys.** `enqueue` writes the item as a new key `prefix/<nanoseconds
/// since 1970>` (the next nanosecond when that key is taken); items leave in the order
/// of their create revision, whatever their names. ``dequeue()`` reads the oldest item
/// and deletes it in a transaction that holds only if the item is unchanged since it
/// was read (same mod revision): of several consumers racing for one item, exactly
/// one gets it, and the others move on to the next. When the queue is empty,
/// ``dequeue()`` watches the prefix and wakes on the next enqueue.
///
/// Items have no lease: they stay until dequeued.
///
/// ```swift
/// let jobs = Queue(client: store, prefix: "/queues/jobs")
/// try await jobs.enqueue("resize 42.png")
/// let job = try await jobs.dequeue()     // blocks while the queue is empty
/// print(job.valueString)
/// ```
public struct Queue: Sendable {
    /// The store the items live in.
    public let client: CoordinationClient
    /// The key prefix of the items, ending in `/`.
    public let prefix: [UInt8]

    /// A queue over the keys `prefix/<nanoseconds>`.
    public init(client: CoordinationClient, prefix: String) {
        self.client = client
        self.prefix = bytes(prefix + "/")
    }

    /// Appends `value` to the queue.
    public func enqueue(_ value: [UInt8]) async throws {
        _ = try await client.createUniqueKey(under: prefix, value: value)
    }

    /// Appends the UTF-8 bytes of `value` to the queue.
    public func enqueue(_ value: String) async throws {
        try await enqueue(bytes(value))
    }

    /// Removes and returns the oldest item, waiting while the queue is empty.
    /// - Returns: the item as it was stored (``KeyValue/value`` holds what was enqueued).
    /// - Throws: `CancellationError` when the task is cancelled (nothing is removed).
    public func dequeue() async throws -> KeyValue {
        try await client.dequeue(from: prefix, order: .create)
    }
}

extension CoordinationClient {
    /// Claims the first item under `prefix` in `order` (create revision or key),
    /// waiting for a put while there is none (etcd's `Queue.Dequeue`/`PriorityQueue.Dequeue`).
    func dequeue(from prefix: [UInt8], order: SortTarget) async throws -> KeyValue {
        var first = RangeOptions.prefix(prefix)
        first.sortTarget = order
        first.sortOrder = .ascend
        first.limit = 1
        while true {
            let response = try await get(prefix, options: first)
            if let item = response.kvs.first {
                if try await claim(item) { return item }
                // Another consumer took it: look again.
                continue
            }
            // Empty: wait for an enqueue, then look again (an item enqueued meanwhile
            // with a lower key or priority goes first).
            _ = try await nextEvent(.put, on: prefix, rangeEnd: first.rangeEnd, from: response.header.revision + 1)
        }
    }
}
