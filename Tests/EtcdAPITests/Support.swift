import Coordination
import EtcdAPI
import Foundation
import Logging
import ServiceLifecycle
import EtcdTestSupport
@testable import RedisClient
import Synchronization
import Testing

/// A coordproxy served in process: a private redis-server, a store on it with its
/// background work running, and the etcd API on a free loopback port.
struct Proxy: Sendable {
    let store: CoordinationClient
    let redis: RedisServer
    /// `http://127.0.0.1:<port>`, for `etcdctl --endpoints`.
    let endpoint: String
    /// The JSON gateway's `http://127.0.0.1:<port>`.
    let gateway: String
}

/// `fastPath`: whether KV's unary calls and Watch take ``GRPCFastPath`` (coordproxy's
/// default) or grpc-swift's own path.
///
/// The ports are chosen up front, so that the member list advertises the real ones;
/// when another process takes one before it is bound (the suite runs many servers at
/// once), the proxy starts again on other ports.
func withProxy<Result: Sendable>(fastPath: Bool = true, _ body: (Proxy) async throws -> Result) async throws -> Result {
    try await RedisServer.withServer { server in
        var attempt = 0
        while true {
            attempt += 1
            let store = try await CoordinationClient.connect(url: server.url)
            var logger = Logger(label: "coordproxy-test")
            logger.logLevel = .warning
            let api = EtcdAPIServer(store: store, listen: [.init(host: "127.0.0.1", port: try ChildProcess.freeLoopbackPort())],
                                    fastPath: fastPath, logger: logger)
            let gateway = EtcdGateway(api: api, listen: [.init(host: "127.0.0.1", port: try ChildProcess.freeLoopbackPort())], logger: logger)
            // Stopped by graceful shutdown, as coordproxy is: cancelling a NIO server while
            // it has accepted a connection not yet served traps (swift-nio#2637).
            let group = ServiceGroup(services: [StoreBackground(store: store, interval: .milliseconds(50)), api, gateway],
                                     gracefulShutdownSignals: [], logger: logger)
            let serving = Task { try await group.run() }
            func stop() async -> (any Error)? {
                await group.triggerGracefulShutdown()
                let result = await serving.result
                await store.close()
                if case .failure(let error) = result { return error }
                return nil
            }
            guard let bound = await api.boundAddresses().first, let gatewayBound = await gateway.boundAddresses().first else {
                let failure = await stop()
                if attempt < 5, "\(failure.map { "\($0)" } ?? "")".contains("Address already in use") { continue }
                throw ProxyStartError("the in-process coordproxy did not start: \(failure.map { "\($0)" } ?? "no listener")")
            }
            do {
                let result = try await body(Proxy(store: store, redis: server, endpoint: "http://127.0.0.1:\(bound.port)",
                                                  gateway: "http://127.0.0.1:\(gatewayBound.port)"))
                _ = await stop()
                return result
            } catch {
                _ = await stop()
                throw error
            }
        }
    }
}

struct ProxyStartError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A private single-member etcd 3.4, the reference.
final class ReferenceEtcd: Sendable {
    let endpoint: String
    private let process: ChildProcess

    private init(endpoint: String, process: ChildProcess) {
        self.endpoint = endpoint
        self.process = process
    }

