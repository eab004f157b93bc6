/// One reply from a Redis server, as RESP2 defines it.
///
/// Bulk strings are binary-safe bytes. A top-level error reply makes
/// ``RedisConnection/send(_:timeout:)`` throw a ``RedisError`` with code
/// ``RedisError/Code/server``; error replies nested inside an array (for example
/// inside the reply of `EXEC`) stay here as ``error(_:)``.
///
/// hiredis 0.14 parses replies nested at most 7 levels deep; a deeper reply (only
/// possible from a script) is a ``RedisError/Code/protocolError`` that also fails
/// the requests pipelined behind it.
public enum RedisReply: Sendable, Hashable {
    /// A bulk string: arbitrary bytes, NUL bytes included.
    case bulkString([UInt8])
    /// A simple status reply such as `OK` or `QUEUED`.
    case status(String)
    /// A 64-bit signed integer.
    case integer(Int64)
    /// An array of replies (possibly empty, possibly nested).
    case array([RedisReply])
    /// The null bulk string or null array.
    case null
    /// An error reply, such as `ERR unknown command`.
    case error(String)
}

extension RedisReply {
    /// The bytes of a bulk string or status reply; `nil` for other kinds.
    public var bytes: [UInt8]? {
        switch self {
        case .bulkString(let bytes): return bytes
        case .status(let text): return Array(text.utf8)
        default: return nil
        }
    }

    /// The reply as UTF-8 text when it is a bulk string or status; `nil` otherwise.
    public var string: String? {
        switch self {
        case .bulkString(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .status(let text): return text
        default: return nil
        }
    }

    /// The integer of an integer reply, or of a bulk string that holds a decimal integer.
    public var int: Int64? {
        switch self {
        case .integer(let value): return value
        case .bulkString(let bytes): return Int64(String(decoding: bytes, as: UTF8.self))
        default: return nil
        }
    }

    /// The elements of an array reply; `nil` for other kinds.
    public var array: [RedisReply]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Whether this is the null reply.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

extension RedisReply: CustomStringConvertible {
    /// A redis-cli like rendering, for logs and test failures.
    public var description: String {
        switch self {
        case .bulkString(let bytes): return "\"\(String(decoding: bytes, as: UTF8.self))\""
        case .status(let text): return text
        case .integer(let value): return "(integer) \(value)"
        case .array(let elements): return "[" + elements.map(\.description).joined(separator: ", ") + "]"
        case .null: return "(nil)"
        case .error(let message): return "(error) \(message)"
        }
    }
}
