/// An error of the coordination store, with etcd's meaning.
public struct CoordinationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure; values are static members so that new ones can be added.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        let name: String

        /// The requested revision is above the current one.
        public static let futureRevision = Code(name: "futureRevision")
        /// The requested revision is below the compacted revision.
        public static let compacted = Code(name: "compacted")
        /// The lease does not exist or has expired.
        public static let leaseNotFound = Code(name: "leaseNotFound")
        /// A lease with the requested ID already exists.
        public static let leaseExists = Code(name: "leaseExists")
        /// A transaction branch writes one key twice, or deletes a key it puts.
        public static let duplicateKey = Code(name: "duplicateKey")
        /// The key is empty.
        public static let emptyKey = Code(name: "emptyKey")
        /// The value is above the size limit.
        public static let valueTooLarge = Code(name: "valueTooLarge")
        /// A transaction has more operations than allowed.
        public static let tooManyOps = Code(name: "tooManyOps")
        /// ignoreValue or ignoreLease on a key that does not exist.
        public static let keyNotFound = Code(name: "keyNotFound")
        /// The Redis server is configured in a way that can break the store's guarantees.
        public static let unsafeConfiguration = Code(name: "unsafeConfiguration")
        /// The store returned something this client does not understand.
        public static let protocolError = Code(name: "protocolError")
        /// Redis lost data behind the store's back: the store's identity changed (a
        /// restart without persistence, FLUSHALL, a failover to an empty replica) or its
        /// revision went below one already seen (a restore from an older RDB, a failover
        /// to a replica that lagged). Watches, sessions and the locks and campaigns on
        /// them end with it: their history is gone. Requests made afterwards run on the
        /// new history; re-read what you need and start again.
        public static let storeReset = Code(name: "storeReset")
        /// Another invalid argument.
        public static let invalidArgument = Code(name: "invalidArgument")

        public var description: String { name }
    }

    public var code: Code
    /// What was wrong and what to do.
    public var message: String

    /// For ``Code/compacted``: the oldest revision still available (etcd's
    /// `compact_revision`, what a watcher resumes from after re-listing); for
    /// ``Code/storeReset``, the revision of the new history when the reset was found.
    public var compactRevision: Int64?

    public init(_ code: Code, _ message: String, compactRevision: Int64? = nil) {
        self.code = code
        self.message = message
        self.compactRevision = compactRevision
    }

    public var description: String { "\(code): \(message)" }

    /// etcd's own message for this error (what its server answers and etcdctl prints,
    /// what etcd clients match), when etcd has one for the code.
    public var etcdMessage: String? {
        switch code {
        case .futureRevision: return "etcdserver: mvcc: required revision is a future revision"
        case .compacted: return "etcdserver: mvcc: required revision has been compacted"
        case .leaseNotFound: return "etcdserver: requested lease not found"
        case .leaseExists: return "etcdserver: lease already exists"
        case .duplicateKey: return "etcdserver: duplicate key given in txn request"
        case .emptyKey: return "etcdserver: key is not provided"
        case .valueTooLarge: return "etcdserver: request is too large"
        case .tooManyOps: return "etcdserver: too many operations in txn request"
        case .keyNotFound: return "etcdserver: key not found"
        default: return nil
        }
    }
}
