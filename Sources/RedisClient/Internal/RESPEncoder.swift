import NIOCore

/// Writes commands in RESP2's array-of-bulk-strings form.
enum RESPEncoder {
    /// The bytes ``encode(_:into:)`` writes for `arguments`, at most.
    static func capacity(for arguments: [[UInt8]]) -> Int {
        var size = 24
        for argument in arguments { size += argument.count + 24 }
        return size
    }

    /// As into an array, for a connection served by an event loop.
    static func encode(_ arguments: [[UInt8]], into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "*"))
        writeDecimal(arguments.count, to: &buffer)
        buffer.writeStaticString("\r\n")
        for argument in arguments {
            buffer.writeInteger(UInt8(ascii: "$"))
            writeDecimal(argument.count, to: &buffer)
            buffer.writeStaticString("\r\n")
            buffer.writeBytes(argument)
            buffer.writeStaticString("\r\n")
        }
    }

    static func writeDecimal(_ value: Int, to buffer: inout ByteBuffer) {
        forEachDigit(of: value) { buffer.writeInteger($0) }
    }

    static func encode(_ arguments: [[UInt8]], into buffer: inout [UInt8]) {
        buffer.append(UInt8(ascii: "*"))
        appendDecimal(arguments.count, to: &buffer)
        buffer.append(13); buffer.append(10)
        for argument in arguments {
            buffer.append(UInt8(ascii: "$"))
            appendDecimal(argument.count, to: &buffer)
            buffer.append(13); buffer.append(10)
            buffer.append(contentsOf: argument)
            buffer.append(13); buffer.append(10)
        }
    }

    static func appendDecimal(_ value: Int, to buffer: inout [UInt8]) {
        forEachDigit(of: value) { buffer.append($0) }
    }

    /// The ASCII digits of a non-negative `value`, most significant first.
    private static func forEachDigit(of value: Int, _ body: (UInt8) -> Void) {
        var divisor = 1
        while divisor <= value / 10 { divisor *= 10 }
        var rest = value
        while divisor > 0 {
            body(UInt8(ascii: "0") &+ UInt8(rest / divisor))
            rest %= divisor
            divisor /= 10
        }
    }
}
