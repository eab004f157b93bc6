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
        do {
            let (store, member) = (store, member)
            return try await stopping.untilOpen {
                let session = try await Session(client: store, lease: request.lease)
                await session.orphan()   // the caller refreshes the lease, as with etcd's server
                let mutex = DistributedMutex(session: session, prefix: String(decoding: request.name, as: UTF8.self))
                let token = try await mutex.lock()
                var response = V3lockpb_LockResponse()
                response.header = member.header(mutex.header?.revision ?? token)
                response.key = mutex.key.data
                return response
            }
        } catch {
            throw EtcdAPIServer.refuse("Lock", error, logger: logger)
        }
    }

    public func unlock(request: V3lockpb_UnlockRequest, context: ServerContext) async throws -> V3lockpb_UnlockResponse {
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
