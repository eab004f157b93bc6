import NIOCore
import Testing
@testable import RedisClient

@Suite struct RedisConfigurationTests {
    @Test func parsesFullTCPURL() throws {
        let configuration = try RedisConfiguration(url: "redis://alice:s%40cret@db.example:6380/3")
        #expect(configuration.endpoint == .tcp(host: "db.example", port: 6380))
        #expect(configuration.username == "alice")
        #expect(configuration.password == "s@cret")
        #expect(configuration.database == 3)
        #expect(configuration.redactedURL == "redis://alice:***@db.example:6380/3")
    }

    @Test func appliesDefaults() throws {
        let configuration = try RedisConfiguration(url: "redis://localhost")
        #expect(configuration.endpoint == .tcp(host: "localhost", port: 6379))
        #expect(configuration.username == nil && configuration.password == nil && configuration.database == 0)
        #expect(try RedisConfiguration(url: "redis://").endpoint == .tcp(host: "127.0.0.1", port: 6379))
    }

    @Test func passwordWithoutUser() throws {
        #expect(try RedisConfiguration(url: "redis://:pw@h").password == "pw")
        #expect(try RedisConfiguration(url: "redis://:pw@h").username == nil)
        #expect(try RedisConfiguration(url: "redis://pw@h").password == "pw")
    }

    @Test func parsesIPv6() throws {
        #expect(try RedisConfiguration(url: "redis://[::1]:7000/1").endpoint == .tcp(host: "::1", port: 7000))
        #expect(try RedisConfiguration(url: "redis://[::1]").endpoint == .tcp(host: "::1", port: 6379))
    }

    @Test func parsesUnixURL() throws {
        let configuration = try RedisConfiguration(url: "unix:///var/run/redis.sock?db=5&user=bob&password=x%26y")
        #expect(configuration.endpoint == .unixSocket(path: "/var/run/redis.sock"))
        #expect(configuration.database == 5)
        #expect(configuration.username == "bob")
        #expect(configuration.password == "x&y")
        #expect(try RedisConfiguration(url: "unix:///tmp/r.sock").database == 0)
    }

    @Test(arguments: [
        ("localhost:6379", "no scheme"),
        ("http://localhost", "unknown scheme"),
        ("rediss://localhost", "TLS"),
        ("redis://host:notaport", "port"),
        ("redis://host:0", "port"),
        ("redis://host:70000", "port"),
        ("redis://host/abc", "database"),
        ("redis://host/-1", "database"),
        ("redis://host?db=1", "query"),
        ("redis://[::1", "IPv6"),
        ("redis://[::1]x", "after the IPv6"),
        ("redis://ho st", "not allowed"),
        ("unix://relative/path", "absolute path"),
        ("unix:///tmp/r.sock?db=x", "database"),
        ("unix:///tmp/r.sock?timeout=1", "unknown parameter"),
        ("redis://:%zz@host", "percent-escape"),
    ])
    func rejectsMalformedURL(url: String, reason: String) {
        do {
            _ = try RedisConfiguration(url: url)
            Issue.record("\(url) was accepted")
        } catch let error as RedisError {
            #expect(error.code == .invalidURL)
            #expect(error.message.contains(reason), "\(error.message)")
            #expect(error.message.contains("expected redis://"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func malformedURLMessagesHideThePassword() {
        do {
            _ = try RedisConfiguration(url: "redis://u:topsecret@host:bad")
            Issue.record("accepted")
        } catch let error as RedisError {
            #expect(!error.message.contains("topsecret"))
            #expect(error.message.contains("***"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }
}

@Suite struct ReconnectBackoffTests {
    @Test func firstAttemptAfterLossIsImmediate() {
        var backoff = ReconnectBackoff(initialDelay: 10, maxDelay: 100)
        backoff.connectionLost(now: 1_000)
        #expect(backoff.isDue(now: 1_000))
    }

    @Test func delaysDoubleUpToTheMaximum() {
        var backoff = ReconnectBackoff(initialDelay: 10, maxDelay: 50)
        backoff.connectionLost(now: 0)
        var delays: [UInt64] = []
        var now: UInt64 = 0
        for _ in 0..<6 {
            backoff.attemptFailed(now: now, jitter: 0)
            delays.append(backoff.nextAttempt - now)
            #expect(!backoff.isDue(now: now))
            now = backoff.nextAttempt
            #expect(backoff.isDue(now: now))
        }
        #expect(delays == [10, 20, 40, 50, 50, 50])
        #expect(backoff.failedAttempts == 6)
    }

    @Test func jitterStaysWithinAQuarter() {
        var backoff = ReconnectBackoff(initialDelay: 1_000, maxDelay: 1_000)
        backoff.attemptFailed(now: 0, jitter: 0.25)
        #expect(backoff.nextAttempt == 1_250)
    }

    @Test func successResetsTheSchedule() {
        var backoff = ReconnectBackoff(initialDelay: 10, maxDelay: 1_000)
        for step in 0..<5 { backoff.attemptFailed(now: UInt64(step), jitter: 0) }
        backoff.connected()
        backoff.attemptFailed(now: 100, jitter: 0)
        #expect(backoff.nextAttempt == 110)
    }
}

@Suite struct EncodingTests {
    @Test func sha1MatchesKnownDigests() {
        #expect(SHA1.hex([]) == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(SHA1.hex(Array("abc".utf8)) == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(SHA1.hex(Array(String(repeating: "a", count: 1000).utf8)) == "291e9a6c66994949b57ba5e650361e98fc36b1ba")
    }

    @Test func respEncodesArraysOfBulkStrings() {
        var buffer: [UInt8] = []
        RESPEncoder.encode([Array("SET".utf8), [0, 1], []], into: &buffer)
        #expect(buffer == Array("*3\r\n$3\r\nSET\r\n$2\r\n".utf8) + [0, 1] + Array("\r\n$0\r\n\r\n".utf8))
        buffer = []
        RESPEncoder.appendDecimal(1234567890, to: &buffer)
        #expect(String(decoding: buffer, as: UTF8.self) == "1234567890")
        // The event loop's connection writes the same bytes into a ByteBuffer.
        for arguments in [[Array("SET".utf8), [0, 1], []], [[UInt8](repeating: 7, count: 10)], [[UInt8](repeating: 1, count: 12_582_912), Array("x".utf8)]] {
            var array: [UInt8] = []
            RESPEncoder.encode(arguments, into: &array)
            var bytes = ByteBuffer()
            RESPEncoder.encode(arguments, into: &bytes)
            #expect(Array(bytes.readableBytesView) == array)
            #expect(bytes.readableBytes <= RESPEncoder.capacity(for: arguments))
        }
        for value in [0, 9, 10, 99, 100, 1_000_000, Int(Int32.max)] {
            var bytes = ByteBuffer()
            RESPEncoder.writeDecimal(value, to: &bytes)
            #expect(String(buffer: bytes) == String(value))
        }
    }
}
