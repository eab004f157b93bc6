import Coordination
import CoordinationPrimitives
import GRPCCore
import Logging
import SwiftProtobuf

/// etcd's `Election` service (v3election): campaigns on the caller's lease (keys
/// `name/<lease hex>`, the lowest create revision leads), proclamations and
/// resignations guarded by the leader key's create revision, the current leader,
/// and a stream of every leader value in order.
public struct ElectionService: V3electionpb_Election.SimpleServiceProtocol {
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

    func campaign(_ request: V3electionpb_CampaignRequest) async throws -> V3electionpb_CampaignResponse {
        do {
            let (store, member) = (store, member)
            return try await stopping.untilOpen {
                // As etcd's server: the caller refreshes the lease (lease 0: a 60 s lease is
                // granted and left to expire); a lease that does not exist fails the campaign's put.
                let session = try await Session.orphaned(client: store, lease: request.lease)
                let election = Election(session: session, prefix: String(decoding: request.name, as: UTF8.self))
                try await election.campaign(request.value.bytes)
                var response = V3electionpb_CampaignResponse()
                response.header = member.header(election.header?.revision ?? election.revision)
                var leader = V3electionpb_LeaderKey()
                leader.name = request.name
                leader.key = election.key.data
                leader.rev = election.revision
                leader.lease = session.lease
                response.leader = leader
                return response
            }
        } catch {
            throw EtcdAPIServer.refuse("Campaign", EtcdErrors.viaEmbeddedClient(error), logger: logger)
        }
    }

    func proclaim(_ request: V3electionpb_ProclaimRequest) async throws -> V3electionpb_ProclaimResponse {
        do {
            guard request.hasLeader else { throw EtcdErrors.missingLeaderKey }
            let leader = request.leader
            // etcd's Proclaim: put the new value only while the key is the one elected.
            let result = try await store.txn(Txn(
                compares: [Compare(key: leader.key.bytes, .createRevision(leader.rev), .equal)],
                success: [.put(key: leader.key.bytes, value: request.value.bytes, options: PutOptions(lease: leader.lease))]))
            guard result.succeeded else { throw ConcurrencyError(.notLeader, "not the leader") }
            var response = V3electionpb_ProclaimResponse()
            response.header = member.header(result.header.revision)
            return response
        } catch let error as CoordinationError where error.code == .leaseNotFound {
            throw EtcdAPIServer.refuse("Proclaim", ConcurrencyError(.notLeader, "the leader's lease is gone"), logger: logger)
        } catch {
            throw EtcdAPIServer.refuse("Proclaim", error, logger: logger)
        }
    }

    func leader(_ request: V3electionpb_LeaderRequest) async throws -> V3electionpb_LeaderResponse {
        do {
            let current = try await firstCandidate(request.name.bytes, revision: 0)
            guard let kv = current.kvs.first else { throw ConcurrencyError(.noLeader, "no leader") }
            var response = V3electionpb_LeaderResponse()
            response.header = member.header(current.header.revision)
            response.kv = Mvccpb_KeyValue(kv)
            return response
        } catch {
            throw EtcdAPIServer.refuse("Leader", error, logger: logger)
        }
    }

    public func campaign(request: V3electionpb_CampaignRequest, context: ServerContext) async throws -> V3electionpb_CampaignResponse {
        try await campaign(request)
    }

    public func proclaim(request: V3electionpb_ProclaimRequest, context: ServerContext) async throws -> V3electionpb_ProclaimResponse {
        try await proclaim(request)
    }

    public func leader(request: V3electionpb_LeaderRequest, context: ServerContext) async throws -> V3electionpb_LeaderResponse {
        try await leader(request)
    }

    public func resign(request: V3electionpb_ResignRequest, context: ServerContext) async throws -> V3electionpb_ResignResponse {
        try await resign(request)
    }

