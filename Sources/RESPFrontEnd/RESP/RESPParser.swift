import NIOCore

/// A command as a client sent it: its arguments, and its bytes as received (what
/// pass-through forwards to Redis unchanged).
public struct RESPCommand: Sendable {
    /// The arguments, the command name first.
    public var arguments: [ByteBuffer]
    /// The command's bytes on the wire.
    public var raw: ByteBuffer

    /// The command name in lower case (`coord.put`).
    public var name: String {
        guard let first = arguments.first else { return "" }
        let view = first.readableBytesView
        // Lowered straight into the string's storage (no array in between): this runs
        // for every command.
        let lowered = String(unsafeUninitializedCapacity: view.count) { storage in
            var count = 0
            for byte in view {
                storage[count] = byte >= 0x41 && byte <= 0x5A ? byte + 0x20 : byte
                count += 1
            }
            return count
        }
        return lowered
    }

    /// One argument, read as bytes or text.
    public struct Argument: Sendable {
        let command: RESPCommand
        let index: Int
        /// Its bytes.
        public var bytes: [UInt8] { command.bytes(index) }
        /// Its text (lossy UTF-8).
        public var text: String { command.text(index) }
    }

    /// Argument `index` as bytes.
    public func bytes(_ index: Int) -> [UInt8] { Array(arguments[index].readableBytesView) }

    /// Argument `index` as text (lossy UTF-8).
    public func text(_ index: Int) -> String { String(decoding: arguments[index].readableBytesView, as: UTF8.self) }
}

/// A request the parser cannot read; Redis answers `-ERR Protocol error: ...` and
/// closes the connection.
public struct RESPProtocolError: Error, Sendable, Equatable {
    /// Redis's message after `Protocol error: `.
    public var message: String
}

/// Reads client commands from a byte stream, as Redis reads them: RESP arrays of
/// bulk strings, or inline commands (a line of space-separated words, with quotes).
///
/// Incremental: ``next(_:)`` returns `nil` until a whole command has arrived, and
/// leaves the partial bytes in the buffer. Keep the parser between reads, and give it
/// the same buffer with the new bytes appended: it goes on from the last argument it
/// had read, so a command of many arguments costs its length once, not once per read.
public struct RESPCommandParser: Sendable {
    /// Redis's `proto-max-bulk-len` default (512 MiB).
    public var maxBulkLength = 512 * 1024 * 1024
    /// Redis's limit on a multibulk's length (`INT_MAX` since Redis 7.0; memory is
    /// reserved as the arguments arrive, not for the count announced).
    public var maxArguments = Int(Int32.max)
    /// Redis's limit on an inline request (64 KiB).
    public var maxInlineLength = 64 * 1024

    /// An unfinished multibulk: where it starts, its count, the arguments read so far
    /// and where the next one starts (indices of the buffer it came in).
    private struct Progress: Sendable {
        var start: Int
        var count: Int
        var arguments: [ByteBuffer]
        var next: Int
    }

    private var progress: Progress?
    /// Multibulk arguments read so far, each once however many reads its command took
    /// (for the tests).
    private(set) var argumentsRead = 0

    public init() {}

    /// The next whole command in `buffer`, consumed from it; `nil` when more bytes are
    /// needed. Empty inline lines and `*0`/`*-1` are skipped, as Redis skips them.
    public mutating func next(_ buffer: inout ByteBuffer) throws(RESPProtocolError) -> RESPCommand? {
        while true {
            guard let first = buffer.readableBytesView.first else { return nil }
            let start = buffer.readerIndex
            let parsed: (arguments: [ByteBuffer], end: Int)?
            if first == UInt8(ascii: "*") {
                parsed = try multibulk(buffer)
            } else {
                parsed = try inline(buffer)
            }
            guard let (arguments, end) = parsed else { return nil }
            let raw = buffer.readSlice(length: end - start)!
            if arguments.isEmpty { continue }
            return RESPCommand(arguments: arguments, raw: raw)
        }
    }

