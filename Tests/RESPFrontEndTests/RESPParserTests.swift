import NIOCore
@testable import RESPFrontEnd
import Testing

/// The RESP parser and encoder on their own, independent of sockets.
@Suite struct RESPParserTests {
    @Test func multibulkCommandsArriveWholeEvenWhenSplitAtEveryByte() throws {
        let wire = Array("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n*1\r\n$4\r\nPING\r\n".utf8)
        var parser = RESPCommandParser()
        var buffer = ByteBuffer()
        var commands: [[String]] = []
        for byte in wire {
            buffer.writeInteger(byte)
            while let command = try parser.next(&buffer) {
                commands.append((0..<command.arguments.count).map { command.text($0) })
                #expect(command.raw.readableBytes > 0)
            }
        }
        #expect(commands == [["SET", "k", "va\r\nl"], ["PING"]])
        #expect(buffer.readableBytes == 0)
    }

    /// A command of many arguments arriving in many reads is read once, argument by
    /// argument, not again from its start on every read (which made one command of a
    /// million arguments cost a million times the reads it took).
    @Test func aLongCommandArrivingInManyReadsIsReadOnce() throws {
        var wire = "*20001\r\n$5\r\nRPUSH\r\n"
        for index in 0..<20_000 { wire += "$\(String(index).count)\r\n\(index)\r\n" }
        let bytes = Array(wire.utf8)
        var parser = RESPCommandParser()
        var buffer = ByteBuffer()
        var command: RESPCommand?
        var reads = 0
        for chunk in stride(from: 0, to: bytes.count, by: 100) {
            buffer.writeBytes(bytes[chunk..<min(chunk + 100, bytes.count)])
            reads += 1
            if let whole = try parser.next(&buffer) { command = whole }
        }
        #expect(reads > 1_000)
        let arguments = try #require(command).arguments
        #expect(arguments.count == 20_001 && String(buffer: arguments[20_000]) == "19999" && String(buffer: arguments[0]) == "RPUSH")
        #expect(parser.argumentsRead == 20_001, "arguments read \(parser.argumentsRead) times for 20,001")
        #expect(buffer.readableBytes == 0)
    }

    @Test func inlineCommandsSplitOnSpacesAndHonourQuotes() throws {
        var parser = RESPCommandParser()
        var buffer = ByteBuffer(string: "COORD.PUT k \"a b\\n\" 'c d'\r\n\r\nPING\n")
        let first = try #require(try parser.next(&buffer))
        #expect((0..<first.arguments.count).map { first.text($0) } == ["COORD.PUT", "k", "a b\n", "c d"])
        #expect(first.name == "coord.put")
        let second = try #require(try parser.next(&buffer))
        #expect(second.text(0) == "PING")
        #expect(try parser.next(&buffer) == nil)
    }

    @Test func malformedRequestsGetRedisProtocolErrors() {
        func error(_ text: String) -> String? {
            var parser = RESPCommandParser()
            var buffer = ByteBuffer(string: text)
            do {
                _ = try parser.next(&buffer)
                return nil
            } catch {
                return error.message
            }
        }
        #expect(error("*x\r\n") == "invalid multibulk length")
        #expect(error("*1\r\n+PING\r\n") == "expected '$', got '+'")
        #expect(error("*1\r\n$-3\r\n") == "invalid bulk length")
        #expect(error("SET \"a\r\n") == "unbalanced quotes in request")
        #expect(error("*2\r\n$3\r\nGET\r\n") == nil)
        // Redis 7.0's limits (its answers, from a redis-server): proto-max-bulk-len
        // (512 MiB) and INT_MAX arguments.
        #expect(error("*1\r\n$536870913\r\n") == "invalid bulk length")
        #expect(error("*1\r\n$536870912\r\n") == nil)
        #expect(error("*2147483648\r\n") == "invalid multibulk length")
        #expect(error("*2147483647\r\n") == nil)
    }

    @Test func theReplyScannerFindsWholeRepliesOfEveryType() {
        let replies = ["+OK\r\n", "-ERR x\r\n", ":12\r\n", "$-1\r\n", "$3\r\nabc\r\n", "*-1\r\n", "*0\r\n",
                       "*2\r\n$1\r\na\r\n*1\r\n:1\r\n", "%1\r\n+k\r\n$1\r\nv\r\n", "_\r\n", "#t\r\n", ",1.5\r\n",
                       "~2\r\n:1\r\n:2\r\n", ">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n", "|1\r\n+a\r\n:1\r\n+real\r\n",
                       "=7\r\ntxt:abc\r\n", "(123\r\n"]
        let wire = replies.joined()
        var buffer = ByteBuffer()
        var scanner = RESPReplyScanner()
        var found: [String] = []
        var pushes: [Bool] = []
        for byte in Array(wire.utf8) {
            buffer.writeInteger(byte)
            while let (length, isPush) = scanner.scan(buffer) {
                found.append(String(decoding: buffer.readSlice(length: length)!.readableBytesView, as: UTF8.self))
                pushes.append(isPush)
            }
        }
        #expect(found == replies)
        #expect(pushes == replies.map { $0.hasPrefix(">") })
    }

    @Test func mapsAndBooleansBecomeRESP2ArraysAndIntegers() {
        let value = RESPValue.fields(["revision": .integer(3), "more": .boolean(false), "prev": .null, "none": .nullArray])
        var two = ByteBuffer()
        value.encode(into: &two, protocol: 2)
        #expect(String(buffer: two) == "*8\r\n$8\r\nrevision\r\n:3\r\n$4\r\nmore\r\n:0\r\n$4\r\nprev\r\n$-1\r\n$4\r\nnone\r\n*-1\r\n")
        var three = ByteBuffer()
        value.encode(into: &three, protocol: 3)
        #expect(String(buffer: three) == "%4\r\n$8\r\nrevision\r\n:3\r\n$4\r\nmore\r\n#f\r\n$4\r\nprev\r\n_\r\n$4\r\nnone\r\n_\r\n")
        var error = ByteBuffer()
        RESPValue.error("ERR two\r\nlines").encode(into: &error, protocol: 2)
        #expect(String(buffer: error) == "-ERR two  lines\r\n")
    }
}
