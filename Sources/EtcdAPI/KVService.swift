import Coordination
import GRPCCore
import Logging

/// etcd's `KV` service (v3rpc `key.go`): Range, Put, DeleteRange, Txn and Compact,
/// each one store request with etcd's semantics and errors.
public struct KVService: Etcdserverpb_KV.SimpleServiceProtocol {
    let store: CoordinationClient
    let member: EtcdMember
    let logger: Logger

    public init(store: CoordinationClient, member: EtcdMember, logger: Logger) {
        self.store = store
        self.member = member
        self.logger = logger
    }

    public func range(request: Etcdserverpb_RangeRequest, context: ServerContext) async throws -> Etcdserverpb_RangeResponse {
        try await answer("Range") {
            let response = try await store.get(request.key.bytes, options: RangeOptions(request))
            return WireConversion.rangeResponse(response, header: member.header(response.header.revision))
        }
    }

    public func put(request: Etcdserverpb_PutRequest, context: ServerContext) async throws -> Etcdserverpb_PutResponse {
        try await answer("Put") {
            let response = try await store.put(request.key.bytes, request.value.bytes, options: PutOptions(request))
            return WireConversion.putResponse(response, header: member.header(response.header.revision))
        }
    }

    public func deleteRange(request: Etcdserverpb_DeleteRangeRequest, context: ServerContext) async throws -> Etcdserverpb_DeleteRangeResponse {
        try await answer("DeleteRange") {
            let response = try await store.delete(request.key.bytes, rangeEnd: request.rangeEnd.bytes, prevKV: request.prevKv)
            return WireConversion.deleteResponse(response, header: member.header(response.header.revision))
        }
    }

    public func txn(request: Etcdserverpb_TxnRequest, context: ServerContext) async throws -> Etcdserverpb_TxnResponse {
        try await answer("Txn") {
            let response = try await store.txn(try WireConversion.txn(request))
            return WireConversion.txnResponse(response, header: member.header)
        }
    }

    public func compact(request: Etcdserverpb_CompactionRequest, context: ServerContext) async throws -> Etcdserverpb_CompactionResponse {
        try await answer("Compact") {
            let header = try await store.compact(request.revision)
            var response = Etcdserverpb_CompactionResponse()
            response.header = member.header(header.revision)
            return response
        }
    }

    private func answer<T>(_ method: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw EtcdAPIServer.refuse(method, error, logger: logger)
        }
    }
}
