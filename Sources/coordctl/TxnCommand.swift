import ArgumentParser
import Coordination
import Foundation

/// `coordctl txn`: etcdctl's transaction syntax, from standard input.
struct TxnCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "txn",
        abstract: "Txn processes all the requests in one transaction.",
        discussion: """
            Reads three blocks from standard input, each ended by an empty line: compares, \
            success requests, failure requests (etcdctl's syntax):

              mod("key1") > "0"
              value("key2") = "x"

              put key1 "new value"
              get key2

              del key1

            Compare targets: ver/version, c/create, m/mod, val/value, lease; operators =, !=, <, >.
            Requests: put <key> <value> [--lease=<hex>], get <key> [--prefix|--from-key|<end>], del <key> [--prefix|--from-key|<end>].
            """)

    @OptionGroup var global: GlobalOptions
    @Flag(name: [.customShort("i"), .long], help: "Input transaction in interactive mode (prints prompts).") var interactive = false

    func run() async throws {
        try await running {
            var lines = (String(data: FileHandle.standardInput.readDataToEndOfFile(), encoding: .utf8) ?? "")
                .split(separator: "\n", omittingEmptySubsequences: false).map(String.init).makeIterator()
            func block(_ prompt: String) -> [String] {
                if interactive { print(prompt) }
                var result: [String] = []
                while let line = lines.next() {
                    let trimmed = line.trimmingCharacters(in: .whitespaces)
                    if trimmed.isEmpty { break }
                    result.append(trimmed)
                }
                return result
            }
            let compares = try block("compares:").map(Self.parseCompare)
            let success = try block("success requests (get, put, del):").map(Self.parseRequest)
            let failure = try block("failure requests (get, put, del):").map(Self.parseRequest)
            let store = try await global.connect()
            let response = try await store.txn(Txn(compares: compares, success: success, failure: failure))
            await store.close()
            switch global.writeOut {
            case .simple:
                print(response.succeeded ? "SUCCESS" : "FAILURE")
                for item in response.responses {
                    print("")
                    switch item {
                    case .range(let r): for pair in r.kvs { Printer.kv(pair) }
                    case .put(let p): print("OK"); if let previous = p.prevKV { Printer.kv(previous) }
                    case .delete(let d): print(d.deleted); for pair in d.prevKVs { Printer.kv(pair) }
                    case .txn: print("unexpected nested txn response")
                    }
                }
            case .json: Printer.json(Printer.txnJSON(response))
            case .fields: Fields.txn(response)
            }
        }
    }

    /// `target("key") op "value"`, as etcdctl's parseCompare.
    static func parseCompare(_ line: String) throws -> Compare {
        guard let open = line.firstIndex(of: "(") else { throw CommandFailure(message: "malformed comparison: \(line)") }
        let target = String(line[..<open])
        let words = argify(String(line[line.index(after: open)...]))
        guard words.count == 3, words[0].hasSuffix(")") else {
            throw CommandFailure(message: "malformed comparison: \(line); expected target(\"key\") op \"value\"")
        }
        let key = Array(words[0].dropLast().utf8)
        guard let result = Compare.Result(rawValue: words[1]) else {
            throw CommandFailure(message: "malformed comparison: \(line) (unknown operator \(words[1]); use =, !=, < or >)")
        }
        let value = words[2]
        func number() throws -> Int64 {
            guard let number = Int64(value) else { throw CommandFailure(message: "invalid txn compare request: \(line)") }
            return number
        }
        switch target {
        case "ver", "version": return Compare(key: key, .version(try number()), result)
        case "c", "create": return Compare(key: key, .createRevision(try number()), result)
        case "m", "mod": return Compare(key: key, .modRevision(try number()), result)
        case "val", "value": return Compare(key: key, .value(Array(value.utf8)), result)
        case "lease": return Compare(key: key, .lease(try parseLeaseID(value)), result)
        default: throw CommandFailure(message: "malformed comparison: \(line) (unknown target \(target))")
        }
    }

    /// `put k v`, `get k [...]`, `del k [...]`.
    static func parseRequest(_ line: String) throws -> KVOperation {
        var words = argify(line)
        guard !words.isEmpty else { throw CommandFailure(message: "empty request") }
        let verb = words.removeFirst()
        let flags = words.filter { $0.hasPrefix("--") }
        let positional = words.filter { !$0.hasPrefix("--") }
        func end(_ key: String) -> [UInt8] {
            if flags.contains("--prefix") { return RangeOptions.prefixEnd(Array(key.utf8)) }
            if flags.contains("--from-key") { return [0] }
            return positional.count > 1 ? Array(positional[1].utf8) : []
        }
        switch verb {
        case "put":
            guard positional.count == 2 else { throw CommandFailure(message: "bad put request: \(line); use put <key> <value>") }
            let lease = try flags.first { $0.hasPrefix("--lease=") }.map { try parseLeaseID(String($0.dropFirst("--lease=".count))) } ?? 0
            return .put(key: Array(positional[0].utf8), value: Array(positional[1].utf8), options: PutOptions(lease: lease, prevKV: flags.contains("--prev-kv")))
        case "get":
            guard let key = positional.first else { throw CommandFailure(message: "bad get request: \(line)") }
            return .range(key: Array(key.utf8), options: RangeOptions(rangeEnd: end(key)))
        case "del", "delete":
            guard let key = positional.first else { throw CommandFailure(message: "bad del request: \(line)") }
            return .delete(key: Array(key.utf8), rangeEnd: end(key), prevKV: flags.contains("--prev-kv"))
        default:
            throw CommandFailure(message: "unknown request \(verb) in: \(line); use get, put or del")
        }
    }

    /// Splits on spaces, keeping double-quoted words (with \" and \\ escapes) together.
    static func argify(_ text: String) -> [String] {
        var words: [String] = []
        var current = ""
        var quoted = false
        var escaped = false
        var started = false
        for character in text {
            if escaped { current.append(character); escaped = false; continue }
            if quoted && character == "\\" { escaped = true; continue }
            if character == "\"" { quoted.toggle(); started = true; continue }
            if character == " " && !quoted {
                if started { words.append(current); current = ""; started = false }
                continue
            }
            current.append(character)
            started = true
        }
        if started { words.append(current) }
        return words
    }
}