    /// The index just past the next CRLF's LF, or nil.
    private func lineEnd(_ buffer: ByteBuffer, from index: Int) -> Int? {
        let view = buffer.readableBytesView
        guard let lf = view[(view.startIndex + (index - buffer.readerIndex))...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        return buffer.readerIndex + (lf - view.startIndex) + 1
    }

    /// The decimal integer in bytes `from..<to` (read in place: this runs for every
    /// command and every argument, so it copies nothing).
    private func number(_ buffer: ByteBuffer, from: Int, to: Int) -> Int? {
        guard to > from, to <= buffer.writerIndex else { return nil }
        var value = 0
        var negative = false
        for index in from..<to {
            guard let byte = buffer.getInteger(at: index, as: UInt8.self) else { return nil }
            if index == from && byte == UInt8(ascii: "-") { negative = true; continue }
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int(byte - 0x30))
            if o1 || o2 { return nil }
            value = a
        }
        if negative && to - from == 1 { return nil }
        return negative ? -value : value
    }

    private mutating func multibulk(_ buffer: ByteBuffer) throws(RESPProtocolError) -> (arguments: [ByteBuffer], end: Int)? {
        var index: Int
        var count: Int
        var arguments: [ByteBuffer]
        if let resumed = progress, resumed.start == buffer.readerIndex, resumed.next <= buffer.writerIndex {
            // The same command, more of it arrived: go on after the last whole argument.
            (count, arguments, index) = (resumed.count, resumed.arguments, resumed.next)
            progress = nil
        } else {
            progress = nil
            guard let end = lineEnd(buffer, from: buffer.readerIndex) else {
                if buffer.readableBytes > maxInlineLength { throw RESPProtocolError(message: "too big mbulk count string") }
                return nil
            }
            let crEnd = buffer.getInteger(at: end - 2, as: UInt8.self) == UInt8(ascii: "\r") ? end - 2 : end - 1
            guard let announced = number(buffer, from: buffer.readerIndex + 1, to: crEnd), announced <= maxArguments else {
                throw RESPProtocolError(message: "invalid multibulk length")
            }
            (count, index, arguments) = (announced, end, [])
            // Reserved up to a bound: a client announcing a huge count pays as it sends.
            if count > 0 { arguments.reserveCapacity(min(count, 1024)) }
        }
        // Until the command is whole: the arguments read, for the next call.
        func unfinished() -> (arguments: [ByteBuffer], end: Int)? {
            progress = Progress(start: buffer.readerIndex, count: count, arguments: arguments, next: index)
            return nil
        }
        while arguments.count < count {
            guard index < buffer.writerIndex else { return unfinished() }
            let type = buffer.getInteger(at: index, as: UInt8.self)!
            guard type == UInt8(ascii: "$") else {
                throw RESPProtocolError(message: "expected '$', got '\(Character(Unicode.Scalar(type)))'")
            }
            guard let headerEnd = lineEnd(buffer, from: index) else {
                if buffer.writerIndex - index > 64 { throw RESPProtocolError(message: "invalid bulk length") }
                return unfinished()
            }
            let lengthEnd = buffer.getInteger(at: headerEnd - 2, as: UInt8.self) == UInt8(ascii: "\r") ? headerEnd - 2 : headerEnd - 1
            guard let length = number(buffer, from: index + 1, to: lengthEnd), length >= 0, length <= maxBulkLength else {
                throw RESPProtocolError(message: "invalid bulk length")
            }
            guard buffer.writerIndex >= headerEnd + length + 2 else { return unfinished() }
            arguments.append(buffer.getSlice(at: headerEnd, length: length)!)
            argumentsRead += 1
            index = headerEnd + length + 2
        }
        return (arguments, index)
    }

