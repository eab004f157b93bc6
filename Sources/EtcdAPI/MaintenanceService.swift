import Coordination
import GRPCCore
import Logging

/// etcd's `Maintenance` service, as much as clients' health probes and
/// `etcdctl endpoint status|health` and `alarm list` need: Status and Alarm.
///
/// Status reports this member as the leader of a one-member cluster; the raft
/// index and applied index are the store's revision (what advances with each
/// write), the database size is Redis's `used_memory`. Alarms are never raised:
/// Redis's own limits (maxmemory) answer as errors at the request that hits them.
public struct MaintenanceService: Etcdserverpb_Maintenance.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger) {
        self.store = store
        self.member = member
        self.logger = logger
    }

    public func alarm(request: Etcdserverpb_AlarmRequest, context: ServerContext) async throws -> Etcdserverpb_AlarmResponse {
        do {
            var response = Etcdserverpb_AlarmResponse()
            response.header = member.header(try await store.currentRevision())
            return response
        } catch {
            throw EtcdAPIServer.refuse("Alarm", error, logger: logger)
        }
    }

    public func status(request: Etcdserverpb_StatusRequest, context: ServerContext) async throws -> Etcdserverpb_StatusResponse {
        do {
            let revision = try await store.currentRevision()
            let info = try await store.redis.send([Array("INFO".utf8), Array("memory".utf8)], timeout: nil).string ?? ""
            let used = info.split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("used_memory:") }
                .flatMap { Int64($0.dropFirst("used_memory:".count)) } ?? 0
            var response = Etcdserverpb_StatusResponse()
            response.header = member.header(revision)
            response.version = EtcdMember.apiVersion
            response.dbSize = used
            response.dbSizeInUse = used
            response.leader = member.memberID
            response.raftIndex = UInt64(max(revision, 0))
            response.raftAppliedIndex = UInt64(max(revision, 0))
            response.raftTerm = 1
            return response
        } catch {
            throw EtcdAPIServer.refuse("Status", error, logger: logger)
        }
    }
}

/// etcd's `Cluster` service: the member list of this one-member cluster.
public struct ClusterService: Etcdserverpb_Cluster.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger) {
        self.store = store
        self.member = member
        self.logger = logger
    }

    public func memberList(request: Etcdserverpb_MemberListRequest, context: ServerContext) async throws -> Etcdserverpb_MemberListResponse {
        do {
            var me = Etcdserverpb_Member()
            me.id = member.memberID
            me.name = member.name
            me.clientUrls = member.clientURLs
            var response = Etcdserverpb_MemberListResponse()
            response.header = member.header(try await store.currentRevision())
            response.members = [me]
            return response
        } catch {
            throw EtcdAPIServer.refuse("MemberList", error, logger: logger)
        }
    }
}

/// etcd's `Auth` service as an etcd without authentication answers it.
public struct AuthService: Etcdserverpb_Auth.SimpleServiceProtocol {
    public init() {}

    public func authenticate(request: Etcdserverpb_AuthenticateRequest, context: ServerContext) async throws -> Etcdserverpb_AuthenticateResponse {
        throw EtcdErrors.authNotEnabled
    }
}
