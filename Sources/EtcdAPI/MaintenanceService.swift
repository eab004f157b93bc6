import Coordination
import GRPCCore
import Logging

/// etcd's `Maintenance` service, as much as clients' health probes and `etcdctl
/// endpoint status|health|hashkv`, `alarm list`, `defrag` and `move-leader` need:
/// Status, Alarm, Defragment, Hash, HashKV and MoveLeader.
///
/// Status reports this member as the leader of a one-member cluster; the raft
/// index and applied index are the store's revision (what advances with each
/// write), the database size is Redis's `used_memory`. Alarms are never raised:
/// Redis's own limits (maxmemory) answer as errors at the request that hits them.
/// Defragment asks Redis to return its allocator's free pages to the system
/// (`MEMORY PURGE`), what etcd's defragmentation does for its database file.
/// Hash and HashKV hash the store's versions (``StoreHash``: a CRC-32C, as etcd's,
/// but not etcd's number, which hashes its database's bytes): every coordproxy on
/// one store answers the same. MoveLeader succeeds for this member, the leader already, and answers etcd's "bad
/// leader transferee" for any other.
public struct MaintenanceService: Etcdserverpb_Maintenance.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger) {
        self.store = store
        self.member = member
        self.logger = logger
    }

    /// etcd's NOSPACE alarm, which etcd raises when its database reaches its quota: here
    /// while Redis's memory is at its `maxmemory` under `noeviction` (writes then fail
    /// with etcd's `database space exceeded`). It goes away by itself once memory is freed, so
    /// DEACTIVATE (`etcdctl alarm disarm`) has nothing to do, and ACTIVATE is ignored.
    public func alarm(request: Etcdserverpb_AlarmRequest, context: ServerContext) async throws -> Etcdserverpb_AlarmResponse {
        do {
            var response = Etcdserverpb_AlarmResponse()
            response.header = member.header(try await store.currentRevision())
            // A user that may not run INFO (allowed: see CoordinationClient.connect) has
            // no alarm to show rather than no answer.
            if request.action == .get, (try? await memory())?.full == true {
                var alarm = Etcdserverpb_AlarmMember()
                alarm.memberID = member.memberID
                alarm.alarm = .nospace
                response.alarms = [alarm]
            }
            return response
        } catch {
            throw EtcdAPIServer.refuse("Alarm", error, logger: logger)
        }
    }

    /// Redis's memory: `used_memory`, and whether it is full: at its `maxmemory` (when
    /// set) under `noeviction`, where writes fail (under a volatile-* policy Redis
    /// evicts keys with a TTL at the limit, and writes go on).
    private func memory() async throws -> (used: Int64, full: Bool) {
        let info = try await store.redis.send([Array("INFO".utf8), Array("memory".utf8)], timeout: nil).string ?? ""
        let lines = info.split(whereSeparator: \.isNewline)
        func field(_ name: String) -> Substring? {
            lines.first { $0.hasPrefix(name + ":") }.map { $0.dropFirst(name.count + 1) }
        }
        let used = field("used_memory").flatMap { Int64($0) } ?? 0, limit = field("maxmemory").flatMap { Int64($0) } ?? 0
        return (used, limit > 0 && used >= limit && field("maxmemory_policy") == "noeviction")
    }

    public func status(request: Etcdserverpb_StatusRequest, context: ServerContext) async throws -> Etcdserverpb_StatusResponse {
        do {
            let revision = try await store.currentRevision()
            let (used, full) = try await memory()
            var response = Etcdserverpb_StatusResponse()
            response.header = member.header(revision)
            response.version = EtcdMember.apiVersion
            response.dbSize = used
            response.dbSizeInUse = used
            // As etcd lists its alarms (an AlarmMember in protobuf's compact text).
            if full { response.errors = ["memberID:\(member.memberID) alarm:NOSPACE "] }
            response.leader = member.memberID
            response.raftIndex = UInt64(max(revision, 0))
            response.raftAppliedIndex = UInt64(max(revision, 0))
            response.raftTerm = 1
            return response
        } catch {
            throw EtcdAPIServer.refuse("Status", error, logger: logger)
        }
    }

    public func defragment(request: Etcdserverpb_DefragmentRequest, context: ServerContext) async throws -> Etcdserverpb_DefragmentResponse {
        do {
            // Logged as etcd logs "starting defragment": an operator's action.
            logger.info("defragment: asking Redis to release its allocator's free pages (MEMORY PURGE)")
            _ = try await store.redis.send([Array("MEMORY".utf8), Array("PURGE".utf8)], timeout: nil)
            // etcd's answer carries no header.
            return Etcdserverpb_DefragmentResponse()
        } catch {
            throw EtcdAPIServer.refuse("Defragment", error, logger: logger)
        }
    }

    public func hash(request: Etcdserverpb_HashRequest, context: ServerContext) async throws -> Etcdserverpb_HashResponse {
        do {
            let hashed = try await store.hashKV()
            var response = Etcdserverpb_HashResponse()
            response.header = member.header(hashed.currentRevision)
            response.hash = hashed.hash
            return response
        } catch {
            throw EtcdAPIServer.refuse("Hash", error, logger: logger)
        }
    }

    public func hashKV(request: Etcdserverpb_HashKVRequest, context: ServerContext) async throws -> Etcdserverpb_HashKVResponse {
        do {
            let hashed = try await store.hashKV(revision: request.revision)
            var response = Etcdserverpb_HashKVResponse()
            response.header = member.header(hashed.currentRevision)
            response.hash = hashed.hash
            // etcd's compact revision is -1 until its first compaction.
            response.compactRevision = hashed.compactRevision == 0 ? -1 : hashed.compactRevision
            return response
        } catch {
            throw EtcdAPIServer.refuse("HashKV", error, logger: logger)
        }
    }

    public func moveLeader(request: Etcdserverpb_MoveLeaderRequest, context: ServerContext) async throws -> Etcdserverpb_MoveLeaderResponse {
        do {
            guard request.targetID == member.memberID else { throw EtcdErrors.badLeaderTransferee }
            var response = Etcdserverpb_MoveLeaderResponse()
            response.header = member.header(try await store.currentRevision())
            return response
        } catch {
            throw EtcdAPIServer.refuse("MoveLeader", error, logger: logger)
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

/// etcd's `Auth` service as an etcd without authentication and without users
/// answers it: `etcdctl auth disable`, `user list` and `role list` succeed (nothing
/// to disable, empty lists), `auth enable` fails for want of a root user, `user get`
/// and `role get` find nothing, and Authenticate says authentication is not enabled.
/// Adding users and roles is not served (UNIMPLEMENTED): coordproxy has no users of
/// its own; Redis's AUTH and ACLs guard the data.
public struct AuthService: Etcdserverpb_Auth.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger) {
        self.store = store
        self.member = member
        self.logger = logger
    }

    public func authenticate(request: Etcdserverpb_AuthenticateRequest, context: ServerContext) async throws -> Etcdserverpb_AuthenticateResponse {
        throw EtcdErrors.authNotEnabled
    }

    public func authEnable(request: Etcdserverpb_AuthEnableRequest, context: ServerContext) async throws -> Etcdserverpb_AuthEnableResponse {
        throw EtcdAPIServer.refuse("AuthEnable", EtcdErrors.rootUserNotExist, logger: logger)
    }

    public func authDisable(request: Etcdserverpb_AuthDisableRequest, context: ServerContext) async throws -> Etcdserverpb_AuthDisableResponse {
        var response = Etcdserverpb_AuthDisableResponse()
        response.header = try await header("AuthDisable")
        return response
    }

    public func userGet(request: Etcdserverpb_AuthUserGetRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserGetResponse {
        throw EtcdAPIServer.refuse("UserGet", EtcdErrors.userNotFound, logger: logger)
    }

    public func userList(request: Etcdserverpb_AuthUserListRequest, context: ServerContext) async throws -> Etcdserverpb_AuthUserListResponse {
        var response = Etcdserverpb_AuthUserListResponse()
        response.header = try await header("UserList")
        return response
    }

    public func roleGet(request: Etcdserverpb_AuthRoleGetRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleGetResponse {
        throw EtcdAPIServer.refuse("RoleGet", EtcdErrors.roleNotFound, logger: logger)
    }

    public func roleList(request: Etcdserverpb_AuthRoleListRequest, context: ServerContext) async throws -> Etcdserverpb_AuthRoleListResponse {
        var response = Etcdserverpb_AuthRoleListResponse()
        response.header = try await header("RoleList")
        return response
    }

    /// The header at the store's current revision, or etcd's error for why it cannot be read.
    private func header(_ method: String) async throws -> Etcdserverpb_ResponseHeader {
        do {
            return member.header(try await store.currentRevision())
        } catch {
            throw EtcdAPIServer.refuse(method, error, logger: logger)
        }
    }
}
