import Logging
import RedisClient
import Synchronization

/// Where the commands of the backing Redis take their keys, read from its `COMMAND`
/// reply (each command's first key, last key and step, and its subcommands), so that
/// pass-through refuses a command whose *keys* name the coordination store's, and
/// passes one that only carries the store's hash tag in a value, a message or a
/// pattern (`SET note "{coord}:rev"`, `PUBLISH chan "{coord}"`).
///
/// A command whose keys the table cannot place (flagged `movablekeys`, as EVAL, FCALL,
/// SORT, XREAD, ZUNIONSTORE and MIGRATE are; a subcommand or a command Redis did not
/// list) gets every argument checked, as before the table was read.
struct CommandKeyTable: Sendable, Equatable {
    /// The key positions of one command: argument indices (the name is 0) `first`
    /// through `last` (negative: counted from the end, -1 the last argument) in steps
    /// of `step`; `first` 0 for a command without keys.
    struct Positions: Sendable, Equatable {
        let first: Int
        let last: Int
        let step: Int
        /// Keys the triple does not describe: every argument is checked.
        let movable: Bool
        /// A container (OBJECT, XINFO, MEMORY...): its keys are its subcommand's.
        let container: Bool
    }

    /// Lower-case names, subcommands as `object|encoding`.
    let byName: [String: Positions]

    /// The table of a `COMMAND` reply; nil if the reply has no command in it.
    init?(reply: RedisReply) {
        guard let entries = reply.array else { return nil }
        var byName: [String: Positions] = [:]
        func add(_ entry: RedisReply) {
            guard let fields = entry.array, fields.count >= 6, let name = fields[0].string?.lowercased(),
                  let first = fields[3].int, let last = fields[4].int, let step = fields[5].int else { return }
            let flags = fields[2].array?.compactMap { $0.string?.lowercased() } ?? []
            let subcommands = fields.count > 9 ? fields[9].array ?? [] : []
            byName[name] = Positions(first: Int(first), last: Int(last), step: Int(step), movable: flags.contains("movablekeys"),
                                     container: !subcommands.isEmpty)
            subcommands.forEach(add)
        }
        entries.forEach(add)
        guard !byName.isEmpty else { return nil }
        self.byName = byName
    }

    /// The indices of the key arguments of a command of `count` arguments (its name
    /// included) named `name` (lower case), whose second argument is `subcommand`; nil
    /// when every argument is to be checked.
    func keyIndices(name: String, subcommand: @autoclosure () -> String?, count: Int) -> StrideThrough<Int>? {
        guard var positions = byName[name] else { return nil }
        if positions.container {
            guard let subcommand = subcommand(), let inner = byName[name + "|" + subcommand.lowercased()] else { return nil }
            positions = inner
        }
        if positions.movable || positions.step < 0 { return nil }
        if positions.first <= 0 || positions.step == 0 { return stride(from: 1, through: 0, by: 1) }
        let last = positions.last < 0 ? count + positions.last : positions.last
        return stride(from: positions.first, through: min(last, count - 1), by: positions.step)
    }
}

/// The table once read, shared by the listener's connections.
final class CommandKeys: Sendable {
    private let table = Mutex<CommandKeyTable?>(nil)

    var current: CommandKeyTable? { table.withLock { $0 } }

    func set(_ newTable: CommandKeyTable) { table.withLock { $0 = newTable } }

    /// Reads the table from `redis` and logs what a failure means (once, on the
    /// `first` attempt, unless it cannot be helped by asking again); true when it is
    /// worth asking again.
    func load(from redis: any RedisCommandExecutor, first: Bool, logger: Logger) async -> Bool {
        switch await Self.read(from: redis) {
        case .success(let table):
            set(table)
            if !first { logger.info("read Redis's command table: pass-through now looks for the store's hash tag in the keys of commands only") }
            return false
        case .failure(let failure):
            if first || !failure.retry {
                logger.warning("could not read Redis's command table (COMMAND): \(failure.reason). Until it is read, pass-through refuses any command with the store's hash tag in any argument, values included\(failure.retry ? "; asking again every 5 s" : "")")
            }
            return failure.retry
        }
    }

    /// Reads `COMMAND` from `redis`: the table, or why not (`retry`: whether asking
    /// again may help; not when the user may not run COMMAND).
    static func read(from redis: any RedisCommandExecutor) async -> Result<CommandKeyTable, ReadFailure> {
        do {
            let reply = try await redis.send([Array("COMMAND".utf8)])
            guard let table = CommandKeyTable(reply: reply) else {
                return .failure(ReadFailure(reason: "Redis answered COMMAND without a command table", retry: false))
            }
            return .success(table)
        } catch let error as RedisError where error.code == .noPermission {
            return .failure(ReadFailure(reason: "\(error) (+command, for coordproxy's user)", retry: false))
        } catch {
            return .failure(ReadFailure(reason: "\(error)", retry: true))
        }
    }

    struct ReadFailure: Error {
        let reason: String
        let retry: Bool
    }
}
