import RedisClient

/// A hash of a store's versions up to a revision: what etcd's `HashKV` answers, for
/// checking that two readers of a store (two coordproxy processes on one Redis, a
/// store and its copy) hold the same data.
///
/// The value is a CRC-32C (Castagnoli, as etcd's) over every version with a modify
/// revision at or below ``revision``, in key order then revision order, each as its
/// key, its create and modify revisions, version, lease and value, or as a deletion
/// at its revision. Versions at or below ``compactRevision`` count only as compaction
/// keeps them (each key's newest version there, unless that is a deletion), so the
/// hash does not depend on whether a compaction has finished removing the rest. It
/// is not etcd's number (etcd hashes its database's bytes): compare hashes of one
/// store, not a store's with an etcd's.
public struct StoreHash: Sendable, Equatable {
    /// The CRC-32C.
    public var hash: UInt32
    /// The revision hashed up to.
    public var revision: Int64
    /// The store's compact revision when it was hashed.
    public var compactRevision: Int64
    /// The store's current revision then (etcd's response header).
    public var currentRevision: Int64

    /// A hash as ``CoordinationClient/hashKV(revision:)`` returns it (for tests and for
    /// services that answer with one).
    public init(hash: UInt32, revision: Int64, compactRevision: Int64, currentRevision: Int64) {
        self.hash = hash
        self.revision = revision
        self.compactRevision = compactRevision
        self.currentRevision = currentRevision
    }
}

extension CoordinationClient {
    /// Hashes the store's versions up to `revision` (0: the current revision; below 0:
    /// none, as etcd), as etcd's `HashKV` (see ``StoreHash``). Reads the whole history in pages
    /// (`HSCAN`), so it costs time in proportion to the history kept, and blocks Redis
    /// only for one page at a time; writes meanwhile do not change the result (they
    /// come after `revision`), a compaction meanwhile makes it start again.
    ///
    /// - Throws: ``CoordinationError/Code/compacted`` when `revision` is at or below
    ///   the compact revision, ``CoordinationError/Code/futureRevision`` above the
    ///   current revision (as etcd: `mvcc: required revision has been compacted`, `mvcc:
    ///   required revision is a future revision`); ``CoordinationError/Code/compacted``
    ///   too when a compaction began during each of 5 attempts.
    public func hashKV(revision: Int64 = 0) async throws -> StoreHash {
        for _ in 0..<5 {
            let current = try await currentRevision()
            let compacted = try await compactedRevision()
            if revision > 0 && revision <= compacted {
                throw CoordinationError(.compacted, "required revision \(revision) has been compacted; the store is compacted at \(compacted)", compactRevision: compacted)
            }
            if revision > current {
                throw CoordinationError(.futureRevision, "required revision \(revision) is a future revision; the current revision is \(current)")
            }
            let upTo = revision == 0 ? current : revision
            // The live versions first, then the archived ones: a version archived while
            // the first scan runs is in the archive before the second begins.
            var versions: [HashedVersion] = []
            try await scan(hashKey: keys[2]) { field, value in
                let version = try HashedVersion(live: field, record: value)
                if version.mod <= upTo { versions.append(version) }
            }
            try await scan(hashKey: keys[4]) { field, value in
                let version = try HashedVersion(member: field, record: value)
                if version.mod <= upTo { versions.append(version) }
            }
            // Started over if a compaction began meanwhile (it removes versions as it goes).
            guard try await compactedRevision() == compacted else { continue }
            return StoreHash(hash: Self.hash(versions, compacted: compacted), revision: upTo, compactRevision: compacted, currentRevision: current)
        }
        let compacted = try await compactedRevision()
        throw CoordinationError(.compacted, "the store was compacted again each of 5 times it was being hashed (now at \(compacted)); retry", compactRevision: compacted)
    }