    private func inline(_ buffer: ByteBuffer) throws(RESPProtocolError) -> (arguments: [ByteBuffer], end: Int)? {
        guard let end = lineEnd(buffer, from: buffer.readerIndex) else {
            if buffer.readableBytes > maxInlineLength { throw RESPProtocolError(message: "too big inline request") }
            return nil
        }
        let line = buffer.getBytes(at: buffer.readerIndex, length: end - buffer.readerIndex)!
        var words: [[UInt8]] = []
        var current: [UInt8] = []
        var inWord = false
        var quote: UInt8? = nil
        var i = 0
        while i < line.count {
            let byte = line[i]
            if let q = quote {
                if byte == UInt8(ascii: "\\") && q == UInt8(ascii: "\"") && i + 1 < line.count {
                    i += 1
                    switch line[i] {
                    case UInt8(ascii: "n"): current.append(0x0A)
                    case UInt8(ascii: "r"): current.append(0x0D)
                    case UInt8(ascii: "t"): current.append(0x09)
                    default: current.append(line[i])
                    }
                } else if byte == q {
                    quote = nil
                    if i + 1 < line.count && !Self.isSpace(line[i + 1]) {
                        throw RESPProtocolError(message: "unbalanced quotes in request")
                    }
                } else {
                    current.append(byte)
                }
            } else if Self.isSpace(byte) {
                if inWord { words.append(current); current = []; inWord = false }
            } else if (byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'")) && !inWord {
                quote = byte
                inWord = true
            } else {
                current.append(byte)
                inWord = true
            }
            i += 1
        }
        if quote != nil { throw RESPProtocolError(message: "unbalanced quotes in request") }
        if inWord { words.append(current) }
        return (words.map { ByteBuffer(bytes: $0) }, end)
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}

/// Finds where each reply Redis sends ends, without decoding it, so that
/// pass-through can forward replies byte for byte and still keep them in order with
/// coordproxy's own. Resumable: a reply that arrives in pieces is scanned once.
public struct RESPReplyScanner: Sendable {
    private var offset = 0
    private var pending = 1
    private var push = false
    private var started = false

    public init() {}

    /// A complete reply at the front of `buffer`: its length and whether it is a
    /// RESP3 push (`>`); `nil` while it is incomplete. The caller takes `length`
    /// bytes off the buffer before scanning again.
    public mutating func scan(_ buffer: ByteBuffer) -> (length: Int, isPush: Bool)? {
        let base = buffer.readerIndex
        while pending > 0 {
            let index = base + offset
            guard index < buffer.writerIndex else { return nil }
            let view = buffer.readableBytesView
            guard let lf = view[(view.startIndex + offset)...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            let lineEnd = base + (lf - view.startIndex) + 1
            let type = buffer.getInteger(at: index, as: UInt8.self)!
            if !started { push = type == UInt8(ascii: ">"); started = true }
            let count = Self.number(buffer, from: index + 1, to: lineEnd - 2)
            switch type {
            case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
                if count >= 0 {
                    guard buffer.writerIndex >= lineEnd + count + 2 else { return nil }
                    offset = lineEnd + count + 2 - base
                } else {
                    offset = lineEnd - base
                }
                pending -= 1
            case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"):
                offset = lineEnd - base
                pending += max(count, 0) - 1
            case UInt8(ascii: "%"):
                offset = lineEnd - base
                pending += max(count, 0) * 2 - 1
            case UInt8(ascii: "|"):
                // Attributes: field/value pairs, then the value they describe.
                offset = lineEnd - base
                pending += max(count, 0) * 2
            default:
                offset = lineEnd - base
                pending -= 1
            }
        }
        let result = (length: offset, isPush: push)
        self = RESPReplyScanner()
        return result
    }

    /// Read in place (this runs for every reply: no array per number).
    private static func number(_ buffer: ByteBuffer, from: Int, to: Int) -> Int {
        guard to > from, from >= buffer.readerIndex, to <= buffer.writerIndex else { return 0 }
        let view = buffer.readableBytesView
        let start = view.startIndex + (from - buffer.readerIndex)
        var value = 0
        var negative = false
        for byte in view[start..<(start + (to - from))] {
            if byte == UInt8(ascii: "-") { negative = true; continue }
            guard byte >= 0x30 && byte <= 0x39 else { break }
            value = value &* 10 &+ Int(byte - 0x30)
        }
        return negative ? -value : value
    }
}
