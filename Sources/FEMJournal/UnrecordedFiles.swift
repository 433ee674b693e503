import FEMCore
import Foundation

/// Unrecorded state changes as one small JSON file per task in a folder beside the journal: what a restarted daemon
/// reads to tell the truth about a task whose outcome the journal refused. Best effort: a disk full to the last byte
/// keeps nothing here either (the change is still retried from memory while the daemon runs).
public struct UnrecordedFiles: UnrecordedChanges {
    public let dir: String

    public init(dir: String) {
        self.dir = dir
    }

    private func path(_ taskID: String) -> String { "\(dir)/\(taskID).json" }

    public func save(_ taskID: String, _ change: UnrecordedChange) {
        guard let data = try? JSONEncoder.fem.encode(change) else { return }
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                 attributes: [.posixPermissions: 0o700])
        try? data.write(to: URL(fileURLWithPath: path(taskID)), options: .atomic)
    }

    public func load(_ taskID: String) -> UnrecordedChange? {
        guard let data = FileManager.default.contents(atPath: path(taskID)) else { return nil }
        return try? JSONDecoder.fem.decode(UnrecordedChange.self, from: data)
    }

    public func remove(_ taskID: String) {
        try? FileManager.default.removeItem(atPath: path(taskID))
    }
}
