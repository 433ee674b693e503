import Foundation
import Logging
import FEMCore

/// One readable line per thing that happened: `2026-11-23T09:00:00.123Z WARN  task=ab12 failed: …`.
/// Writes to a file (receiver.log) or standard error. Messages never carry secrets: the code that logs passes
/// none (the broker password and stage-out tokens are never formatted into text).
public struct LineLogHandler: LogHandler {
    final class Sink: @unchecked Sendable {
        let handle: FileHandle
        let lock = NSLock()
        init(handle: FileHandle) { self.handle = handle }
        func write(_ line: String) {
            lock.withLock { handle.write(Data(line.utf8)) }
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
    public static func factory(path: String?) throws -> @Sendable (String) -> LineLogHandler {
        let handle: FileHandle
        if let path {
            if !FileManager.default.fileExists(atPath: path) {
                _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
            }
            guard let h = FileHandle(forWritingAtPath: path) else {
                throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
            }
            h.seekToEndOfFile()
            handle = h
        } else {
            handle = FileHandle.standardError
        }
        let sink = Sink(handle: handle)
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
