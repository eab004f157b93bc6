import Coordination
import CoordinationPrimitives
import GRPCCore
import Logging

/// etcd's `Lock` service (v3lock): a named lock held on the caller's lease, as
/// etcd's server does it: the lock key is `name/<lease hex>`, waiters queue by
/// create revision, and the caller keeps the lease alive (the server does not).
/// The key goes with the lease, so a client that vanishes frees the lock when its
/// lease expires.
public struct LockService: V3lockpb_Lock.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger
    /// Opened when the server begins shutting down: long calls end with UNAVAILABLE.
    let stopping: Latch

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger) {
        self.init(store: store, member: member, logger: logger, stopping: Latch())
    }

    init(store: CoordinationClient, member: EtcdMember, logger: Logger, stopping: Latch) {
        self.store = store
        self.member = member
        self.logger = logger
        self.stopping = stopping
    }

    public func lock(request: V3lockpb_LockRequest, context: ServerContext) async throws -> V3lockpb_LockResponse {
        try await lock(request)
    }

    public func unlock(request: V3lockpb_UnlockRequest, context: ServerContext) async throws -> V3lockpb_UnlockResponse {
        try await unlock(request)
    }

    /// The calls ``GRPCFastPath`` serves itself: both (a waiting Lock is cancelled, and
    /// its key removed, when the client resets the stream, goes away or its
    /// grpc-timeout passes). etcd's Lock service answers a passed deadline with its
    /// embedded client's error: code Unknown, not DEADLINE_EXCEEDED.
    func fastPathMethods() -> GRPCFastPath.Table {
        Dictionary(uniqueKeysWithValues: [
            GRPCFastPath.method(service: "v3lockpb.Lock", "Lock", deadlineCode: .unknown) { try await lock($0) },
            GRPCFastPath.method(service: "v3lockpb.Lock", "Unlock", deadlineCode: .unknown) { try await unlock($0) },
        ])
    }

    func lock(_ request: V3lockpb_LockRequest) async throws -> V3lockpb_LockResponse {
        do {
            let (store, member) = (store, member)
            return try await stopping.untilOpen {
                // As etcd's server: the caller refreshes the lease (lease 0: a 60 s lease is
                // granted and left to expire); a lease that does not exist fails the lock's put.
                let session = try await Session.orphaned(client: store, lease: request.lease)
                let mutex = DistributedMutex(session: session, prefix: String(decoding: request.name, as: UTF8.self))
                let token = try await mutex.lock()
                var response = V3lockpb_LockResponse()
                response.header = member.header(mutex.header?.revision ?? token)
                response.key = mutex.key.data
                return response
            }
        } catch {
            throw EtcdAPIServer.refuse("Lock", EtcdErrors.viaEmbeddedClient(error), logger: logger)
        }
    }

    func unlock(_ request: V3lockpb_UnlockRequest) async throws -> V3lockpb_UnlockResponse {
        do {
            let deleted = try await store.delete(request.key.bytes)
            var response = V3lockpb_UnlockResponse()
            response.header = member.header(deleted.header.revision)
            return response
        } catch {
            throw EtcdAPIServer.refuse("Unlock", error, logger: logger)
        }
    }
}
