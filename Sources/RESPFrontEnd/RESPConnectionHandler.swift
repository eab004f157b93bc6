import Coordination
import EventLoopExecution
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RedisClient

/// What every connection of one RESP listener shares.
struct RESPFrontEndContext: Sendable {
    let store: CoordinationClient
    let configuration: RESPFrontEnd.Configuration
    /// The hash tag of the store's Redis keys (`{coord}`): pass-through refuses a
    /// command with a key that contains it (any argument, where `commandKeys` cannot
    /// tell which are keys).
    let namespaceTag: [UInt8]
    /// Where the backing Redis's commands take their keys, once read.
    let commandKeys: CommandKeys
    /// Whether clients must authenticate: the backing Redis requires AUTH (so
    /// coordination commands do too), or coordproxy has a password of its own.
    let requiresAuth: Bool
    /// coordproxy's own password (`--requirepass`), checked here, never sent to Redis.
    let localPassword: [UInt8]?
    let logger: Logger
    let connections: RESPFrontEnd.Connections
    /// The shared Redis connections of stateless commands (one per event loop), or nil
    /// when every client gets its own (`--no-multiplex`, or Redis requires AUTH).
    let sharedBackends: SharedBackends?
}

/// One client connection: parses its commands, runs COORD.* commands against the
/// store (one after another, as Redis runs a connection's commands), forwards every
/// other command to Redis, and writes the replies back in the order of the commands.
///
/// Until a client sends a command that gives its Redis connection state (MULTI,
/// WATCH, SELECT, AUTH, CLIENT SETNAME, subscriptions, blocking commands, scripts:
/// anything not in ``shareable`` nor sent on connect, as a plain HELLO or CLIENT
/// SETINFO), its commands go on the event loop's shared Redis connection of its
/// protocol, pipelined with other clients' (fewer reads and writes for Redis and for
/// the proxy); from the first such command on, and for the rest of its life, on a
/// Redis connection of its own, which replays the HELLO and CLIENT settings first
/// and sends nothing until the shared connection has answered everything the client
/// sent on it, so Redis runs its commands in the order sent.
final class RESPConnectionHandler: ChannelInboundHandler, BackendOwner {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// A reply to come, in command order.
    fileprivate final class Slot {
        /// From the backend (filled by the next backend reply) or our own.
        let fromBackend: Bool
        var reply: ByteBuffer?
        /// After the reply: close the connection (QUIT, a protocol error).
        var closeAfter = false
        /// Called with the backend's reply before it is written (AUTH, HELLO, MULTI).
        var onReply: ((ByteBuffer) -> Void)?
        /// Watch events that must follow this reply (the COORD.WATCH that created them).
        var then: [ByteBuffer] = []
        /// Backend replies still to come: (P|S)SUBSCRIBE answers one message per
        /// channel, and a slot on the shared connection takes one reply for each of
        /// the client's back-to-back commands; `takesPushes`: those messages are RESP3
        /// pushes.
        var framesLeft = 1
        var takesPushes = false
        /// Rewrites the backend's reply before it is written (COMMAND's lists gain ours).
        var transform: ((ByteBuffer) -> ByteBuffer)?
        init(fromBackend: Bool, reply: ByteBuffer? = nil) {
            self.fromBackend = fromBackend
            self.reply = reply
        }
    }

    private let shared: RESPFrontEndContext
    private var parser = RESPCommandParser()
    private var input: ByteBuffer?
    /// The last command's name as sent, its lowercase form, and what is decided from
    /// the name alone: a pipeline repeats one command, whose name is then neither
    /// lowered nor looked up again.
    private var lastName: (sent: [UInt8], lowered: String, traits: NameTraits) = ([], "", NameTraits(""))

    /// What is decided from a command's (lowercase) name alone.
    private struct NameTraits {
        /// COORD.*: served here.
        let coordination: Bool
        /// The shared connection may carry it (see ``shareable``).
        let shareable: Bool
        /// Looked at by name before it is passed through (nil for most commands).
        let special: Special?

        /// The commands handled or checked by name: QUIT and COMMAND in
        /// ``handle(_:context:)``, the others in ``refusal(_:name:special:)``.
        enum Special {
            case quit, command, flush, client, config
        }

        init(_ name: String) {
            coordination = name.hasPrefix("coord.")
            shareable = RESPConnectionHandler.shareable.contains(name)
            switch name {
            case "quit": special = .quit
            case "command": special = .command
            // SWAPDB moves every key of a database, the store's with them, under another number.
            case "flushall", "flushdb", "swapdb": special = .flush
            case "client": special = .client
            case "config": special = .config
            default: special = nil
            }
        }
    }
    private var slots = CircularBuffer<Slot>()
    /// The slots still owed backend replies, oldest first: the next backend reply
    /// belongs to the first (found without walking the pipeline's slots).
    private var awaitingBackend = CircularBuffer<Slot>()
    private var protocolVersion = 2
    private var authenticated: Bool
    private var inMulti = false
    /// The connection's subscriptions, as Redis will have them once the commands sent
    /// so far run: channels, patterns and shard channels.
    private var subscriptions: [String: Set<[UInt8]>] = ["subscribe": [], "psubscribe": [], "ssubscribe": []]
    private var monitoring = false
    /// In RESP2 subscribe mode or after MONITOR, Redis accepts only the pub/sub
    /// commands, so coordination commands are refused too.
    private var rawMode: Bool {
        monitoring || (protocolVersion == 2 && subscriptions.values.contains { !$0.isEmpty })
    }
    private var closing = false
    private var context: ChannelHandlerContext?
    /// The connection's event loop as a task executor (coordination commands run there).
    private var executor: EventLoopTaskExecutor?
    private var backend: Backend?
    /// The event loop's shared Redis connections, RESP2 and RESP3 (nil when clients
    /// do not share), found at first use.
    private var sharedBackends: (resp2: SharedBackend?, resp3: SharedBackend?) = (nil, nil)
    /// Commands sent on the shared connection and not answered yet.
    private var sharedOutstanding = 0
    /// The slot of the shared commands sent last in the current read: the next one,
    /// if it goes to the same shared connection with no other slot between, joins it
    /// (a pipeline of GETs is one slot and one entry on the shared connection, and
    /// its replies one buffer, instead of one of each per command). Cleared after
    /// each read, so that only commands written back to back to Redis share a slot.
    private var openSharedSlot: (slot: Slot, backend: SharedBackend)?
    /// Listed by the shared connection for a flush after its current read.
    fileprivate var awaitingSharedFlush = false
    /// HELLO and CLIENT settings run on a shared connection (clients send them on
    /// connect): sent again, first, on the client's own connection once it has one.
    private var replayOnOwnConnection: [ByteBuffer] = []
    private let coordination: ConnectionCoordination
    /// The client's signs of life: every command, and busy while replies are owed.
    private let activity = LeaseActivity()
    /// The last coordination command, which the next one waits for.
    private var tail: Task<Void, Never>?
    /// Every coordination command still running (a blocked one and those queued
    /// behind it), cancelled when the connection closes.
    private var inFlight: [Int: Task<Void, Never>] = [:]
    private var nextTaskID = 0
    /// AUTH or HELLO ... AUTH commands sent to Redis and not answered yet: coordination
    /// commands behind them wait for the answer before the authentication check.
    private var authenticationsInFlight = 0
    private var parked: [(command: RESPCommand, name: String, slot: Slot, refusal: String?)] = []
    /// The connection's watches (COORD.WATCH), by watch ID.
    private var watches: [Int64: Task<Void, Never>] = [:]
    private var nextWatchID: Int64 = 0
    /// Bytes of watch events written but not yet sent: past the limit, the client
    /// reads too slowly and is disconnected (Redis's client-output-buffer-limit).
    private var unsentPushBytes = 0
    /// Bytes of watch events held behind a reply still pending (a pipelined command
    /// ahead of them has not been answered): they count toward the limit too.
    private var heldPushBytes = 0
    /// RESP2 connections with watches are in watch mode, as in subscribe mode.
    private var inWatchMode: Bool { protocolVersion == 2 && !watches.isEmpty }

