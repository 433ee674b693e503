import Foundation
import Logging
import Synchronization
import FEMCore
import FEMSystem

/// One readable line per thing that happened: `2026-11-23T09:00:00.123Z WARN  task=ab12 failed: …`.
/// Writes to a file (receiver.log) or standard error. Messages never carry secrets: the code that logs passes
/// none (the broker password and stage-out tokens are never formatted into text).
public struct LineLogHandler: LogHandler {
    /// Writes lines with write(2) loops: a write that fails (a full disk) never crashes the daemon. Lines that
    /// cannot be written are counted; the first failure is said once on stderr and through `trouble` (a notice
    /// event), and when writes work again the log gets a line with the count (and `trouble` hears of it).
    final class Sink: Sendable {
        let path: String
        let trouble: LogTrouble
        /// Size rotation: past `maxBytes` (0: never) the file becomes `path.1` (… `path.<keep>`) and a new one starts.
        let maxBytes: Int64
        let keep: Int
        /// The open file (reopened by `reopen()` after logrotate moved it, and by a size rotation), its size, the
        /// lines dropped since writes started failing and why they fail; held while a line is written, so lines
        /// never interleave and none is written to a file being rotated.
        private struct State {
            var fd: Int32
            var size: Int64 = 0
            var dropped = 0
            var failing: String?
        }
        private let state: Mutex<State>

        init(fd: Int32, path: String, trouble: LogTrouble, maxBytes: Int64 = 0, keep: Int = 5) {
            self.path = path
            self.trouble = trouble
            self.maxBytes = fd == 2 ? 0 : max(0, maxBytes)
            self.keep = max(1, keep)
            let size = fd == 2 ? 0 : ((try? Posix.fstat(fd, path: path).size) ?? 0)
            state = Mutex(State(fd: fd, size: size))
        }

        /// The descriptor lines go to now.
        var fd: Int32 { state.withLock { $0.fd } }

        /// After logrotate (or an admin) moved the file away: lines go on in a new file at `path` (SIGHUP). Nothing
        /// is lost: lines written before this went to the moved file, the next ones go to the new one.
        /// Returns nil when reopened (or when the log is standard error), else why not (the old file is kept).
        @discardableResult
        func reopen() -> String? {
            guard path != "standard error" else { return nil }
            return state.withLock { s in
                do {
                    let fd = try FileWriter.open(path, append: true, mode: 0o600)
                    Posix.release(s.fd)
                    s.fd = fd
                    s.size = (try? Posix.fstat(fd, path: path).size) ?? 0
                    return nil
                } catch {
                    return "\(error)"
                }
            }
        }

        /// `path` → `path.1`, `path.1` → `path.2`, …, the oldest past `keep` removed; then a new `path`. Under the lock.
        private func rotate(_ s: inout State) {
            try? Posix.unlink("\(path).\(keep)")
            if keep > 1 {
                for i in stride(from: keep - 1, through: 1, by: -1) {
                    try? Posix.rename("\(path).\(i)", to: "\(path).\(i + 1)")
                }
            }
            do {
                try Posix.rename(path, to: "\(path).1")
                let fd = try FileWriter.open(path, append: true, mode: 0o600)
                Posix.release(s.fd)
                s.fd = fd
                s.size = 0
            } catch {
                // The old file goes on growing; tried again once another tenth of the limit was written (not at every
                // line: a rename that keeps failing would cost each line a failed rename).
                s.size = maxBytes - maxBytes / 10
            }
        }

        func write(_ line: String) {
            var news: LogTrouble.News?
            state.withLock { s in
                let fd = s.fd
                if let why = s.failing {
                    let note = "\(FEMTime.format(Date())) NOTE  log writes work again; \(s.dropped) line(s) were dropped "
                        + "while they failed (\(why))\n"
                    guard (try? FileWriter.writeAll(fd, Array(note.utf8), context: path)) != nil else {
                        s.dropped += 1
                        return
                    }
                    s.size += Int64(note.utf8.count)
                    news = .recovered(dropped: s.dropped, error: why)
                    s.dropped = 0
                    s.failing = nil
                }
                let bytes = Array(line.utf8)
                if maxBytes > 0 && s.size > 0 && s.size + Int64(bytes.count) > maxBytes { rotate(&s) }
                do {
                    try FileWriter.writeAll(s.fd, bytes, context: path)
                    s.size += Int64(bytes.count)
                } catch {
                    s.dropped += 1
                    if s.failing == nil {
                        s.failing = "\(error)"
                        news = .dropping(error: "\(error)")
                        let say = "fem-client: cannot write the log \(path) (\(error)); dropping log lines and counting "
                            + "them until writes work again\n"
                        if s.fd != 2 { try? FileWriter.writeAll(2, Array(say.utf8)) }
                    }
                }
            }
            if let news { trouble.fire(news) }
        }
    }

