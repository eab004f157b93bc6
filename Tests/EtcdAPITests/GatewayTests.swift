import Foundation
@testable import RedisClient
import Testing

/// The JSON gateway against etcd's own: the same requests, from Python's urllib,
/// to etcd 3.4's gateway and to coordproxy's give the same statuses and bodies.
@Suite struct GatewayTests {
    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    static var requests: [[String: Any]] { [
        ["path": "/v3/kv/put", "body": ["key": base64("a"), "value": base64("1")]],
        ["path": "/v3/kv/put", "body": ["key": base64("a"), "value": base64("2"), "prev_kv": true]],
        ["path": "/v3/kv/put", "body": ["key": base64("b"), "value": base64("1")]],
        ["path": "/v3/kv/range", "body": ["key": base64("a")]],
        ["path": "/v3/kv/range", "body": ["key": base64("a"), "range_end": base64("c")]],
        ["path": "/v3/kv/range", "body": ["key": "AA==", "range_end": "AA==", "keys_only": true, "sort_order": "DESCEND"]],
        ["path": "/v3/kv/range", "body": ["key": "AA==", "range_end": "AA==", "count_only": true]],
        ["path": "/v3/kv/txn", "body": [
            "compare": [["key": base64("a"), "target": "VALUE", "result": "EQUAL", "value": base64("2")]],
            "success": [["request_put": ["key": base64("c"), "value": base64("3")]], ["request_range": ["key": base64("c")]]],
            "failure": [["request_delete_range": ["key": base64("a")]]],
        ]],
        ["path": "/v3/kv/txn", "body": ["success": [[String: Any]()]]],
        // Over etcd's 1.5 MiB request limit (its answer), and over its gRPC server's 2 MiB
        // message limit (grpc-go's, HTTP 429), both as more than 2 MiB of JSON.
        ["path": "/v3/kv/put", "body": ["key": base64("big"), "value": base64(String(repeating: "x", count: 1600 * 1024))]],
        ["path": "/v3/kv/put", "body": ["key": base64("big"), "value": base64(String(repeating: "x", count: 3 * 1024 * 1024))]],
        ["path": "/v3/kv/deleterange", "body": ["key": base64("a"), "prev_kv": true]],
        ["path": "/v3/kv/compaction", "body": ["revision": "3"]],
        ["path": "/v3/kv/range", "body": ["key": base64("a"), "revision": "2"]],
        ["path": "/v3/kv/range", "body": ["key": base64("a"), "revision": "100"]],
        ["path": "/v3/kv/put", "body": ["value": base64("v")]],
        ["path": "/v3/lease/grant", "body": ["TTL": "60", "ID": "4660"]],
        ["path": "/v3/lease/grant", "body": ["TTL": "60", "ID": "4660"]],
        ["path": "/v3/kv/put", "body": ["key": base64("l"), "value": base64("v"), "lease": "4660"]],
        ["path": "/v3/lease/leases", "body": [:]],
        ["path": "/v3/lease/revoke", "body": ["ID": "4660"]],
        ["path": "/v3/lease/revoke", "body": ["ID": "4660"]],
        ["path": "/v3/kv/lease/timetolive", "body": ["ID": "4660"]],
        ["path": "/v3/lease/timetolive", "body": ["ID": "4660", "keys": true]],
        ["path": "/v3/kv/put", "body": ["key": base64("x"), "value": base64("v"), "lease": "4660"]],
        ["path": "/v3/watch", "body": ["create_request": ["key": base64("b"), "start_revision": "4"]], "stream": 2],
        ["path": "/v3/kv/range", "body": ["key": "AA==", "range_end": "AA=="]],
        // Maintenance and auth, as an etcd without authentication and without users.
        ["path": "/v3/maintenance/defragment", "body": [:]],
        // etcd 3.4 maps Hash and HashKV to one path; Hash answers (a revision is ignored).
        ["path": "/v3/maintenance/hash", "body": ["revision": "2"]],
        ["path": "/v3/maintenance/transfer-leadership", "body": ["targetID": "1"]],
        ["path": "/v3/auth/user/list", "body": [:]],
        ["path": "/v3/auth/role/list", "body": [:]],
        ["path": "/v3/auth/user/get", "body": ["name": "root"]],
        ["path": "/v3/auth/role/get", "body": ["role": "admin"]],
        ["path": "/v3/auth/disable", "body": [:]],
        ["path": "/v3/auth/enable", "body": [:]],
        ["path": "/v3/auth/authenticate", "body": ["name": "root", "password": "secret"]],
        // The Lock and Election services (lease 4661 = 0x1235 names the keys).
        ["path": "/v3/lease/grant", "body": ["TTL": "60", "ID": "4661"]],
        ["path": "/v3/lock/lock", "body": ["name": base64("svc"), "lease": "4661"]],
        ["path": "/v3/lock/lock", "body": ["name": base64("svc"), "lease": "99999"]],
        ["path": "/v3/kv/range", "body": ["key": base64("svc/"), "range_end": base64("svc0")]],
        ["path": "/v3/lock/unlock", "body": ["key": base64("svc/1235")]],
        ["path": "/v3/lock/unlock", "body": ["key": base64("svc/1235")]],
        ["path": "/v3/election/leader", "body": ["name": base64("el")]],
        ["path": "/v3/election/campaign", "body": ["name": base64("el"), "value": base64("a"), "lease": "4661"]],
        ["path": "/v3/election/leader", "body": ["name": base64("el")]],
        ["path": "/v3/election/proclaim", "body": ["leader": ["name": base64("el"), "key": base64("el/1235"), "rev": "1", "lease": "4661"], "value": base64("b")]],
        ["path": "/v3/election/proclaim", "body": ["value": base64("b")]],
        ["path": "/v3/election/observe", "body": ["name": base64("el")], "stream": 1],
        // A resign whose revision is not the leader key's changes nothing.
        ["path": "/v3/election/resign", "body": ["leader": ["name": base64("el"), "key": base64("el/1235"), "rev": "1", "lease": "4661"]]],
        ["path": "/v3/election/leader", "body": ["name": base64("el")]],
        ["path": "/v3/election/campaign", "body": ["name": base64("el2"), "value": base64("a"), "lease": "99999"]],
        ["path": "/v3/lease/revoke", "body": ["ID": "4661"]],
        ["path": "/v3/election/leader", "body": ["name": base64("el")]],
    ] }

