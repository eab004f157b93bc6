import Coordination
import Foundation

/// Who this coordproxy is to etcd clients: the single member of a one-member
/// "cluster" per namespace, with IDs derived from the namespace and name.
///
/// Several coordproxy processes may front one Redis: each is a member of the same
/// cluster (same cluster ID, from the namespace), and clients may use any of them,
/// since every guarantee lives in Redis.
public struct EtcdMember: Sendable, Hashable {
    /// The member's name (`--name`, etcd's default `default`).
    public var name: String
    /// The client URLs it advertises (`--advertise-client-urls`).
    public var clientURLs: [String]
    /// The cluster ID: a hash of the namespace.
    public var clusterID: UInt64
    /// The member ID: a hash of the namespace, the name and the client URLs.
    public var memberID: UInt64
    /// The etcd API version reported by Status and `/version`.
    public static let apiVersion = "3.4.0"

    /// A member of the cluster of `namespace`.
    public init(name: String = "default", namespace: String, clientURLs: [String]) {
        self.name = name
        self.clientURLs = clientURLs
        self.clusterID = Self.fnv1a("coordproxy cluster \(namespace)")
        self.memberID = Self.fnv1a("coordproxy member \(namespace) \(name) \(clientURLs.joined(separator: ","))")
    }

    /// The response header etcd would send at `revision`.
    func header(_ revision: Int64) -> Etcdserverpb_ResponseHeader {
        var header = Etcdserverpb_ResponseHeader()
        header.clusterID = clusterID
        header.memberID = memberID
        header.revision = revision
        header.raftTerm = 1
        return header
    }

    /// 64-bit FNV-1a: stable across runs and machines (Swift's Hasher is seeded per process).
    static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}
