/// A value that can be sent as one argument of a Redis command.
///
/// Strings are sent as UTF-8, integers in decimal, byte arrays as they are.
public protocol RedisArgumentConvertible: Sendable {
    /// The bytes of this argument on the wire.
    var redisArgument: [UInt8] { get }
}

extension String: RedisArgumentConvertible {
    public var redisArgument: [UInt8] { Array(utf8) }
}

extension Substring: RedisArgumentConvertible {
    public var redisArgument: [UInt8] { Array(utf8) }
}

extension Array: RedisArgumentConvertible where Element == UInt8 {
    public var redisArgument: [UInt8] { self }
}

extension ArraySlice: RedisArgumentConvertible where Element == UInt8 {
    public var redisArgument: [UInt8] { Array(self) }
}

extension Int: RedisArgumentConvertible {
    public var redisArgument: [UInt8] { Array(String(self).utf8) }
}

extension Int64: RedisArgumentConvertible {
    public var redisArgument: [UInt8] { Array(String(self).utf8) }
}

extension UInt64: RedisArgumentConvertible {
    public var redisArgument: [UInt8] { Array(String(self).utf8) }
}

extension Double: RedisArgumentConvertible {
    public var redisArgument: [UInt8] { Array(String(self).utf8) }
}
