/// The order of a range's results.
public enum SortOrder: String, Sendable, Hashable {
    /// Keys in ascending byte order (unless another sort target is given, which sorts ascending).
    case none, ascend, descend
}

/// What a range sorts by.
public enum SortTarget: String, Sendable, Hashable {
    case key, version, create, mod, value
}

/// Options of a range (get) request, as etcd's RangeRequest.
public struct RangeOptions: Sendable, Hashable {
    /// End of the range, exclusive: empty for one key, `[0]` for every key from `key` on.
    public var rangeEnd: [UInt8] = []
    /// At most this many pairs (0: no limit).
    public var limit: Int64 = 0
    /// Read as of this revision (0: the current one).
    public var revision: Int64 = 0
    public var sortOrder: SortOrder = .none
    public var sortTarget: SortTarget = .key
    /// Leave values out.
    public var keysOnly = false
    /// Only count.
    public var countOnly = false
    public var minModRevision: Int64 = 0
    public var maxModRevision: Int64 = 0
    public var minCreateRevision: Int64 = 0
    public var maxCreateRevision: Int64 = 0

    /// Creates options; everything defaults to etcd's defaults.
    public init(rangeEnd: [UInt8] = [], limit: Int64 = 0, revision: Int64 = 0, sortOrder: SortOrder = .none, sortTarget: SortTarget = .key,
                keysOnly: Bool = false, countOnly: Bool = false) {
        self.rangeEnd = rangeEnd
        self.limit = limit
        self.revision = revision
        self.sortOrder = sortOrder
        self.sortTarget = sortTarget
        self.keysOnly = keysOnly
        self.countOnly = countOnly
    }

    /// Every key that starts with `prefix` (etcd's `--prefix`).
    public static func prefix(_ prefix: [UInt8]) -> RangeOptions {
        RangeOptions(rangeEnd: prefixEnd(prefix))
    }

    /// The smallest key greater than every key with `prefix`; `[0]` (all keys) when there is none.
    public static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }
}

/// Options of a put, as etcd's PutRequest.
public struct PutOptions: Sendable, Hashable {
    /// The lease to attach the key to; 0 detaches it.
    public var lease: Int64 = 0
    /// Return the previous pair.
    public var prevKV = false
    /// Keep the current value (the key must exist).
    public var ignoreValue = false
    /// Keep the current lease (the key must exist).
    public var ignoreLease = false

    public init(lease: Int64 = 0, prevKV: Bool = false, ignoreValue: Bool = false, ignoreLease: Bool = false) {
        self.lease = lease
        self.prevKV = prevKV
        self.ignoreValue = ignoreValue
        self.ignoreLease = ignoreLease
    }
}

/// One operation of a transaction.
public indirect enum KVOperation: Sendable, Hashable {
    case range(key: [UInt8], options: RangeOptions)
    case put(key: [UInt8], value: [UInt8], options: PutOptions)
    case delete(key: [UInt8], rangeEnd: [UInt8], prevKV: Bool)
    case txn(Txn)
}

extension KVOperation {
    /// Whether Redis's work for the operation is bounded by its size: single keys only
    /// (a range, delete or compare over an interval can touch any number of keys).
    /// Only such requests share a script call with others, so that a batch never holds
    /// Redis for long.
    var boundedWork: Bool {
        switch self {
        case .range(_, let options): return options.rangeEnd.isEmpty
        case .put: return true
        case .delete(_, let rangeEnd, _): return rangeEnd.isEmpty
        case .txn(let txn):
            return txn.compares.allSatisfy { $0.rangeEnd.isEmpty } && txn.success.allSatisfy(\.boundedWork) && txn.failure.allSatisfy(\.boundedWork)
        }
    }
}

/// A condition of a transaction on a key (or on every key of a range).
public struct Compare: Sendable, Hashable {
    /// What is compared, with the operand.
    public enum Target: Sendable, Hashable {
        case value([UInt8])
        case version(Int64)
        case createRevision(Int64)
        case modRevision(Int64)
        case lease(Int64)
    }

    /// How it is compared.
    public enum Result: String, Sendable, Hashable {
        case equal = "=", notEqual = "!=", less = "<", greater = ">"
    }

    public var key: [UInt8]
    public var rangeEnd: [UInt8]
    public var target: Target
    public var result: Result

    /// Compares `target` of `key` (or of every key in `[key, rangeEnd)`) with `result`.
    /// A missing key compares as version, revisions and lease 0; a value compare on it fails.
    public init(key: [UInt8], rangeEnd: [UInt8] = [], _ target: Target, _ result: Result) {
        self.key = key
        self.rangeEnd = rangeEnd
        self.target = target
        self.result = result
    }
}

/// A transaction: if every compare holds, run `success`, else `failure`, atomically.
public struct Txn: Sendable, Hashable {
    public var compares: [Compare]
    public var success: [KVOperation]
    public var failure: [KVOperation]

    public init(compares: [Compare] = [], success: [KVOperation] = [], failure: [KVOperation] = []) {
        self.compares = compares
        self.success = success
        self.failure = failure
    }
}
