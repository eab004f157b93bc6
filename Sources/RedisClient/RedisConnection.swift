import NIOCore
import Synchronization

/// Something that runs Redis commands: a ``RedisConnection`` or a ``RedisConnectionPool``.
public protocol RedisCommandExecutor: Sendable {
    /// Sends one command (its name and arguments as bytes) and returns the reply.
    ///
    /// - Parameters:
    ///   - arguments: the command name followed by its arguments.
    ///   - timeout: overrides the configuration's command timeout for this request.
    /// - Throws: ``RedisError``. An error reply from the server has code
    ///   ``RedisError/Code/server``, except `NOPERM` (``RedisError/Code/noPermission``)
    ///   and `NOAUTH`/`WRONGPASS` (``RedisError/Code/authenticationFailed``).
    ///   Cancelling the task withdraws a request that is still queued (it throws
    ///   `CancellationError` and does not run); a request already written is awaited.
    func send(_ arguments: [[UInt8]], timeout: Duration?) async throws -> RedisReply
}

extension RedisCommandExecutor {
    /// Sends one command with the configured command timeout.
    @inlinable
    public func send(_ arguments: [[UInt8]]) async throws -> RedisReply {
        try await send(arguments, timeout: nil)
    }

    /// Sends one command given as strings, integers or bytes: `send("SET", key, value)`.
    @discardableResult
    public func send(_ command: any RedisArgumentConvertible...) async throws -> RedisReply {
        try await send(command.map(\.redisArgument), timeout: nil)
    }

    /// Sends one command given as an array of strings, integers or bytes.
    @discardableResult
    public func send(command: [any RedisArgumentConvertible], timeout: Duration? = nil) async throws -> RedisReply {
        try await send(command.map(\.redisArgument), timeout: timeout)
    }
}

/// One connection to Redis, driven by a dedicated thread, with automatic pipelining.
///
/// Any number of tasks may call ``send(_:timeout:)`` at once: their commands are
/// written in batches without waiting for earlier replies, and each caller gets
/// its own reply. When the connection breaks, requests that were already sent
/// fail with ``RedisError/Code/outcomeUnknown`` and the connection reconnects in
/// the background (with backoff), so later requests succeed once the server is back.
///
/// ```swift
/// let connection = try await RedisConnection.connect(url: "redis://localhost:6379/0")
/// try await connection.send("SET", "greeting", "hello")
/// let value = try await connection.send("GET", "greeting").string
/// await connection.close()
/// ```
public final class RedisConnection: RedisCommandExecutor {
    let engine: any RedisEngine

    /// The configuration this connection was opened with.
    public var configuration: RedisConfiguration { engine.configuration }

    init(engine: any RedisEngine) {
        self.engine = engine
    }

    /// Opens a connection and waits until it is authenticated and ready.
    ///
    /// - Throws: ``RedisError`` with ``RedisError/Code/connectionRefused``,
    ///   ``RedisError/Code/timeout`` or ``RedisError/Code/authenticationFailed``.
    public static func connect(_ configuration: RedisConfiguration) async throws -> RedisConnection {
        let engine = ConnectionEngine(configuration: configuration)
        try await engine.start(name: ConnectionEngine.threadName("redis", configuration.endpoint))
        return RedisConnection(engine: engine)
    }

    /// Opens a connection that runs `setup` on every connect and reconnect, after AUTH
    /// and SELECT and before any request is written: the store uses it to tell Redis
    /// which server process each connection reached. `setup` runs on the connection's
    /// thread with blocking I/O; throwing fails that connect attempt.
    package static func connect(_ configuration: RedisConfiguration, setup: @escaping @Sendable (RedisSetupChannel) throws -> Void) async throws -> RedisConnection {
        let engine = ConnectionEngine(configuration: configuration, hooks: .init(setup: { handshake in try setup(RedisSetupChannel(handshake: handshake)) }))
        try await engine.start(name: ConnectionEngine.threadName("redis", configuration.endpoint))
        return RedisConnection(engine: engine)
    }

