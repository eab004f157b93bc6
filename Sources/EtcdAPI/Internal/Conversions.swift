import Coordination
import Foundation

// Between etcd's wire messages and the store's types. Bytes travel as `Data` in
// the generated messages and as `[UInt8]` in the store.

extension Data {
    var bytes: [UInt8] { [UInt8](self) }
}

extension Array where Element == UInt8 {
    var data: Data { Data(self) }
}

extension Mvccpb_KeyValue {
    init(_ kv: KeyValue) {
        self.init()
        key = kv.key.data
        value = kv.value.data
        createRevision = kv.createRevision
        modRevision = kv.modRevision
        version = kv.version
        lease = kv.lease
    }
}

extension RangeOptions {
    init(_ request: Etcdserverpb_RangeRequest) {
        self.init(rangeEnd: request.rangeEnd.bytes, limit: request.limit, revision: request.revision,
                  sortOrder: Coordination.SortOrder(request.sortOrder), sortTarget: Coordination.SortTarget(request.sortTarget),
                  keysOnly: request.keysOnly, countOnly: request.countOnly)
        minModRevision = request.minModRevision
        maxModRevision = request.maxModRevision
        minCreateRevision = request.minCreateRevision
        maxCreateRevision = request.maxCreateRevision
    }
}

extension Coordination.SortOrder {
    init(_ order: Etcdserverpb_RangeRequest.SortOrder) {
        switch order {
        case .ascend: self = .ascend
        case .descend: self = .descend
        default: self = .none
        }
    }
}

extension Coordination.SortTarget {
    init(_ target: Etcdserverpb_RangeRequest.SortTarget) {
        switch target {
        case .version: self = .version
        case .create: self = .create
        case .mod: self = .mod
        case .value: self = .value
        default: self = .key
        }
    }
}

extension PutOptions {
    init(_ request: Etcdserverpb_PutRequest) {
        self.init(lease: request.lease, prevKV: request.prevKv, ignoreValue: request.ignoreValue, ignoreLease: request.ignoreLease)
    }
}

enum WireConversion {
    /// The store's operation for one request of a transaction; an empty RequestOp is
    /// refused as etcd's checkRequestOp refuses it, with `etcdserver: key not found`.
    static func operation(_ op: Etcdserverpb_RequestOp) throws -> KVOperation {
        switch op.request {
        case .requestRange(let range): return .range(key: range.key.bytes, options: RangeOptions(range))
        case .requestPut(let put): return .put(key: put.key.bytes, value: put.value.bytes, options: PutOptions(put))
        case .requestDeleteRange(let delete): return .delete(key: delete.key.bytes, rangeEnd: delete.rangeEnd.bytes, prevKV: delete.prevKv)
        case .requestTxn(let txn): return .txn(try self.txn(txn))
        case nil: throw CoordinationError(.keyNotFound, "a transaction request operation is empty")
        }
    }

    static func txn(_ request: Etcdserverpb_TxnRequest) throws -> Txn {
        Txn(compares: try request.compare.map(compare), success: try request.success.map(operation), failure: try request.failure.map(operation))
    }

    static func compare(_ compare: Etcdserverpb_Compare) throws -> Compare {
        // etcd reads the operand of the compare's target, whichever union member is set.
        let target: Compare.Target
        switch compare.target {
        case .version: target = .version(compare.version)
        case .create: target = .createRevision(compare.createRevision)
        case .mod: target = .modRevision(compare.modRevision)
        case .value: target = .value(compare.value.bytes)
        case .lease: target = .lease(compare.lease)
        case .UNRECOGNIZED(let value): throw CoordinationError(.invalidArgument, "unknown compare target \(value)")
        }
        let result: Compare.Result
        switch compare.result {
        case .equal: result = .equal
        case .greater: result = .greater
        case .less: result = .less
        case .notEqual: result = .notEqual
        case .UNRECOGNIZED(let value): throw CoordinationError(.invalidArgument, "unknown compare result \(value)")
        }
        return Compare(key: compare.key.bytes, rangeEnd: compare.rangeEnd.bytes, target, result)
    }

    static func rangeResponse(_ response: RangeResponse, header: Etcdserverpb_ResponseHeader) -> Etcdserverpb_RangeResponse {
        var wire = Etcdserverpb_RangeResponse()
        wire.header = header
        wire.kvs = response.kvs.map(Mvccpb_KeyValue.init)
        wire.more = response.more
        wire.count = response.count
        return wire
    }

    static func putResponse(_ response: PutResponse, header: Etcdserverpb_ResponseHeader) -> Etcdserverpb_PutResponse {
        var wire = Etcdserverpb_PutResponse()
        wire.header = header
        if let previous = response.prevKV { wire.prevKv = Mvccpb_KeyValue(previous) }
        return wire
    }

    static func deleteResponse(_ response: DeleteResponse, header: Etcdserverpb_ResponseHeader) -> Etcdserverpb_DeleteRangeResponse {
        var wire = Etcdserverpb_DeleteRangeResponse()
        wire.header = header
        wire.deleted = response.deleted
        wire.prevKvs = response.prevKVs.map(Mvccpb_KeyValue.init)
        return wire
    }

    static func txnResponse(_ response: TxnResponse, header: (Int64) -> Etcdserverpb_ResponseHeader) -> Etcdserverpb_TxnResponse {
        var wire = Etcdserverpb_TxnResponse()
        wire.header = header(response.header.revision)
        wire.succeeded = response.succeeded
        wire.responses = response.responses.map { inner in
            var op = Etcdserverpb_ResponseOp()
            switch inner {
            case .range(let range): op.response = .responseRange(rangeResponse(range, header: header(range.header.revision)))
            case .put(let put): op.response = .responsePut(putResponse(put, header: header(put.header.revision)))
            case .delete(let delete): op.response = .responseDeleteRange(deleteResponse(delete, header: header(delete.header.revision)))
            case .txn(let txn): op.response = .responseTxn(txnResponse(txn, header: header))
            }
            return op
        }
        return wire
    }

    static func event(_ event: WatchEvent) -> Mvccpb_Event {
        var wire = Mvccpb_Event()
        wire.type = event.kind == .delete ? .delete : .put
        wire.kv = Mvccpb_KeyValue(event.kv)
        if let previous = event.prevKV { wire.prevKv = Mvccpb_KeyValue(previous) }
        return wire
    }
}
