import Foundation

/// A stage or a launch failed; the class says which kind of failure the task ends with (a stage-in step throws
/// `stage_in_failure`, a launcher that cannot reach its engine `runner_system_failure`, …).
public struct TaskFailure: Error, CustomStringConvertible, Sendable {
    public var failureClass: FailureClass
    public var message: String

    public init(_ failureClass: FailureClass, _ message: String) {
        self.failureClass = failureClass
        self.message = message
    }

    public var description: String { message }
}

/// Node policy refused the task: it ends `declined` with this reason.
public struct PolicyDecline: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Creates and removes task sandboxes under the work dir.
public protocol SandboxProvider: Sendable {
    /// Creates (or finds) `<work_dir>/sandboxes/<task_id>/{src,in,out,logs}` and returns its host paths.
    func prepare(taskID: String) throws -> ToolPaths
    func paths(taskID: String) -> ToolPaths
    /// The task reached a final state (after stage-out): its sandbox may be removed, per the node's retention.
    func finished(taskID: String, state: TaskState)
}

/// What a stage may tell the runner while it works.
public struct StageReporter: Sendable {
    public var progress: @Sendable (String, [String: JSONValue]) -> Void
    /// Journal step markers, so a restarted stage skips what it already did.
    public var isDone: @Sendable (String) -> String?
    public var markDone: @Sendable (String, String) -> Void
    /// Something the orchestrator should know that is not progress (a wait for dockerd): a `notice` event.
    public var notice: @Sendable (String, [String: JSONValue]) -> Void

    public init(progress: @escaping @Sendable (String, [String: JSONValue]) -> Void,
                isDone: @escaping @Sendable (String) -> String?,
                markDone: @escaping @Sendable (String, String) -> Void,
                notice: (@Sendable (String, [String: JSONValue]) -> Void)? = nil) {
        self.progress = progress
        self.isDone = isDone
        self.markDone = markDone
        self.notice = notice ?? progress
    }
}

/// Prepares a task before launch: sources, files, images. Each step idempotent and journaled as done.
public protocol StageIn: Sendable {
    /// Nil when this node can prepare what `plan` needs; else the reason the task is declined before it runs.
    func check(_ plan: ToolPlan) -> String?
    func stageIn(_ job: LaunchJob, reporter: StageReporter) async throws
}

/// The final result of a task, handed to stage-out.
public struct TaskOutcome: Sendable, Equatable {
    public var state: TaskState
    public var detail: EventDetail

    public init(state: TaskState, detail: EventDetail) {
        self.state = state
        self.detail = detail
    }
}

/// Where stage-out put things, for the final event.
public struct StageOutSummary: Sendable, Equatable {
    public var files: Int
    public var bytes: Int64
    public var location: String?
    public var awaitingApproval: Bool
    /// What the output checks found, as events may carry it (no cell values or column names); at most
    /// `maxEventFindings` of `findingsCount`.
    public var findings: [JSONValue] = []
    public var findingsCount = 0
    public static let maxEventFindings = 50

    public init(files: Int, bytes: Int64, location: String?, awaitingApproval: Bool = false) {
        self.files = files
        self.bytes = bytes
        self.location = location
        self.awaitingApproval = awaitingApproval
    }
}

/// Collects logs and declared outputs after the launcher finished, whatever the outcome, and sends them to the
/// task's stage-out target.
public protocol StageOut: Sendable {
    /// Nil when this node can deliver to `target`; else the reason the task is declined before it runs.
    func check(_ target: StageOutTarget?) -> String?
    func stageOut(_ job: LaunchJob, record: TaskRecord, outcome: TaskOutcome, reporter: StageReporter) async throws
        -> StageOutSummary
}

/// Stage-in for a node that fetches nothing: plans with a `source` are declined, never run without their code.
public struct NoStageIn: StageIn {
    public init() {}
    public func check(_ plan: ToolPlan) -> String? {
        switch plan.source {
        case nil: nil
        case .git?: "this node cannot fetch git sources (git stage-in is not enabled)"
        case .files?: "this node cannot download task files (HTTP stage-in is not enabled)"
        }
    }
    public func stageIn(_ job: LaunchJob, reporter: StageReporter) async throws {}
}
