import RedisClient
import Synchronization

/// Runs the store script (kv.lua) as a Redis function where the server allows it, and
/// by EVALSHA where it does not.
///
/// An EVALSHA call runs the script's whole chunk: it creates the thirty-odd helper
/// functions again at every call (each capturing its upvalues), about 9 µs of Redis's
/// time per call on top of the requests' own work, which for a lone get is half of its
/// cost. Loaded once by `FUNCTION LOAD` (Redis 7), the chunk runs once and registers
/// its entry point; `FCALL` then runs only the call itself, with the same KEYS and ARGV
/// and the same replies.
///
/// The function is tried first. EVALSHA (the script as it always ran) takes over:
/// - for a minute, when the server has no functions (Redis 6: unknown command), the
///   Redis user may not run `FCALL` or `FUNCTION LOAD` (`NOPERM`), or the server
///   refuses to load the library (over maxmemory, a replica);
/// - for one call, when Redis refused the function before running it where it lets a
///   script without flags run: `OOM` (over maxmemory a function that writes is refused
///   whole, while the script still runs, may delete, and is refused only at its first
///   write that can grow memory), `READONLY` (a replica runs the script's reads),
///   `MISCONF` and `NOREPLICAS` (likewise refused at the first write only). Nothing of
///   the call ran, so sending it again applies nothing twice.
///
/// A server that lost its functions (restart without persistence, `FUNCTION FLUSH`,
/// a failover to a replica that never got them) answers "Function not found": the
/// library is loaded again and the call retried, as EVALSHA does on `NOSCRIPT`. The
/// library is named after the script's SHA-1, so coordproxy processes of different
/// versions on one Redis each load and call their own.
final class StoreFunction: Sendable {
    /// The script run by EVALSHA.
    let script: RedisScript
    /// The library's (and its one function's) name.
    let name: String
    /// What `FUNCTION LOAD` gets: the script under a `#!lua name=` line and the local
    /// that tells the chunk the name to register (built when loaded, which is rare).
    var library: String { Self.library(of: script) }
    /// Until when calls go by EVALSHA without trying the function.
    private let scriptOnlyUntil = Mutex<ContinuousClock.Instant?>(nil)

    init(_ script: RedisScript) {
        self.script = script
        self.name = Self.name(of: script)
    }

    static func name(of script: RedisScript) -> String { "coordkv_" + script.sha1.prefix(16) }

    static func library(of script: RedisScript) -> String {
        let name = name(of: script)
        return "#!lua name=\(name)\nlocal LIBRARY = '\(name)'\n" + script.source
    }

    /// Whether the function is tried now (false while EVALSHA has taken over).
    var triesFunction: Bool {
        scriptOnlyUntil.withLock { until in
            guard let deadline = until else { return true }
            if ContinuousClock.now < deadline { return false }
            until = nil
            return true
        }
    }

    /// Runs one call (KEYS `keys`, ARGV `arguments`) on `redis`.
    func run(on redis: any RedisCommandExecutor, keys: [[UInt8]], arguments: [[UInt8]]) async throws -> RedisReply {
        if triesFunction {
            var command: [[UInt8]] = [Array("FCALL".utf8), Array(name.utf8), Array(String(keys.count).utf8)]
            command.append(contentsOf: keys)
            command.append(contentsOf: arguments)
            var loaded = false
            while true {
                do {
                    return try await redis.send(command, timeout: nil)
                } catch let error as RedisError where Self.isMissing(error) {
                    // Loaded and missing again (a FUNCTION FLUSH meanwhile): this call goes by EVALSHA.
                    if loaded { break }
                    loaded = true
                    do {
                        _ = try await redis.send([Array("FUNCTION".utf8), Array("LOAD".utf8), Array(library.utf8)], timeout: nil)
                    } catch let error as RedisError where error.message.contains("already exists") {
                        // Another connection loaded it meanwhile.
                    } catch let error as RedisError where error.code == .server || error.code == .noPermission {
                        // Not allowed (NOPERM, no functions) or refused now (over maxmemory,
                        // a replica): EVALSHA, for a minute, rather than a load per call.
                        useScriptOnly()
                        break
                    }
                } catch let error as RedisError where Self.meansNoFunctions(error) {
                    useScriptOnly()
                    break
                } catch let error as RedisError where Self.refusedBeforeRunning(error) {
                    break
                }
            }
        }
        return try await redis.run(script, keys: keys, arguments: arguments, timeout: nil)
    }

