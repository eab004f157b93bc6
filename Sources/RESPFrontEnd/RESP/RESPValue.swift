import NIOCore

/// One RESP value, as coordproxy writes it to a client.
///
/// RESP3 types (maps, doubles, booleans, pushes, the null) are written as Redis
/// writes them to a RESP2 client when the connection speaks RESP2 (``encode(into:protocol:)``):
/// a map as a flat array of field and value, a boolean as the integer 1 or 0, a
/// double as a bulk string, a push as an array, the null as the null bulk string.
public enum RESPValue: Sendable, Hashable {
    /// `+OK`
    case simpleString(String)
    /// `-ERR ...`: the text after the dash, with its error code first.
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$3\r\nfoo`
    case bulkString([UInt8])
    /// `*2 ...`
    case array([RESPValue])
    /// `%2 ...` (RESP3), fields in order.
    case map([(RESPValue, RESPValue)])
    /// `,3.5` (RESP3)
    case double(Double)
    /// `#t` (RESP3)
    case boolean(Bool)
    /// `>3 ...` (RESP3): an out-of-band message (watch events).
    case push([RESPValue])
    /// `_` (RESP3); `$-1` in RESP2.
    case null
    /// `*-1` in RESP2 (a timed-out blocking command, as BLPOP's); `_` in RESP3.
    case nullArray

    /// A bulk string of a text.
    public static func bulk(_ text: String) -> RESPValue { .bulkString(Array(text.utf8)) }

    /// A map of named fields.
    public static func fields(_ pairs: KeyValuePairs<String, RESPValue>) -> RESPValue {
        .map(pairs.map { (.bulk($0.key), $0.value) })
    }

    public static func == (lhs: RESPValue, rhs: RESPValue) -> Bool {
        switch (lhs, rhs) {
        case let (.simpleString(a), .simpleString(b)): return a == b
        case let (.error(a), .error(b)): return a == b
        case let (.integer(a), .integer(b)): return a == b
        case let (.bulkString(a), .bulkString(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.push(a), .push(b)): return a == b
        case let (.map(a), .map(b)): return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case let (.double(a), .double(b)): return a == b
        case let (.boolean(a), .boolean(b)): return a == b
        case (.null, .null), (.nullArray, .nullArray): return true
        default: return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        encode(into: &buffer, protocol: 3)
        hasher.combine(buffer)
    }

    /// Writes the value in RESP2 (`protocol` 2) or RESP3.
    public func encode(into buffer: inout ByteBuffer, protocol version: Int) {
        switch self {
        case .simpleString(let text):
            buffer.writeInteger(UInt8(ascii: "+"))
            buffer.writeString(Self.oneLine(text))
            buffer.writeStaticString("\r\n")
        case .error(let text):
            buffer.writeInteger(UInt8(ascii: "-"))
            buffer.writeString(Self.oneLine(text))
            buffer.writeStaticString("\r\n")
        case .integer(let value):
            buffer.writeInteger(UInt8(ascii: ":"))
            buffer.writeString(String(value))
            buffer.writeStaticString("\r\n")
        case .bulkString(let bytes):
            buffer.writeInteger(UInt8(ascii: "$"))
            buffer.writeString(String(bytes.count))
            buffer.writeStaticString("\r\n")
            buffer.writeBytes(bytes)
            buffer.writeStaticString("\r\n")
        case .array(let values):
            Self.header(&buffer, "*", values.count)
            for value in values { value.encode(into: &buffer, protocol: version) }
        case .push(let values):
            Self.header(&buffer, version >= 3 ? ">" : "*", values.count)
            for value in values { value.encode(into: &buffer, protocol: version) }
        case .map(let pairs):
            if version >= 3 {
                Self.header(&buffer, "%", pairs.count)
            } else {
                Self.header(&buffer, "*", pairs.count * 2)
            }
            for (field, value) in pairs {
                field.encode(into: &buffer, protocol: version)
                value.encode(into: &buffer, protocol: version)
            }
        case .double(let value):
            let text = value.isNaN ? "nan" : value.isInfinite ? (value > 0 ? "inf" : "-inf") : String(value)
            if version >= 3 {
                buffer.writeInteger(UInt8(ascii: ","))
                buffer.writeString(text)
                buffer.writeStaticString("\r\n")
            } else {
                RESPValue.bulk(text).encode(into: &buffer, protocol: version)
            }
        case .boolean(let value):
            if version >= 3 {
                buffer.writeStaticString(value ? "#t\r\n" : "#f\r\n")
            } else {
                buffer.writeStaticString(value ? ":1\r\n" : ":0\r\n")
            }
        case .null:
            buffer.writeStaticString(version >= 3 ? "_\r\n" : "$-1\r\n")
        case .nullArray:
            buffer.writeStaticString(version >= 3 ? "_\r\n" : "*-1\r\n")
        }
    }

    private static func header(_ buffer: inout ByteBuffer, _ type: Character, _ count: Int) {
        buffer.writeInteger(type.asciiValue!)
        buffer.writeString(String(count))
        buffer.writeStaticString("\r\n")
    }

    /// Simple strings and errors cannot hold line breaks.
    private static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" }) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { $0 == "\r" || $0 == "\n" ? " " : $0 }))
    }
}
