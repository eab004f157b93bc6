import ArgumentParser
import Coordination
import CoordinationPrimitives
import Foundation

/// `coordctl fortress`: juju's fortress (a gate that guards open and shut, guests
/// that visit while it is open), shared through the store.
struct FortressCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fortress",
        abstract: "Guard a fortress (unlock, lockdown) or visit it (run a command inside).",
        discussion: """
            A fortress is a readers-writer lock told as a story. It has a gate, shut at \
            first. A guard unlocks the gate; guests then come and go, many at a time, each \
            for one visit. A lockdown shuts the gate at once, so no new guest gets in, and \
            returns when the last guest inside has left: from then until the next unlock, \
            nothing runs inside, and the guard can change what the visits rely on.

            Every process using the same store and fortress name shares the fortress. The \
            name is the key prefix: the gate is <name>/state, each visit a key \
            <name>/visits/<lease>/<id> attached to the visitor's lease, so a visitor that \
            crashes holds up a lockdown for at most its --ttl.

            Examples:
              coordctl fortress unlock charm
              coordctl fortress visit charm -- ./run-metrics-hook.sh
              coordctl fortress lockdown charm && ./upgrade-charm.sh
              coordctl fortress unlock charm
            """,
        subcommands: [Unlock.self, Lockdown.self, Visit.self])

    struct Unlock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Opens the gate: waiting visits start, and new ones start at once.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The fortress name (its key prefix).") var name: String

        func run() async throws {
            let name = name
            try await running {
                try await withFortress(global, name: name, ttl: 60) { fortress in
                    try await fortress.unlock()
                    print("\(name) unlocked")
                }
            }
        }
    }

    struct Lockdown: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Shuts the gate at once, then waits until every visit inside has left.",
            discussion: """
                New visits are refused as soon as the command starts; it prints how many \
                visits are still inside while it waits, and "<name> locked down" when the \
                fortress is empty. Interrupting it leaves the gate shut.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The fortress name (its key prefix).") var name: String

        func run() async throws {
            let name = name
            try await running {
                try await withFortress(global, name: name, ttl: 60) { fortress in
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { try await fortress.lockdown() }
                        group.addTask {
                            var shown: Int?
                            while true {
                                let inside = try await fortress.visitCount()
                                if inside > 0 && inside != shown {
                                    print(shown == nil ? "\(name) locked; waiting for \(inside) visit\(inside == 1 ? "" : "s") to leave"
                                                       : "\(inside) visit\(inside == 1 ? "" : "s") still inside")
                                    fflush(nil)
                                }
                                shown = inside
                                try await Task.sleep(for: .milliseconds(250))
                            }
                        }
                        defer { group.cancelAll() }
                        try await group.next()
                    }
                    print("\(name) locked down")
                }
            }
        }
    }

    struct Visit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Runs a command inside a visit: waits for the gate to open, and holds off lockdowns until the command exits.",
            discussion: """
                Exits with the command's exit status (128+N when a signal N ended it). \
                The visit hangs on a lease of --ttl seconds, refreshed while the command \
                runs; if this process dies, the visit ends when the lease expires. If the \
                lease is lost while the command runs, the command is terminated (SIGTERM) \
                and the visit fails: a lockdown no longer waits for it.

                Example:
                  coordctl fortress visit charm --ttl 10 -- ./run-metrics-hook.sh --verbose
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The fortress name (its key prefix).") var name: String
        @Option(help: "TTL in seconds of the visit's lease.") var ttl: Int64 = 60
        @Argument(parsing: .postTerminator, help: "The command to run inside the visit, after --.") var command: [String] = []

        func validate() throws {
            if command.isEmpty { throw ValidationError("give the command to run inside the visit after --, e.g. coordctl fortress visit \(name) -- ./hook.sh") }
            if ttl < 2 { throw ValidationError("--ttl must be at least 2 seconds, got \(ttl)") }
        }

        func run() async throws {
            var status: Int32 = 0
            let command = command
            try await running {
                // Interrupted, the command is terminated and the visit ends: 130, as a shell says.
                status = try await withFortress(global, name: name, ttl: ttl) { fortress in
                    try await fortress.visit { try await runCommand(command) }
                } ?? 130
            }
            if status != 0 { throw ExitCode(status) }
        }
    }
}

/// Connects, opens a session of `ttl` seconds and the fortress `name`, and runs
/// `body`; closes the session and the store afterwards.
@discardableResult
private func withFortress<T: Sendable>(_ global: GlobalOptions, name: String, ttl: Int64,
                                       _ body: @escaping @Sendable (Fortress) async throws -> T) async throws -> T? {
    try await withSession(global, ttl: ttl) { session in
        try await body(Fortress(session: session, prefix: name))
    }
}
