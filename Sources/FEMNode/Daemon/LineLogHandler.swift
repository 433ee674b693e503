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
        let fd: Int32
        let path: String
        let trouble: LogTrouble
        /// Lines dropped since writes started failing, and why they fail; held while a line is written, so lines
        /// never interleave.
        private struct State {
            var dropped = 0
            var failing: String?
        }
        private let state = Mutex(State())

        init(fd: Int32, path: String, trouble: LogTrouble) {
            self.fd = fd
            self.path = path
            self.trouble = trouble
        }

        func write(_ line: String) {
            var news: LogTrouble.News?
            state.withLock { s in
                if let why = s.failing {
                    let note = "\(FEMTime.format(Date())) NOTE  log writes work again; \(s.dropped) line(s) were dropped "
                        + "while they failed (\(why))\n"
                    guard (try? FileWriter.writeAll(fd, Array(note.utf8), context: path)) != nil else {
                        s.dropped += 1
                        return
                    }
                    news = .recovered(dropped: s.dropped, error: why)
                    s.dropped = 0
                    s.failing = nil
                }
                do {
                    try FileWriter.writeAll(fd, Array(line.utf8), context: path)
                } catch {
                    s.dropped += 1
                    if s.failing == nil {
                        s.failing = "\(error)"
                        news = .dropping(error: "\(error)")
                        let say = "fem-client: cannot write the log \(path) (\(error)); dropping log lines and counting "
                            + "them until writes work again\n"
                        if fd != 2 { try? FileWriter.writeAll(2, Array(say.utf8)) }
                    }
                }
            }
            if let news { trouble.fire(news) }
        }
    }

    private let sink: Sink
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    init(sink: Sink) {
        self.sink = sink
    }

    /// A factory for `LoggingSystem.bootstrap` (or `Logger(label:factory:)`) writing to `path`, or stderr if nil.
    /// `trouble` hears when lines start being dropped and when writes work again.
    public static func factory(path: String?, trouble: LogTrouble = LogTrouble()) throws
        -> @Sendable (String) -> LineLogHandler {
        let sink: Sink
        if let path {
            // O_APPEND: every line goes to the end, whoever else appends; 0600: the task user reads none of it.
            sink = Sink(fd: try FileWriter.open(path, append: true, mode: 0o600), path: path, trouble: trouble)
        } else {
            sink = Sink(fd: 2, path: "standard error", trouble: trouble)
        }
        return { _ in LineLogHandler(sink: sink) }
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
        var text = "\(FEMTime.format(Date())) \(lvl)"
        if let task = merged.removeValue(forKey: "task") { text += " task=\(task)" }
        text += " \(message)"
        for (k, v) in merged.sorted(by: { $0.key < $1.key }) { text += " \(k)=\(v)" }
        sink.write(Self.oneLine(text) + "\n")
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