    init(shared: RESPFrontEndContext) {
        self.shared = shared
        self.authenticated = !shared.requiresAuth
        self.coordination = ConnectionCoordination(store: shared.store, sessionTTL: shared.configuration.sessionTTL,
                                                   keepAlive: shared.configuration.sessionKeepAlive, activity: activity, logger: shared.logger)
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        executor = EventLoopTaskExecutor.for(context.eventLoop)
        shared.connections.add(context.channel)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        shared.connections.remove(context.channel)
        self.context = nil
        backend?.close()
        backend = nil
        tail?.cancel()
        for task in inFlight.values { task.cancel() }
        inFlight = [:]
        for watch in watches.values { watch.cancel() }
        watches = [:]
        let coordination = self.coordination
        Task { await coordination.close() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        shared.logger.debug("RESP connection error: \(error)")
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if closing { return }
        // Parsed in a local (no access to this handler's storage per command); what is
        // left of an incomplete command waits in `input` for the next read.
        var pending = input.takeJoined(with: &bytes)
        // One sign of life per read, however many commands it carried.
        activity.note()
        var parser = self.parser
        do {
            while !closing, let command = try parser.next(&pending) {
                handle(command, context: context)
            }
        } catch {
            closing = true
            reply(.error("ERR Protocol error: \(error.message)"), closeAfter: true)
        }
        self.parser = parser
        if pending.readableBytes > Self.queryBufferLimit {
            // Redis's client-query-buffer-limit: a command that never ends is not held
            // in memory without bound; Redis closes such a client without a reply.
            shared.logger.warning("closing a RESP client whose unfinished command passed the query buffer limit",
                                  metadata: ["remote": "\(Self.remote(context.channel))", "bytes": "\(pending.readableBytes)"])
            closing = true
            context.close(promise: nil)
            return
        }
        if pending.readableBytes > 0 { input = pending }
        openSharedSlot = nil
    }

    /// The client's address, for log lines.
    private static func remote(_ channel: (any Channel)?) -> String {
        channel?.remoteAddress.map { "\($0)" } ?? "?"
    }

    /// Redis's `client-query-buffer-limit` default (1 GiB).
    static let queryBufferLimit = 1 << 30

    func channelReadComplete(context: ChannelHandlerContext) {
        backend?.flush()
        flushReady()
    }

    // MARK: - Commands

    private func handle(_ command: RESPCommand, context: ChannelHandlerContext) {
        if let first = command.arguments.first, !first.readableBytesView.elementsEqual(lastName.sent) {
            let lowered = command.name
            lastName = (Array(first.readableBytesView), lowered, NameTraits(lowered))
        }
        let name = lastName.lowered
        let traits = lastName.traits
        if inWatchMode && !["coord.watch", "coord.observe", "coord.unwatch", "ping", "quit", "reset"].contains(name) {
            reply(.error("ERR Can't execute '\(name)': only COORD.WATCH / COORD.OBSERVE / COORD.UNWATCH / PING / QUIT / RESET are allowed in this context (RESP2 watch mode; HELLO 3 allows every command beside watches)"))
            return
        }
        var command = command
        if let password = shared.localPassword, !authenticated || name == "auth" || name == "hello" {
            guard let admitted = locallyAuthenticated(command, name: name, password: password) else { return }
            command = admitted
        }
        if traits.coordination {
            coordinationCommand(command, name: name)
            return
        }
        switch traits.special {
        case .quit?:
            closing = true
            reply(.simpleString("OK"), closeAfter: true)
            return
        case .command? where command.arguments.count >= 2:
            if let answer = commandIntrospection(command) {
                reply(answer)
                return
            }
        default:
            break
        }
        guard shared.configuration.passthrough || ["auth", "hello", "ping", "echo", "select", "client", "command", "reset"].contains(name) else {
            reply(.error("ERR unknown command '\(command.text(0))': coordproxy runs with --no-passthrough and serves only COORD.* commands (and PING, HELLO, AUTH)"))
            return
        }
        if let refusal = refusal(command, name: name, special: traits.special) {
            reply(.error(refusal))
            return
        }
        forward(command, name: name, shareable: traits.shareable)
    }

    /// With coordproxy's own password (`--requirepass`): AUTH and HELLO's AUTH option
    /// are checked here, with Redis's replies to a requirepass, and nothing but QUIT and
    /// RESET runs before. Returns the command to go on with (HELLO without its AUTH
    /// option), or nil when it has been answered.
    private func locallyAuthenticated(_ command: RESPCommand, name: String, password: [UInt8]) -> RESPCommand? {
        let arguments = command.arguments
        func matches(user: ByteBuffer?, _ given: ByteBuffer) -> Bool {
            if let user, Array(user.readableBytesView) != Array("default".utf8) { return false }
            // Compared in full whatever the first difference (no early exit).
            let bytes = Array(given.readableBytesView)
            var difference = bytes.count ^ password.count
            for index in 0..<max(bytes.count, password.count) {
                difference |= Int((index < bytes.count ? bytes[index] : 0) ^ (index < password.count ? password[index] : 1))
            }
            return difference == 0
        }
        func refuseWrongPassword() {
            shared.logger.notice("RESP client gave a wrong password", metadata: ["remote": "\(Self.remote(context?.channel))"])
            reply(.error("WRONGPASS invalid username-password pair or user is disabled."))
        }
        switch name {
        case "auth":
            guard arguments.count >= 2 else {
                reply(.error("ERR wrong number of arguments for 'auth' command"))
                return nil
            }
            guard arguments.count <= 3 else {
                reply(.error("ERR syntax error"))
                return nil
            }
            if matches(user: arguments.count == 3 ? arguments[1] : nil, arguments[arguments.count - 1]) {
                authenticated = true
                reply(.simpleString("OK"))
            } else {
                refuseWrongPassword()
            }
            return nil
        case "hello":
            // HELLO [protover [AUTH username password] [SETNAME clientname]]
            if arguments.count >= 2, !["2", "3"].contains(command.text(1)) {
                reply(.error("NOPROTO unsupported protocol version"))
                return nil
            }
            var kept: [ByteBuffer] = []
            var authenticates = false
            var index = 0
            while index < arguments.count {
                if index >= 2, command.text(index).lowercased() == "auth" {
                    guard index + 2 < arguments.count else {
                        reply(.error("ERR Syntax error in HELLO option '\(command.text(index))'"))
                        return nil
                    }
                    guard matches(user: arguments[index + 1], arguments[index + 2]) else {
                        refuseWrongPassword()
                        return nil
                    }
                    authenticates = true
                    index += 3
                    continue
                }
                kept.append(arguments[index])
                index += 1
            }
            guard authenticates || authenticated else {
                reply(.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"))
                return nil
            }
            authenticated = true
            guard authenticates else { return command }
            var raw = ByteBufferAllocator().buffer(capacity: command.raw.readableBytes)
            raw.writeString("*\(kept.count)\r\n")
            for argument in kept {
                raw.writeString("$\(argument.readableBytes)\r\n")
                raw.writeImmutableBuffer(argument)
                raw.writeString("\r\n")
            }
            return RESPCommand(arguments: kept, raw: raw)
        case "quit", "reset":
            return command
        default:
            reply(.error("NOAUTH Authentication required."))
            return nil
        }
    }

    /// Where Redis's commands take their keys, once read (see ``CommandKeys``).
    private var keyTable: CommandKeyTable?

    /// Why pass-through will not forward a command, if it will not.
    private func refusal(_ command: RESPCommand, name: String, special: NameTraits.Special?) -> String? {
        switch special {
        case .flush?:
            if !shared.configuration.allowFlush {
                let effect = name == "swapdb" ? "move the coordination store's keys to another database" : "delete the coordination store's keys"
                return "ERR coordproxy refuses \(name.uppercased()): it would \(effect); start coordproxy with --allow-flush to pass it through"
            }
        case .client?:
            if command.arguments.count >= 2, command.text(1).lowercased() == "reply" {
                return "ERR coordproxy does not pass CLIENT REPLY through: replies must stay one per command"
            }
        case .config?:
            // An allkeys-* policy lets Redis evict the store's keys under memory pressure
            // (coordproxy refuses to start on such a Redis, see CoordinationClient.connect).
            if command.arguments.count >= 3, command.text(1).lowercased() == "set" {
                var index = 2
                while index + 1 < command.arguments.count {
                    if command.text(index).lowercased() == "maxmemory-policy", command.text(index + 1).lowercased().hasPrefix("allkeys-") {
                        return "ERR coordproxy refuses CONFIG SET maxmemory-policy \(command.text(index + 1)): Redis would evict the coordination store's keys under memory pressure, losing revisions, leases and locks; use a volatile-* policy or noeviction"
                    }
                    index += 2
                }
            }
        default:
            break
        }
        let tag = shared.namespaceTag
        let arguments = command.arguments
        func refused(_ index: Int) -> Bool { arguments[index].readableBytes >= tag.count && Self.contains(arguments[index], tag) }
        // Most commands carry no tag at all: only those that do look up their keys.
        guard (1..<max(arguments.count, 1)).contains(where: refused) else { return nil }
        if keyTable == nil { keyTable = shared.commandKeys.current }
        let keys = keyTable?.keyIndices(name: name, subcommand: arguments.count > 1 ? command.text(1) : nil, count: arguments.count)
        let advice = "use COORD.* commands, which keep revisions, leases and watches consistent"
        guard let keys else {
            // Which arguments are keys is not known: any argument with the tag may be one.
            let why = keyTable == nil
                ? "Redis's command table (COMMAND) has not been read yet"
                : "Redis's command table does not say which of its arguments are keys"
            return "ERR coordproxy refuses '\(command.text(0))': an argument carries the coordination store's hash tag (\(String(decoding: tag, as: UTF8.self))) and \(why), so it may touch the store's keys; \(advice)"
        }
        if keys.contains(where: refused) {
            return "ERR coordproxy refuses '\(command.text(0))' on the coordination store's keys (\(String(decoding: tag, as: UTF8.self))*): \(advice)"
        }
        return nil
    }

    private static func contains(_ buffer: ByteBuffer, _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, buffer.readableBytes >= needle.count else { return false }
        return buffer.withUnsafeReadableBytes { haystack in
            needle.withUnsafeBytes { pattern in
                guard let base = haystack.baseAddress, let wanted = pattern.baseAddress else { return false }
                // memchr finds each candidate first byte, memcmp checks the rest.
                let last = haystack.count - pattern.count
                var offset = 0
                while offset <= last {
                    guard let hit = memchr(base + offset, Int32(pattern[0]), last - offset + 1) else { return false }
                    if memcmp(hit, wanted, pattern.count) == 0 { return true }
                    offset = base.distance(to: UnsafeRawPointer(hit)) + 1
                }
                return false
            }
        }
    }

    private func coordinationCommand(_ command: RESPCommand, name: String) {
        guard let spec = RESPCommandTable.byName[name] else {
            reply(.error("ERR unknown command '\(command.text(0))', with args beginning with: \(command.arguments.dropFirst().prefix(3).map { "'\(String(decoding: $0.readableBytesView, as: UTF8.self))' " }.joined())"))
            return
        }
        guard spec.arityAllows(command.arguments.count) else {
            reply(.error("ERR wrong number of arguments for '\(name)' command"))
            return
        }
        if !authenticated && authenticationsInFlight > 0 {
            // Decided once Redis has answered the AUTH before it, in the state of now.
            let slot = Slot(fromBackend: false)
            slots.append(slot)
            parked.append((command, name, slot, stateRefusal(name)))
            return
        }
        guard authenticated else {
            reply(.error("NOAUTH Authentication required."))
            return
        }
        if let refusal = stateRefusal(name) {
            reply(.error(refusal))
            return
        }
        start(command, name: name, slot: nil)
    }

    /// Why the connection's state (subscribe mode, MULTI) refuses a coordination command.
    private func stateRefusal(_ name: String) -> String? {
        if rawMode {
            return "ERR Can't execute '\(name)': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
        }
        if inMulti {
            return "ERR '\(name)' cannot run inside MULTI: coordination commands are atomic on their own (use COORD.TXN for several keys)"
        }
        return nil
    }

    /// Starts a coordination command whose reply goes in `slot` (queued already), or
    /// in a new slot.
    private func start(_ command: RESPCommand, name: String, slot: Slot?) {
        switch name {
        case "coord.watch": watch(command, slot: slot)
        case "coord.observe": observe(command, slot: slot)
        case "coord.unwatch": unwatch(command, slot: slot)
        default: run(command, in: slot ?? Slot(fromBackend: false), queued: slot != nil)
        }
    }

    /// Runs a coordination command after the connection's earlier ones, its reply in
    /// `slot` (queued already when `queued`).
    private func run(_ command: RESPCommand, in slot: Slot, queued: Bool) {
        if !queued { slots.append(slot) }
        let previous = tail
        let coordination = self.coordination
        let loop = context!.eventLoop
        let me = NIOLoopBound(self, eventLoop: loop)
        let boundSlot = NIOLoopBound(slot, eventLoop: loop)
        nextTaskID += 1
        let taskID = nextTaskID
        // On the connection's event loop (the actor's work too): the store's reply
        // resumes the command there, where its reply is written.
        let task = Task(executorPreference: executor) {
            await previous?.value
            let value: RESPValue = Task.isCancelled ? .error("ERR the connection closed") : await coordination.execute(command)
            let finish: @Sendable () -> Void = {
                let handler = me.value
                handler.inFlight[taskID] = nil
                guard handler.context != nil else { return }
                boundSlot.value.reply = handler.encode(value)
                handler.flushReady()
            }
            if loop.inEventLoop { finish() } else { loop.execute(finish) }
        }
        tail = task
        inFlight[taskID] = task
    }

    /// Redis answered an AUTH: the coordination commands parked behind it are decided.
    private func authenticationAnswered() {
        authenticationsInFlight -= 1
        guard authenticationsInFlight == 0 || authenticated else { return }
        let waiting = parked
        parked = []
        for (command, name, slot, refusal) in waiting {
            if !authenticated {
                slot.reply = encode(.error("NOAUTH Authentication required."))
            } else if let refusal {
                slot.reply = encode(.error(refusal))
            } else {
                start(command, name: name, slot: slot)
            }
        }
    }

    /// COMMAND INFO / DOCS / COUNT / LIST for our own commands; Redis's for the rest.
    private func commandIntrospection(_ command: RESPCommand) -> RESPValue? {
        let sub = command.text(1).lowercased()
        let names = command.arguments.dropFirst(2).map { String(decoding: $0.readableBytesView, as: UTF8.self).lowercased() }
        switch sub {
        case "info" where !names.isEmpty && names.allSatisfy({ $0.hasPrefix("coord.") }):
            return .array(names.map { RESPCommandTable.byName[$0]?.info ?? .nullArray })
        case "docs" where !names.isEmpty && names.allSatisfy({ $0.hasPrefix("coord.") }):
            var pairs: [(RESPValue, RESPValue)] = []
            for name in names { if let spec = RESPCommandTable.byName[name] { pairs.append((.bulk(name), spec.docs)) } }
            return .map(pairs)
        default:
            if !shared.configuration.passthrough {
                switch sub {
                case "info": return .array(names.map { RESPCommandTable.byName[$0]?.info ?? .nullArray })
                case "docs":
                    let specs = names.isEmpty ? RESPCommandTable.commands : names.compactMap { RESPCommandTable.byName[$0] }
                    return .map(specs.map { (.bulk($0.name.lowercased()), $0.docs) })
                case "count": return .integer(Int64(RESPCommandTable.commands.count))
                case "list": return .array(RESPCommandTable.commands.map { .bulk($0.name.lowercased()) })
                default: return nil
                }
            }
            return nil
        }
    }

    // MARK: - Watches

    /// The most bytes of watch events a client may leave unread (Redis's pubsub
    /// client-output-buffer-limit hard limit, 32 MiB).
    static let pushLimit = 32 * 1024 * 1024

    /// COORD.WATCH key [PREFIX | FROMKEY | END rangeEnd] [REV r] [PREVKV] [NOPUT]
    /// [NODELETE]: replies `[watch, id, revision]` (the watch sees every change after
    /// `revision`, or from REV r on), then pushes `[event, id, revision, events]` for
    /// each revision that changes the range, in order, with no gaps.
    private func watch(_ command: RESPCommand, slot: Slot?) {
        let key = ConnectionCoordination.rangeStart(command.bytes(1), [])
        var options = WatchOptions()
        var index = 2
        do {
            while index < command.arguments.count {
                switch command.text(index).uppercased() {
                case "PREFIX": options.rangeEnd = RangeOptions.prefixEnd(key); index += 1
                case "FROMKEY": options.rangeEnd = [0]; index += 1
                case "END":
                    guard index + 1 < command.arguments.count else { throw RESPReplyError.syntax }
                    options.rangeEnd = command.bytes(index + 1); index += 2
                case "REV":
                    guard index + 1 < command.arguments.count else { throw RESPReplyError.syntax }
                    options.startRevision = try ConnectionCoordination.integer(command, index + 1); index += 2
                case "PREVKV": options.prevKV = true; index += 1
                case "NOPUT": options.noPut = true; index += 1
                case "NODELETE": options.noDelete = true; index += 1
                default: throw RESPReplyError.syntax
                }
            }
        } catch {
            let text = (error as? RESPReplyError)?.text ?? "ERR \(error)"
            if let slot { slot.reply = encode(.error(text)) } else { reply(.error(text)) }
            return
        }
        let start = ConnectionCoordination.rangeStart(key, options.rangeEnd)
        let store = shared.store
        let requested = options
        openStream(slot: slot) { id in
            var from = requested
            if from.startRevision <= 0 { from.startRevision = try await store.currentRevision() + 1 }
            let watching = from
            let pushes = AsyncThrowingStream<RESPValue, any Error> { continuation in
                let task = Task {
                    do {
                        for try await response in store.watch(start, options: watching) {
                            let events = RESPValue.array(response.events.map { event in
                                var fields: [(RESPValue, RESPValue)] = [(.bulk("type"), .bulk(event.kind == .put ? "PUT" : "DELETE")),
                                                                          (.bulk("kv"), ConnectionCoordination.kv(event.kv))]
                                if watching.prevKV { fields.append((.bulk("prev_kv"), event.prevKV.map(ConnectionCoordination.kv) ?? .null)) }
                                return .map(fields)
                            })
                            continuation.yield(.push([.bulk("event"), .integer(id), .integer(response.header.revision), events]))
                        }
                        continuation.finish()
                    } catch {
                        continuation.finish(throwing: error)
                    }
                }
                continuation.onTermination = { _ in task.cancel() }
            }
            return (.array([.bulk("watch"), .integer(id), .integer(watching.startRevision - 1)]), pushes)
        }
    }

    /// COORD.OBSERVE name: replies `[observe, id]`, then pushes `[leader, id, kv]` with
    /// the leader's value (once there is a leader) and every later proclamation and
    /// new leader's value, in revision order.
    private func observe(_ command: RESPCommand, slot: Slot?) {
        let coordination = self.coordination
        let name = command.text(1)
        openStream(slot: slot) { id in
            let values = try await coordination.observe(name)
            let pushes = AsyncThrowingStream<RESPValue, any Error> { continuation in
                let task = Task {
                    do {
                        for try await kv in values {
                            continuation.yield(.push([.bulk("leader"), .integer(id), ConnectionCoordination.kv(kv)]))
                        }
                        continuation.finish()
                    } catch {
                        continuation.finish(throwing: error)
                    }
                }
                continuation.onTermination = { _ in task.cancel() }
            }
            return (.array([.bulk("observe"), .integer(id)]), pushes)
        }
    }

    /// Opens a stream of pushes (a watch, an observation) after the connection's
    /// earlier coordination commands: `open` runs in their order and gives the reply
    /// and the pushes, which follow the reply, in order; an error ends the stream with
    /// a `[canceled, id, error]` push (as etcd cancels a watch whose start is compacted).
    private func openStream(slot given: Slot?, _ open: @escaping @Sendable (Int64) async throws -> (RESPValue, AsyncThrowingStream<RESPValue, any Error>)) {
        let slot = given ?? Slot(fromBackend: false)
        if given == nil { slots.append(slot) }
        nextWatchID += 1
        let id = nextWatchID
        let loop = context!.eventLoop
        let me = NIOLoopBound(self, eventLoop: loop)
        let boundSlot = NIOLoopBound(slot, eventLoop: loop)
        let previous = tail
        // The stream counts as open at once, so that RESP2 watch mode begins with it.
        watches[id] = Task {}
        tail = Task {
            await previous?.value
            let opened: (RESPValue, AsyncThrowingStream<RESPValue, any Error>)
            do {
                opened = try await open(id)
            } catch {
                loop.execute {
                    let handler = me.value
                    handler.watches[id] = nil
                    boundSlot.value.reply = handler.encode(.error(ConnectionCoordination.replyText(for: error)))
                    handler.flushReady()
                }
                return
            }
            let (reply, pushes) = opened
            loop.execute {
                let handler = me.value
                guard handler.context != nil else { return }
                // The reply is due even when a pipelined COORD.UNWATCH already ended
                // the stream; then it does not start.
                boundSlot.value.reply = handler.encode(reply)
                guard handler.watches[id] != nil else {
                    handler.flushReady()
                    return
                }
                handler.watches[id] = Task {
                    do {
                        for try await push in pushes {
                            loop.execute { me.value.push(push, after: boundSlot.value) }
                        }
                        loop.execute { me.value.watches[id] = nil }
                    } catch is CancellationError {
                        return
                    } catch {
                        let push = RESPValue.push([.bulk("canceled"), .integer(id), .bulk(ConnectionCoordination.replyText(for: error))])
                        loop.execute {
                            let handler = me.value
                            handler.watches[id] = nil
                            handler.push(push, after: boundSlot.value)
                        }
                    }
                }
                handler.flushReady()
            }
        }
    }

    /// COORD.UNWATCH [id ...]: ends the given watches (every one without IDs);
    /// replies how many ended.
    private func unwatch(_ command: RESPCommand, slot: Slot?) {
        func answer(_ value: RESPValue) {
            if let slot { slot.reply = encode(value) } else { reply(value) }
        }
        var ids: [Int64] = []
        for index in 1..<max(command.arguments.count, 1) {
            guard let id = Int64(command.text(index)) else {
                answer(.error(RESPReplyError.notInteger.text))
                return
            }
            ids.append(id)
        }
        if ids.isEmpty { ids = Array(watches.keys) }
        var ended: Int64 = 0
        for id in ids {
            if let task = watches.removeValue(forKey: id) {
                task.cancel()
                ended += 1
            }
        }
        answer(.integer(ended))
    }

    /// A watch event or cancellation: behind its COORD.WATCH reply if that is still
    /// waiting, else at once.
    private func push(_ value: RESPValue, after slot: Slot) {
        guard let context else { return }
        guard !closing else { return }
        let buffer = encode(value)
        if slots.contains(where: { $0 === slot }) {
            heldPushBytes += buffer.readableBytes
            if unsentPushBytes + heldPushBytes > Self.pushLimit {
                pushLimitReached(context: context)
                return
            }
            slot.then.append(buffer)
            return
        }
        writePush(buffer, context: context)
        context.flush()
    }

    private func writePush(_ buffer: ByteBuffer, context: ChannelHandlerContext, held: Bool = false) {
        let size = buffer.readableBytes
        if held { heldPushBytes -= size }
        guard !closing else { return }
        unsentPushBytes += size
        if unsentPushBytes + heldPushBytes > Self.pushLimit {
            pushLimitReached(context: context)
            return
        }
        let me = NIOLoopBound(self, eventLoop: context.eventLoop)
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { _ in me.value.unsentPushBytes -= size }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    /// The client left more than ``pushLimit`` of watch events unread: its watches
    /// end, each with a `[canceled, id, error]` push that says why, written behind the
    /// events already queued (and behind replies still due), and the connection closes
    /// once those are sent (a client that reads again sees them) or after
    /// ``pushLimitGrace`` (one that does not).
    private func pushLimitReached(context: ChannelHandlerContext) {
        shared.logger.warning("closing a RESP client that does not read its watch events (over \(Self.pushLimit / 1024 / 1024) MiB unread)",
                              metadata: ["remote": "\(Self.remote(context.channel))", "watches": "\(watches.count)"])
        let ended = watches.keys.sorted()
        for watch in watches.values { watch.cancel() }
        watches = [:]
        closing = true
        let text = "OUTPUTLIMIT this connection left more than \(Self.pushLimit / 1024 / 1024) MiB of watch events unread (coordproxy's limit, as Redis's client-output-buffer-limit for pub/sub): its watches ended and the connection closes; read events as they arrive, or watch fewer keys"
        var notices = context.channel.allocator.buffer(capacity: 512)
        for id in ended {
            var notice = encode(.push([.bulk("canceled"), .integer(id), .bulk(text)]))
            notices.writeBuffer(&notice)
        }
        let channel = context.channel
        let deadline = context.eventLoop.scheduleTask(in: Self.pushLimitGrace) { channel.close(promise: nil) }
        if !slots.isEmpty {
            // Replies still due (a pipelined command ahead of the events held back): the
            // notices follow them, in command order, and the connection closes after
            // (the events held behind them are dropped with their watches).
            let last = Slot(fromBackend: false, reply: notices)
            last.closeAfter = true
            slots.append(last)
            return
        }
        let sent = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(notices), promise: sent)
        sent.futureResult.whenComplete { _ in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    /// How long a client over the limit is given to read what was queued for it (Redis
    /// gives a pub/sub client 60 s over its soft limit, none over its hard limit).
    static let pushLimitGrace = TimeAmount.seconds(30)

    // MARK: - Pass-through

    /// Commands that leave nothing behind on the Redis connection they run on and
    /// never block it: while a client sends only these (and COORD.* commands), they go
    /// on the shared connection. Any other command gives the client its own.
    static let shareable: Set<String> = [
        "get", "set", "setnx", "setex", "psetex", "mget", "mset", "msetnx", "getset", "getdel", "getex",
        "getrange", "setrange", "append", "strlen", "incr", "decr", "incrby", "decrby", "incrbyfloat", "lcs",
        "del", "unlink", "exists", "expire", "pexpire", "expireat", "pexpireat", "persist", "ttl", "pttl",
        "expiretime", "pexpiretime", "type", "touch", "rename", "renamenx", "copy", "dbsize", "randomkey", "scan",
        "hget", "hset", "hsetnx", "hmget", "hmset", "hgetall", "hdel", "hexists", "hincrby", "hincrbyfloat",
        "hkeys", "hvals", "hlen", "hstrlen", "hscan", "hrandfield",
        "lpush", "rpush", "lpushx", "rpushx", "lpop", "rpop", "lrange", "llen", "lindex", "lset", "lrem",
        "ltrim", "linsert", "lpos", "lmove", "rpoplpush", "lmpop",
        "sadd", "srem", "smembers", "sismember", "smismember", "scard", "spop", "srandmember", "smove",
        "sinter", "sunion", "sdiff", "sinterstore", "sunionstore", "sdiffstore", "sintercard", "sscan",
        "zadd", "zrem", "zscore", "zmscore", "zincrby", "zcard", "zcount", "zrange", "zrangebyscore",
        "zrevrange", "zrevrangebyscore", "zrangebylex", "zrevrangebylex", "zlexcount", "zrank", "zrevrank",
        "zremrangebyscore", "zremrangebyrank", "zremrangebylex", "zpopmin", "zpopmax", "zmpop", "zrandmember",
        "zrangestore", "zunionstore", "zinterstore", "zdiffstore", "zunion", "zinter", "zdiff", "zintercard", "zscan",
        "pfadd", "pfcount", "pfmerge", "geoadd", "geopos", "geodist", "geohash", "geosearch", "geosearchstore",
        "georadius_ro", "georadiusbymember_ro", "setbit", "getbit", "bitcount", "bitpos", "bitop", "bitfield_ro",
        "xadd", "xlen", "xrange", "xrevrange", "xdel", "xtrim", "publish", "spublish", "ping", "echo", "time",
    ]

    /// What redis-py sends on every connect after HELLO: `CLIENT SETINFO attribute
    /// value` (the library's name and version in CLIENT LIST) and, from 8.x, `CLIENT
    /// MAINT_NOTIFICATIONS ON ...` (Redis 8's maintenance pushes; an error before).
    /// Settings of the connection that no other command depends on: Redis answers them
    /// on the shared connection, and they are sent again on the client's own.
    private func isReplayedClientSetting(_ command: RESPCommand, name: String) -> Bool {
        guard name == "client", command.arguments.count >= 3 else { return false }
        let sub = command.text(1).lowercased()
        return (sub == "setinfo" && command.arguments.count == 4) || sub == "maint_notifications"
    }

    private func forward(_ command: RESPCommand, name: String, shareable: Bool) {
        guard let context else { return }
        if backend == nil, !inMulti, authenticationsInFlight == 0, let sharedBackends = shared.sharedBackends {
            if shareable {
                share(command, on: sharedBackends)
                return
            }
            if isReplayedClientSetting(command, name: name) {
                // Its reply is Redis's (which checks it); its effect belongs on the
                // client's own connection, if it gets one.
                replayOnOwnConnection.append(ByteBuffer(bytes: command.raw.readableBytesView))
                share(command, on: sharedBackends)
                return
            }
            if let version = plainHello(command, name: name) {
                // The protocol's shared connection answers it (in that protocol); the
                // commands behind it go there.
                protocolVersion = version
                replayOnOwnConnection.append(ByteBuffer(bytes: command.raw.readableBytesView))
                share(command, on: sharedBackends)
                return
            }
        }
        forwardOnOwnConnection(command, name: name, context: context)
    }

    /// Sends a command on the shared connection of the client's protocol.
    private func share(_ command: RESPCommand, on backends: SharedBackends) {
        let sharedBackend: SharedBackend
        if protocolVersion >= 3 {
            if sharedBackends.resp3 == nil { sharedBackends.resp3 = backends.backend(for: context!.eventLoop, protocolVersion: 3) }
            sharedBackend = sharedBackends.resp3!
        } else {
            if sharedBackends.resp2 == nil { sharedBackends.resp2 = backends.backend(for: context!.eventLoop, protocolVersion: 2) }
            sharedBackend = sharedBackends.resp2!
        }
        sharedOutstanding += 1
        if let open = openSharedSlot, open.backend === sharedBackend, slots.last === open.slot {
            open.slot.framesLeft += 1
            sharedBackend.send(command.raw, for: self, slot: open.slot, joining: true)
            return
        }
        let slot = Slot(fromBackend: true)
        slots.append(slot)
        openSharedSlot = (slot, sharedBackend)
        sharedBackend.send(command.raw, for: self, slot: slot, joining: false)
    }

    /// `HELLO 2` or `HELLO 3` with nothing else (no AUTH, no SETNAME): the version.
    private func plainHello(_ command: RESPCommand, name: String) -> Int? {
        guard name == "hello", command.arguments.count == 2 else { return nil }
        switch command.text(1) {
        case "2": return 2
        case "3": return 3
        default: return nil
        }
    }

    private func forwardOnOwnConnection(_ command: RESPCommand, name: String, context: ChannelHandlerContext) {
        if backend == nil {
            backend = Backend(configuration: shared.configuration.redis, eventLoop: context.eventLoop, owner: NIOLoopBound(self, eventLoop: context.eventLoop))
            // Not a byte to Redis before the shared connection has run (and answered)
            // everything this client sent on it.
            if sharedOutstanding > 0 { backend!.hold() }
            for setInfo in replayOnOwnConnection {
                // Answered to nobody: the client had its reply from the shared connection.
                awaitingBackend.append(Slot(fromBackend: true))
                backend!.write(setInfo)
            }
            replayOnOwnConnection = []
        }
        var slot: Slot?
        switch name {
        case "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe":
            // One message per channel named (pushes in RESP3); an UNSUBSCRIBE of
            // everything answers one per subscription it ends, or one when there was
            // none. Messages beyond those are published messages, forwarded as they come.
            let family = name.hasPrefix("p") ? "psubscribe" : name.hasPrefix("ss") || name.hasPrefix("sun") ? "ssubscribe" : "subscribe"
            let named = command.arguments.dropFirst().map { Array($0.readableBytesView) }
            let new = Slot(fromBackend: true)
            if !name.contains("unsubscribe") {
                subscriptions[family, default: []].formUnion(named)
                new.framesLeft = max(named.count, 1)
            } else if named.isEmpty {
                new.framesLeft = max(subscriptions[family]?.count ?? 0, 1)
                subscriptions[family] = []
            } else {
                subscriptions[family]?.subtract(named)
                new.framesLeft = named.count
            }
            new.takesPushes = protocolVersion >= 3
            slot = new
        case "monitor":
            monitoring = true
            slot = Slot(fromBackend: true)
        default:
            let new = Slot(fromBackend: true)
            switch name {
            case "auth":
                authenticationsInFlight += 1
                new.onReply = { [unowned self] reply in
                    if reply.readableBytesView.first == UInt8(ascii: "+") { self.authenticated = true }
                    self.authenticationAnswered()
                }
            case "hello":
                let requested = command.arguments.count >= 2 ? Int(command.text(1)) : nil
                let authenticates = command.arguments.dropFirst(2).contains { String(decoding: $0.readableBytesView, as: UTF8.self).lowercased() == "auth" }
                if authenticates { authenticationsInFlight += 1 }
                new.onReply = { [unowned self] reply in
                    let first = reply.readableBytesView.first
                    if first != UInt8(ascii: "-") && first != UInt8(ascii: "+") {
                        if let requested { self.protocolVersion = requested }
                        if authenticates { self.authenticated = true }
                    }
                    if authenticates { self.authenticationAnswered() }
                }
            case "command":
                new.transform = commandListTransform(command)
            case "multi":
                // Decided as the command is sent, so that a COORD.* command pipelined
                // behind MULTI is refused (Redis would queue it).
                inMulti = true
            case "exec", "discard":
                inMulti = false
            case "reset":
                // RESET ends subscriptions and MONITOR as it is sent, as Redis will.
                subscriptions = subscriptions.mapValues { _ in [] }
                monitoring = false
                new.onReply = { [unowned self] _ in
                    self.inMulti = false
                    self.protocolVersion = 2
                    self.authenticated = !self.shared.requiresAuth
                }
            default:
                break
            }
            slot = new
        }
        if let slot {
            slots.append(slot)
            if slot.framesLeft > 0 { awaitingBackend.append(slot) }
        }
        backend!.write(command.raw)
    }

    /// For COMMAND, COMMAND COUNT, COMMAND LIST and COMMAND DOCS without names: Redis's
    /// answer with the COORD.* commands added, so that clients' command hints (redis-cli
    /// reads COMMAND DOCS) know them.
    private func commandListTransform(_ command: RESPCommand) -> ((ByteBuffer) -> ByteBuffer)? {
        let sub = command.arguments.count >= 2 ? command.text(1).lowercased() : ""
        guard command.arguments.count <= 2, ["", "count", "list", "docs"].contains(sub) else { return nil }
        let version = protocolVersion
        let ours = RESPCommandTable.commands
        return { reply in
            var reply = reply
            guard let line = reply.readableBytesView.firstIndex(of: UInt8(ascii: "\n")),
                  let type = reply.readableBytesView.first,
                  let count = Int(String(decoding: reply.readableBytesView[(reply.readableBytesView.startIndex + 1)..<(line - 1)], as: UTF8.self))
            else { return reply }
            let body = reply.readableBytesView[(line + 1)...]
            var out = ByteBufferAllocator().buffer(capacity: reply.readableBytes + 4096)
            switch (sub, type) {
            case ("count", UInt8(ascii: ":")):
                RESPValue.integer(Int64(count + ours.count)).encode(into: &out, protocol: version)
                return out
            case ("", UInt8(ascii: "*")), ("list", UInt8(ascii: "*")):
                out.writeString("*\(count + ours.count)\r\n")
                out.writeBytes(body)
                for spec in ours { (sub == "list" ? RESPValue.bulk(spec.name.lowercased()) : spec.info).encode(into: &out, protocol: version) }
                return out
            case ("docs", UInt8(ascii: "*")), ("docs", UInt8(ascii: "%")):
                out.writeString(type == UInt8(ascii: "%") ? "%\(count + ours.count)\r\n" : "*\(count + ours.count * 2)\r\n")
                out.writeBytes(body)
                for spec in ours {
                    RESPValue.bulk(spec.name.lowercased()).encode(into: &out, protocol: version)
                    spec.docs.encode(into: &out, protocol: version)
                }
                return out
            default:
                _ = reply.readBytes(length: 0)
                return reply
            }
        }
    }

    /// A reply from Redis.
    func backendReply(_ reply: ByteBuffer, isPush: Bool) {
        var slot = awaitingBackend.first
        if isPush && protocolVersion >= 3 && slot?.takesPushes != true { slot = nil }
        guard let slot else {
            // Out of band (a published message, a RESP3 push, MONITOR's stream,
            // Redis's own error before it closes): behind every reply still to come.
            if let last = slots.last {
                last.then.append(reply)
            } else {
                context?.write(wrapOutboundOut(reply), promise: nil)
            }
            return
        }
        slot.onReply?(reply)
        slot.framesLeft -= 1
        if slot.framesLeft == 0 { awaitingBackend.removeFirst() }
        if slot.framesLeft == 0, slot.reply == nil, let transform = slot.transform {
            slot.reply = transform(reply)
            return
        }
        if var collected = slot.reply {
            var more = reply
            collected.writeBuffer(&more)
            slot.reply = collected
        } else if slot.framesLeft > 0 {
            // Collected in a buffer of its own (the frame is a slice of the read).
            var collected = ByteBufferAllocator().buffer(capacity: reply.readableBytes * (slot.framesLeft + 1))
            var first = reply
            collected.writeBuffer(&first)
            slot.reply = collected
        } else {
            slot.reply = reply
        }
    }

    func backendReadComplete() {
        flushReady()
        context?.flush()
    }

    /// The shared connection's reply to the next command of `slot` (`failure`: it could
    /// not run there, the reply is that error). A slot of several commands collects
    /// their replies in order in one buffer.
    fileprivate func sharedAnswered(_ slot: Slot, reply: ByteBuffer?, failure: String? = nil) {
        var frame = reply ?? encode(.error(failure ?? "ERR no reply"))
        if var collected = slot.reply.take() {
            // Taken out first, so that the append does not copy what was collected.
            collected.writeBuffer(&frame)
            slot.reply = collected
        } else if slot.framesLeft > 1 {
            var collected = ByteBufferAllocator().buffer(capacity: frame.readableBytes * slot.framesLeft)
            collected.writeBuffer(&frame)
            slot.reply = collected
        } else {
            slot.reply = frame
        }
        slot.framesLeft -= 1
        sharedOutstanding -= 1
        if sharedOutstanding == 0 { backend?.release() }
    }

    /// Sentinel switched the master: a pass-through connection to the old one is
    /// closed, as when Redis goes away (its state for this client stays behind).
    func masterSwitched(to master: RedisConfiguration.Endpoint) {
        guard let backend, let at = backend.endpoint, at != master else { return }
        backend.close()
        backendFailed(RedisError(.connectionLost, "Sentinel switched the master from \(at) to \(master)"), connected: true, from: backend)
    }

    /// The Redis connection closed or could not open.
    func backendFailed(_ error: any Error, connected: Bool, from failed: Backend) {
        guard backend === failed else { return }
        backend = nil
        let message = connected
            ? "ERR coordproxy lost its connection to Redis (\(error)); the connection is closed, reconnect"
            : "ERR coordproxy cannot reach Redis at \(shared.configuration.redis.sentinel == nil ? "\(shared.configuration.redis.endpoint)" : shared.configuration.redis.redactedURL) (\(error)); retry once it is up"
        for slot in awaitingBackend {
            slot.framesLeft = 0
            slot.reply = encode(.error(message))
        }
        awaitingBackend.removeAll()
        if connected {
            // Redis's state for this client (MULTI, SELECT, subscriptions) is gone:
            // so is the connection, as when Redis itself goes away.
            closing = true
            if let last = slots.last { last.closeAfter = true } else { context?.close(promise: nil) }
        }
        flushReady()
    }

    // MARK: - Replies

    /// Replies up to this size are coalesced before they are written.
    private static let coalescedReplySize = 16 * 1024

    private func encode(_ value: RESPValue) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        value.encode(into: &buffer, protocol: protocolVersion)
        return buffer
    }

    private func reply(_ value: RESPValue, closeAfter: Bool = false) {
        let slot = Slot(fromBackend: false, reply: encode(value))
        slot.closeAfter = closeAfter
        slots.append(slot)
    }

    /// Writes the replies that are ready, in command order.
    fileprivate func flushReady() {
        guard let context else { return }
        var wrote = false
        // Small replies are copied into one buffer and written together: one channel
        // write per read from Redis instead of one per reply.
        var batch: ByteBuffer?
        func writeBatch() {
            if let pending = batch {
                context.write(wrapOutboundOut(pending), promise: nil)
                batch = nil
            }
        }
        while let first = slots.first, let reply = first.reply, !first.fromBackend || first.framesLeft <= 0 {
            slots.removeFirst()
            if reply.readableBytes <= Self.coalescedReplySize {
                if batch == nil { batch = context.channel.allocator.buffer(capacity: 4096) }
                batch!.writeImmutableBuffer(reply)
            } else {
                writeBatch()
                context.write(wrapOutboundOut(reply), promise: nil)
            }
            if !first.then.isEmpty {
                writeBatch()
                for push in first.then { writePush(push, context: context, held: true) }
            }
            wrote = true
            if first.closeAfter {
                writeBatch()
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in channel.close(promise: nil) }
                return
            }
        }
        writeBatch()
        if wrote { context.flush() }
        // A command still owed a reply (a blocked COORD.LOCK, a BLPOP) keeps the
        // session alive however long it takes.
        activity.setBusy(!slots.isEmpty)
    }
}

/// What a ``Backend`` reports to: a client connection (its own Redis connection) or
/// a ``SharedBackend``. Called on the backend's event loop.
protocol BackendOwner: AnyObject, SendableMetatype {
    /// One reply (a slice of the read), in the order of the commands.
    func backendReply(_ reply: ByteBuffer, isPush: Bool)
    /// The end of one read from Redis.
    func backendReadComplete()
    /// The Redis connection closed (`connected`) or could not open.
    func backendFailed(_ error: any Error, connected: Bool, from failed: Backend)
}

/// A Redis connection for pass-through: a client's own, opened at its first command
/// that needs one, or an event loop's shared one.
final class Backend {
    private var channel: Channel?
    /// The server connected to, once connected.
    private(set) var endpoint: RedisConfiguration.Endpoint?
    private var pending: [ByteBuffer] = []
    private var closed = false
    /// Commands wait in `pending` (see ``hold()``).
    private var held = false
    private let eventLoop: any EventLoop

    init<Owner: BackendOwner>(configuration: RedisConfiguration, eventLoop: any EventLoop, owner: NIOLoopBound<Owner>) {
        self.eventLoop = eventLoop
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.seconds(5))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(BackendHandler<Owner>(owner: owner))
                }
            }
        let connecting: EventLoopFuture<(Channel, RedisConfiguration.Endpoint)>
        if let sentinel = configuration.sentinel {
            // The master's address, asked of the sentinels off the event loop.
            let timeout = configuration.connectTimeout
            connecting = NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                try SentinelResolver.master(of: sentinel, connectTimeout: timeout)
            }.flatMap { [bootstrap = NIOLoopBound(bootstrap, eventLoop: eventLoop)] endpoint in
                Self.connect(bootstrap.value, to: endpoint).map { ($0, endpoint) }
            }
        } else {
            let endpoint = configuration.endpoint
            connecting = Self.connect(bootstrap, to: endpoint).map { ($0, endpoint) }
        }
        let me = NIOLoopBound(self, eventLoop: eventLoop)
        // Handled on a later tick even when the connect fails at once (a missing unix
        // socket), so that the connection has stored this backend and queued the
        // command's reply slot first.
        connecting.hop(to: eventLoop).whenComplete { result in
            eventLoop.execute { me.value.connected(result, owner: owner) }
        }
    }

    private static func connect(_ bootstrap: ClientBootstrap, to endpoint: RedisConfiguration.Endpoint) -> EventLoopFuture<Channel> {
        switch endpoint {
        case .tcp(let host, let port): return bootstrap.connect(host: host, port: port)
        case .unixSocket(let path): return bootstrap.connect(unixDomainSocketPath: path)
        }
    }

    private func connected<Owner: BackendOwner>(_ result: Result<(any Channel, RedisConfiguration.Endpoint), any Error>, owner: NIOLoopBound<Owner>) {
        switch result {
        case .success(let (channel, endpoint)):
            self.endpoint = endpoint
            if closed {
                channel.close(promise: nil)
                return
            }
            self.channel = channel
            (try? channel.pipeline.syncOperations.handler(type: BackendHandler<Owner>.self))?.backend = self
            guard !held else { return }
            for buffer in pending { channel.write(buffer, promise: nil) }
            pending = []
            channel.flush()
        case .failure(let error):
            if !closed { owner.value.backendFailed(error, connected: false, from: self) }
        }
    }

    /// Queues a command; ``flush()`` sends what is queued (once per read from the
    /// client, so that a pipeline goes to Redis in as few writes as it came in).
    ///
    /// Small commands are copied into one buffer and written with one channel write
    /// at the flush: a write per command costs more than the copy.
    func write(_ buffer: ByteBuffer) {
        guard let channel, !held else {
            pending.append(buffer)
            return
        }
        if buffer.readableBytes <= Self.coalescedCommandSize {
            if outgoing == nil { outgoing = channel.allocator.buffer(capacity: 4096) }
            outgoing!.writeImmutableBuffer(buffer)
            return
        }
        if let queued = outgoing {
            channel.write(queued, promise: nil)
            outgoing = nil
        }
        channel.write(buffer, promise: nil)
    }

    func flush() {
        guard let channel, !held else { return }
        if let queued = outgoing {
            outgoing = nil
            channel.writeAndFlush(queued, promise: nil)
        } else {
            channel.flush()
        }
    }

    /// Commands up to this size are coalesced before they are written.
    private static let coalescedCommandSize = 16 * 1024
    /// Small commands queued since the last flush, in order.
    private var outgoing: ByteBuffer?

    /// Keeps what is written from Redis until ``release()``: a client that moves off
    /// the shared connection has its first commands here wait for the shared
    /// connection's replies to what it sent there.
    func hold() {
        held = true
    }

    /// Sends what waited since ``hold()``, and from now on what is written.
    func release() {
        guard held else { return }
        held = false
        guard let channel else { return }
        for buffer in pending { channel.write(buffer, promise: nil) }
        pending = []
        channel.flush()
    }

    func close() {
        closed = true
        outgoing = nil
        channel?.close(promise: nil)
        channel = nil
    }
}

