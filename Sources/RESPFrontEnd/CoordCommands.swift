import Coordination
import CoordinationPrimitives
import Logging
import NIOCore
import RedisClient
import Synchronization

/// A Redis-style error reply: `ERR ...` and its kin.
struct RESPReplyError: Error {
    var text: String
    static func err(_ message: String) -> RESPReplyError { RESPReplyError(text: "ERR " + message) }
    static let syntax = RESPReplyError.err("syntax error")
    static let notInteger = RESPReplyError.err("value is not an integer or out of range")
}

/// The coordination state of one client connection: its session (a lease kept alive
/// while the connection lives, revoked when it closes) and the locks it holds.
///
/// Commands of one connection run one after another, as Redis runs them; ``close()``
/// may run beside a blocked command (the client went away while waiting).
actor ConnectionCoordination {
    let store: CoordinationClient
    let logger: Logger
    private(set) var sessionTTL: Int64
    private(set) var keepAlive: RESPFrontEnd.SessionKeepAlive
    /// The client's signs of life (the handler notes each command): in `activity`
    /// mode the session's lease is refreshed only while they come.
    let activity: LeaseActivity
    private var session: Session?
    private var mutexes: [String: DistributedMutex] = [:]
    private var elections: [String: Election] = [:]
    private var semaphores: [String: CoordinationPrimitives.Semaphore] = [:]
    /// Visits in progress, by fortress name: the task holding the visit, and the
    /// continuation that ends it (COORD.FORTRESS LEAVE).
    private var visits: [String: (task: Task<Void, Never>, leave: AsyncStream<Void>.Continuation)] = [:]
    private var closed = false

    init(store: CoordinationClient, sessionTTL: Int64, keepAlive: RESPFrontEnd.SessionKeepAlive, activity: LeaseActivity, logger: Logger) {
        self.store = store
        self.sessionTTL = sessionTTL
        self.keepAlive = keepAlive
        self.activity = activity
        self.logger = logger
    }

    /// The connection's session, opened on first use.
    func currentSession() async throws -> Session {
        if let session, !session.isDone { return session }
        if let session, session.endedBecause == .storeReset {
            // Said once, so that a holder does not carry on as if it still held its locks.
            self.session = nil
            (mutexes, elections, semaphores) = ([:], [:], [:])
            throw CoordinationError(.storeReset, "Redis lost the store's data: this connection's session (lease \(session.lease)) ended, and its locks, candidacies, permits and visits with it; start again")
        }
        guard !closed else { throw CancellationError() }
        let opened = try await Session(client: store, ttl: sessionTTL, activity: keepAlive == .activity ? activity : nil)
        if closed {
            try? await opened.close()
            throw CancellationError()
        }
        session = opened
        mutexes = [:]
        elections = [:]
        semaphores = [:]
        visits = [:]
        logger.debug("RESP session opened", metadata: ["lease": "\(String(opened.lease, radix: 16))", "ttl": "\(opened.ttl)", "keepalive": "\(keepAlive.rawValue)"])
        return opened
    }

    /// The connection went away: its lease is revoked at once, and with it every lock,
    /// waiter and leased key of the session, in one revision.
    func close() async {
        closed = true
        for visit in visits.values { visit.leave.finish() }
        visits = [:]
        guard let session else { return }
        self.session = nil
        do {
            try await session.close()
            logger.debug("RESP session revoked", metadata: ["lease": "\(String(session.lease, radix: 16))"])
        } catch {
            logger.warning("could not revoke a closed connection's session lease \(String(session.lease, radix: 16)); it expires after its TTL (\(session.ttl) s): \(error)")
        }
    }

    // MARK: - Commands

    func execute(_ command: RESPCommand) async -> RESPValue {
        do {
            switch command.name {
            case "coord.put": return try await put(command)
            case "coord.get": return try await get(command)
            case "coord.del": return try await del(command)
            case "coord.txn": return try await txn(command)
            case "coord.compact":
                let header = try await store.compact(try Self.integer(command, 1))
                return .fields(["revision": .integer(header.revision)])
            case "coord.rev": return .integer(try await store.currentRevision())
            case "coord.lease": return try await lease(command)
            case "coord.session": return try await sessionCommand(command)
            case "coord.lock": return try await lock(command)
            case "coord.trylock": return try await tryLock(command)
            case "coord.unlock": return try await unlock(command)
            case "coord.campaign": return try await campaign(command)
            case "coord.proclaim": return try await proclaim(command)
            case "coord.resign": return try await resign(command)
            case "coord.leader": return try await leader(command)
            case "coord.fortress": return try await fortress(command)
            case "coord.semaphore": return try await semaphore(command)
            default: return .error("ERR unknown command '\(command.text(0))'")
            }
        } catch let error as RESPReplyError {
            return .error(error.text)
        } catch {
            return .error(Self.replyText(for: error))
        }
    }

    /// Reads the options of PUT, GET and DEL from `index` on, up to the end or to a
    /// word of `stop` (COORD.TXN's THEN, ELSE and operation names).
    private struct Options {
        let command: RESPCommand
        var index: Int
        let stop: Set<String>

        var atEnd: Bool { index >= command.arguments.count || stop.contains(word) }
        var word: String { index < command.arguments.count ? command.text(index).uppercased() : "" }

        mutating func next() throws -> RESPCommand.Argument {
            guard index < command.arguments.count else { throw RESPReplyError.syntax }
            defer { index += 1 }
            return RESPCommand.Argument(command: command, index: index)
        }
    }

    private func putOperation(_ options: inout Options) async throws -> KVOperation {
        let key = try options.next().bytes
        let value = try options.next().bytes
        var put = PutOptions()
        while !options.atEnd {
            switch options.word {
            case "LEASE":
                options.index += 1
                let lease = try options.next().text
                put.lease = lease.uppercased() == "SESSION" ? try await currentSession().lease : try Self.leaseID(lease)
            case "PREVKV": put.prevKV = true; options.index += 1
            case "IGNORE_VALUE": put.ignoreValue = true; options.index += 1
            case "IGNORE_LEASE": put.ignoreLease = true; options.index += 1
            default: throw RESPReplyError.syntax
            }
        }
        return .put(key: key, value: value, options: put)
    }

    /// PREFIX, FROMKEY or END rangeEnd, if the next word is one of them.
    private static func rangeEnd(_ options: inout Options, key: [UInt8]) throws -> [UInt8]? {
        switch options.word {
        case "PREFIX": options.index += 1; return RangeOptions.prefixEnd(key)
        case "FROMKEY": options.index += 1; return [0]
        case "END": options.index += 1; return try options.next().bytes
        default: return nil
        }
    }

    private func rangeOperation(_ options: inout Options) throws -> KVOperation {
        let key = try options.next().bytes
        var range = RangeOptions()
        while !options.atEnd {
            if let end = try Self.rangeEnd(&options, key: key) { range.rangeEnd = end; continue }
            let word = options.word
            options.index += 1
            func value() throws -> Int64 {
                guard let value = Int64(try options.next().text) else { throw RESPReplyError.notInteger }
                return value
            }
            switch word {
            case "LIMIT": range.limit = try value()
            case "REV": range.revision = try value()
            case "MINMOD": range.minModRevision = try value()
            case "MAXMOD": range.maxModRevision = try value()
            case "MINCREATE": range.minCreateRevision = try value()
            case "MAXCREATE": range.maxCreateRevision = try value()
            case "KEYSONLY": range.keysOnly = true
            case "COUNTONLY": range.countOnly = true
            case "SORT":
                switch try options.next().text.uppercased() {
                case "KEY": range.sortTarget = .key
                case "VERSION": range.sortTarget = .version
                case "CREATE": range.sortTarget = .create
                case "MODIFY": range.sortTarget = .mod
                case "VALUE": range.sortTarget = .value
                default: throw RESPReplyError.syntax
                }
                switch try options.next().text.uppercased() {
                case "ASC": range.sortOrder = .ascend
                case "DESC": range.sortOrder = .descend
                default: throw RESPReplyError.syntax
                }
            default: throw RESPReplyError.syntax
            }
        }
        if range.limit < 0 { throw RESPReplyError.err("LIMIT must not be negative") }
        return .range(key: Self.rangeStart(key, range.rangeEnd), options: range)
    }

    private func deleteOperation(_ options: inout Options) throws -> KVOperation {
        let key = try options.next().bytes
        var rangeEnd: [UInt8] = []
        var prevKV = false
        while !options.atEnd {
            if let end = try Self.rangeEnd(&options, key: key) { rangeEnd = end; continue }
            guard options.word == "PREVKV" else { throw RESPReplyError.syntax }
            prevKV = true
            options.index += 1
        }
        return .delete(key: Self.rangeStart(key, rangeEnd), rangeEnd: rangeEnd, prevKV: prevKV)
    }

    private func put(_ command: RESPCommand) async throws -> RESPValue {
        var options = Options(command: command, index: 1, stop: [])
        guard case .put(let key, let value, let put) = try await putOperation(&options) else { throw RESPReplyError.syntax }
        return Self.reply(.put(try await store.put(key, value, options: put)), prevKV: put.prevKV)
    }

    private func get(_ command: RESPCommand) async throws -> RESPValue {
        var options = Options(command: command, index: 1, stop: [])
        guard case .range(let key, let range) = try rangeOperation(&options) else { throw RESPReplyError.syntax }
        return Self.reply(.range(try await store.get(key, options: range)), prevKV: false)
    }

    private func del(_ command: RESPCommand) async throws -> RESPValue {
        var options = Options(command: command, index: 1, stop: [])
        guard case .delete(let key, let rangeEnd, let prevKV) = try deleteOperation(&options) else { throw RESPReplyError.syntax }
        return Self.reply(.delete(try await store.delete(key, rangeEnd: rangeEnd, prevKV: prevKV)), prevKV: prevKV)
    }

    /// COORD.TXN [IF key VALUE|VERSION|CREATE|MOD|LEASE =|!=|<|> operand ...]
    /// [THEN op ...] [ELSE op ...], each op `PUT key value [options]`, `GET key
    /// [options]` or `DEL key [options]` (the options of COORD.PUT, GET and DEL).
    private func txn(_ command: RESPCommand) async throws -> RESPValue {
        let words: Set<String> = ["IF", "THEN", "ELSE", "PUT", "GET", "DEL"]
        var options = Options(command: command, index: 1, stop: words)
        var txn = Txn()
        var section = "IF"
        var seen: Set<String> = []
        while options.index < command.arguments.count {
            let word = options.word
            if word == "IF" || word == "THEN" || word == "ELSE" {
                guard !seen.contains(word), (word != "IF" || seen.isEmpty), (word != "THEN" || !seen.contains("ELSE")) else {
                    throw RESPReplyError.err("syntax error: IF, THEN and ELSE come once each, in that order")
                }
                seen.insert(word)
                section = word
                options.index += 1
                continue
            }
            if section == "IF" {
                guard !seen.isEmpty else { throw RESPReplyError.err("syntax error: a transaction starts with IF, THEN or ELSE") }
                let key = try options.next().bytes
                let target = try options.next().text.uppercased()
                guard let result = Compare.Result(rawValue: try options.next().text) else {
                    throw RESPReplyError.err("syntax error: compare with =, !=, < or >")
                }
                let operand = try options.next()
                let compared: Compare.Target
                switch target {
                case "VALUE": compared = .value(operand.bytes)
                case "VERSION", "CREATE", "MOD", "LEASE":
                    guard let number = target == "LEASE" ? (try? Self.leaseID(operand.text)) : Int64(operand.text) else { throw RESPReplyError.notInteger }
                    compared = target == "VERSION" ? .version(number) : target == "CREATE" ? .createRevision(number)
                        : target == "MOD" ? .modRevision(number) : .lease(number)
                default:
                    throw RESPReplyError.err("syntax error: compare VALUE, VERSION, CREATE, MOD or LEASE")
                }
                txn.compares.append(Compare(key: key, compared, result))
                continue
            }
            options.index += 1
            let operation: KVOperation
            switch word {
            case "PUT": operation = try await putOperation(&options)
            case "GET": operation = try rangeOperation(&options)
            case "DEL": operation = try deleteOperation(&options)
            default: throw RESPReplyError.err("syntax error: an operation is PUT, GET or DEL, not '\(command.text(options.index - 1))'")
            }
            if section == "THEN" { txn.success.append(operation) } else { txn.failure.append(operation) }
        }
        let response = try await store.txn(txn)
        let branch = response.succeeded ? txn.success : txn.failure
        return .fields([
            "succeeded": .boolean(response.succeeded),
            "revision": .integer(response.header.revision),
            "responses": .array(zip(branch, response.responses).map { operation, answer in
                var prevKV = false
                if case .put(_, _, let put) = operation { prevKV = put.prevKV }
                if case .delete(_, _, let wanted) = operation { prevKV = wanted }
                return Self.reply(answer, prevKV: prevKV)
            }),
        ])
    }

    /// The reply to one operation, alone or in a transaction.
    static func reply(_ response: OperationResponse, prevKV: Bool) -> RESPValue {
        switch response {
        case .put(let put):
            var fields: [(RESPValue, RESPValue)] = [(.bulk("revision"), .integer(put.header.revision))]
            if prevKV { fields.append((.bulk("prev_kv"), put.prevKV.map(Self.kv) ?? .null)) }
            return .map(fields)
        case .range(let range):
            return .fields([
                "revision": .integer(range.header.revision), "count": .integer(range.count),
                "more": .boolean(range.more), "kvs": .array(range.kvs.map(Self.kv)),
            ])
        case .delete(let delete):
            var fields: [(RESPValue, RESPValue)] = [(.bulk("revision"), .integer(delete.header.revision)), (.bulk("deleted"), .integer(delete.deleted))]
            if prevKV { fields.append((.bulk("prev_kvs"), .array(delete.prevKVs.map(Self.kv)))) }
            return .map(fields)
        case .txn(let txn):
            return .fields(["succeeded": .boolean(txn.succeeded), "revision": .integer(txn.header.revision)])
        }
    }

    private func lease(_ command: RESPCommand) async throws -> RESPValue {
        let sub = command.text(1).uppercased()
        func needs(_ count: Int) throws {
            guard command.arguments.count >= count else {
                throw RESPReplyError.err("wrong number of arguments for 'coord.lease|\(sub.lowercased())' command")
            }
        }
        switch sub {
        case "GRANT":
            try needs(3)
            var id: Int64 = 0
            if command.arguments.count == 5, command.text(3).uppercased() == "ID" {
                id = try Self.leaseID(command.text(4))
            } else if command.arguments.count != 3 {
                throw RESPReplyError.syntax
            }
            let response = try await store.grantLease(ttl: try Self.integer(command, 2), id: id)
            return .fields(["id": .integer(response.id), "ttl": .integer(response.ttl), "revision": .integer(response.header.revision)])
        case "REVOKE":
            try needs(3)
            let header = try await store.revokeLease(try Self.leaseID(command.text(2)))
            return .fields(["revision": .integer(header.revision)])
        case "KEEPALIVE":
            try needs(3)
            let response = try await store.keepAliveOnce(try Self.leaseID(command.text(2)))
            if response.ttl <= 0 { throw RESPReplyError.err("lease not found (etcdserver: requested lease not found)") }
            return .fields(["id": .integer(response.id), "ttl": .integer(response.ttl), "revision": .integer(response.header.revision)])
        case "TTL":
            try needs(3)
            let keys = command.arguments.count > 3 && command.text(3).uppercased() == "KEYS"
            if command.arguments.count > 3 && !keys { throw RESPReplyError.syntax }
            let response = try await store.timeToLive(try Self.leaseID(command.text(2)), keys: keys)
            var fields: [(RESPValue, RESPValue)] = [
                (.bulk("id"), .integer(response.id)), (.bulk("ttl"), .integer(response.ttl)),
                (.bulk("granted_ttl"), .integer(response.grantedTTL)), (.bulk("revision"), .integer(response.header.revision)),
            ]
            if keys { fields.append((.bulk("keys"), .array(response.keys.map { .bulkString($0) }))) }
            return .map(fields)
        case "LIST":
            return .array(try await store.leases().map { .integer($0) })
        default:
            throw RESPReplyError.err("unknown subcommand '\(command.text(1))'. Try COORD.LEASE GRANT|REVOKE|KEEPALIVE|TTL|LIST.")
        }
    }

    /// COORD.SESSION [TTL seconds] [KEEPALIVE ACTIVITY|CONNECTION]: with options, sets
    /// how the connection's next session is made; without, opens it (if need be) and
    /// describes it.
    private func sessionCommand(_ command: RESPCommand) async throws -> RESPValue {
        if command.arguments.count > 1 {
            var (ttl, keepAlive) = (sessionTTL, self.keepAlive)
            var index = 1
            while index < command.arguments.count {
                guard index + 1 < command.arguments.count else { throw RESPReplyError.syntax }
                switch command.text(index).uppercased() {
                case "TTL":
                    ttl = try Self.integer(command, index + 1)
                    guard ttl > 0 else { throw RESPReplyError.err("the session TTL must be at least 1 second") }
                case "KEEPALIVE":
                    guard let mode = RESPFrontEnd.SessionKeepAlive(rawValue: command.text(index + 1).lowercased()) else {
                        throw RESPReplyError.err("KEEPALIVE is ACTIVITY (the session lives while the client sends commands) or CONNECTION (while the connection is open)")
                    }
                    keepAlive = mode
                default:
                    throw RESPReplyError.syntax
                }
                index += 2
            }
            if let session, !session.isDone {
                throw RESPReplyError.err("this connection's session is open (lease \(session.lease)); set its TTL and KEEPALIVE before the first coordination command")
            }
            (sessionTTL, self.keepAlive) = (ttl, keepAlive)
            return .simpleString("OK")
        }
        let session = try await currentSession()
        return .fields(["lease": .integer(session.lease), "ttl": .integer(session.ttl), "keepalive": .bulk(keepAlive.rawValue)])
    }

    private func mutex(_ name: [UInt8]) async throws -> DistributedMutex {
        let session = try await currentSession()
        let text = String(decoding: name, as: UTF8.self)
        if let mutex = mutexes[text], mutex.session === session { return mutex }
        let mutex = DistributedMutex(session: session, prefix: text)
        mutexes[text] = mutex
        return mutex
    }

    private func lock(_ command: RESPCommand) async throws -> RESPValue {
        let timeout = try Self.timeout(command, at: 2)
        let mutex = try await mutex(command.bytes(1))
        if let token = mutex.fencingToken { return .array([.bulkString(mutex.key), .integer(token)]) }
        guard let token = try await Self.within(timeout, { try await mutex.lock() }) else { return .nullArray }
        return .array([.bulkString(mutex.key), .integer(token)])
    }

    private func tryLock(_ command: RESPCommand) async throws -> RESPValue {
        let mutex = try await mutex(command.bytes(1))
        if let token = mutex.fencingToken { return .array([.bulkString(mutex.key), .integer(token)]) }
        do {
            let token = try await mutex.tryLock()
            return .array([.bulkString(mutex.key), .integer(token)])
        } catch let error as ConcurrencyError where error.code == .locked {
            return .nullArray
        }
    }

    private func unlock(_ command: RESPCommand) async throws -> RESPValue {
        let name = String(decoding: command.bytes(1), as: UTF8.self)
        guard let mutex = mutexes[name], mutex.fencingToken != nil else { return .integer(0) }
        // 0 also when a lapsed session (a stopped client) took the key with it: the lock
        // was not this connection's to release any more.
        let released = try await mutex.unlock()
        mutexes[name] = nil
        return .integer(released ? 1 : 0)
    }

    // MARK: - Elections

    private func election(_ name: String) async throws -> Election {
        let session = try await currentSession()
        if let election = elections[name], election.session === session { return election }
        let election = Election(session: session, prefix: name)
        elections[name] = election
        return election
    }

    private func leaderKey(_ name: String, _ election: Election) -> RESPValue {
        .fields(["name": .bulk(name), "key": .bulkString(election.key), "revision": .integer(election.revision),
                 "lease": .integer(election.session.lease)])
    }

    /// COORD.CAMPAIGN name value [TIMEOUT ms]: waits to be elected; replies the
    /// leader key (name, key, revision, lease), or nil on timeout.
    private func campaign(_ command: RESPCommand) async throws -> RESPValue {
        let timeout = try Self.timeout(command, at: 3)
        let name = command.text(1)
        let election = try await election(name)
        if election.isLeader {
            try await election.proclaim(command.bytes(2))
            return leaderKey(name, election)
        }
        let value = command.bytes(2)
        guard try await Self.within(timeout, { try await election.campaign(value); return true }) != nil else { return .nullArray }
        return leaderKey(name, election)
    }

    /// COORD.PROCLAIM name value: publishes a new value as this connection's leader.
    private func proclaim(_ command: RESPCommand) async throws -> RESPValue {
        let name = command.text(1)
        guard let election = elections[name], election.isLeader else {
            throw RESPReplyError.err("not leader: this connection does not lead election '\(name)' (election: not leader)")
        }
        try await election.proclaim(command.bytes(2))
        return .fields(["revision": .integer(election.header?.revision ?? 0)])
    }

    /// COORD.RESIGN name: gives up leadership (or the place in line); 1, or 0 when
    /// this connection was not campaigning.
    private func resign(_ command: RESPCommand) async throws -> RESPValue {
        let name = command.text(1)
        guard let election = elections[name], election.isLeader else { return .integer(0) }
        try await election.resign()
        elections[name] = nil
        return .integer(1)
    }

    /// COORD.LEADER name: the leader's key-value, or nil when nobody campaigns.
    private func leader(_ command: RESPCommand) async throws -> RESPValue {
        let prefix = Array((command.text(1) + "/").utf8)
        var options = RangeOptions.prefix(prefix)
        options.sortTarget = .create
        options.sortOrder = .ascend
        options.limit = 1
        let response = try await store.get(prefix, options: options)
        guard let kv = response.kvs.first else { return .null }
        return Self.kv(kv)
    }

    /// The leader values of election `name`, for COORD.OBSERVE (on this connection's session).
    func observe(_ name: String) async throws -> AsyncThrowingStream<KeyValue, any Error> {
        try await election(name).observe()
    }

    // MARK: - Fortress and semaphores

    /// The subcommand (upper case), after Redis's arity check for `command|sub`.
    private static func subcommand(_ command: RESPCommand, minimumArguments: Int) throws -> String {
        guard command.arguments.count >= minimumArguments else {
            throw RESPReplyError.err("wrong number of arguments for '\(command.name)|\(command.text(1).lowercased())' command")
        }
        return command.text(1).uppercased()
    }

    /// `TIMEOUT ms` at `index` (0 or none: wait forever).
    private static func timeout(_ command: RESPCommand, at index: Int) throws -> Duration? {
        guard command.arguments.count > index else { return nil }
        guard command.arguments.count == index + 2, command.text(index).uppercased() == "TIMEOUT" else { throw RESPReplyError.syntax }
        let milliseconds = try integer(command, index + 1)
        guard milliseconds >= 0 else { throw RESPReplyError.err("timeout is negative") }
        return milliseconds > 0 ? .milliseconds(milliseconds) : nil
    }

    /// Runs `body`, giving up after `timeout`: `nil` then (the body is cancelled).
    ///
    /// A body that completes although the timeout has passed (it acquired the lock, won
    /// the election, began the visit just as the timer fired, and did not see the
    /// cancellation) counts: its result is returned, so that the client is told what
    /// its connection now holds, as it would be had the body been a moment faster.
    static func within<T: Sendable>(_ timeout: Duration?, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
        guard let timeout else { return try await body() }
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask { try await Task.sleep(for: timeout); return nil }
            let first = try await group.next()!
            group.cancelAll()
            if first != nil { return first }
            // The timer fired. The body, cancelled now, has either given up (it throws,
            // and the answer is the timeout) or got there anyway.
            while let result = try? await group.next() {
                if let result { return result }
            }
            return nil
        }
    }

    /// COORD.FORTRESS UNLOCK name | LOCKDOWN name [TIMEOUT ms] | VISIT name [TIMEOUT ms]
    /// | LEAVE name: juju's fortress, shared with every client of the store.
    private func fortress(_ command: RESPCommand) async throws -> RESPValue {
        let sub = try Self.subcommand(command, minimumArguments: 3)
        let name = command.text(2)
        switch sub {
        case "UNLOCK":
            guard command.arguments.count == 3 else { throw RESPReplyError.syntax }
            try await Fortress(session: try await currentSession(), prefix: name).unlock()
            return .simpleString("OK")
        case "LOCKDOWN":
            let timeout = try Self.timeout(command, at: 3)
            let fortress = Fortress(session: try await currentSession(), prefix: name)
            // The gate shuts even on timeout; only the wait for the visits gives up.
            let done = try await Self.within(timeout) { try await fortress.lockdown(); return true }
            return done == nil ? .null : .simpleString("OK")
        case "VISIT":
            let timeout = try Self.timeout(command, at: 3)
            if visits[name] != nil { throw RESPReplyError.err("this connection is already visiting fortress '\(name)'; COORD.FORTRESS LEAVE \(name) first") }
            let fortress = Fortress(session: try await currentSession(), prefix: name)
            let (entered, enteredNow) = AsyncStream<Void>.makeStream()
            let (leave, leaveNow) = AsyncStream<Void>.makeStream()
            let failure = Mutex<(any Error)?>(nil)
            let task = Task {
                do {
                    try await fortress.visit {
                        enteredNow.yield()
                        for await _ in leave {}
                    }
                } catch {
                    failure.withLock { $0 = error }
                }
                enteredNow.finish()
            }
            let inside = try await Self.within(timeout) { () -> Bool in
                for await _ in entered { return true }
                // Given up at the timeout (the stream ends when the wait is cancelled)
                // is not the visit ending before it began.
                try Task.checkCancellation()
                return false
            }
            guard inside == true else {
                task.cancel()
                leaveNow.finish()
                await task.value
                if inside == nil { return .null }
                throw failure.withLock { $0 } ?? RESPReplyError.err("the visit to fortress '\(name)' ended before it began")
            }
            if closed {
                // The connection went away while the visit began (close() ran meanwhile).
                leaveNow.finish()
                await task.value
                throw CancellationError()
            }
            visits[name] = (task, leaveNow)
            return .simpleString("OK")
        case "LEAVE":
            guard let visit = visits.removeValue(forKey: name) else { return .integer(0) }
            visit.leave.finish()
            await visit.task.value
            return .integer(1)
        default:
            throw RESPReplyError.err("unknown subcommand '\(command.text(1))'. Try COORD.FORTRESS UNLOCK|LOCKDOWN|VISIT|LEAVE.")
        }
    }

    /// COORD.SEMAPHORE ACQUIRE name permits [TIMEOUT ms] | TRYACQUIRE name permits |
    /// RELEASE name: a counting semaphore, first come first served.
    private func semaphore(_ command: RESPCommand) async throws -> RESPValue {
        let sub = try Self.subcommand(command, minimumArguments: 3)
        let name = command.text(2)
        func semaphore(permitsAt index: Int) async throws -> CoordinationPrimitives.Semaphore {
            guard command.arguments.count > index else { throw RESPReplyError.syntax }
            let permits = Int(try Self.integer(command, index))
            let session = try await currentSession()
            if let existing = semaphores[name], existing.session === session {
                guard existing.permits == permits else {
                    throw RESPReplyError.err("semaphore '\(name)' was used with \(existing.permits) permits on this connection, not \(permits)")
                }
                return existing
            }
            let created = try CoordinationPrimitives.Semaphore(session: session, prefix: name, permits: permits)
            semaphores[name] = created
            return created
        }
        switch sub {
        case "ACQUIRE":
            let timeout = try Self.timeout(command, at: 4)
            let semaphore = try await semaphore(permitsAt: 3)
            if semaphore.isHolding { return .simpleString("OK") }
            let acquired = try await Self.within(timeout) { try await semaphore.acquire(); return true }
            return acquired == nil ? .null : .simpleString("OK")
        case "TRYACQUIRE":
            guard command.arguments.count == 4 else { throw RESPReplyError.syntax }
            let semaphore = try await semaphore(permitsAt: 3)
            do {
                try await semaphore.tryAcquire()
                return .simpleString("OK")
            } catch let error as ConcurrencyError where error.code == .locked {
                return .null
            }
        case "RELEASE":
            guard command.arguments.count == 3 else { throw RESPReplyError.syntax }
            guard let semaphore = semaphores[name], semaphore.isHolding else { return .integer(0) }
            try await semaphore.release()
            semaphores[name] = nil
            return .integer(1)
        default:
            throw RESPReplyError.err("unknown subcommand '\(command.text(1))'. Try COORD.SEMAPHORE ACQUIRE|TRYACQUIRE|RELEASE.")
        }
    }

    // MARK: - Values and errors

    /// `"" FROMKEY` is every key (etcdctl's `get "" --from-key` sends the key "\0").
    static func rangeStart(_ key: [UInt8], _ rangeEnd: [UInt8]) -> [UInt8] {
        key.isEmpty && rangeEnd == [0] ? [0] : key
    }

    static func kv(_ kv: KeyValue) -> RESPValue {
        .fields([
            "key": .bulkString(kv.key), "value": .bulkString(kv.value),
            "create_revision": .integer(kv.createRevision), "mod_revision": .integer(kv.modRevision),
            "version": .integer(kv.version), "lease": .integer(kv.lease),
        ])
    }

    static func integer(_ command: RESPCommand, _ index: Int) throws -> Int64 {
        guard let value = Int64(command.text(index)) else { throw RESPReplyError.notInteger }
        return value
    }

    /// A lease ID in decimal, or in hex with `0x` (etcdctl prints leases in hex).
    static func leaseID(_ text: String) throws -> Int64 {
        if text.hasPrefix("0x") || text.hasPrefix("0X"), let value = Int64(text.dropFirst(2), radix: 16) { return value }
        guard let value = Int64(text) else { throw RESPReplyError.notInteger }
        return value
    }

    /// The store's errors as Redis-style replies: an upper-case code, then etcd's
    /// message, so that scripts can match either.
    static func replyText(for error: any Error) -> String {
        if let error = error as? CoordinationError {
            switch error.code {
            case .emptyKey: return "ERR key is not provided (etcdserver: key is not provided)"
            case .compacted:
                let at = error.compactRevision.map { "; compacted at revision \($0)" } ?? ""
                return "COMPACTED required revision has been compacted (etcdserver: mvcc: required revision has been compacted\(at))"
            case .futureRevision: return "FUTUREREV required revision is a future revision (etcdserver: mvcc: required revision is a future revision)"
            case .leaseNotFound: return "ERR lease not found (etcdserver: requested lease not found)"
            case .leaseExists: return "ERR lease already exists (etcdserver: lease already exists)"
            case .valueTooLarge: return "ERR request is too large (etcdserver: request is too large)"
            case .keyNotFound: return "ERR key not found (etcdserver: key not found)"
            case .invalidArgument: return "ERR \(error.message)"
            case .storeReset: return "STORERESET \(error.message)"
            default: return "ERR \(error.message)"
            }
        }
        if let error = error as? ConcurrencyError {
            if error.code == .notLeader { return "ERR not leader (election: not leader)" }
            if error.code == .sessionExpired { return "SESSIONLOST this connection's session lease was lost: \(error.message)" }
            return "ERR \(error.message)"
        }
        if let error = error as? RedisError {
            switch error.code {
            case .connectionLost, .connectionRefused, .connectionClosed:
                return "TRYAGAIN coordproxy cannot reach Redis (\(error.message)); nothing was written, retry once it is back"
            case .outcomeUnknown, .timeout:
                return "TRYAGAIN the request to Redis timed out (\(error.message)); it may or may not have been applied"
            case .server where error.message.contains("OOM command not allowed"):
                // Redis's own error for a write at maxmemory (redis-py: OutOfMemoryError).
                return "OOM command not allowed when used memory > 'maxmemory' (etcdserver: mvcc: database space exceeded): compact the store (COORD.COMPACT), delete keys or raise Redis's maxmemory"
            default:
                return "ERR Redis failed the request (\(error.message))"
            }
        }
        if error is CancellationError { return "ERR the command was cancelled" }
        return "ERR \(error)"
    }
}