    /// Runs the requests through Tests/EtcdAPITests/Python/gateway_client.py.
    static func answers(_ base: String) async throws -> [String] {
        guard let python = ChildProcess.locate("python3") else {
            throw RedisError(.serverNotFound, "python3 was not found on PATH")
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Python/gateway_client.py").path
        let input = try requests.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }.joined(separator: "\n") + "\n"
        let result = try await run(python, [script, base], environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], input: input)
        #expect(result.status == 0, "\(result.error)")
        return result.output.split(separator: "\n").map { normalizedJSON(String($0)) }
    }

    @Test func gatewayRequestsGiveEtcdsStatusesAndBodies() async throws {
        let reference = try await ReferenceEtcd.withServer { etcd in try await Self.answers(etcd.endpoint) }
        let ours = try await withProxy { proxy in try await Self.answers(proxy.gateway) }
        #expect(reference.count == Self.requests.count)
        #expect(ours.count == reference.count)
        for (index, (theirs, mine)) in zip(reference, ours).enumerated() {
            #expect(mine == theirs, "request \(index): \(Self.requests[index]["path"] ?? "")")
        }
        #expect(reference.contains { $0.contains("required revision has been compacted") })
    }

    /// A Python with etcd3gw (OpenStack's gateway client) and etcd3 (python-etcd3), from
    /// PyPI: $COORD_PYTHON (scripts/test.sh makes a virtual environment with them), else
    /// a python3 on PATH that imports both.
    static func etcd3gwPython() async throws -> String {
        if let python = ProcessInfo.processInfo.environment["COORD_PYTHON"], FileManager.default.isExecutableFile(atPath: python) {
            return python
        }
        if let python = ChildProcess.locate("python3"),
           try await run(python, ["-c", "import etcd3gw, etcd3"], environment: ["PATH": "/usr/bin:/bin", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"]).status == 0 {
            return python
        }
        throw RedisError(.serverNotFound, "no python with etcd3gw and etcd3: run scripts/test.sh (it makes .build/python with them from PyPI), or set COORD_PYTHON to a python that has them (pip install etcd3gw etcd3)")
    }

    @Test func etcd3gwFromPyPIGetsTheSameAnswersFromCoordproxyAsFromEtcd() async throws {
        let python = try await Self.etcd3gwPython()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Python/etcd3gw_check.py").path
        func check(_ base: String) async throws -> [String] {
            let result = try await run(python, [script, base], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(120))
            #expect(result.status == 0, "etcd3gw against \(base): \(result.output)\(result.error)")
            return result.output.split(separator: "\n").map(String.init)
        }
        let reference = try await ReferenceEtcd.withServer { etcd in try await check(etcd.endpoint) }
        let ours = try await withProxy { proxy in try await check(proxy.gateway) }
        #expect(reference.count >= 45, "\(reference)")
        #expect(ours.count == reference.count, "\(ours)")
        for (theirs, mine) in zip(reference, ours) {
            #expect(mine == theirs)
        }
        // The steps that show the semantics, not only agreement.
        #expect(reference.contains("create c again: False"))
        #expect(reference.contains("other lock acquire: False"))
        #expect(reference.contains { $0.hasPrefix("watch from a revision: [('PUT', b'w', b'first'") && $0.contains("('DELETE', b'w'") })
    }

    /// After a finite streamed answer (a lease keep-alive: one request, one answer),
    /// the gateway keeps the HTTP/1.1 connection for the client's next request, as
    /// etcd's does: pooled clients (requests, etcd3gw) reuse it at once, and a server
    /// that closed it made their next call fail with "connection reset".
    /// python-etcd3 (PyPI's etcd3 on grpcio) over gRPC: the same script against etcd
    /// 3.4 and against coordproxy prints the same lines.
    @Test func pythonEtcd3OverGRPCGetsTheSameAnswersFromCoordproxyAsFromEtcd() async throws {
        let python = try await Self.etcd3gwPython()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Python/python_etcd3_check.py").path
        func check(_ endpoint: String) async throws -> [String] {
            // etcd3 0.12's generated code predates protobuf 4: the pure-Python runtime reads it.
            let result = try await run(python, [script, String(endpoint.dropFirst("http://".count))],
                                       environment: ["PATH": "/usr/bin:/bin", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"], timeout: .seconds(120))
            #expect(result.status == 0, "python-etcd3 against \(endpoint): \(result.output)\(result.error)")
            return result.output.split(separator: "\n").map(String.init)
        }
        let reference = try await ReferenceEtcd.withServer { etcd in try await check(etcd.endpoint) }
        let ours = try await withProxy { proxy in try await check(proxy.endpoint) }
        #expect(reference.count >= 20, "\(reference)")
        #expect(ours == reference)
        #expect(reference.contains("watch from a revision: [('PutEvent', b'w', b'first', 1, 0, b''), ('PutEvent', b'w', b'second', 2, 1, b'first'), ('DeleteEvent', b'w', b'', 0, 2, b'second')]"))
        #expect(reference.contains("empty key: ('_InactiveRpcError', '\"etcdserver: key is not provided\"')"), "\(reference)")
    }

    @Test func aKeepAliveAnswerLeavesTheConnectionOpenForTheNextRequest() async throws {
        let script = #"""
            import http.client, json, socket, sys, time, urllib.parse
            url = urllib.parse.urlsplit(sys.argv[1])
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            def post(path, body):
                conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                return response.status, response.read().decode()
            status, body = post("/v3/lease/grant", {"TTL": 60})
            lease = json.loads(body)["ID"]
            status, body = post("/v3/lease/keepalive", {"ID": lease})
            print("keepalive", status, '"TTL":"60"' in body)
            time.sleep(0.3)
            conn.sock.setblocking(False)
            try:
                closed = conn.sock.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                closed = False
            conn.sock.setblocking(True)
            print("closed after keepalive", closed)
            if not closed:
                print("revoke", *post("/v3/lease/revoke", {"ID": lease}))
            """#
        guard let python = ChildProcess.locate("python3") else { throw RedisError(.serverNotFound, "python3 was not found on PATH") }
        func check(_ base: String) async throws -> [String] {
            let result = try await run(python, ["-c", script, base], environment: ["PATH": "/usr/bin:/bin"], timeout: .seconds(60))
            #expect(result.status == 0, "\(result.error)")
            return result.output.split(separator: "\n").map { String($0.prefix(32)) }
        }
        let reference = try await ReferenceEtcd.withServer { etcd in try await check(etcd.endpoint) }
        let ours = try await withProxy { proxy in try await check(proxy.gateway) }
        #expect(reference == ["keepalive 200 True", "closed after keepalive False", "revoke 200 {\"header\":{\"cluster_i"])
        #expect(ours == reference)
    }

    @Test func versionHealthAndStatusAnswer() async throws {
        try await withProxy { proxy in
            guard let python = ChildProcess.locate("python3") else { throw RedisError(.serverNotFound, "python3 was not found on PATH") }
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Python/gateway_client.py").path
            let input = """
                {"method": "GET", "path": "/version"}
                {"method": "GET", "path": "/health"}
                {"path": "/v3/maintenance/status", "body": {}}
                {"path": "/v3/cluster/member/list", "body": {}}
                {"path": "/v3/nothing", "body": {}}

                """
            let result = try await run(python, [script, proxy.gateway], environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"], input: input)
            let lines = result.output.split(separator: "\n").map(String.init)
            #expect(lines.count == 5, "\(result)")
            guard lines.count == 5 else { return }
            #expect(lines[0].contains("\"etcdserver\": \"3.4.0\""), "\(lines[0])")
            #expect(lines[1].contains("\"health\": \"true\""), "\(lines[1])")
            #expect(lines[2].contains("\"version\": \"3.4.0\"") && lines[2].contains("\"status\": 200"), "\(lines[2])")
            #expect(lines[3].contains("\"name\": \"default\""), "\(lines[3])")
            #expect(lines[4].contains("\"status\": 404"), "\(lines[4])")
        }
    }
}
