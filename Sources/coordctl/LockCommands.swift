import ArgumentParser
import Coordination
import CoordinationPrimitives
import Foundation

/// `coordctl lock`: etcdctl's lock, with the fencing token.
struct LockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lock",
        abstract: "Acquires a named lock; holds it until interrupted, or runs a command while holding it.",
        discussion: """
            Waits for the lock (first come, first served), then prints its key, as etcdctl does.

            Without a command, it holds the lock until interrupted (Ctrl-C or SIGTERM), then \
            releases it. With a command (after the name, or after --), it runs the command \
            while holding the lock, releases it when the command exits, and exits with the \
            command's status. The command sees COORD_LOCK_KEY (the lock key), \
            COORD_LOCK_REV (the key's create revision, as etcd's lock reports it) and \
            COORD_FENCING_TOKEN (that revision carried into the store's epoch: strictly \
            greater for every later holder, also after Redis restarted or failed over and \
            lost writes; pass it to whatever the lock protects and have it refuse tokens \
            below the highest it has seen, so that a holder that stalled past its lease \
            cannot overwrite a newer holder's work).

            The lock hangs on a lease of --ttl seconds, refreshed while this process runs. \
            If the lease is lost (this process stalled past the TTL, or the lease was \
            revoked), the command is terminated (SIGTERM) and coordctl exits with an error.

            Examples:
              coordctl lock reports
              coordctl lock reports -- ./make-report.sh --daily
              coordctl lock --ttl 10 backup sh -c 'backup --fence "$COORD_FENCING_TOKEN"'
            """)
    @OptionGroup var global: GlobalOptions
    @Option(help: "TTL in seconds of the lock's lease (session).") var ttl: Int64 = 60
    @Argument(help: "The lock name (its key prefix).") var name: String
    @Argument(parsing: .captureForPassthrough, help: "A command to run while holding the lock.") var command: [String] = []

    func validate() throws {
        if ttl < 2 { throw ValidationError("--ttl must be at least 2 seconds, got \(ttl)") }
        if name.isEmpty { throw ValidationError("the lock name must not be empty") }
    }

    func run() async throws {
        var status: Int32 = 0
        let command = command.first == "--" ? Array(command.dropFirst()) : command
        let name = name
        try await running {
            let result = try await withSession(global, ttl: ttl) { session in
                let mutex = DistributedMutex(session: session, prefix: name)
                return try await mutex.withLock { token -> Int32 in
                    let key = String(decoding: mutex.key, as: UTF8.self)
                    if command.isEmpty {
                        print(key)
                        fflush(nil)
                        while true { try await Task.sleep(for: .seconds(3600)) }   // until interrupted
                    }
                    return try await runCommand(command, environment: [
                        "COORD_LOCK_KEY": key, "COORD_LOCK_REV": String(mutex.createRevision ?? 0), "COORD_FENCING_TOKEN": String(token),
                        "COORD_LOCK_NAME": name,
                    ])
                }
            }
            // Interrupted: without a command that is how the lock is let go; with one,
            // the command was terminated (130, as a shell reports it).
            status = result ?? (command.isEmpty ? 0 : 130)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

/// `coordctl elect`: etcdctl's elect.
struct ElectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "elect",
        abstract: "Campaigns in a named election with a proposal, or observes its leaders (-l).",
        discussion: """
            With a proposal, it campaigns and, once elected, prints the leader key and the \
            proposal, as etcdctl does, and stays leader until interrupted (Ctrl-C or \
            SIGTERM); then it resigns and the next candidate is elected. If the lease of \
            --ttl seconds is lost, it exits with an error.

            With -l (--listen), it prints the leader's key and value every time the leader \
            proclaims a value or a new leader is elected, until interrupted.

            Examples:
              coordctl elect scheduler node-1
              coordctl elect -l scheduler
            """)
    @OptionGroup var global: GlobalOptions
    @Flag(name: [.customShort("l"), .customLong("listen")], help: "Observe the leaders instead of campaigning.") var listen = false
    @Option(help: "TTL in seconds of the candidate's lease (session).") var ttl: Int64 = 60
    @Argument(help: "The election name (its key prefix).") var name: String
    @Argument(help: "The value to campaign with.") var proposal: String?

    func validate() throws {
        if listen && proposal != nil { throw ValidationError("give either a proposal to campaign with, or -l to observe, not both") }
        if !listen && proposal == nil { throw ValidationError("give a proposal to campaign with (coordctl elect \(name) <proposal>), or -l to observe") }
        if ttl < 2 { throw ValidationError("--ttl must be at least 2 seconds, got \(ttl)") }
    }

    func run() async throws {
        let (name, listen, proposal) = (name, listen, proposal ?? "")
        try await running {
            try await withSession(global, ttl: ttl) { session in
                let election = Election(session: session, prefix: name)
                if listen {
                    for try await leader in election.observe() { Printer.kv(leader) }
                    return
                }
                try await election.campaign(proposal)
                Printer.kv(try await election.leader())
                await session.done()   // returns early when interrupted (cancelled)
                if Task.isCancelled {
                    // Interrupted: resign, so that the next candidate is elected now.
                    try await Task { try await election.resign() }.value
                    return
                }
                throw CommandFailure(message: "lost the election's lease; no longer the leader of \(name)")
            }
        }
    }
}
