import Coordination
import ServiceLifecycle

/// The store's background work (reaping expired leases, keeping `retainRevisions`
/// revisions of history) as a ServiceLifecycle service, to run beside
/// ``EtcdAPIServer`` in one `ServiceGroup`. It stops on graceful shutdown.
public struct StoreBackground: Service {
    public let store: CoordinationClient
    public let interval: Duration
    public let retainRevisions: Int64?

    /// - Parameters:
    ///   - interval: how often expired leases are looked for.
    ///   - retainRevisions: compact history older than this many revisions, about once
    ///     a second; nil keeps everything until a client compacts.
    public init(store: CoordinationClient, interval: Duration = .milliseconds(100), retainRevisions: Int64? = nil) {
        self.store = store
        self.interval = interval
        self.retainRevisions = retainRevisions
    }

    public func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await store.run(interval: interval, retainRevisions: retainRevisions)
        }
    }
}