    /// The unary calls ``GRPCFastPath`` serves itself (Observe, a stream, goes through
    /// grpc-swift): a waiting Campaign is cancelled, and its key removed, when the
    /// client resets the stream, goes away or its grpc-timeout passes. etcd's Election
    /// service answers a passed deadline with its embedded client's error: code Unknown.
    func fastPathMethods() -> GRPCFastPath.Table {
        func method<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message>(
            _ name: String, _ body: @escaping @Sendable (Request) async throws -> Response
        ) -> (String, GRPCFastPath.Method) {
            GRPCFastPath.method(service: "v3electionpb.Election", name, deadlineCode: .unknown, body)
        }
        return Dictionary(uniqueKeysWithValues: [
            method("Campaign") { try await campaign($0) },
            method("Proclaim") { try await proclaim($0) },
            method("Leader") { try await leader($0) },
            method("Resign") { try await resign($0) },
        ])
    }

    public func observe(request: V3electionpb_LeaderRequest, response: RPCWriter<V3electionpb_LeaderResponse>, context: ServerContext) async throws {
        try await stopping.untilOpen { try await observeLeaders(request: request, response: response) }
    }

    private func observeLeaders(request: V3electionpb_LeaderRequest, response: RPCWriter<V3electionpb_LeaderResponse>) async throws {
        let prefix = request.name.bytes + Array("/".utf8)
        do {
            var revision: Int64 = 0
            while true {
                // The leader at `revision` (0: now), or the first one to arrive.
                let current = try await firstCandidate(request.name.bytes, revision: revision)
                var leader: KeyValue
                var header = current.header.revision
                if let first = current.kvs.first {
                    leader = first
                } else {
                    let start = max(revision, current.header.revision) + 1
                    var found: KeyValue?
                    for try await batch in store.watch(prefix, options: .prefix(prefix, startRevision: start)) {
                        if let put = batch.events.first(where: { $0.kind == .put }) {
                            found = put.kv
                            header = batch.header.revision
                            break
                        }
                    }
                    guard let found else { return }
                    leader = found
                }
                try await response.write(leaderResponse(leader, revision: max(header, leader.modRevision)))
                // Every proclamation of this leader, until its key goes.
                var deletedAt: Int64?
                for try await batch in store.watch(leader.key, options: WatchOptions(startRevision: leader.modRevision + 1)) {
                    for event in batch.events {
                        if event.kind == .delete {
                            deletedAt = event.kv.modRevision
                            break
                        }
                        if event.kv.value != leader.value || event.kv.modRevision != leader.modRevision {
                            leader = event.kv
                            try await response.write(leaderResponse(leader, revision: batch.header.revision))
                        }
                    }
                    if deletedAt != nil { break }
                }
                guard let deletedAt else { return }
                // The next leader as of the revision that removed this one, so that its
                // first value is never skipped.
                revision = deletedAt
            }
        } catch is CancellationError {
            return
        } catch {
            if Task.isCancelled { return }
            throw EtcdAPIServer.refuse("Observe", error, logger: logger)
        }
    }

    func resign(_ request: V3electionpb_ResignRequest) async throws -> V3electionpb_ResignResponse {
        do {
            guard request.hasLeader else { throw EtcdErrors.missingLeaderKey }
            let leader = request.leader
            // etcd's Resign: delete the key only while it is the one elected.
            let result = try await store.txn(Txn(
                compares: [Compare(key: leader.key.bytes, .createRevision(leader.rev), .equal)],
                success: [.delete(key: leader.key.bytes, rangeEnd: [], prevKV: false)]))
            var response = V3electionpb_ResignResponse()
            response.header = member.header(result.header.revision)
            return response
        } catch {
            throw EtcdAPIServer.refuse("Resign", error, logger: logger)
        }
    }

    /// The candidate with the lowest create revision under `name/` at `revision`.
    private func firstCandidate(_ name: [UInt8], revision: Int64) async throws -> RangeResponse {
        let prefix = name + Array("/".utf8)
        var options = RangeOptions.prefix(prefix)
        options.limit = 1
        options.sortOrder = .ascend
        options.sortTarget = .create
        options.revision = revision
        return try await store.get(prefix, options: options)
    }

    private func leaderResponse(_ kv: KeyValue, revision: Int64) -> V3electionpb_LeaderResponse {
        var response = V3electionpb_LeaderResponse()
        response.header = member.header(revision)
        response.kv = Mvccpb_KeyValue(kv)
        return response
    }
}
