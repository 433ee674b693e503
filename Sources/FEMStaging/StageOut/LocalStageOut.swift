import FEMCore
import Foundation

/// Stage-out to a folder (`file://` targets), or, for a task without a target, a manifest kept in its sandbox.
/// Each file copied is journaled, so a restarted stage-out does not copy it again; the manifest comes last.
public struct LocalStageOut: StageOut {
    public let nodeID: String
    public let limits: OutputLimits

    public init(nodeID: String, limits: OutputLimits) {
        self.nodeID = nodeID
        self.limits = limits
    }

    public func check(_ target: StageOutTarget?) -> String? {
        guard let target else { return nil }
        if target.url.hasPrefix("file://") { return nil }
        return "stage-out target \(target.url): this node supports only file:// targets"
    }

    public func stageOut(_ job: LaunchJob, record: TaskRecord, outcome: TaskOutcome, reporter: StageReporter) async throws
        -> StageOutSummary {
        let files = try OutputCollector.collect(plan: job.task.plan, sandbox: job.sandbox, limits: limits)
        let manifest = Manifest(job: job, record: record, nodeID: nodeID, outcome: outcome,
                                startedAt: record.receivedAt, gitCommit: reporter.isDone("git"), files: files)
        let bytes = files.reduce(Int64(0)) { $0 + $1.size }
        guard let target = job.task.stageOut else {
            let path = "\(job.sandbox.sandbox)/manifest.json"
            try manifest.encoded().write(to: URL(fileURLWithPath: path))
            return StageOutSummary(files: files.count, bytes: bytes, location: job.sandbox.sandbox)
        }
        guard target.url.hasPrefix("file://") else {
            throw TaskFailure(.stageOutFailure, "unsupported stage-out target \(target.url)")
        }
        let root = String(target.url.dropFirst("file://".count))
        let dest = "\(root)/\(job.task.executionID)/\(nodeID)"
        do {
            for file in files {
                let step = "upload:\(file.path)"
                if reporter.isDone(step) == file.sha256 { continue }
                try copy(file.source, to: "\(dest)/\(file.path)")
                reporter.markDone(step, file.sha256)
            }
            try FileManager.default.createDirectory(atPath: dest, withIntermediateDirectories: true)
            try manifest.encoded().write(to: URL(fileURLWithPath: "\(dest)/manifest.json"), options: .atomic)
        } catch let e as TaskFailure {
            throw e
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot write to \(dest): \(error.localizedDescription)")
        }
        return StageOutSummary(files: files.count, bytes: bytes, location: dest)
    }

    private func copy(_ source: String, to path: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let partial = path + ".partial"
        try? fm.removeItem(atPath: partial)
        try fm.copyItem(atPath: source, toPath: partial)
        try? fm.removeItem(atPath: path)
        try fm.moveItem(atPath: partial, toPath: path)
    }
}
