/// A key and its value with etcd's metadata.
///
/// A key is created with version 1; every put adds 1 to its version and sets its
/// mod revision; a delete removes it, and the next put creates it again with a new
/// create revision.
public struct KeyValue: Sendable, Hashable, CustomStringConvertible {
    /// The key (arbitrary bytes, never empty).
    public var key: [UInt8]
    /// The value (arbitrary bytes; empty for keys-only reads).
    public var value: [UInt8]
    /// The revision of the put that created the key.
    public var createRevision: Int64
    /// The revision of the last put to the key.
    public var modRevision: Int64
    /// The number of puts since the key was created.
    public var version: Int64
    /// The lease the key is attached to; 0 for none.
    public var lease: Int64

    /// Creates a key-value pair.
    public init(key: [UInt8], value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64, lease: Int64) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }

    /// The key as UTF-8 text.
    public var keyString: String { String(decoding: key, as: UTF8.self) }
    /// The value as UTF-8 text.
    public var valueString: String { String(decoding: value, as: UTF8.self) }

    public var description: String {
        "\(keyString)=\(valueString) (create \(createRevision), mod \(modRevision), version \(version), lease \(lease))"
    }
}

/// The store's state when a response was produced.
public struct ResponseHeader: Sendable, Hashable {
    /// The store's revision after the request (unchanged for reads).
    public var revision: Int64

    /// A header at `revision` (for layers that answer from a watch event).
    public init(revision: Int64) {
        self.revision = revision
    }
}

/// The answer to a range (get) request.
public struct RangeResponse: Sendable, Hashable {
    public var header: ResponseHeader
    /// The pairs found, after filters, sorting and limit.
    public var kvs: [KeyValue]
    /// Whether the limit left out pairs.
    public var more: Bool
    /// The number of keys in the range (ignores limit and filters, as etcd).
    public var count: Int64
}

/// The answer to a put.
public struct PutResponse: Sendable, Hashable {
    public var header: ResponseHeader
    /// The pair before the put, when requested and the key existed.
    public var prevKV: KeyValue?
}

/// The answer to a delete.
public struct DeleteResponse: Sendable, Hashable {
    public var header: ResponseHeader
    /// How many keys were deleted.
    public var deleted: Int64
    /// The deleted pairs, when requested.
    public var prevKVs: [KeyValue]
}

/// The answer to a transaction.
public struct TxnResponse: Sendable, Hashable {
    public var header: ResponseHeader
    /// Whether every compare held (and the success branch ran).
    public var succeeded: Bool
    /// The answers of the branch that ran, in order.
    public var responses: [OperationResponse]
}

/// The answer to one operation inside a transaction.
public indirect enum OperationResponse: Sendable, Hashable {
    case range(RangeResponse)
    case put(PutResponse)
    case delete(DeleteResponse)
    case txn(TxnResponse)
}

/// The answer to a lease grant.
public struct LeaseGrantResponse: Sendable, Hashable {
    public var header: ResponseHeader
    /// The lease's ID (chosen by the store unless the request gave one).
    public var id: Int64
    /// The granted TTL in seconds (at least 2, as etcd's minimum).
    public var ttl: Int64
}

/// The answer to a lease keep-alive.
public struct LeaseKeepAliveResponse: Sendable, Hashable {
    public var header: ResponseHeader
    public var id: Int64
    /// The TTL the lease was refreshed to, in seconds.
    public var ttl: Int64
}

/// The answer to a lease time-to-live query.
public struct LeaseTimeToLiveResponse: Sendable, Hashable {
    public var header: ResponseHeader
    public var id: Int64
    /// Seconds left; -1 when the lease does not exist (expired, revoked or never granted).
    public var ttl: Int64
    /// The TTL the lease was granted with.
    public var grantedTTL: Int64
    /// The keys attached to the lease, when requested.
    public var keys: [[UInt8]]
}
