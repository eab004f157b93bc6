import Coordination
import GRPCCore
import Logging

/// etcd's `Lease` service (v3rpc `lease.go`): grant, revoke, the keep-alive stream,
/// time-to-live and the list of leases, with etcd's answers for unknown leases (a
/// keep-alive answers TTL 0, time-to-live answers TTL -1, revoke fails).
public struct LeaseService: Etcdserverpb_Lease.SimpleServiceProtocol {
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

    public func leaseGrant(request: Etcdserverpb_LeaseGrantRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseGrantResponse {
        try await leaseGrant(request)
    }

    func leaseGrant(_ request: Etcdserverpb_LeaseGrantRequest) async throws -> Etcdserverpb_LeaseGrantResponse {
        do {
            // etcd raises a TTL below its minimum to the minimum; the store does the same
            // from 1 s, so a TTL of 0 or less asks for the minimum.
            let granted = try await store.grantLease(ttl: max(request.ttl, 1), id: request.id)
            var response = Etcdserverpb_LeaseGrantResponse()
            response.header = member.header(granted.header.revision)
            response.id = granted.id
            response.ttl = granted.ttl
            APIMetrics.leasesGranted.increment()
            return response
        } catch {
            throw EtcdAPIServer.refuse("LeaseGrant", error, logger: logger)
        }
    }

    public func leaseRevoke(request: Etcdserverpb_LeaseRevokeRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseRevokeResponse {
        try await leaseRevoke(request)
    }

    func leaseRevoke(_ request: Etcdserverpb_LeaseRevokeRequest) async throws -> Etcdserverpb_LeaseRevokeResponse {
        do {
            let header = try await store.revokeLease(request.id)
            APIMetrics.leasesRevoked.increment()
            var response = Etcdserverpb_LeaseRevokeResponse()
            response.header = member.header(header.revision)
            return response
        } catch {
            throw EtcdAPIServer.refuse("LeaseRevoke", error, logger: logger)
        }
    }

    public func leaseKeepAlive(
        request: RPCAsyncSequence<Etcdserverpb_LeaseKeepAliveRequest, any Error>,
        response: RPCWriter<Etcdserverpb_LeaseKeepAliveResponse>,
        context: ServerContext
    ) async throws {
        APIMetrics.keepAliveStreams.increment()
        defer { APIMetrics.keepAliveStreams.decrement() }
        do {
            try await stopping.untilOpen { try await keepAlives(request: request, response: response) }
        } catch {
            throw EtcdAPIServer.refuse("LeaseKeepAlive", error, logger: logger)
        }
    }

    private func keepAlives(
        request: RPCAsyncSequence<Etcdserverpb_LeaseKeepAliveRequest, any Error>,
        response: RPCWriter<Etcdserverpb_LeaseKeepAliveResponse>
    ) async throws {
        for try await keepAlive in request {
            var answer = Etcdserverpb_LeaseKeepAliveResponse()
            answer.id = keepAlive.id
            do {
                let refreshed = try await store.keepAliveOnce(keepAlive.id)
                answer.header = member.header(refreshed.header.revision)
                answer.ttl = refreshed.ttl
                APIMetrics.leasesRenewed.increment()
            } catch let error as CoordinationError where error.code == .leaseNotFound {
                // etcd answers an unknown lease with TTL 0 and keeps the stream open.
                answer.header = member.header(try await store.currentRevision())
                answer.ttl = 0
            }
            try await response.write(answer)
        }
    }

    public func leaseTimeToLive(request: Etcdserverpb_LeaseTimeToLiveRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        try await leaseTimeToLive(request)
    }

    func leaseTimeToLive(_ request: Etcdserverpb_LeaseTimeToLiveRequest) async throws -> Etcdserverpb_LeaseTimeToLiveResponse {
        do {
            let live = try await store.timeToLive(request.id, keys: request.keys)
            var response = Etcdserverpb_LeaseTimeToLiveResponse()
            response.header = member.header(live.header.revision)
            response.id = request.id
            response.ttl = live.ttl
            if live.ttl >= 0 {
                response.grantedTtl = live.grantedTTL
                response.keys = live.keys.map(\.data)
            }
            return response
        } catch {
            throw EtcdAPIServer.refuse("LeaseTimeToLive", error, logger: logger)
        }
    }

    public func leaseLeases(request: Etcdserverpb_LeaseLeasesRequest, context: ServerContext) async throws -> Etcdserverpb_LeaseLeasesResponse {
        try await leaseLeases(request)
    }

    func leaseLeases(_ request: Etcdserverpb_LeaseLeasesRequest) async throws -> Etcdserverpb_LeaseLeasesResponse {
        do {
            let ids = try await store.leases()
            let revision = try await store.currentRevision()
            var response = Etcdserverpb_LeaseLeasesResponse()
            response.header = member.header(revision)
            response.leases = ids.map { id in
                var status = Etcdserverpb_LeaseStatus()
                status.id = id
                return status
            }
            return response
        } catch {
            throw EtcdAPIServer.refuse("LeaseLeases", error, logger: logger)
        }
    }

    /// The unary calls, for ``GRPCFastPath``, by gRPC path (they map and log their
    /// own errors).
    func fastPathMethods() -> GRPCFastPath.Table {
        Dictionary(uniqueKeysWithValues: [
            GRPCFastPath.method(service: "etcdserverpb.Lease", "LeaseGrant") { try await leaseGrant($0) },
            GRPCFastPath.method(service: "etcdserverpb.Lease", "LeaseRevoke") { try await leaseRevoke($0) },
            GRPCFastPath.method(service: "etcdserverpb.Lease", "LeaseTimeToLive") { try await leaseTimeToLive($0) },
            GRPCFastPath.method(service: "etcdserverpb.Lease", "LeaseLeases") { try await leaseLeases($0) },
        ])
    }
}