    static func withServer<Result: Sendable>(_ body: (ReferenceEtcd) async throws -> Result) async throws -> Result {
        guard let executable = ChildProcess.locate("etcd") else {
            throw RedisError(.serverNotFound, "etcd was not found on PATH; install it (Debian: apt-get install etcd-server)")
        }
        // The ports are free when chosen, but another process may take one before etcd
        // binds it: etcd then exits at once, and a new pair of ports is tried.
        var attempt = 1
        while true {
            guard attempt <= 5 else { throw RedisError(.serverStartFailed, "etcd did not start on free ports in 5 attempts") }
            let directory = try ChildProcess.makeTemporaryDirectory(prefix: "coord-etcd")
            let client = "http://127.0.0.1:\(try ChildProcess.freeLoopbackPort())"
            let peer = "http://127.0.0.1:\(try ChildProcess.freeLoopbackPort())"
            let process = try ChildProcess.spawn(executable, arguments: ReferenceEtcdCommandLine.arguments(directory: directory, client: client, peer: peer),
                                               logPath: directory + "/stdout.log", pidFile: directory + "/etcd.pid")
            let etcd = ReferenceEtcd(endpoint: client, process: process)
            var healthy = false
            do {
                let deadline = ContinuousClock.now + .seconds(30)
                while try await etcdctl(["endpoint", "health"], endpoint: client).status != 0 {
                    if process.hasExited() {
                        let log = ChildProcess.tail(of: directory + "/etcd.log")
                        if attempt < 5 && log.contains("address already in use") { break }
                        throw RedisError(.serverStartFailed, "etcd exited before it became healthy: " + log)
                    }
                    guard ContinuousClock.now < deadline else {
                        throw RedisError(.serverStartFailed, "etcd did not become healthy: " + ChildProcess.tail(of: directory + "/etcd.log"))
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                // Ours, not another etcd that took the client port: its member has our
                // peer URL.
                let members = try await etcdctl(["member", "list"], endpoint: client)
                healthy = !process.hasExited() && members.output.contains(peer)
                if healthy {
                    let result = try await body(etcd)
                    await process.terminate(signal: SIGTERM)
                    try? FileManager.default.removeItem(atPath: directory)
                    return result
                }
            } catch {
                await process.terminate(signal: SIGTERM)
                try? FileManager.default.removeItem(atPath: directory)
                throw error
            }
            await process.terminate(signal: SIGTERM)
            try? FileManager.default.removeItem(atPath: directory)
            attempt += 1
        }
    }
}

/// What a finished program printed.
struct ProgramOutput: Sendable {
    var status: Int32
    var output: String
    var error: String
}

/// Runs Debian's etcdctl (API 3) against `endpoint`, on a thread of its own.
func etcdctl(_ arguments: [String], endpoint: String, input: String = "", timeout: Duration = .seconds(60)) async throws -> ProgramOutput {
    guard let executable = ChildProcess.locate("etcdctl") else {
        throw RedisError(.serverNotFound, "etcdctl was not found on PATH; install it (Debian: apt-get install etcd-client)")
    }
    return try await run(executable, ["--endpoints", endpoint, "--dial-timeout", "20s", "--command-timeout", "30s"] + arguments,
                         environment: ["ETCDCTL_API": "3", "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
                         input: input, timeout: timeout)
}

/// Runs a program to completion on a thread of its own (never blocking the
/// cooperative pool); kills it after `timeout`.
func run(_ executable: String, _ arguments: [String], environment: [String: String], input: String = "", timeout: Duration = .seconds(60)) async throws -> ProgramOutput {
    let finished = try await ChildProcess.run(executable, arguments, environment: environment, input: input, timeout: timeout)
    return ProgramOutput(status: finished.status, output: finished.output, error: finished.error)
}

/// A long-running etcdctl (watch, lock, elect, keep-alive) whose output is read line by line.
final class Background: @unchecked Sendable {
    let process: PipedProcess
    private let lines = Shared<[String]>([])

    convenience init(etcdctl arguments: [String], endpoint: String) throws {
        guard let executable = ChildProcess.locate("etcdctl") else {
            throw RedisError(.serverNotFound, "etcdctl was not found on PATH; install it (Debian: apt-get install etcd-client)")
        }
        try self.init(executable: executable, arguments: ["--endpoints", endpoint, "--dial-timeout", "20s"] + arguments,
                      environment: ["ETCDCTL_API": "3", "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"])
    }

    init(executable: String, arguments: [String], environment: [String: String]) throws {
        process = try PipedProcess(executable, arguments, environment: environment, stdin: .null, stdout: .pipe, stderr: .null)
        let (handle, lines) = (process.standardOutput!, lines)
        Thread.detachNewThread {
            var buffer = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
                while let newline = buffer.firstIndex(of: 10) {
                    let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...newline)
                    lines.withLock { $0.append(line) }
                }
            }
        }
    }

    /// Every complete line printed so far.
    var printed: [String] { lines.withLock { $0 } }

    /// Waits until at least `count` lines have been printed (or `timeout` passes).
    func waitForLines(_ count: Int, timeout: Duration = .seconds(30)) async -> [String] {
        let deadline = ContinuousClock.now + timeout
        while printed.count < count && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        return printed
    }

    func signal(_ signal: Int32) { if process.isRunning { kill(process.processIdentifier, signal) } }

    /// Waits for the process to exit (on a thread of its own) and returns its status.
    func wait() async -> Int32 {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                self.process.waitUntilExit()
                continuation.resume(returning: self.process.terminationStatus)
            }
        }
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}

/// A value shared between threads and tasks.
final class Shared<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// JSON output with the fields that differ between any two etcd clusters removed
/// (cluster_id, member_id, raft_term), keys sorted, for comparison; `lease` (the ID
/// etcd picked at random) written as "<lease>" where a field holds it, and a data
/// hash as "<hash>".
func normalizedJSON(_ text: String, lease: Int64? = nil) -> String {
    text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
        guard line.hasPrefix("{") || line.hasPrefix("["), let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) else { return String(line) }
        let cleaned = strip(object, lease: lease)
        guard let out = try? JSONSerialization.data(withJSONObject: cleaned, options: [.sortedKeys]) else { return String(line) }
        return String(decoding: out, as: UTF8.self)
    }.joined(separator: "\n")
}

private func strip(_ value: Any, lease: Int64?) -> Any {
    if var dictionary = value as? [String: Any] {
        for key in ["cluster_id", "member_id", "raft_term"] { dictionary.removeValue(forKey: key) }
        // A hash of the data is each implementation's own number (etcd hashes its
        // database's bytes): that there is one is compared, not its value.
        if dictionary["hash"] is NSNumber { dictionary["hash"] = "<hash>" }
        for key in ["lease", "ID", "id"] {
            if let lease, let number = dictionary[key] as? NSNumber, number.int64Value == lease { dictionary[key] = "<lease>" }
            if let lease, let text = dictionary[key] as? String, Int64(text) == lease { dictionary[key] = "<lease>" }
        }
        return dictionary.mapValues { strip($0, lease: lease) }
    }
    if let array = value as? [Any] { return array.map { strip($0, lease: lease) } }
    return value
}