    /// Opens a connection as ``connect(_:setup:)`` does, whose socket `eventLoop`
    /// serves instead of a thread of its own: for a server whose requests run on that
    /// loop, each reply resumes its caller without waking another thread (see
    /// `EventLoopEngine`). A configuration with Sentinel or without pipelining gets the
    /// thread.
    package static func connect(_ configuration: RedisConfiguration, on eventLoop: any EventLoop,
                                setup: @escaping @Sendable (RedisSetupChannel) throws -> Void) async throws -> RedisConnection {
        guard configuration.sentinel == nil, configuration.pipelining else {
            return try await connect(configuration, setup: setup)
        }
        let engine = EventLoopEngine(configuration: configuration, eventLoop: eventLoop, setup: { handshake in try setup(RedisSetupChannel(handshake: handshake)) })
        do {
            try await engine.start()
        } catch {
            engine.shutdown()
            throw error
        }
        return RedisConnection(engine: engine)
    }

    /// Parses `url` (see ``RedisConfiguration/init(url:)``) and opens a connection.
    public static func connect(url: String) async throws -> RedisConnection {
        try await connect(RedisConfiguration(url: url))
    }

    public func send(_ arguments: [[UInt8]], timeout: Duration?) async throws -> RedisReply {
        try await engine.send(arguments, timeout: timeout)
    }

    /// Sends one command and hands its reply to `completion` on the connection's own
    /// thread, never touching Swift's cooperative pool.
    ///
    /// For work that must not wait for a free pool thread (lease keep-alives on a
    /// loaded machine). `completion` runs on the connection thread: keep it short and
    /// never block in it. A server error reply arrives as a ``RedisError``, as from
    /// ``send(_:timeout:)``.
    public func send(_ arguments: [[UInt8]], timeout: Duration?, completion: @escaping @Sendable (Result<RedisReply, any Error>) -> Void) {
        let deadline = MonotonicClock.deadline(after: timeout ?? configuration.commandTimeout)
        engine.enqueue(arguments, deadline: deadline, continuation: .callback(completion))
    }

    /// Sends several commands, in order, in one write where the connection's engine can
    /// (an event loop's connection flushes once), and returns each one's outcome, a
    /// server's error reply as a ``RedisError`` among them. For commands that belong
    /// together, such as a blocking read with a `MULTI`/`EXEC` behind it: Redis runs
    /// them one after another once the read returns.
    package func pipeline(_ commands: [[[UInt8]]], timeout: Duration?) async -> [Result<RedisReply, any Error>] {
        guard !commands.isEmpty else { return [] }
        let deadline = MonotonicClock.deadline(after: timeout ?? configuration.commandTimeout)
        let outcomes = PipelineOutcomes(count: commands.count)
        return await withCheckedContinuation { (continuation: CheckedContinuation<[Result<RedisReply, any Error>], Never>) in
            outcomes.whenDone { continuation.resume(returning: $0) }
            engine.enqueueAll(commands.enumerated().map { index, arguments in
                (arguments: arguments, continuation: .callback { result in outcomes.set(index, result) })
            }, deadline: deadline)
        }
    }

    /// Finishes the requests already queued, then closes the socket and stops the thread.
    /// Requests sent after `close` fail with ``RedisError/Code/connectionClosed``.
    public func close() async {
        engine.shutdown()
        await engine.waitForTermination()
    }

    deinit {
        engine.shutdown()
    }
}

/// The blocking command channel a connection setup runs on (see
/// `RedisConnection.connect(_:setup:)`).
package struct RedisSetupChannel {
    let handshake: BlockingHandshake

    /// Runs one command and returns its reply, error replies included; throws when the
    /// connection fails.
    package func send(_ arguments: [[UInt8]]) throws -> RedisReply {
        try handshake.rawCommand(arguments)
    }
}

/// The outcomes of a ``RedisConnection/pipeline(_:timeout:)``, handed over from the
/// connection's thread or loop as they come.
private final class PipelineOutcomes: Sendable {
    private struct State {
        var results: [Result<RedisReply, any Error>?]
        var left: Int
        var done: (@Sendable ([Result<RedisReply, any Error>]) -> Void)?
    }

    private let state: Mutex<State>

    init(count: Int) {
        state = Mutex(State(results: Array(repeating: nil, count: count), left: count, done: nil))
    }

    func whenDone(_ done: @escaping @Sendable ([Result<RedisReply, any Error>]) -> Void) {
        state.withLock { $0.done = done }
    }

    func set(_ index: Int, _ result: Result<RedisReply, any Error>) {
        let finished = state.withLock { state -> (@Sendable ([Result<RedisReply, any Error>]) -> Void, [Result<RedisReply, any Error>])? in
            state.results[index] = result
            state.left -= 1
            guard state.left == 0, let done = state.done else { return nil }
            return (done, state.results.map { $0! })
        }
        if let (done, results) = finished { done(results) }
    }
}
