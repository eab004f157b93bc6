import ArgumentParser
import Coordination
import CoordinationPrimitives
import Dispatch
import Foundation
import Synchronization

/// Runs `command` (looked up in PATH) with this process's standard streams and extra
/// `environment`, and returns its exit status (128+N when signal N ended it).
/// Cancelling the task terminates the command and, off a terminal, everything in its
/// process group (SIGTERM, SIGKILL 10 s later if it is still running) and waits for
/// it to exit.
func runCommand(_ command: [String], environment: [String: String] = [:]) async throws -> Int32 {
    var variables = ProcessInfo.processInfo.environment
    variables.merge(environment) { _, new in new }
    var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
    var envp: [UnsafeMutablePointer<CChar>?] = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    // The calling thread blocks most signals (Dispatch's and the connection threads
    // do), and a child inherits the mask: start it with none blocked and the default
    // actions, or SIGTERM would not stop it.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT, SIGCHLD] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    // Without a terminal, the command gets a process group of its own, so that
    // stopping it also stops what it started (`sh -c 'a; b'`). On a terminal it stays
    // in the foreground group, where it can read the terminal and Ctrl-C reaches it.
    let ownGroup = isatty(0) == 0
    var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
    if ownGroup {
        flags |= POSIX_SPAWN_SETPGROUP
        posix_spawnattr_setpgroup(&attributes, 0)
    }
    posix_spawnattr_setflags(&attributes, Int16(flags))
    fflush(nil)
    var spawnedPID: pid_t = 0
    let spawned = posix_spawnp(&spawnedPID, command[0], nil, &attributes, &argv, &envp)
    let pid = spawnedPID
    guard spawned == 0 else {
        throw CommandFailure(message: "cannot run \(command[0]): \(String(cString: strerror(spawned)))")
    }
    let exited = ExitSignal()
    let status = Mutex<Int32>(0)
    Thread.detachNewThread {
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) == -1 && errno == EINTR {}
        // WIFEXITED: the low 7 bits are 0; then the status is in bits 8-15, else the signal is in the low 7 bits.
        status.withLock { $0 = raw & 0x7f == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f) }
        exited.fire()
    }
    await withTaskCancellationHandler {
        await exited.wait()
    } onCancel: {
        let target = ownGroup ? -pid : pid
        kill(target, SIGTERM)
        DispatchQueue.global().asyncAfter(deadline: .now() + 10) {
            if !exited.hasFired { kill(target, SIGKILL) }
        }
    }
    return status.withLock { $0 }
}

/// Fires once when the child exits; `wait()` returns then (and ignores cancellation).
final class ExitSignal: Sendable {
    private let state = Mutex<(fired: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    var hasFired: Bool { state.withLock { $0.fired } }

    func fire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.fired = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.fired { return true }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }
}

/// Set by the SIGINT/SIGTERM handler (an atomic store is async-signal-safe).
private let interruptReceived = Atomic<Bool>(false)

/// SIGINT and SIGTERM, caught from the start of a command that holds something
/// in the store, so that an interrupted waiter, holder or visitor still removes its
/// key (as etcdctl does). The first signal cancels the work; a second one, during
/// the cleanup, ends the process as usual. A handler (not SIG_IGN, which commands
/// run by coordctl would inherit) so that those commands keep the default actions.
enum Interrupts {
    private static let installed = Mutex(false)

    /// Starts catching SIGINT and SIGTERM (once per process).
    static func install() {
        guard installed.withLock({ installed in defer { installed = true }; return !installed }) else { return }
        _ = interruptReceived.load(ordering: .relaxed)   // initialised before any signal
        let handler: @convention(c) (Int32) -> Void = { _ in
            interruptReceived.store(true, ordering: .relaxed)
            signal(SIGINT, SIG_DFL)
            signal(SIGTERM, SIG_DFL)
        }
        signal(SIGINT, handler)
        signal(SIGTERM, handler)
    }

    /// Returns at the first SIGINT or SIGTERM, or when the task is cancelled.
    static func wait() async {
        while !interruptReceived.load(ordering: .relaxed) && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// Connects and opens a session of `ttl` seconds; runs `body` with the store's
/// background work (lease reaping) going, then closes the session and the store.
/// SIGINT or SIGTERM cancels `body` (which removes its keys) and returns `nil`.
func withSession<T: Sendable>(_ global: GlobalOptions, ttl: Int64, _ body: @escaping @Sendable (Session) async throws -> T) async throws -> T? {
    Interrupts.install()
    let store = try await global.connect()
    let background = Task { try await store.run() }
    defer { background.cancel() }
    do {
        let session = try await Session(client: store, ttl: ttl)
        do {
            let result = try await withThrowingTaskGroup(of: T?.self) { group -> T? in
                group.addTask { try await body(session) }
                group.addTask {
                    await Interrupts.wait()
                    return nil
                }
                defer { group.cancelAll() }
                let first = try await group.next() ?? nil
                if first == nil {
                    // Interrupted: let the body clean up; its cancellation error is expected.
                    group.cancelAll()
                    do { _ = try await group.next() } catch is CancellationError {}
                }
                return first
            }
            try? await session.close()
            await store.close()
            return result
        } catch {
            try? await session.close()
            throw error
        }
    } catch {
        await store.close()
        throw error
    }
}
