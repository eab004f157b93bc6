import Foundation
import EtcdTestSupport
@testable import RedisClient

/// A private single-member etcd (the reference for conformance tests), on two free
/// loopback ports, in a temporary directory that is removed when it stops.
final class EtcdServer: Sendable {
    /// The client URL, such as `http://127.0.0.1:40123`.
    let clientURL: String
    let directory: String
    private let process: ChildProcess

    private init(clientURL: String, directory: String, process: ChildProcess) {
        self.clientURL = clientURL
        self.directory = directory
        self.process = process
    }

    /// Starts etcd (found on PATH or in `$ETCD`) and waits until it serves requests.
    static func start() async throws -> EtcdServer {
        let fromEnvironment = ProcessInfo.processInfo.environment["ETCD"].flatMap { $0.isEmpty ? nil : $0 }
        guard let executable = fromEnvironment ?? ChildProcess.locate("etcd") else {
            throw RedisError(.serverNotFound, "etcd was not found on PATH; install it (Debian: apt-get install etcd-server) or set ETCD to its path")
        }
        var lastError: (any Error)?
        for _ in 0..<5 {
            let directory = try ChildProcess.makeTemporaryDirectory(prefix: "coord-etcd")
            let clientPort = try ChildProcess.freeLoopbackPort()
            let peerPort = try ChildProcess.freeLoopbackPort()
            let client = "http://127.0.0.1:\(clientPort)"
            let peer = "http://127.0.0.1:\(peerPort)"
            let process = try ChildProcess.spawn(executable, arguments: ReferenceEtcdCommandLine.arguments(directory: directory, client: client, peer: peer),
                                               logPath: directory + "/stdout.log", pidFile: directory + "/etcd.pid")
            let server = EtcdServer(clientURL: client, directory: directory, process: process)
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline, !process.hasExited() {
                if let health = try? await EtcdGateway(baseURL: client).call("/health", nil), health["health"] as? String == "true" {
                    return server
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            lastError = RedisError(.serverStartFailed, "etcd did not become healthy; its log says:\n" + ChildProcess.tail(of: directory + "/etcd.log") + ChildProcess.tail(of: directory + "/stdout.log"))
            await server.stop()
        }
        throw lastError ?? RedisError(.serverStartFailed, "etcd did not start")
    }

    /// Runs `body` with a fresh etcd and stops it afterwards.
    @discardableResult
    static func withServer<Result: Sendable>(_ body: (EtcdServer, EtcdGateway) async throws -> Result) async throws -> Result {
        let server = try await start()
        do {
            let result = try await body(server, EtcdGateway(baseURL: server.clientURL))
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    /// Stops etcd and removes its directory.
    func stop() async {
        await process.terminate(signal: SIGTERM)
        try? FileManager.default.removeItem(atPath: directory)
    }
}