    private let sink: Sink
    /// One JSON object per line (`log_format = "json"`) instead of the readable line.
    let json: Bool
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    init(sink: Sink, json: Bool = false) {
        self.sink = sink
        self.json = json
    }

    /// A factory for `LoggingSystem.bootstrap` (or `Logger(label:factory:)`) writing to `path`, or stderr if nil.
    /// `trouble` hears when lines start being dropped and when writes work again.
    public static func factory(path: String?, trouble: LogTrouble = LogTrouble()) throws
        -> @Sendable (String) -> LineLogHandler {
        try factory(path: path, trouble: trouble, options: LogOptions()).make
    }

    /// Also gives the file's sink, for `reopen()` on SIGHUP.
    static func factory(path: String?, trouble: LogTrouble, options: LogOptions) throws
        -> (make: @Sendable (String) -> LineLogHandler, sink: Sink) {
        let sink: Sink
        if let path {
            // O_APPEND: every line goes to the end, whoever else appends; 0600: the task user reads none of it.
            sink = Sink(fd: try FileWriter.open(path, append: true, mode: 0o600), path: path, trouble: trouble,
                        maxBytes: Int64(options.maxMB) << 20, keep: options.keep)
        } else {
            sink = Sink(fd: 2, path: "standard error", trouble: trouble)
        }
        let json = options.json
        return ({ _ in LineLogHandler(sink: sink, json: json) }, sink)
    }

    /// `node.log_max_mb`, `node.log_keep`, `node.log_format`.
    struct LogOptions: Sendable {
        var maxMB = 0
        var keep = 5
        var json = false
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let explicit = event.metadata { merged.merge(explicit) { $1 } }
        let message = event.message
        let lvl: String
        switch event.level {
        case .trace: lvl = "TRACE"
        case .debug: lvl = "DEBUG"
        case .info: lvl = "INFO "
        case .notice: lvl = "NOTE "
        case .warning: lvl = "WARN "
        case .error: lvl = "ERROR"
        case .critical: lvl = "CRIT "
        }
        if json {
            sink.write(Self.jsonLine(time: Date(), level: event.level, message: "\(message)", metadata: merged))
            return
        }
        var text = "\(FEMTime.format(Date())) \(lvl)"
        if let task = merged.removeValue(forKey: "task") { text += " task=\(task)" }
        text += " \(message)"
        for (k, v) in merged.sorted(by: { $0.key < $1.key }) { text += " \(k)=\(v)" }
        sink.write(Self.oneLine(text) + "\n")
    }

    /// `{"time":…,"level":"warning","message":…,"task":…,<metadata>…}` and a newline: JSON escapes every control
    /// character, so one event is always one line.
    static func jsonLine(time: Date, level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        var object: [String: JSONValue] = [:]
        for (k, v) in metadata { object[k] = .string("\(v)") }
        object["time"] = .string(FEMTime.format(time))
        object["level"] = .string(level.rawValue)
        object["message"] = .string(message)
        return String(decoding: JSONValue.object(object).encoded(), as: UTF8.self) + "\n"
    }

    /// One log line: line breaks become " | ", every other control character a visible escape (a NUL or an ESC
    /// in a task id or a tool's text never reaches receiver.log raw).
    static func oneLine(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).map { TextEscaping.escaped(String($0)) }
            .joined(separator: " | ")
    }
}

/// Where a log sink reports that it cannot write (and that it can again): the daemon turns these into node notices.
/// Called outside the sink's lock; the handler may log (a line it logs while writes fail is counted as dropped).
public final class LogTrouble: Sendable {
    public enum News: Sendable {
        case dropping(error: String)
        case recovered(dropped: Int, error: String)
    }

    private struct State {
        var handler: (@Sendable (News) -> Void)?
        /// News from before a handler was set (the daemon sets it once the publisher runs).
        var early: [News] = []
    }
    private let state = Mutex(State())

    public init() {}

    public func set(_ h: @escaping @Sendable (News) -> Void) {
        let pending = state.withLock { s -> [News] in
            s.handler = h
            defer { s.early = [] }
            return s.early
        }
        pending.forEach(h)
    }

    func fire(_ news: News) {
        let h = state.withLock { s -> (@Sendable (News) -> Void)? in
            if s.handler == nil { s.early.append(news) }
            return s.handler
        }
        h?(news)
    }
}
