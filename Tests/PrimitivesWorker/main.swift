// A worker process for the multi-process tests of CoordinationPrimitives.
//
//   PrimitivesWorker contend <url> <prefix> <count> <ttl>
//       Locks the mutex <prefix> <count> times; inside each hold it writes through
//       a fencing-token check (a Redis key standing in for an external resource
//       that rejects tokens not above the highest it has seen) and counts holders
//       with INCR/DECR. Prints one summary line:
//       `acquired <n> overlaps <n> rejected <n> tokens <t1,t2,...>`.
//   PrimitivesWorker hold <url> <prefix> <ttl>
//       Locks, prints `locked <token>`, then waits for a line on stdin and tries a
//       fenced write with its token: prints `write accepted` or `write rejected`.
//       (Tests stop it with SIGSTOP or kill it with SIGKILL while it holds.)
//   PrimitivesWorker fence <url> <prefix> <token>
//       One fenced write with <token>: prints `write accepted` or `write rejected`.
//   PrimitivesWorker busy <url> <prefix> <ttl> <seconds>
//       Opens a session of <ttl> seconds, puts <prefix>/held on its lease and prints
//       `session <lease hex>`; then for <seconds> keeps 16 tasks writing through the
//       client while every thread of its cooperative pool is blocked (usleep) for
//       most of the time, and prints `alive` or `ended <reason>` and its put count.
import CoordinationPrimitives
import Foundation
import RedisClient

/// The "external resource": accepts a write only with a token above every token it has seen.
let fencedWrite = RedisScript("""
    local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
    local token = tonumber(ARGV[1])
    if token <= highest then return 0 end
    redis.call('SET', KEYS[1], ARGV[1])
    return 1
    """)

func fenced(_ store: CoordinationClient, _ prefix: String, _ token: Int64) async throws -> Bool {
    try await store.redis.run(fencedWrite, keys: [Array("worker:\(prefix):fence".utf8)], arguments: [Array(String(token).utf8)]).int == 1
}

func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let arguments = CommandLine.arguments
guard arguments.count >= 4 else {
    FileHandle.standardError.write(Data("usage: PrimitivesWorker contend <url> <prefix> <count> <ttl> | hold <url> <prefix> <ttl> | fence <url> <prefix> <token>\n".utf8))
    exit(2)
}
let store = try await CoordinationClient.connect(url: arguments[2])
let prefix = arguments[3]
switch arguments[1] {
case "contend":
    let count = Int(arguments[4])!
    let session = try await Session(client: store, ttl: Int64(arguments[5])!)
    let mutex = DistributedMutex(session: session, prefix: prefix)
    let inside = Array("worker:\(prefix):inside".utf8)
    var overlaps = 0, rejected = 0
    var tokens: [Int64] = []
    for _ in 0..<count {
        let token = try await mutex.lock()
        if try await store.redis.send([Array("INCR".utf8), inside], timeout: nil).int != 1 { overlaps += 1 }
        if try await !fenced(store, prefix, token) { rejected += 1 }
        tokens.append(token)
        _ = try await store.redis.send([Array("DECR".utf8), inside], timeout: nil)
        try await mutex.unlock()
    }
    say("acquired \(tokens.count) overlaps \(overlaps) rejected \(rejected) tokens \(tokens.map(String.init).joined(separator: ","))")
    try await session.close()
case "hold":
    let session = try await Session(client: store, ttl: Int64(arguments[4])!)
    let mutex = DistributedMutex(session: session, prefix: prefix)
    let token = try await mutex.lock()
    say("locked \(token)")
    _ = readLine()
    say(try await fenced(store, prefix, token) ? "write accepted" : "write rejected")
case "busy":
    let session = try await Session(client: store, ttl: Int64(arguments[4])!)
    let seconds = Double(arguments[5])!
    _ = try await store.put(prefix + "/held", "v", options: PutOptions(lease: session.lease))
    say("session \(session.leaseKeySuffix)")
    let until = Date().addingTimeInterval(seconds)
    let writers = (0..<16).map { index in
        Task {
            var puts = 0
            while Date() < until {
                _ = try await store.put("\(prefix)/load/\(index)", String(repeating: "x", count: 512))
                puts += 1
            }
            return puts
        }
    }
    // Each pool thread is taken for longer than the TTL at a time: nothing that waits
    // for the pool (timers, continuations) runs meanwhile.
    let ttlMicroseconds = UInt32(session.ttl * 1_000_000)
    let blockers = (0..<ProcessInfo.processInfo.activeProcessorCount).map { _ in
        Task.detached {
            while Date() < until {
                usleep(ttlMicroseconds + 500_000)
                await Task.yield()
            }
        }
    }
    var puts = 0
    for writer in writers { puts += try await writer.value }
    for blocker in blockers { await blocker.value }
    say((session.isDone ? "ended \(String(describing: session.endedBecause))" : "alive") + " puts \(puts)")
    try await session.close()
case "fence":
    say(try await fenced(store, prefix, Int64(arguments[4])!) ? "write accepted" : "write rejected")
default:
    FileHandle.standardError.write(Data("unknown command \(arguments[1])\n".utf8))
    exit(2)
}
await store.close()