private final class BackendHandler<Owner: BackendOwner>: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let owner: NIOLoopBound<Owner>
    /// The backend this channel serves (set once connected). Strong, not weak: a weak
    /// reference gives the backend a side table, and every retain and release of it (a
    /// few per forwarded command) takes the slow path. The cycle (backend, channel,
    /// this handler) ends when the channel does.
    var backend: Backend?
    private var buffer: ByteBuffer?
    private var scanner = RESPReplyScanner()
    private var failed = false

    init(owner: NIOLoopBound<Owner>) {
        self.owner = owner
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        // Scanned in a local (no access to this handler's storage per reply), the
        // connection looked up once per read.
        var input = buffer.takeJoined(with: &bytes)
        let connection = owner.value
        while let (length, isPush) = scanner.scan(input) {
            connection.backendReply(input.readSlice(length: length)!, isPush: isPush)
        }
        if input.readableBytes > 0 { buffer = input }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        owner.value.backendReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !failed, let backend { owner.value.backendFailed(RedisError(.connectionClosed, "Redis closed the connection"), connected: true, from: backend) }
        failed = true
        backend = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !failed, let backend { owner.value.backendFailed(error, connected: true, from: backend) }
        failed = true
        backend = nil
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        backend = nil
    }
}

/// The shared Redis connections of one listener: one per event loop and protocol
/// version (RESP2, RESP3), made at first use.
final class SharedBackends: Sendable {
    private struct Key: Hashable {
        let loop: ObjectIdentifier
        let protocolVersion: Int
    }
    private let configuration: RedisConfiguration
    private let byLoop = NIOLockedValueBox([Key: NIOLoopBound<SharedBackend>]())

