import ArgumentParser
import Coordination
import CoordinationPrimitives
import Dispatch
import Foundation
import Synchronization

/// Runs `command` (looked up in PATH) with this process's standard streams and extra
/// `environment`, and returns its exit status (128+N when signal N ended it).
/// Cancelling the task terminates the command (SIGTERM) and waits for it to exit.
func runCommand(_ command: [String], environment: [String: String] = [:]) async throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = command
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    let exited = ExitSignal()
    process.terminationHandler = { _ in exited.fire() }
    fflush(nil)
    do {
        try process.run()
    } catch {
        throw CommandFailure(message: "cannot run \(command[0]): \(error.localizedDescription)")
    }
    await withTaskCancellationHandler {
        await exited.wait()
    } onCancel: {
        process.terminate()
    }
    return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
}

/// Fires once when the child exits; `wait()` returns then (and ignores cancellation).
final class ExitSignal: Sendable {
    private let state = Mutex<(fired: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

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

/// Returns when this process receives SIGINT or SIGTERM (what etcdctl's lock and
/// elect wait for before releasing), or when the task is cancelled.
func interrupted() async {
    let signal = ExitSignal()
    do {
        for number in [SIGINT, SIGTERM] {
            Foundation.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { signal.fire() }
            source.resume()
            InterruptSources.keep(source)
        }
    }
    await withTaskCancellationHandler {
        await signal.wait()
    } onCancel: {
        signal.fire()
    }
}

/// Keeps the signal sources alive for the life of the process.
private enum InterruptSources {
    nonisolated(unsafe) static var sources: [any DispatchSourceSignal] = []
    static let lock = NSLock()
    static func keep(_ source: any DispatchSourceSignal) {
        lock.lock()
        sources.append(source)
        lock.unlock()
    }
}

/// Connects and opens a session of `ttl` seconds; runs `body` with the store's
/// background work (lease reaping) going, then closes the session and the store.
func withSession(_ global: GlobalOptions, ttl: Int64, _ body: (Session) async throws -> Void) async throws {
    let store = try await global.connect()
    let background = Task { try await store.run() }
    do {
        let session = try await Session(client: store, ttl: ttl)
        do {
            try await body(session)
            try? await session.close()
        } catch {
            try? await session.close()
            throw error
        }
        background.cancel()
        await store.close()
    } catch {
        background.cancel()
        await store.close()
        throw error
    }
}
