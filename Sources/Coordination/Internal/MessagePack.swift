/// The subset of MessagePack the Lua scripts exchange with Swift (Redis's cmsgpack):
/// nil, booleans, integers, doubles, strings (raw bytes) and arrays.
enum MessagePack: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case bytes([UInt8])
    case array([MessagePack])
    case map([(MessagePack, MessagePack)])

    static func == (lhs: MessagePack, rhs: MessagePack) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.int(let a), .int(let b)): return a == b
        case (.double(let a), .double(let b)): return a == b
        case (.bytes(let a), .bytes(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.map(let a), .map(let b)): return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    func hash(into hasher: inout Hasher) {
        switch self {
        case .null: hasher.combine(0)
        case .bool(let value): hasher.combine(value)
        case .int(let value): hasher.combine(value)
        case .double(let value): hasher.combine(value)
        case .bytes(let value): hasher.combine(value)
        case .array(let value): hasher.combine(value)
        case .map(let value): hasher.combine(value.count)
        }
    }

    static func string(_ text: String) -> MessagePack { .bytes(Array(text.utf8)) }

    // MARK: Encoding

    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    private func encode(into out: inout [UInt8]) {
        switch self {
        case .null: out.append(0xc0)
        case .bool(let value): out.append(value ? 0xc3 : 0xc2)
        case .int(let value):
            if value >= 0 && value < 128 { out.append(UInt8(value)) }
            else if value < 0 && value >= -32 { out.append(UInt8(bitPattern: Int8(value))) }
            else { out.append(0xd3); Self.appendBigEndian(UInt64(bitPattern: value), bytes: 8, to: &out) }
        case .double(let value):
            out.append(0xcb); Self.appendBigEndian(value.bitPattern, bytes: 8, to: &out)
        case .bytes(let value):
            // Strings (not bin): cmsgpack turns both into Lua strings, and str is universal.
            if value.count < 32 { out.append(0xa0 | UInt8(value.count)) }
            else if value.count < 256 { out.append(0xd9); out.append(UInt8(value.count)) }
            else if value.count < 65_536 { out.append(0xda); Self.appendBigEndian(UInt64(value.count), bytes: 2, to: &out) }
            else { out.append(0xdb); Self.appendBigEndian(UInt64(value.count), bytes: 4, to: &out) }
            out.append(contentsOf: value)
        case .array(let elements):
            if elements.count < 16 { out.append(0x90 | UInt8(elements.count)) }
            else if elements.count < 65_536 { out.append(0xdc); Self.appendBigEndian(UInt64(elements.count), bytes: 2, to: &out) }
            else { out.append(0xdd); Self.appendBigEndian(UInt64(elements.count), bytes: 4, to: &out) }
            for element in elements { element.encode(into: &out) }
        case .map(let pairs):
            if pairs.count < 16 { out.append(0x80 | UInt8(pairs.count)) }
            else { out.append(0xde); Self.appendBigEndian(UInt64(pairs.count), bytes: 2, to: &out) }
            for (key, value) in pairs { key.encode(into: &out); value.encode(into: &out) }
        }
    }

    private static func appendBigEndian(_ value: UInt64, bytes: Int, to out: inout [UInt8]) {
        for index in stride(from: bytes - 1, through: 0, by: -1) { out.append(UInt8(truncatingIfNeeded: value >> (UInt64(index) * 8))) }
    }

    // MARK: Decoding

    struct DecodingError: Error, CustomStringConvertible {
        var description: String
    }

    static func decode(_ bytes: [UInt8]) throws -> MessagePack {
        var index = 0
        let value = try decode(bytes, &index)
        guard index == bytes.count else { throw DecodingError(description: "\(bytes.count - index) trailing bytes after a MessagePack value") }
        return value
    }

    private static func decode(_ bytes: [UInt8], _ index: inout Int) throws -> MessagePack {
        func take(_ count: Int) throws -> ArraySlice<UInt8> {
            guard count >= 0, index + count <= bytes.count else { throw DecodingError(description: "truncated MessagePack value") }
            defer { index += count }
            return bytes[index..<(index + count)]
        }
        func unsigned(_ count: Int) throws -> UInt64 { try take(count).reduce(0) { $0 << 8 | UInt64($1) } }
        let type = try take(1).first!
        switch type {
        case 0x00...0x7f: return .int(Int64(type))
        case 0xe0...0xff: return .int(Int64(Int8(bitPattern: type)))
        case 0x80...0x8f: return try map(Int(type & 0x0f))
        case 0x90...0x9f: return try array(Int(type & 0x0f))
        case 0xa0...0xbf: return .bytes(Array(try take(Int(type & 0x1f))))
        case 0xc0: return .null
        case 0xc2: return .bool(false)
        case 0xc3: return .bool(true)
        case 0xc4, 0xd9: return .bytes(Array(try take(Int(try unsigned(1)))))
        case 0xc5, 0xda: return .bytes(Array(try take(Int(try unsigned(2)))))
        case 0xc6, 0xdb: return .bytes(Array(try take(Int(try unsigned(4)))))
        case 0xca: return .double(Double(Float(bitPattern: UInt32(try unsigned(4)))))
        case 0xcb: return .double(Double(bitPattern: try unsigned(8)))
        case 0xcc: return .int(Int64(try unsigned(1)))
        case 0xcd: return .int(Int64(try unsigned(2)))
        case 0xce: return .int(Int64(try unsigned(4)))
        case 0xcf: return .int(Int64(bitPattern: try unsigned(8)))
        case 0xd0: return .int(Int64(Int8(truncatingIfNeeded: try unsigned(1))))
        case 0xd1: return .int(Int64(Int16(truncatingIfNeeded: try unsigned(2))))
        case 0xd2: return .int(Int64(Int32(truncatingIfNeeded: try unsigned(4))))
        case 0xd3: return .int(Int64(bitPattern: try unsigned(8)))
        case 0xdc: return try array(Int(try unsigned(2)))
        case 0xdd: return try array(Int(try unsigned(4)))
        case 0xde: return try map(Int(try unsigned(2)))
        case 0xdf: return try map(Int(try unsigned(4)))
        default: throw DecodingError(description: "unsupported MessagePack type 0x\(String(type, radix: 16))")
        }
        func array(_ count: Int) throws -> MessagePack {
            var elements: [MessagePack] = []
            for _ in 0..<count { elements.append(try decode(bytes, &index)) }
            return .array(elements)
        }
        func map(_ count: Int) throws -> MessagePack {
            var pairs: [(MessagePack, MessagePack)] = []
            for _ in 0..<count { pairs.append((try decode(bytes, &index), try decode(bytes, &index))) }
            return .map(pairs)
        }
    }

    // MARK: Access

    var int: Int64? {
        switch self {
        case .int(let value): return value
        case .double(let value) where value == value.rounded(): return Int64(value)
        default: return nil
        }
    }

    var bytes: [UInt8]? { if case .bytes(let value) = self { return value }; return nil }
    var text: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }
    var array: [MessagePack]? { if case .array(let value) = self { return value }; return nil }

    /// Lua's `true`/`false`; cmsgpack also turns an empty Lua table into an empty array.
    var bool: Bool? { if case .bool(let value) = self { return value }; return nil }
}
