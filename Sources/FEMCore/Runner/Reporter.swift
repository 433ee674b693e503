import Foundation

/// The reporter protocol (FLMNGR's TaskReporter): a line on a tool's stdout that is a JSON object with a `type`
/// of `info`, `print`, `error`, `model` or `trigger` is a message to the node, whatever the launcher. Any other line,
/// malformed JSON included, is an ordinary log line. See docs/templates/fem_reporter.py.
public enum ReportMessage: Sendable, Equatable {
    /// `{"type":"info","info":"..."}`; `Finished` marks the task complete.
    case info(String)
    /// `{"type":"print","message":"..."}`: a line for the node's log.
    case print(String)
    /// `{"type":"error","exception":"..."}`: the task fails with this message.
    case error(String)
    /// `{"type":"model","round":3,"metrics":{...}}` (or FLMNGR's `"acc"`/`"loss"` at the top level): progress.
    case model(round: Int?, metrics: [String: JSONValue])
    /// `{"type":"trigger","trigger_name":"...","trigger_arguments":"..."}`: runs a node hook of that name, if any.
    case trigger(name: String, arguments: String)

    public static let maxLineBytes = 64 * 1024

    public var isFinished: Bool { self == .info("Finished") }

    /// The message a line carries, or nil for an ordinary line.
    public static func parse(_ line: String) -> ReportMessage? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("{"), trimmed.hasSuffix("}"), trimmed.utf8.count <= maxLineBytes,
              let value = try? JSONValue.parse(Data(trimmed.utf8)),
              case .object(let o) = value, let type = o["type"]?.stringValue else { return nil }
        func text(_ key: String) -> String? {
            switch o[key] {
            case .string(let s)?: s
            case nil, .null?: nil
            case let v?: String(decoding: v.encoded(), as: UTF8.self)
            }
        }
        switch type {
        case "info": return text("info").map(ReportMessage.info)
        case "print": return text("message").map(ReportMessage.print)
        case "error": return .error(text("exception") ?? text("message") ?? "the tool reported an error")
        case "model":
            var round: Int?
            switch o["round"] {
            case .int(let i)?: round = Int(i)
            case .string(let s)?: round = Int(s)
            case .double(let d)?: round = Int(d)
            default: round = nil
            }
            var metrics: [String: JSONValue] = [:]
            if case .object(let m)? = o["metrics"] { metrics = m }
            for (k, v) in o where !["type", "round", "metrics"].contains(k) {
                // FLMNGR sent metrics as strings at the top level ("acc": "0.9").
                if case .string(let s) = v, let d = Double(s) { metrics[k] = .double(d) } else { metrics[k] = v }
            }
            return .model(round: round, metrics: metrics)
        case "trigger":
            guard let name = text("trigger_name") else { return nil }
            return .trigger(name: name, arguments: text("trigger_arguments") ?? "")
        default:
            return nil
        }
    }
}

/// Reads the lines a file grows by while a task runs (its stdout and stderr logs). Implemented over the file system
/// by the composition root; the core only consumes the lines.
public protocol LineFollower: Sendable {
    /// Complete lines of `path` from its start, and those appended while it grows. After `finish()` the follower
    /// reads what is left and ends the stream.
    func follow(_ path: String) -> (lines: AsyncStream<String>, finish: @Sendable () -> Void)
}

/// Runs a node hook named by a `trigger` report: only hooks the node config defines (an allowlist).
public protocol HookRunner: Sendable {
    /// Nil when the node has no hook of that name; else runs it (in the background) and says what ran.
    func run(_ name: String, arguments: String, taskID: String) -> String?
}

/// A follower that yields nothing (tests, and nodes that do not read reports).
public struct NoLineFollower: LineFollower {
    public init() {}
    public func follow(_ path: String) -> (lines: AsyncStream<String>, finish: @Sendable () -> Void) {
        (AsyncStream { $0.finish() }, {})
    }
}

public struct NoHooks: HookRunner {
    public init() {}
    public func run(_ name: String, arguments: String, taskID: String) -> String? { nil }
}
