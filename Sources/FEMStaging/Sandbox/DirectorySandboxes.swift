import FEMCore
import Foundation

/// Sandboxes as folders: `<work_dir>/sandboxes/<task_id>/{src,in,out,logs}`. Task ids are validated
/// (letters, digits, `.`, `_`, `-`; no leading dot), so a sandbox path can never leave the root. Finished tasks'
/// sandboxes are removed after their retention: at once when it is zero, else by `sweep`.
public struct DirectorySandboxes: SandboxProvider {
    public let root: String
    public let retention: SandboxRetention

    public init(workDir: String, retention: SandboxRetention = .keepAll) {
        root = "\(workDir)/sandboxes"
        self.retention = retention
    }

    public func paths(taskID: String) -> ToolPaths {
        ToolPaths.under("\(root)/\(taskID)")
    }

    public func prepare(taskID: String) throws -> ToolPaths {
        let p = paths(taskID: taskID)
        for dir in [p.src, p.input, p.output, p.logs] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
        }
        return p
    }

    public func finished(taskID: String, state: TaskState) {
        if retention.keep(state) == .zero { remove(taskID) }
    }

    /// Removes the sandboxes of finished tasks whose retention has passed; returns their task ids. Sandboxes of
    /// tasks the journal does not know, or that are still active, are left alone.
    @discardableResult
    public func sweep(journal: any Journal, now: Date = Date()) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return [] }
        var removed: [String] = []
        for id in names.sorted() {
            guard let status = try? journal.status(id), status.state.isTerminal else { continue }
            if now.timeIntervalSince(status.updatedAt) >= retention.keep(status.state).seconds {
                remove(id)
                removed.append(id)
            }
        }
        return removed
    }

    private func remove(_ taskID: String) {
        try? FileManager.default.removeItem(atPath: "\(root)/\(taskID)")
        // The airlock's staged copy (OutputDelivery), if stage-out left one (a failed delivery keeps it as evidence
        // until the sandbox goes).
        let staging = ((root as NSString).deletingLastPathComponent as NSString).appendingPathComponent("staging")
        try? FileManager.default.removeItem(atPath: "\(staging)/\(taskID)")
    }
}

/// How long a finished task's sandbox is kept: completed ones, and the rest (failed, cancelled, declined), which
/// an administrator may want to look into.
public struct SandboxRetention: Sendable, Equatable {
    public var completed: Duration
    public var other: Duration

    public init(completed: Duration, other: Duration) {
        self.completed = completed
        self.other = other
    }

    public static let keepAll = SandboxRetention(completed: .seconds(Int64.max / 4), other: .seconds(Int64.max / 4))

    public func keep(_ state: TaskState) -> Duration { state == .completed ? completed : other }
}
