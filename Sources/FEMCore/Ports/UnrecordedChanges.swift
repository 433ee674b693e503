import Foundation

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
final class ResumeOnce<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T, Never>?
    private var early: T?
    private var done = false

    func set(_ c: CheckedContinuation<T, Never>) {
        let value: T? = lock.withLock {
            if let early { done = true; return early }
            continuation = c
            return nil
        }
        if let value { c.resume(returning: value) }
    }

    /// False when it was already resumed (or a value was already waiting).
    @discardableResult
    func resume(_ value: T) -> Bool {
        let (won, c): (Bool, CheckedContinuation<T, Never>?) = lock.withLock {
            if done || early != nil { return (false, nil) }
            if let continuation {
                done = true
                self.continuation = nil
                return (true, continuation)
            }
            early = value
            return (true, nil)
        }
        c?.resume(returning: value)
        return won
    }

    var resumed: Bool { lock.withLock { done || early != nil } }
}
