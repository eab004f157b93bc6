/// A queue whose items leave lowest priority number first, and first-in, first-out
/// within one priority, shared by every process that uses the same store and prefix
/// (etcd's `recipe.PriorityQueue`).
///
/// **Keys.** `enqueue` writes the item as the next
/// sequential key under its priority, `prefix/<priority, 5 digits>/<sequence number,
/// 16 digits>` (etcd's `%05d` and `%016d`), so the keys sort in dequeue order:
/// ``dequeue()`` takes the first key, deleting it in a transaction that holds only if
/// the item is unchanged since it was read, so that of several consumers racing for
/// one item exactly one gets it. When the queue is empty, ``dequeue()`` watches the
/// prefix and wakes on the next enqueue.
///
/// Items have no lease: they stay until dequeued.
///
/// ```swift
/// let work = PriorityQueue(client: store, prefix: "/queues/work")
/// try await work.enqueue("rebuild index", priority: 5)
/// try await work.enqueue("page on-call", priority: 0)
/// let next = try await work.dequeue()    // "page on-call"
/// ```
public struct PriorityQueue: Sendable {
    /// The store the items live in.
    public let client: CoordinationClient
    /// The key prefix of the items, ending in `/`.
    public let prefix: [UInt8]

    /// A priority queue over the keys `prefix/<priority>/<sequence number>`.
    public init(client: CoordinationClient, prefix: String) {
        self.client = client
        self.prefix = bytes(prefix + "/")
    }

    /// Adds `value` with `priority`; 0 leaves first.
    public func enqueue(_ value: [UInt8], priority: UInt16) async throws {
        let level = prefix + bytes(zeroPadded(priority, width: 5) + "/")
        _ = try await client.createSequentialKey(under: level, value: value)
    }

    /// Adds the UTF-8 bytes of `value` with `priority`; 0 leaves first.
    public func enqueue(_ value: String, priority: UInt16) async throws {
        try await enqueue(bytes(value), priority: priority)
    }

    /// Removes and returns the item with the lowest priority number (the oldest of
    /// them), waiting while the queue is empty.
    /// - Returns: the item as it was stored (``KeyValue/value`` holds what was enqueued).
    /// - Throws: `CancellationError` when the task is cancelled (nothing is removed).
    public func dequeue() async throws -> KeyValue {
        try await client.dequeue(from: prefix, order: .key)
    }
}
