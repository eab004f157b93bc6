import Coordination
import Foundation
import RedisClient
import Synchronization

/// A linearizability checker for histories of single-key register operations (put,
/// get, compare-and-set), after Porcupine (Athalye): the Wing & Gong search with
/// Lowe's memoization of (linearized operations, state), run per key, since
/// operations on different keys commute.
///
/// An operation whose outcome is unknown (its reply was lost) has no return time: it
/// may take effect at any point after its call, or never, which is the same as at
/// the end of the history.
enum Linearizability {
    enum Input: Sendable, Hashable {
        case put(String)
        case get
        /// Sets `new` if the value is `expected` (`nil`: the key is absent).
        case compareAndSet(expected: String?, new: String)
    }

    enum Output: Sendable, Hashable {
        case put
        case get(String?)
        case compareAndSet(Bool)
    }

    struct Operation: Sendable {
        var key: String
        var input: Input
        /// `nil`: the outcome is unknown.
        var output: Output?
        var call: UInt64
        /// `.max` when the outcome is unknown.
        var response: UInt64
    }

    /// The register's next state if `input` could have produced `output` from `state`.
    static func step(_ state: String?, _ input: Input, _ output: Output?) -> String?? {
        switch (input, output) {
        case (.put(let value), nil), (.put(let value), .put?):
            return .some(value)
        case (.get, nil):
            return .some(state)
        case (.get, .get(let seen)?):
            return seen == state ? .some(state) : nil
        case (.compareAndSet(let expected, let new), nil):
            return .some(state == expected ? new : state)
        case (.compareAndSet(let expected, let new), .compareAndSet(let succeeded)?):
            if succeeded { return state == expected ? .some(new) : nil }
            return state != expected ? .some(state) : nil
        default:
            return nil
        }
    }

    /// The keys whose histories cannot be linearized (empty: the whole history is linearizable).
    static func violations(_ history: [Operation], initial: String? = nil) -> [String] {
        Dictionary(grouping: history, by: \.key).filter { !isLinearizable($0.value, initial: initial) }.keys.sorted()
    }

    /// For a failure message: the operations of `key` up to a point where its history
    /// stops being linearizable (a prefix, by call time, that is not, one operation
    /// shorter than one that is, found by bisection; the operation that cannot be
    /// placed is among its last ones), at most `limit` of them, with times in
    /// milliseconds from the key's first call. A prefix can fail where the whole would
    /// pass when a read saw a write called after the cut: the whole history's failure
    /// is what counts, this only shows where to look.
    static func explain(_ history: [Operation], key: String, initial: String? = nil, limit: Int = 40) -> String {
        let operations = history.filter { $0.key == key }.sorted { $0.call < $1.call }
        guard let origin = operations.first?.call else { return "no operations on \(key)" }
        // A failing prefix one operation longer than a passing one: lo passes, hi fails.
        var lo = 0, hi = operations.count
        guard !isLinearizable(operations, initial: initial) else { return "\(key) is linearizable" }
        while hi - lo > 1 {
            let middle = (lo + hi) / 2
            if isLinearizable(Array(operations[..<middle]), initial: initial) { lo = middle } else { hi = middle }
        }
        func milliseconds(_ time: UInt64) -> String { String(format: "%.3f", Double(time - origin) / 1_000_000) }
        let shown = operations[max(0, hi - limit)..<hi]
        let lines = shown.map { operation in
            let output = operation.output.map { "\($0)" } ?? "unknown (reply lost)"
            let response = operation.response == .max ? "never" : milliseconds(operation.response)
            return "  [\(milliseconds(operation.call)) → \(response) ms] \(operation.input) → \(output)"
        }
        return "\(key): \(operations.count) operations, the first \(hi) not linearizable; the last \(shown.count) of those:\n" + lines.joined(separator: "\n")
    }

