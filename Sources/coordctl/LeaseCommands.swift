import ArgumentParser
import Coordination
import Foundation

struct LeaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lease", abstract: "Lease related commands.",
        subcommands: [Grant.self, Revoke.self, TimeToLive.self, List.self, KeepAlive.self])

    struct Grant: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Creates leases.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "TTL in seconds.") var ttl: Int64

        func run() async throws {
            try await running {
                let store = try await global.connect()
                let response = try await store.grantLease(ttl: ttl)
                await store.close()
                switch global.writeOut {
                case .simple: print("lease \(Printer.leaseID(response.id)) granted with TTL(\(response.ttl)s)")
                case .json: Printer.json(Printer.flattened(response.header, ["ID": response.id, "TTL": response.ttl, "Error": ""]))
                case .fields: Fields.lease(response.header, id: response.id, ttl: response.ttl)
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revokes leases (deleting the keys attached to them).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Lease ID in hexadecimal.") var leaseID: String

        func run() async throws {
            try await running {
                let id = try parseLeaseID(leaseID)
                let store = try await global.connect()
                let header = try await store.revokeLease(id)
                await store.close()
                switch global.writeOut {
                case .simple: print("lease \(Printer.leaseID(id)) revoked")
                case .json: Printer.json(["header": Printer.header(header)])
                case .fields: Fields.header(header)
                }
            }
        }
    }

    struct TimeToLive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "timetolive", abstract: "Get lease information.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Lease ID in hexadecimal.") var leaseID: String
        @Flag(help: "Get keys attached to this lease.") var keys = false

        func run() async throws {
            try await running {
                let id = try parseLeaseID(leaseID)
                let store = try await global.connect()
                let response = try await store.timeToLive(id, keys: keys)
                await store.close()
                switch global.writeOut {
                case .simple:
                    if response.grantedTTL == 0 && response.ttl == -1 {
                        print("lease \(Printer.leaseID(id)) already expired")
                        return
                    }
                    var text = "lease \(Printer.leaseID(id)) granted with TTL(\(response.grantedTTL)s), remaining(\(response.ttl)s)"
                    if keys { text += ", attached keys([\(response.keys.map { String(decoding: $0, as: UTF8.self) }.joined(separator: " "))])" }
                    print(text)
                case .fields:
                    Fields.lease(response.header, id: id, ttl: response.ttl)
                    print("\"GrantedTTL\" : \(response.grantedTTL)")
                    for key in response.keys { print("\"Key\" : \(Fields.quote(key))") }
                case .json:
                    Printer.json(Printer.flattened(response.header, [
                        "id": id, "ttl": response.ttl, "granted-ttl": response.grantedTTL,
                        "keys": keys && !response.keys.isEmpty ? response.keys.map { Data($0).base64EncodedString() } : NSNull(),
                    ]))
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List all active leases.")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            try await running {
                let store = try await global.connect()
                let leases = try await store.leases()
                let revision = try await store.currentRevision()
                await store.close()
                switch global.writeOut {
                case .simple, .fields:
                    print("found \(leases.count) leases")
                    for id in leases { print(Printer.leaseID(id)) }
                case .json: Printer.json(Printer.flattened(ResponseHeader(revision: revision), ["leases": leases.map { ["id": $0] }]))
                }
            }
        }
    }

    struct KeepAlive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "keep-alive", abstract: "Keeps leases alive (renew).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Lease ID in hexadecimal.") var leaseID: String
        @Flag(help: "Renew the lease once instead of until interrupted.") var once = false

        func run() async throws {
            try await running {
                let id = try parseLeaseID(leaseID)
                let store = try await global.connect()
                func show(_ response: LeaseKeepAliveResponse) {
                    switch global.writeOut {
                    case .simple: print("lease \(Printer.leaseID(id)) keepalived with TTL(\(response.ttl))")
                    case .json: Printer.json(Printer.flattened(response.header, ["ID": id, "TTL": response.ttl]))
                    case .fields: Fields.lease(response.header, id: id, ttl: response.ttl)
                    }
                }
                if once {
                    show(try await store.keepAliveOnce(id))
                } else {
                    do {
                        for try await response in store.keepAlive(id) { show(response) }
                    } catch let error as CoordinationError where error.code == .leaseNotFound {
                        print("lease \(Printer.leaseID(id)) expired or revoked.")
                    }
                }
                await store.close()
            }
        }
    }
}
