import ArgumentParser
import Coordination
import Foundation

/// `coordctl watch`: prints events as etcdctl does until interrupted.
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Watches events stream on keys or prefixes.",
        discussion: "Prints PUT/DELETE, the key and the value of every event until interrupted (Ctrl-C).")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var range: RangeFlags
    @Argument(help: "The key.") var key: String
    @Argument(help: "End of the range, exclusive.") var rangeEnd: String?
    @Option(help: "Revision to start watching from (inclusive).") var rev: Int64 = 0
    @Flag(name: .customLong("prev-kv"), help: "Get the previous key-value pair before the event happens.") var prevKV = false

    func run() async throws {
        try await running {
            let store = try await global.connect()
            let options = WatchOptions(rangeEnd: range.rangeEnd(for: key, end: rangeEnd), startRevision: rev, prevKV: prevKV)
            for try await response in store.watch(range.key(key), options: options) {
                switch global.writeOut {
                case .simple:
                    for event in response.events {
                        print(event.kind == .put ? "PUT" : "DELETE")
                        if let previous = event.prevKV { Printer.kv(previous) }
                        Printer.kv(event.kv)
                    }
                case .fields:
                    Fields.header(response.header)
                    for event in response.events {
                        print("\"Type\" : \(event.kind == .put ? "PUT" : "DELETE")")
                        if let previous = event.prevKV { Fields.kv(previous, prefix: "Prev") }
                        Fields.kv(event.kv)
                    }
                case .json:
                    Printer.json(["Header": Printer.header(response.header), "Events": response.events.map { event -> [String: Any] in
                        var object: [String: Any] = ["kv": Printer.kvJSON(event.kv)]
                        if event.kind == .delete { object["type"] = 1 }
                        if let previous = event.prevKV { object["prev_kv"] = Printer.kvJSON(previous) }
                        return object
                    }])
                }
            }
            await store.close()
        }
    }
}
