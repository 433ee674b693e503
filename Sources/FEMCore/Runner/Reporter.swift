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

    /// A longer line is only a log line, whatever it holds: reports are small, and events are no channel for data.
    public static let maxLineBytes = 4 * 1024

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

/// What the node lets the reporter channel carry: tool-originated text and metrics reach the orchestrator as
/// events, past the airlock and past a container's `network: none`, so they are screened and capped here.
public struct ReporterLimits: Sendable, Equatable {
    /// Tool-originated events (progress, notices from triggers and launcher signals) one task may cause.
    public var maxEventsPerTask: Int
    /// Their total size (message and data, as JSON).
    public var maxEventBytesPerTask: Int
    /// Metrics kept from one `model` line; the rest are dropped.
    public var maxMetricsPerLine: Int
    /// The airlock is on (`outputs.require_approval`): tool text is held for the steward, metrics are numbers only.
    public var holdToolText: Bool

    public init(maxEventsPerTask: Int = 1000, maxEventBytesPerTask: Int = 1 << 20, maxMetricsPerLine: Int = 32,
                holdToolText: Bool = false) {
        self.maxEventsPerTask = maxEventsPerTask
        self.maxEventBytesPerTask = maxEventBytesPerTask
        self.maxMetricsPerLine = maxMetricsPerLine
        self.holdToolText = holdToolText
    }
}

/// Screening of tool-chosen text before it goes into an event or a log line.
public enum ToolText {
    /// Tool error text in a `failed` event is cut to this many bytes.
    public static let maxErrorBytes = 1024
    /// Metric and trigger names: `[A-Za-z0-9_.-]{1,64}`.
    public static let maxNameLength = 64
    /// A string metric is kept only up to this many characters (and never while the airlock is on).
    public static let maxStringMetricLength = 64
    /// The text the steward may review, per task, journaled while the airlock holds it.
    public static let maxHeldBytes = 64 * 1024

    /// `s` without control characters (tabs and line breaks become spaces), cut to at most `maxBytes` UTF-8 bytes
    /// on a character boundary, with "…" when it was cut.
    public static func clean(_ s: String, maxBytes: Int) -> String {
        var out = String.UnicodeScalarView()
        var bytes = 0
        for u in s.unicodeScalars {
            let c: Unicode.Scalar
            switch u.value {
            case 0x09, 0x0A, 0x0D: c = " "
            case 0x00..<0x20, 0x7F..<0xA0, 0x2028, 0x2029, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: continue
            default: c = u
            }
            let n = String(c).utf8.count
            if bytes + n > maxBytes {
                out.append("…")
                break
            }
            bytes += n
            out.append(c)
        }
        return String(out)
    }

    /// True for a short, plain name: `[A-Za-z0-9_.-]{1,64}`.
    public static func isPlainName(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= maxNameLength else { return false }
        return s.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2E
                || b == 0x2D
        }
    }

    /// The metrics of a `model` line an event may carry: numbers (and, unless `numbersOnly`, strings of at most 64
    /// plain characters) under plain names, at most `maxCount` of them in name order. `dropped` says what was left
    /// out and why, for the log.
    public static func screen(_ metrics: [String: JSONValue], maxCount: Int, numbersOnly: Bool)
        -> (kept: [String: JSONValue], dropped: [String]) {
        var kept: [String: JSONValue] = [:]
        var dropped: [String] = []
        for name in metrics.keys.sorted() {
            let shown = isPlainName(name) ? name : "\"" + clean(name, maxBytes: 32) + "\""
            guard isPlainName(name) else { dropped.append("\(shown) (not a plain name)"); continue }
            guard let value = metrics[name] else { continue }
            switch value {
            case .int, .double: break
            case .string(let s) where !numbersOnly:
                guard s.count <= maxStringMetricLength, clean(s, maxBytes: 4 * maxStringMetricLength) == s else {
                    dropped.append("\(shown) (a string over \(maxStringMetricLength) characters or with control "
                                   + "characters)")
                    continue
                }
            case .string:
                dropped.append("\(shown) (a string; only numbers while outputs wait for approval)")
                continue
            default:
                dropped.append("\(shown) (not a number)")
                continue
            }
            guard kept.count < maxCount else { dropped.append("\(shown) (over \(maxCount) metrics per line)"); continue }
            kept[name] = value
        }
        return (kept, dropped)
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