    init(configuration: RedisConfiguration) {
        self.configuration = configuration
    }

    /// The shared connection of `loop` speaking `protocolVersion` (called on `loop`).
    func backend(for loop: any EventLoop, protocolVersion: Int) -> SharedBackend {
        let key = Key(loop: ObjectIdentifier(loop), protocolVersion: protocolVersion)
        if let existing = byLoop.withLockedValue({ $0[key] }) { return existing.value }
        let made = SharedBackend(configuration: configuration, eventLoop: loop, protocolVersion: protocolVersion)
        byLoop.withLockedValue { $0[key] = NIOLoopBound(made, eventLoop: loop) }
        return made
    }

    /// Sentinel switched the master: shared connections to the old one close.
    func masterSwitched(to master: RedisConfiguration.Endpoint) {
        for bound in byLoop.withLockedValue({ Array($0.values) }) {
            bound.eventLoop.execute { bound.value.masterSwitched(to: master) }
        }
    }

    /// Closes every shared connection (the listener stops).
    func closeAll() {
        for bound in byLoop.withLockedValue({ Array($0.values) }) {
            bound.eventLoop.execute { bound.value.close() }
        }
    }
}

/// One event loop's shared Redis connection: the commands of the loop's clients that
/// leave no state on their connection (see ``RESPConnectionHandler/shareable``),
/// written together once per event-loop tick and answered in the order written.
final class SharedBackend: BackendOwner {
    private let configuration: RedisConfiguration
    private let eventLoop: any EventLoop
    private var backend: Backend?
    /// Who the replies still to come belong to, oldest first: each slot takes as many
    /// as it has frames left (the commands a client sent back to back).
    private var waiting = CircularBuffer<(RESPConnectionHandler, RESPConnectionHandler.Slot)>(initialCapacity: 64)
    /// Clients given replies during the current read, flushed at its end.
    private var answered: [RESPConnectionHandler] = []
    private var flushScheduled = false
    /// RESP3: the connection begins with `HELLO 3`, whose reply is nobody's.
    private let protocolVersion: Int
    private var handshakeRepliesLeft = 0