    /// The hello a store connection sends when it (re)connects, on its setup channel:
    /// by the function (loaded first when missing), else by EVALSHA, else by EVAL.
    func runSetup(on channel: RedisSetupChannel, keys: [[UInt8]], argument: [UInt8]) throws {
        let count = Array(String(keys.count).utf8)
        let fcall = [Array("FCALL".utf8), Array(name.utf8), count] + keys + [argument]
        var reply = try channel.send(fcall)
        if case .error(let message) = reply, message.hasPrefix("ERR Function not found") {
            _ = try channel.send([Array("FUNCTION".utf8), Array("LOAD".utf8), Array(library.utf8)])
            reply = try channel.send(fcall)
        }
        guard case .error = reply else { return }
        reply = try channel.send([Array("EVALSHA".utf8), Array(script.sha1.utf8), count] + keys + [argument])
        if case .error(let message) = reply, message.hasPrefix("NOSCRIPT") {
            _ = try channel.send([Array("EVAL".utf8), Array(script.source.utf8), count] + keys + [argument])
        }
    }

    /// Deletes the libraries of other versions of the script (`coordkv_*` but this
    /// one's name), which would otherwise stay in Redis (and its RDB, AOF and
    /// replicas) after every upgrade. Run once when a client connects, not when a call
    /// reloads a missing library: a process of another version still running (a
    /// rolling upgrade) finds its library missing at its next call and loads it again,
    /// and two versions never take turns deleting each other's library call after
    /// call. Best effort: a server without functions or a user without `FUNCTION`
    /// leaves them; a library that is not named after a script version is left too.
    func removeOtherVersions(on redis: any RedisCommandExecutor) async {
        guard let reply = try? await redis.send([Array("FUNCTION".utf8), Array("LIST".utf8), Array("LIBRARYNAME".utf8), Array("coordkv_*".utf8)], timeout: nil) else { return }
        for other in Self.libraryNames(reply) where other != name && Self.isVersionName(other) {
            _ = try? await redis.send([Array("FUNCTION".utf8), Array("DELETE".utf8), Array(other.utf8)], timeout: nil)
        }
    }

    /// The library names in a `FUNCTION LIST` reply (RESP2: each library a flat array
    /// of field, value).
    static func libraryNames(_ reply: RedisReply) -> [String] {
        (reply.array ?? []).compactMap { library in
            guard let fields = library.array, let index = fields.firstIndex(where: { $0.string == "library_name" }), index + 1 < fields.count else { return nil }
            return fields[index + 1].string
        }
    }

    /// `coordkv_` and 16 lowercase hexadecimal digits, as ``name(of:)`` makes them (a
    /// user's `coordkv_tools`, also matched by the `coordkv_*` pattern, is not one).
    static func isVersionName(_ library: String) -> Bool {
        let digits = library.utf8.dropFirst("coordkv_".count)
        return library.hasPrefix("coordkv_") && digits.count == 16
            && digits.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }
    }

    private func useScriptOnly() {
        scriptOnlyUntil.withLock { $0 = ContinuousClock.now + .seconds(60) }
    }

    /// "ERR Function not found": the server does not have the library (any more).
    static func isMissing(_ error: RedisError) -> Bool {
        error.code == .server && error.message.hasPrefix("ERR Function not found")
    }

    /// The server has no functions (before Redis 7), or the user may not use them.
    static func meansNoFunctions(_ error: RedisError) -> Bool {
        error.code == .noPermission || (error.code == .server && error.message.lowercased().hasPrefix("err unknown command"))
    }

    /// Refusals of a function that writes, made before it runs, where a script without
    /// flags runs and is refused at its first write, if it makes one.
    static func refusedBeforeRunning(_ error: RedisError) -> Bool {
        guard error.code == .server, let prefix = error.serverErrorPrefix else { return false }
        return prefix == "OOM" || prefix == "READONLY" || prefix == "MISCONF" || prefix == "NOREPLICAS"
    }
}
