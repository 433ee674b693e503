import Foundation

/// `retry: {attempts, on}` on a plan or a task: a pool task that fails with one of the `on` classes goes back to its
/// pool for another attempt (on another node where there is one), up to `attempts` attempts in all.
public struct RetrySpec: Sendable, Equatable {
    /// Attempts in all, the first included (2: one retry).
    public var attempts: Int
    public var on: [FailureClass]

    public init(attempts: Int, on: [FailureClass]) {
        self.attempts = attempts
        self.on = on
    }

    public static let maxAttempts = 100

    /// Reads `retry` (its path for messages: `plan.retry` or `retry`), logging what is wrong.
    static func read(_ f: Fields?) -> RetrySpec? {
        guard let f else { return nil }
        defer { f.finish() }
        let attempts = f.int("attempts", required: true, min: 1, max: Int64(maxAttempts))
        let names = FailureClass.allCases.map(\.rawValue)
        var classes: [FailureClass] = []
        for (path, item) in f.array("on", required: true, nonEmpty: true) ?? [] {
            guard case .string(let s) = item else {
                f.log.add(path, "expected a failure class (a string), got \(item.typeName)")
                continue
            }
            guard let c = FailureClass(rawValue: s) else {
                f.log.add(path, "\"\(TextEscaping.escaped(s))\" is not a failure class (known: "
                          + names.joined(separator: ", ") + ")")
                continue
            }
            if !classes.contains(c) { classes.append(c) }
        }
        guard let attempts, !classes.isEmpty else { return nil }
        return RetrySpec(attempts: attempts, on: classes)
    }

    public var json: JSONValue {
        .object(["attempts": .int(Int64(attempts)), "on": .array(on.map { .string($0.rawValue) })])
    }
}

/// What a pool task carries about its way through the pool (the task's `pool` field, written by the nodes): which
/// pool, how often it was passed on and why, which nodes already tried (and failed) it.
public struct PoolTicket: Sendable, Equatable {
    public struct Pass: Sendable, Equatable {
        public var node: String
        public var reason: String
        public init(node: String, reason: String) {
            self.node = node
            self.reason = reason
        }
    }

    public var name: String
    /// Returns to the pool by nodes that could not take it, this attempt.
    public var passes: Int
    /// Every node's reason, in order (this attempt).
    public var declined: [Pass]
    /// Nodes on which an earlier attempt failed.
    public var tried: [String]

    public init(name: String, passes: Int = 0, declined: [Pass] = [], tried: [String] = []) {
        self.name = name
        self.passes = passes
        self.declined = declined
        self.tried = tried
    }

    /// At most this many reasons are kept (the newest), each cut to `maxReason` characters: a task passed around
    /// many times stays small.
    public static let maxDeclined = 64
    public static let maxReason = 300

    static func read(_ f: Fields?) -> PoolTicket? {
        guard let f else { return nil }
        defer { f.finish() }
        let name = f.string("name", required: true, pattern: #"^[a-z0-9-]{1,64}$"#)
        let passes = f.int("passes", min: 0, max: 1_000_000) ?? 0
        var declined: [Pass] = []
        for (path, item) in f.array("declined") ?? [] {
            guard let d = Fields(item, path: path, log: f.log) else { continue }
            let node = d.string("node", required: true, pattern: #"^[A-Za-z0-9_.@-]{1,64}$"#)
            let reason = d.string("reason", required: true, nonEmpty: false)
            d.finish()
            if let node, let reason { declined.append(Pass(node: node, reason: String(reason.prefix(maxReason)))) }
        }
        let tried = f.stringArray("tried", pattern: #"^[A-Za-z0-9_.@-]{1,64}$"#) ?? []
        guard let name else { return nil }
        return PoolTicket(name: name, passes: passes, declined: declined, tried: tried)
    }

    public var json: JSONValue {
        .object([
            "name": .string(name), "passes": .int(Int64(passes)),
            "declined": .array(declined.suffix(Self.maxDeclined).map {
                .object(["node": .string($0.node), "reason": .string(String($0.reason.prefix(Self.maxReason)))])
            }),
            "tried": .array(tried.map(JSONValue.string)),
        ])
    }

    /// The ticket of a task document (nil when it has none or it does not read).
    public static func of(_ document: JSONValue) -> PoolTicket? {
        guard let value = document["pool"] else { return nil }
        let log = IssueLog()
        let ticket = read(Fields(value, path: "pool", log: log))
        return log.issues.isEmpty ? ticket : nil
    }
}

/// How the receiver places a task taken from a work pool: `gate` says why this node cannot take it now (nil: it
/// takes it), `pass` returns it to the pool for another node with that reason (or gives it up as unplaceable), and
/// settles the delivery.
public struct PoolPlacement: Sendable {
    public var gate: @Sendable (_ spec: TaskSpec, _ document: JSONValue, _ pool: String) async -> String?
    public var pass: @Sendable (_ message: InboundMessage, _ document: JSONValue, _ pool: String,
                                _ reason: String) async -> Void

    public init(gate: @escaping @Sendable (TaskSpec, JSONValue, String) async -> String?,
                pass: @escaping @Sendable (InboundMessage, JSONValue, String, String) async -> Void) {
        self.gate = gate
        self.pass = pass
    }
}