    /// One key's history.
    static func isLinearizable(_ operations: [Operation], initial: String?) -> Bool {
        // Events in time order; at equal times a call before a return (so that
        // operations that touch at an instant count as concurrent).
        struct Event { var time: UInt64; var isCall: Bool; var operation: Int }
        guard !operations.isEmpty else { return true }
        var events: [Event] = []
        for (index, operation) in operations.enumerated() {
            events.append(Event(time: operation.call, isCall: true, operation: index))
            events.append(Event(time: operation.response, isCall: false, operation: index))
        }
        events.sort { $0.time != $1.time ? $0.time < $1.time : ($0.isCall && !$1.isCall) }
        // A doubly linked list of the events still to linearize.
        let count = events.count
        var next = Array(1...count)          // index count: the end
        var previous = Array(-1..<(count - 1))
        var head = 0
        var returnOf = [Int](repeating: 0, count: operations.count)
        for (position, event) in events.enumerated() where !event.isCall { returnOf[event.operation] = position }
        func unlink(_ position: Int) {
            if previous[position] >= 0 { next[previous[position]] = next[position] } else { head = next[position] }
            if next[position] < count { previous[next[position]] = previous[position] }
        }
        func relink(_ position: Int) {
            if previous[position] >= 0 { next[previous[position]] = position } else { head = position }
            if next[position] < count { previous[next[position]] = position }
        }
        var linearized = [UInt64](repeating: 0, count: (operations.count + 63) / 64)
        var seenStates: [[UInt64]: Set<String?>] = [:]
        var state = initial
        // The stack of (call position, state before) of tentatively linearized operations.
        var stack: [(position: Int, state: String?)] = []
        var cursor = head
        while head < count {
            if cursor < count && events[cursor].isCall {
                let operation = operations[events[cursor].operation]
                if let after = step(state, operation.input, operation.output) {
                    var candidate = linearized
                    candidate[events[cursor].operation / 64] |= 1 << UInt64(events[cursor].operation % 64)
                    if seenStates[candidate, default: []].insert(after).inserted {
                        stack.append((cursor, state))
                        state = after
                        linearized = candidate
                        let call = cursor
                        unlink(call)
                        unlink(returnOf[events[call].operation])
                        cursor = head
                        continue
                    }
                }
                cursor = next[cursor]
            } else {
                // A return reached: the operations called before it cannot all be
                // ordered; undo the last choice and try the next one.
                guard let (call, before) = stack.popLast() else { return false }
                let operation = events[call].operation
                relink(returnOf[operation])
                relink(call)
                linearized[operation / 64] &= ~(1 << UInt64(operation % 64))
                state = before
                cursor = next[call]
            }
        }
        return true
    }

    /// Records the operations of concurrent clients.
    final class Recorder: Sendable {
        private let operations = Mutex<[Operation]>([])
        private let start = ContinuousClock.now

        func now() -> UInt64 {
            let elapsed = ContinuousClock.now - start
            return UInt64(elapsed.components.seconds) * 1_000_000_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000)
        }

        /// Runs one operation against `store` and records it: a definite answer with its
        /// times, a lost reply as unknown, a request that never ran not at all.
        @discardableResult
        func perform(_ store: CoordinationClient, key: String, _ input: Input) async -> Output? {
            let call = now()
            let output: Output?
            do {
                switch input {
                case .put(let value):
                    _ = try await store.put(key, value)
                    output = .put
                case .get:
                    output = .get(try await store.get(key).kvs.first.map { String(decoding: $0.value, as: UTF8.self) })
                case .compareAndSet(let expected, let new):
                    let compare = expected.map { Compare(key: Array(key.utf8), .value(Array($0.utf8)), .equal) }
                        ?? Compare(key: Array(key.utf8), .version(0), .equal)
                    let response = try await store.txn(Txn(compares: [compare], success: [.put(key: Array(key.utf8), value: Array(new.utf8), options: PutOptions())]))
                    output = .compareAndSet(response.succeeded)
                }
            } catch let error as RedisError where [.connectionLost, .connectionRefused, .connectionClosed, .server, .noPermission, .authenticationFailed].contains(error.code) {
                return nil   // not sent, or refused by Redis (LOADING after a restart): it did not run
            } catch let error as CoordinationError where error.code != .storeReset {
                return nil   // refused by the store's checks before writing anything
            } catch {
                // Sent and not answered (outcomeUnknown, a timeout, a WAIT that fell
                // short), or answered from a history that was reset. A read's lost reply
                // tells nothing: it is left out.
                if case .get = input { return nil }
                output = nil
            }
            let response = output == nil ? UInt64.max : now()
            operations.withLock { $0.append(Operation(key: key, input: input, output: output, call: call, response: response)) }
            return output
        }

        var history: [Operation] { operations.withLock { $0 } }
        var count: Int { operations.withLock { $0.count } }
    }
}
