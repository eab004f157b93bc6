import Foundation
import Testing

/// etcd 3.4's behaviour on the points of the store contract (DESIGN.md), observed
/// on a private etcd. The Redis-backed store must give the same answers; the
/// differential test will run the same sequences against both.
@Suite(.serialized) struct EtcdReferenceTests {
    typealias Gateway = EtcdGateway

    @Test func aNewStoreReportsRevisionOne() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            let response = try await etcd.range("anything")
            #expect(Gateway.revision(response) == 1)
            #expect(Gateway.kvs(response).isEmpty)
        }
    }

    @Test func everyChangingRequestRaisesTheRevisionByExactlyOne() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            #expect(Gateway.revision(try await etcd.put("a", "1")) == 2)
            let second = try await etcd.put("a", "2", prevKV: true)
            #expect(Gateway.revision(second) == 3)
            let previous = (second["prev_kv"] as? [String: Any]).map(Gateway.KeyValue.init(json:))
            #expect(previous?.value == Array("1".utf8) && previous?.version == 1 && previous?.createRevision == 2)
            let current = Gateway.kvs(try await etcd.range("a"))
            #expect(current.first?.createRevision == 2 && current.first?.modRevision == 3 && current.first?.version == 2)

            let deleted = try await etcd.delete("a")
            #expect(Gateway.revision(deleted) == 4 && Gateway.int(deleted["deleted"]) == 1)
            // Deleting nothing changes nothing.
            let nothing = try await etcd.delete("a")
            #expect(Gateway.revision(nothing) == 4 && Gateway.int(nothing["deleted"]) == 0)
            // A recreated key starts over: new create revision, version 1.
            #expect(Gateway.revision(try await etcd.put("a", "3")) == 5)
            let recreated = Gateway.kvs(try await etcd.range("a")).first
            #expect(recreated?.createRevision == 5 && recreated?.version == 1)
        }
    }

    @Test func aTxnAppliesAllItsChangesAtOneRevision() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            _ = try await etcd.put("x", "0")
            let key = Gateway.base64("x")
            let success: [[String: Any]] = [
                ["request_put": ["key": Gateway.base64("y"), "value": Gateway.base64("1")]],
                ["request_put": ["key": Gateway.base64("z"), "value": Gateway.base64("1")]],
            ]
            let applied = try await etcd.txn(compare: [["key": key, "result": "EQUAL", "target": "VERSION", "version": "1"]], success: success, failure: [])
            #expect(applied["succeeded"] as? Bool == true)
            #expect(Gateway.revision(applied) == 3)
            let both = Gateway.kvs(try await etcd.range("y", end: "{"))
            #expect(both.map(\.modRevision) == [3, 3])
            // A failed compare with a read-only branch changes nothing.
            let failed = try await etcd.txn(compare: [["key": key, "result": "EQUAL", "target": "VALUE", "value": Gateway.base64("nope")]],
                                            success: success, failure: [["request_range": ["key": key]]])
            #expect(failed["succeeded"] == nil)
            #expect(Gateway.revision(failed) == 3)
        }
    }

    @Test func aKeyWrittenTwiceInOneTxnIsRejected() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            let put: [String: Any] = ["request_put": ["key": Gateway.base64("k"), "value": Gateway.base64("v")]]
            await #expect { _ = try await etcd.txn(compare: [], success: [put, put], failure: []) } throws: { error in
                (error as? Gateway.Failure)?.message.contains("duplicate key") == true
            }
            #expect(Gateway.revision(try await etcd.range("k")) == 1)
        }
    }

    @Test func olderRevisionsAreReadableUntilCompacted() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            _ = try await etcd.put("a", "1")   // revision 2
            _ = try await etcd.put("a", "2")   // revision 3
            _ = try await etcd.put("b", "1")   // revision 4
            #expect(Gateway.kvs(try await etcd.range("a", revision: 2)).first?.value == Array("1".utf8))
            #expect(Gateway.kvs(try await etcd.range("b", revision: 3)).isEmpty)
            await #expect { _ = try await etcd.range("a", revision: 5) } throws: { error in
                (error as? Gateway.Failure)?.message.contains("future revision") == true
            }
            _ = try await etcd.compact(3)
            await #expect { _ = try await etcd.range("a", revision: 2) } throws: { error in
                (error as? Gateway.Failure)?.message.contains("compacted") == true
            }
            // The compacted revision itself stays readable.
            #expect(Gateway.kvs(try await etcd.range("a", revision: 3)).first?.value == Array("2".utf8))
        }
    }

    @Test func countIgnoresTheLimitAndMoreSaysWhatWasLeftOut() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            for index in 0..<5 { _ = try await etcd.put("p/\(index)", "v") }
            let limited = try await etcd.range("p/", end: "p0", limit: 2)
            #expect(Gateway.kvs(limited).count == 2)
            #expect(Gateway.int(limited["count"]) == 5)
            #expect(limited["more"] as? Bool == true)
            let counted = try await etcd.range("p/", end: "p0", countOnly: true)
            #expect(Gateway.kvs(counted).isEmpty && Gateway.int(counted["count"]) == 5)
        }
    }

    @Test func revokingALeaseDeletesItsKeysInOneRevision() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            let lease = Gateway.int(try await etcd.grantLease(ttl: 60)["ID"])
            #expect(lease != 0)
            _ = try await etcd.put("l/1", "v", lease: lease)   // revision 2
            _ = try await etcd.put("l/2", "v", lease: lease)   // revision 3
            #expect(Gateway.kvs(try await etcd.range("l/1")).first?.lease == lease)
            #expect(Gateway.revision(try await etcd.revokeLease(lease)) == 4)
            #expect(Gateway.kvs(try await etcd.range("l/", end: "l0")).isEmpty)
            await #expect { _ = try await etcd.put("l/3", "v", lease: lease) } throws: { error in
                (error as? Gateway.Failure)?.message.contains("lease not found") == true
            }
        }
    }

    @Test func anEmptyKeyIsRejected() async throws {
        try await EtcdServer.withServer { _, etcd throws in
            await #expect { _ = try await etcd.put("", "v") } throws: { error in
                (error as? Gateway.Failure)?.message.contains("key is not provided") == true
            }
        }
    }
}
