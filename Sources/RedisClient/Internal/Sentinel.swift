import CHiredis
import Foundation
import Glibc
import Synchronization

/// Asks Redis Sentinel where the master is, and checks that a server is one.
package enum SentinelResolver {
    /// The master's address, as the sentinel with the newest configuration names it
    /// (blocking; each sentinel gets the connect timeout).
    ///
    /// Every sentinel is asked, all at once, and the answer with the highest config
    /// epoch (the newest failover's) wins, the first one in the URL's order on a tie:
    /// right after a failover a sentinel that has not heard of it yet still names the
    /// old master, and if that server was restarted empty it claims to be a master
    /// (ROLE) until the sentinels make it a replica; following the first answer could
    /// write a new history there. The answers are awaited until every sentinel has
    /// answered or failed, or, once a majority has and one of them named a master,
    /// for ``stragglerGrace`` more: a sentinel that accepts connections but does not
    /// answer (stopped, overloaded, its host gone without a reset) then costs that
    /// grace, not the connect timeout, on every connect and reconnect.
    package static func master(of sentinel: RedisConfiguration.Sentinel, connectTimeout: Duration) throws -> RedisConfiguration.Endpoint {
        let endpoints = sentinel.endpoints
        let board = AnswerBoard(count: endpoints.count)
        // A thread per sentinel (blocking I/O, never on the pool that Swift's tasks
        // use): one that does not answer holds only its own thread, until its timeout.
        for (index, endpoint) in endpoints.enumerated() {
            let asking = Thread {
                board.post(ask(endpoint, sentinel, connectTimeout: connectTimeout), at: index)
            }
            asking.name = "redis sentinel \(endpoint)"
            asking.start()
        }
        let answers = board.wait(majority: endpoints.count / 2 + 1, grace: stragglerGrace)
        var failures: [String] = []
        var authenticationFailures = 0
        // The newest answer: the address and its configuration's epoch.
        var newest: (endpoint: RedisConfiguration.Endpoint, epoch: Int64)?
        for answer in answers {
            switch answer {
            case .master(let endpoint, let epoch):
                if newest == nil || epoch > newest!.epoch { newest = (endpoint, epoch) }
            case .failure(let message, let authentication):
                failures.append(message)
                if authentication { authenticationFailures += 1 }
            case nil:
                break   // still silent after the grace, which began once another named a master
            }
        }
        if let newest { return newest.endpoint }
        let code: RedisError.Code = authenticationFailures == endpoints.count ? .authenticationFailed : .connectionRefused
        throw RedisError(code, "no sentinel named the master '\(sentinel.masterName)': \(failures.joined(separator: "; ")); check the sentinel addresses and the master name (sentinel monitor <name> ...)")
    }

    /// How long the answers of a minority of sentinels are awaited once a majority has
    /// answered and named a master.
    static let stragglerGrace: Duration = .milliseconds(250)

    /// What one sentinel said.
    enum Answer: Sendable {
        /// The master's address and the epoch of the configuration it comes from (0
        /// when the sentinel does not say: such an answer wins only without others).
        case master(RedisConfiguration.Endpoint, epoch: Int64)
        case failure(String, authentication: Bool)
    }

    /// Asks one sentinel for the master's address and its configuration epoch.
    static func ask(_ endpoint: RedisConfiguration.Endpoint, _ sentinel: RedisConfiguration.Sentinel, connectTimeout: Duration) -> Answer {
        do {
            let handshake = try open(endpoint, sentinel, connectTimeout: connectTimeout)
            defer { redisFree(handshake.context) }
            let reply = try handshake.rawCommand(["SENTINEL", "get-master-addr-by-name", sentinel.masterName].map { Array($0.utf8) })
            switch reply {
            case .array(let parts) where parts.count == 2:
                guard let host = parts[0].string, let port = parts[1].string.flatMap({ Int($0) }) else {
                    return .failure("\(endpoint): unexpected reply \(reply)", authentication: false)
                }
                let master = fields(try handshake.rawCommand(["SENTINEL", "master", sentinel.masterName].map { Array($0.utf8) }))
                return .master(.tcp(host: host, port: port), epoch: master["config-epoch"].flatMap { Int64($0) } ?? 0)
            case .error(let message):
                return .failure("\(endpoint): \(message)", authentication: false)
            default:
                return .failure("\(endpoint) does not monitor a master named '\(sentinel.masterName)'", authentication: false)
            }
        } catch let error as RedisError where error.code == .authenticationFailed {
            return .failure(sentinel.password == nil
                ? "\(endpoint) requires a password: add ?sentinel_password=... to the redis-sentinel:// URL (the user and password before @ are the master's)"
                : "\(endpoint) rejected the sentinel_password of the URL", authentication: true)
        } catch let error as RedisError {
            return .failure("\(endpoint): \(error.message)", authentication: false)
        } catch {
            return .failure("\(endpoint): \(error)", authentication: false)
        }
    }

    /// The answers of the sentinels asked at once, in their order; waited for by one
    /// thread (blocking).
    final class AnswerBoard: Sendable {
        private let answers: Mutex<[Answer?]>
        private let posted = DispatchSemaphore(value: 0)

        init(count: Int) {
            answers = Mutex(Array(repeating: nil, count: count))
        }

        func post(_ answer: Answer, at index: Int) {
            answers.withLock { $0[index] = answer }
            posted.signal()
        }

        /// The answers once all have come, or once `majority` have (one of them naming
        /// a master) and `grace` has passed since; nil for a sentinel still silent.
        func wait(majority: Int, grace: Duration) -> [Answer?] {
            var graceEnds: DispatchTime?
            while true {
                let answers = self.answers.withLock { $0 }
                let answered = answers.count { $0 != nil }
                if answered == answers.count { return answers }
                if graceEnds == nil, answered >= majority, answers.contains(where: { if case .master = $0 { true } else { false } }) {
                    graceEnds = .now() + .nanoseconds(Int(MonotonicClock.nanoseconds(grace)))
                }
                if let graceEnds {
                    if posted.wait(timeout: graceEnds) == .timedOut { return self.answers.withLock { $0 } }
                } else {
                    posted.wait()
                }
            }
        }
    }

    /// A reply of name/value pairs (SENTINEL MASTER, an entry of SENTINEL REPLICAS) as a dictionary.
    static func fields(_ reply: RedisReply) -> [String: String] {
        let items = reply.array?.compactMap(\.string) ?? []
        var fields: [String: String] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) { fields[items[index]] = items[index + 1] }
        return fields
    }

    /// A blocking connection to one sentinel, authenticated.
    static func open(_ endpoint: RedisConfiguration.Endpoint, _ sentinel: RedisConfiguration.Sentinel, connectTimeout: Duration) throws -> BlockingHandshake {
        var configuration = RedisConfiguration(endpoint: endpoint, username: sentinel.username, password: sentinel.password)
        configuration.connectTimeout = connectTimeout
        let handshake = try BlockingHandshake.open(configuration)
        do {
            try handshake.authenticate()
        } catch {
            redisFree(handshake.context)
            throw error
        }
        return handshake
    }

    /// Throws unless the server says it is a master (`ROLE`): right after a failover a
    /// sentinel may still name a server that is a replica now. A user not allowed
    /// ROLE is taken at the sentinel's word.
    static func checkIsMaster(_ handshake: BlockingHandshake, masterName: String) throws {
        let reply = try handshake.rawCommand([Array("ROLE".utf8)])
        if case .array(let parts) = reply, let role = parts.first?.string, role != "master" {
            throw RedisError(.connectionRefused, "the sentinels name \(handshake.configuration.endpoint) as the master of '\(masterName)', but it is a \(role == "slave" ? "replica" : role) (ROLE): a failover is in progress; retrying")
        }
    }
}

