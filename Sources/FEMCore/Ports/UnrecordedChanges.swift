import Foundation
import Synchronization

/// A state change the journal refused (a full disk, an I/O error), with the journal's error: the runner keeps it in
/// memory and retries; a copy here lets a restarted daemon tell the truth about a task whose outcome never reached
/// the journal.
public struct UnrecordedChange: Sendable, Codable, Equatable {
    public var state: TaskState
    public var detail: EventDetail
    public var error: String
    public var time: Date

    public init(state: TaskState, detail: EventDetail, error: String, time: Date) {
        self.state = state
        self.detail = detail
        self.error = error
        self.time = time
    }
}

/// Where unrecorded state changes are kept besides memory (a small file per task beside the journal). Best effort:
/// on a disk full to the last byte it may keep nothing, and the runner says so after a restart.
public protocol UnrecordedChanges: Sendable {
    func save(_ taskID: String, _ change: UnrecordedChange)
    func load(_ taskID: String) -> UnrecordedChange?
    func remove(_ taskID: String)
}

/// Keeps nothing beyond the runner's memory (tests, `fem-client run`).
public struct NoUnrecordedChanges: UnrecordedChanges {
    public init() {}
    public func save(_ taskID: String, _ change: UnrecordedChange) {}
    public func load(_ taskID: String) -> UnrecordedChange? { nil }
    public func remove(_ taskID: String) {}
}

/// Words of a failed write that mean the filesystem is full (errno ENOSPC/EDQUOT as text, SQLite's SQLITE_FULL).
public enum DiskFull {
    public static func matches(_ message: String) -> Bool {
        message.contains("No space left on device") || message.contains("database or disk is full")
            || message.contains("Disk quota exceeded") || message.contains("SQLITE_FULL")
    }
}

/// Resumes a continuation once, whichever comes first: the work's end, or a deadline after a cancel.
final class ResumeOnce<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, Never>?
        var early: T?
        var done = false
    }
    private let state = Mutex(State())

    func set(_ c: CheckedContinuation<T, Never>) {
        let value: T? = state.withLock { s in
            if let early = s.early { s.done = true; return early }
            s.continuation = c
            return nil
        }
        if let value { c.resume(returning: value) }
    }

    /// False when it was already resumed (or a value was already waiting).
    @discardableResult
    func resume(_ value: T) -> Bool {
        let (won, c): (Bool, CheckedContinuation<T, Never>?) = state.withLock { s in
            if s.done || s.early != nil { return (false, nil) }
            if let continuation = s.continuation {
                s.done = true
                s.continuation = nil
                return (true, continuation)
            }
            s.early = value
            return (true, nil)
        }
        c?.resume(returning: value)
        return won
    }

    var resumed: Bool { state.withLock { $0.done || $0.early != nil } }
}