    /// Calls `body` with each field and value of the hash `hashKey`, page by page.
    private func scan(hashKey: [UInt8], _ body: ([UInt8], [UInt8]) throws -> Void) async throws {
        var cursor = Array("0".utf8)
        repeat {
            let reply = try await redis.send([Array("HSCAN".utf8), hashKey, cursor, Array("COUNT".utf8), Array("1000".utf8)], timeout: nil)
            guard let parts = reply.array, parts.count == 2, let next = parts[0].bytes, let fields = parts[1].array else {
                throw CoordinationError(.protocolError, "HSCAN returned \(reply)")
            }
            var index = 0
            while index + 1 < fields.count {
                try body(fields[index].bytes ?? [], fields[index + 1].bytes ?? [])
                index += 2
            }
            cursor = next
        } while cursor != Array("0".utf8)
    }

    /// The CRC-32C of `versions` (duplicates from the two scans counted once), with
    /// those at or below `compacted` as compaction keeps them.
    static func hash(_ versions: [HashedVersion], compacted: Int64) -> UInt32 {
        let sorted = versions.sorted { $0.key == $1.key ? $0.mod < $1.mod : $0.key.lexicographicallyPrecedes($1.key) }
        var crc = CRC32C()
        var index = 0
        while index < sorted.count {
            // One key's versions.
            var end = index
            while end < sorted.count && sorted[end].key == sorted[index].key { end += 1 }
            var previousMod: Int64 = -1
            let newestCompacted = sorted[index..<end].last { $0.mod <= compacted }?.mod
            for version in sorted[index..<end] where version.mod != previousMod {
                previousMod = version.mod
                if version.mod <= compacted && (version.mod != newestCompacted || version.deleted) { continue }
                version.feed(into: &crc)
            }
            index = end
        }
        return crc.value
    }
}

/// One version of a key, as the hash reads it.
struct HashedVersion {
    var key: [UInt8]
    var mod: Int64
    var deleted: Bool
    var record: [MessagePack]

    /// A live version: `field` is the key, `record` its msgpack record.
    init(live field: [UInt8], record packed: [UInt8]) throws {
        guard case .array(let fields) = try MessagePack.decode(packed), fields.count >= 5, case .int(let mod) = fields[1] else {
            throw CoordinationError(.protocolError, "a live record of the store does not decode; the namespace holds something else")
        }
        self.init(key: field, mod: mod, deleted: false, record: fields)
    }

    /// An archived version or a deletion: `member` is the key, NUL and the revision in
    /// 16 hex digits.
    init(member: [UInt8], record packed: [UInt8]) throws {
        guard member.count >= 17, member[member.count - 17] == 0,
              let mod = Int64(String(decoding: member.suffix(16), as: UTF8.self), radix: 16),
              case .array(let fields) = try MessagePack.decode(packed) else {
            throw CoordinationError(.protocolError, "a history record of the store does not decode; the namespace holds something else")
        }
        let deleted = fields.count < 5
        self.init(key: Array(member.prefix(member.count - 17)), mod: mod, deleted: deleted, record: deleted ? [] : fields)
    }

    private init(key: [UInt8], mod: Int64, deleted: Bool, record: [MessagePack]) {
        self.key = key
        self.mod = mod
        self.deleted = deleted
        self.record = record
    }

    /// The key (length first), then a deletion's revision, or the version's fields:
    /// create, mod, version, lease (decimal), value (length first).
    func feed(into crc: inout CRC32C) {
        crc.update(bigEndian: UInt64(key.count))
        crc.update(key)
        if deleted {
            crc.update([0])
            crc.update(bigEndian: UInt64(bitPattern: mod))
            return
        }
        crc.update([1])
        for field in record.prefix(5) {
            switch field {
            case .int(let number):
                crc.update(bigEndian: UInt64(bitPattern: number))
            case .bytes(let bytes):
                crc.update(bigEndian: UInt64(bytes.count))
                crc.update(bytes)
            default:
                crc.update(bigEndian: UInt64.max)
            }
        }
    }
}

/// CRC-32C (Castagnoli), table-driven, as etcd's hashes use.
struct CRC32C {
    private static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        return crc
    }

    private var state: UInt32 = 0xFFFF_FFFF

    var value: UInt32 { state ^ 0xFFFF_FFFF }

    mutating func update(_ bytes: [UInt8]) {
        var crc = state
        for byte in bytes { crc = Self.table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        state = crc
    }

    mutating func update(bigEndian number: UInt64) {
        update((0..<8).map { UInt8(truncatingIfNeeded: number >> (56 - 8 * $0)) })
    }
}