/// Follows a Sentinel's `+switch-master` announcements for one master, on a thread
/// of its own, and tells the connections that use it (which then reconnect to the
/// new master). One per sentinel configuration in the process, alive while some
/// connection observes it.
package final class SentinelMonitor: Sendable {
    private struct State {
        var observers: [UInt64: @Sendable (RedisConfiguration.Endpoint) -> Void] = [:]
        var nextID: UInt64 = 0
        var master: RedisConfiguration.Endpoint?
        var running = false
    }

    private static let monitors = Mutex<[RedisConfiguration.Sentinel: SentinelMonitor]>([:])

    let sentinel: RedisConfiguration.Sentinel
    private let connectTimeout: Duration
    private let state = Mutex(State())

    private init(sentinel: RedisConfiguration.Sentinel, connectTimeout: Duration) {
        self.sentinel = sentinel
        self.connectTimeout = connectTimeout
    }

    /// Calls `onSwitch` with the new master's address whenever the sentinels switch
    /// the master; returns the token for ``stopObserving(_:of:)``.
    package static func observe(_ sentinel: RedisConfiguration.Sentinel, connectTimeout: Duration, _ onSwitch: @escaping @Sendable (RedisConfiguration.Endpoint) -> Void) -> UInt64 {
        let monitor = monitors.withLock { monitors in
            if let existing = monitors[sentinel] { return existing }
            let created = SentinelMonitor(sentinel: sentinel, connectTimeout: connectTimeout)
            monitors[sentinel] = created
            return created
        }
        let (id, start) = monitor.state.withLock { state -> (UInt64, Bool) in
            state.nextID += 1
            state.observers[state.nextID] = onSwitch
            defer { state.running = true }
            return (state.nextID, !state.running)
        }
        if start {
            let thread = Thread {
                _ = chiredis_set_thread_name("redis-sentinel")
                monitor.run()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        return id
    }

    /// The master the sentinels named last, if the monitor has heard from one.
    static func knownMaster(of sentinel: RedisConfiguration.Sentinel) -> RedisConfiguration.Endpoint? {
        monitors.withLock { $0[sentinel] }?.state.withLock { $0.master }
    }

    /// Stops calling an observer; the monitor's thread ends within a second of the last one.
    package static func stopObserving(_ id: UInt64, of sentinel: RedisConfiguration.Sentinel) {
        guard let monitor = monitors.withLock({ $0[sentinel] }) else { return }
        monitor.state.withLock { _ = $0.observers.removeValue(forKey: id) }
    }

    /// Whether the thread should stop (no observers left); unregisters the monitor if so.
    private func shouldStop() -> Bool {
        Self.monitors.withLock { monitors in
            state.withLock { state in
                guard state.observers.isEmpty else { return false }
                state.running = false
                if monitors[sentinel] === self { monitors[sentinel] = nil }
                return true
            }
        }
    }

    private func announce(_ master: RedisConfiguration.Endpoint) {
        let observers = state.withLock { state -> [@Sendable (RedisConfiguration.Endpoint) -> Void] in
            guard state.master != master else { return [] }
            state.master = master
            // Observers connected there already ignore it.
            return Array(state.observers.values)
        }
        for observer in observers { observer(master) }
    }

    private func run() {
        blockSIGPIPEOnThisThread()
        var index = 0
        while !shouldStop() {
            let endpoint = sentinel.endpoints[index % sentinel.endpoints.count]
            index += 1
            guard let handshake = try? SentinelResolver.open(endpoint, sentinel, connectTimeout: connectTimeout) else {
                if !pause(milliseconds: 200) { return }
                continue
            }
            defer { redisFree(handshake.context) }
            do {
                try handshake.sendOnly(["SUBSCRIBE", "+switch-master"].map { Array($0.utf8) })
                _ = try handshake.readReply()
                // A switch announced while no sentinel was followed shows here.
                let answer = try Self.masterAddress(from: handshake, name: sentinel.masterName)
                if let answer { announce(answer) }
                while !shouldStop() {
                    var descriptor = pollfd(fd: handshake.context.pointee.fd, events: Int16(POLLIN), revents: 0)
                    let ready = poll(&descriptor, 1, 1_000)
                    if ready < 0 && chiredis_errno() == EINTR { continue }
                    if ready <= 0 { continue }
                    let message = try handshake.readReply()
                    // ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]
                    guard case .array(let parts) = message, parts.count == 3, let text = parts[2].string else { continue }
                    let fields = text.split(separator: " ")
                    guard fields.count == 5, fields[0] == sentinel.masterName, let port = Int(fields[4]) else { continue }
                    announce(.tcp(host: String(fields[3]), port: port))
                }
                return
            } catch {
                if !pause(milliseconds: 200) { return }
            }
        }
    }

    /// `SENTINEL get-master-addr-by-name` on a connection that is subscribed already
    /// is refused, so a second, short connection asks.
    private static func masterAddress(from subscribed: BlockingHandshake, name: String) throws -> RedisConfiguration.Endpoint? {
        let endpoint = subscribed.configuration.endpoint
        let sentinel = RedisConfiguration.Sentinel(endpoints: [endpoint], masterName: name,
                                                   username: subscribed.configuration.username, password: subscribed.configuration.password)
        return try? SentinelResolver.master(of: sentinel, connectTimeout: subscribed.configuration.connectTimeout)
    }

    /// Sleeps; `false` if the monitor should stop meanwhile.
    private func pause(milliseconds: Int) -> Bool {
        usleep(UInt32(milliseconds * 1_000))
        return !shouldStop()
    }
}
