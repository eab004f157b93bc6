/// A gate that blocks every process at the same point until one process opens it
/// (etcd's `recipe.Barrier`).
///
/// The barrier is a single key. ``hold()`` creates it, and from then on ``wait()``
/// blocks in every process that calls it; ``release()`` deletes the key and every
/// waiter returns at once. ``wait()`` on a barrier that is not held returns at once,
/// so a waiter that comes after the release does not block.
///
/// The key has no lease: a holder that crashes leaves the barrier held until someone
/// releases it (with ``release()`` or by deleting the key).
///
/// ```swift
/// let barrier = Barrier(client: store, key: "/barriers/deploy")
/// try await barrier.hold()          // coordinator
/// try await barrier.wait()          // workers, in any process: block here
/// try await barrier.release()       // coordinator: every worker goes on
/// ```
public struct Barrier: Sendable {
    /// The store the barrier key lives in.
    public let client: CoordinationClient
    /// The barrier key.
    public let key: [UInt8]

    /// A barrier on the key `key`.
    public init(client: CoordinationClient, key: String) {
        self.client = client
        self.key = bytes(key)
    }

    /// Creates the barrier key, so that ``wait()`` blocks until ``release()``.
    /// - Throws: ``ConcurrencyError/Code/keyExists`` when the barrier is already held.
    public func hold() async throws {
        guard try await client.createKey(key) != nil else {
            throw ConcurrencyError(.keyExists, "barrier \(keyText(key)) is already held; release it first")
        }
    }

    /// Deletes the barrier key, letting every waiter go on. Releasing a barrier that
    /// is not held does nothing.
    public func release() async throws {
        _ = try await client.delete(key)
    }

    /// Returns when the barrier key is deleted; at once when it does not exist.
    /// - Throws: `CancellationError` when the task is cancelled.
    public func wait() async throws {
        let response = try await client.get(key, options: RangeOptions(countOnly: true))
        guard response.count > 0 else { return }
        try await client.nextDelete(of: key, from: response.header.revision + 1)
    }
}
