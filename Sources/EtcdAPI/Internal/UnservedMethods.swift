/// The calls of etcd 3.4's API that coordproxy does not serve, each with what to do
/// instead: an etcd snapshot, membership changes and the writes of etcd's own user and
/// role store have no counterpart in a proxy in front of Redis. Both the gRPC server
/// (``MethodCheckingTransport``) and the JSON gateway answer them UNIMPLEMENTED with
/// this advice, instead of a bare "unknown method" or "Not Found".
enum UnservedMethods {
    static let snapshot = "coordproxy serves no etcd snapshot: the data lives in Redis; back it up with Redis's own persistence (BGSAVE and a copy of its RDB file, or its AOF files) and restore by starting Redis on that copy"
    static let membership = "coordproxy answers as a one-member cluster and has no members to add, remove, update or promote: run more coordproxy processes in front of the same Redis (each serves the whole store), and give Redis replicas and Sentinel for redundancy"
    static let authWrites = "coordproxy keeps no etcd users or roles: Redis's AUTH and ACLs guard the data (ACL SETUSER on the Redis server), and coordproxy connects with the credentials of its --redis-url"

    /// The advice for a gRPC method, by fully qualified service, then method name.
    static let byService: [String: [String: String]] = [
        "etcdserverpb.Maintenance": ["Snapshot": snapshot],
        "etcdserverpb.Cluster": Dictionary(uniqueKeysWithValues: ["MemberAdd", "MemberRemove", "MemberUpdate", "MemberPromote"].map { ($0, membership) }),
        "etcdserverpb.Auth": Dictionary(uniqueKeysWithValues: [
            "UserAdd", "UserDelete", "UserChangePassword", "UserGrantRole", "UserRevokeRole",
            "RoleAdd", "RoleDelete", "RoleGrantPermission", "RoleRevokePermission",
        ].map { ($0, authWrites) }),
    ]

    /// The advice for a path of etcd's JSON gateway (etcd 3.4's paths of those methods).
    static let byGatewayPath: [String: String] = {
        var paths = ["/v3/maintenance/snapshot": snapshot]
        for action in ["add", "remove", "update", "promote"] { paths["/v3/cluster/member/\(action)"] = membership }
        for action in ["add", "delete", "changepw", "grant", "revoke"] { paths["/v3/auth/user/\(action)"] = authWrites }
        for action in ["add", "delete", "grant", "revoke"] { paths["/v3/auth/role/\(action)"] = authWrites }
        return paths
    }()

    /// The UNIMPLEMENTED message for a method of a served service that is not served:
    /// etcd's grpc-go wording, then the advice when there is some.
    static func message(service: String, method: String) -> String {
        let unknown = "unknown method \(method) for service \(service)"
        guard let advice = byService[service]?[method] else { return unknown }
        return "\(unknown): \(advice)"
    }
}
