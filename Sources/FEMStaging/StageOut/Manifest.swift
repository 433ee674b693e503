import FEMCore
import Foundation

/// `manifest.json`: the provenance record of a task's stage-out, uploaded last, checkable file by file.
public struct Manifest: Encodable, Sendable {
    public var schemaVersion = 1
    public var taskID: String
    public var executionID: String
    public var nodeID: String
    public var tool: [String: String]
    public var image: String?
    /// The image as pulled: its repository digest (or image id).
    public var imageDigest: String?
    public var gitCommit: String?
    public var params: [String: JSONValue]
    public var exitCode: Int32?
    public var state: String
    public var failureClass: String?
    public var startedAt: Date?
    public var endedAt: Date
    public var files: [CollectedFile]
    /// What the output checks found (`[outputs.checks]`), bound into the manifest an approval is given for.
    public var findings: [OutputFinding]? = nil

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case taskID = "task_id"
        case executionID = "execution_id"
        case nodeID = "node_id"
        case tool, image
        case imageDigest = "image_digest"
        case gitCommit = "git_commit"
        case params
        case exitCode = "exit_code"
        case state
        case failureClass = "failure_class"
        case startedAt = "started_at"
        case endedAt = "ended_at"
        case files, findings
    }

    public init(job: LaunchJob, record: TaskRecord, nodeID: String, outcome: TaskOutcome, startedAt: Date?,
                gitCommit: String?, imageDigest: String?, files: [CollectedFile]) {
        taskID = job.task.taskID
        executionID = job.task.executionID
        self.nodeID = nodeID
        tool = ["id": job.task.plan.id, "version": job.task.plan.version, "launcher": job.task.plan.launcher]
        image = job.task.plan.image
        self.imageDigest = imageDigest
        self.gitCommit = gitCommit
        params = job.task.params
        exitCode = outcome.detail.exitCode
        state = outcome.state.rawValue
        failureClass = outcome.detail.failureClass?.rawValue
        self.startedAt = startedAt
        endedAt = Date()
        self.files = files
    }

    public func encoded() -> Data {
        let e = JSONEncoder.fem
        e.outputFormatting.insert(.prettyPrinted)
        return (try? e.encode(self)) ?? Data()
    }
}