    init(configuration: RedisConfiguration, eventLoop: any EventLoop, protocolVersion: Int) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.protocolVersion = protocolVersion
    }

    /// Queues a client's command; every command queued in this tick of the event loop
    /// (from all the clients whose reads it handles) goes to Redis in one write.
    /// `joining`: the command joins `slot`, queued last already by the client's
    /// previous command.
    fileprivate func send(_ command: ByteBuffer, for client: RESPConnectionHandler, slot: RESPConnectionHandler.Slot, joining: Bool) {
        if backend == nil {
            let made = Backend(configuration: configuration, eventLoop: eventLoop, owner: NIOLoopBound(self, eventLoop: eventLoop))
            if protocolVersion >= 3 {
                made.write(ByteBuffer(string: "*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"))
                handshakeRepliesLeft = 1
            }
            backend = made
        }
        if !joining { waiting.append((client, slot)) }
        backend!.write(command)
        if !flushScheduled {
            flushScheduled = true
            // Runs after the I/O events of this tick: the other clients' reads too.
            let me = NIOLoopBound(self, eventLoop: eventLoop)
            eventLoop.execute {
                me.value.flushScheduled = false
                me.value.backend?.flush()
            }
        }
    }

    func backendReply(_ reply: ByteBuffer, isPush: Bool) {
        // No subscriptions, no tracking on this connection: a push is nobody's reply.
        guard !isPush else { return }
        if handshakeRepliesLeft > 0 {
            handshakeRepliesLeft -= 1
            return
        }
        guard let (client, slot) = waiting.first else { return }
        client.sharedAnswered(slot, reply: reply)
        if slot.framesLeft <= 0 { waiting.removeFirst() }
        if !client.awaitingSharedFlush {
            client.awaitingSharedFlush = true
            answered.append(client)
        }
    }

    func backendReadComplete() {
        for client in answered {
            client.awaitingSharedFlush = false
            client.flushReady()
        }
        answered.removeAll(keepingCapacity: true)
    }

    func backendFailed(_ error: any Error, connected: Bool, from failed: Backend) {
        guard backend === failed else { return }
        backend = nil
        handshakeRepliesLeft = 0
        // Nothing of these clients' state was on the connection: their commands in
        // flight fail (a write's outcome is unknown), the clients stay connected.
        let message = connected
            ? "ERR coordproxy lost its connection to Redis (\(error)) before the reply; the command may or may not have run: check, then retry"
            : "ERR coordproxy cannot reach Redis at \(configuration.sentinel == nil ? "\(configuration.endpoint)" : configuration.redactedURL) (\(error)); retry once it is up"
        let owed = waiting
        waiting.removeAll()
        for (client, slot) in owed {
            // One error for each command of the slot still unanswered.
            while slot.framesLeft > 0 { client.sharedAnswered(slot, reply: nil, failure: message) }
        }
        for (client, _) in owed where !client.awaitingSharedFlush {
            client.awaitingSharedFlush = true
            answered.append(client)
        }
        backendReadComplete()
    }

    func masterSwitched(to master: RedisConfiguration.Endpoint) {
        guard let backend, let at = backend.endpoint, at != master else { return }
        backend.close()
        backendFailed(RedisError(.connectionLost, "Sentinel switched the master from \(at) to \(master)"), connected: true, from: backend)
    }

    func close() {
        guard let backend else { return }
        backend.close()
        backendFailed(RedisError(.connectionClosed, "coordproxy is shutting down"), connected: true, from: backend)
    }
}

fileprivate extension Optional where Wrapped == ByteBuffer {
    /// What is held (the unread rest of earlier reads) followed by `bytes`, leaving
    /// nothing held.
    mutating func takeJoined(with bytes: inout ByteBuffer) -> ByteBuffer {
        guard var held = take(), held.readableBytes > 0 else { return bytes }
        held.writeBuffer(&bytes)
        return held
    }
}
