import Coordination
import CoordinationPrimitives
import GRPCCore
import RedisClient

/// How every service answers a failure: one table from the store's, the primitives'
/// and Redis's errors to etcd's gRPC status codes and message strings (etcd's
/// `rpctypes/error.go`). Clients map errors by message, e.g. clientv3 turns
/// "etcdserver: mvcc: required revision has been compacted" into `ErrCompacted`, so
/// the strings are etcd's exactly; our own explanation goes to the log.
public enum EtcdErrors {
    /// etcd's gRPC error for `error`.
    public static func rpcError(for error: any Error) -> RPCError {
        if let error = error as? RPCError { return error }
        if let error = error as? CoordinationError { return rpcError(for: error) }
        if let error = error as? ConcurrencyError { return rpcError(for: error) }
        if let error = error as? RedisError { return rpcError(for: error) }
        if error is CancellationError { return RPCError(code: .cancelled, message: "context canceled") }
        return RPCError(code: .unknown, message: "coordproxy: \(error)")
    }

    /// What etcd's Lock and Election services answer for a store error: they run on an
    /// embedded clientv3, whose errors (etcd's own, such as an unknown lease) reach the
    /// caller with code Unknown and etcd's message (checked against etcd 3.4 by
    /// `GoClientTests`).
    static func viaEmbeddedClient(_ error: any Error) -> any Error {
        if let error = error as? CoordinationError, error.code == .leaseNotFound {
            return RPCError(code: .unknown, message: leaseNotFound.message)
        }
        return error
    }

    /// etcd's answer when the server stops under a call (rpctypes ErrGRPCStopped):
    /// UNAVAILABLE, which clients retry on another endpoint.
    static let serverStopped = RPCError(code: .unavailable, message: "etcdserver: server stopped")

    static func rpcError(for error: CoordinationError) -> RPCError {
        switch error.code {
        case .emptyKey, .keyNotFound, .tooManyOps, .duplicateKey: return RPCError(code: .invalidArgument, message: error.etcdMessage!)
        case .compacted: return compacted
        case .futureRevision: return RPCError(code: .outOfRange, message: error.etcdMessage!)
        case .leaseNotFound: return leaseNotFound
        case .leaseExists: return RPCError(code: .failedPrecondition, message: error.etcdMessage!)
        case .valueTooLarge: return requestTooLarge
        case .invalidArgument:
            if error.message.hasPrefix("value is provided") { return RPCError(code: .invalidArgument, message: "etcdserver: value is provided") }
            if error.message.hasPrefix("lease is provided") { return RPCError(code: .invalidArgument, message: "etcdserver: lease is provided") }
            if error.message.hasPrefix("too large lease TTL") { return RPCError(code: .outOfRange, message: "etcdserver: too large lease TTL") }
            return RPCError(code: .invalidArgument, message: "etcdserver: \(error.message)")
        case .unsafeConfiguration: return RPCError(code: .unavailable, message: "etcdserver: not capable")
        case .storeReset:
            // No etcd error means "the data went back in time"; the request ran on the
            // new history. UNAVAILABLE: clients re-read (and re-watch) on it.
            return RPCError(code: .unavailable, message: "coordproxy: the store was reset (\(error.message))")
        default: return RPCError(code: .unknown, message: "coordproxy: \(error)")
        }
    }

    static func rpcError(for error: ConcurrencyError) -> RPCError {
        // etcd's lock and election servers return the concurrency package's errors as
        // they are, which gRPC sends with code Unknown.
        switch error.code {
        case .notLeader: return RPCError(code: .unknown, message: "election: not leader")
        case .noLeader: return RPCError(code: .unknown, message: "election: no leader")
        case .sessionExpired: return RPCError(code: .unknown, message: "etcdserver: requested lease not found")
        default: return RPCError(code: .unknown, message: "coordproxy: \(error)")
        }
    }

    static func rpcError(for error: RedisError) -> RPCError {
        switch error.code {
        case .outcomeUnknown where error.message.hasPrefix("the write reached"):
            // --wait-replicas not met in time: applied on the master, not confirmed by
            // enough replicas (etcd's answer when a proposal does not commit in time).
            return RPCError(code: .unavailable, message: "etcdserver: request timed out")
        case .outcomeUnknown:
            return RPCError(code: .unavailable, message: "etcdserver: request timed out, possibly due to connection lost")
        case .timeout:
            return RPCError(code: .unavailable, message: "etcdserver: request timed out")
        case .connectionLost, .connectionRefused, .connectionClosed:
            // Nothing was written: the client may retry (etcd clients do on UNAVAILABLE).
            return RPCError(code: .unavailable, message: "coordproxy: Redis is unavailable (\(error.message)); nothing was written, retry once it is back")
        case .server where error.message.contains("OOM command not allowed"):
            // Redis at its maxmemory (noeviction): etcd's answer when its database
            // reaches its quota, which clients recognise (and the NOSPACE alarm is on).
            return noSpace
        case .noPermission, .authenticationFailed:
            return RPCError(code: .unavailable, message: "coordproxy: Redis refused the request (\(error.message)); fix the Redis user's permissions or password")
        default:
            return RPCError(code: .unavailable, message: "coordproxy: Redis failed the request (\(error.message))")
        }
    }

    /// etcd's answer to a write while its database is at its quota (NOSPACE alarm);
    /// coordproxy's while Redis is at its `maxmemory`.
    public static let noSpace = RPCError(code: .resourceExhausted, message: "etcdserver: mvcc: database space exceeded")
    /// A request above the 1.5 MiB limit.
    public static let requestTooLarge = RPCError(code: .invalidArgument, message: "etcdserver: request is too large")
    /// A revision at or below the compacted one.
    public static let compacted = RPCError(code: .outOfRange, message: "etcdserver: mvcc: required revision has been compacted")
    /// An unknown or expired lease.
    public static let leaseNotFound = RPCError(code: .notFound, message: "etcdserver: requested lease not found")
    /// etcd's answer to Authenticate when auth is not enabled.
    public static let authNotEnabled = RPCError(code: .failedPrecondition, message: "etcdserver: authentication is not enabled")
    /// etcd's answer to AuthEnable when there is no root user (coordproxy has no users).
    public static let rootUserNotExist = RPCError(code: .failedPrecondition, message: "etcdserver: root user does not exist")
    /// etcd's answer to UserGet for a user it does not have (coordproxy has none).
    public static let userNotFound = RPCError(code: .failedPrecondition, message: "etcdserver: user name not found")
    /// etcd's answer to RoleGet for a role it does not have (coordproxy has none).
    public static let roleNotFound = RPCError(code: .failedPrecondition, message: "etcdserver: role name not found")
    /// etcd's answer to MoveLeader naming a member that is not in the cluster.
    public static let badLeaderTransferee = RPCError(code: .failedPrecondition, message: "etcdserver: bad leader transferee")
    /// The election request named no leader.
    public static let missingLeaderKey = RPCError(code: .unknown, message: "\"leader\" field must be provided")
}
