/// The life of a task on a node. `rejected` and `declined` end a task before it ever runs.
public enum TaskState: String, Sendable, Codable, CaseIterable {
    case received
    /// Admitted, waiting for the node's resources or a free slot (`Runner` starts it when they fit).
    case queued
    case stagingIn = "staging_in"
    case running
    case stagingOut = "staging_out"
    case awaitingApproval = "awaiting_approval"
    case completed
    case failed
    case cancelled
    case rejected
    case declined

    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .cancelled, .rejected, .declined: true
        default: false
        }
    }

    /// The transitions the runner may make. Anything else is a programming error caught by the journal.
    public func canMove(to next: TaskState) -> Bool {
        switch (self, next) {
        case (.received, .stagingIn), (.received, .declined), (.received, .cancelled), (.received, .failed):
            true
        case (.received, .queued), (.queued, .stagingIn), (.queued, .declined), (.queued, .cancelled), (.queued, .failed):
            true
        case (.stagingIn, .running), (.stagingIn, .declined), (.stagingIn, .failed), (.stagingIn, .cancelled),
             (.stagingIn, .stagingOut):
            true
        case (.running, .stagingOut), (.running, .failed), (.running, .cancelled):
            true
        case (.stagingOut, .awaitingApproval), (.stagingOut, .completed), (.stagingOut, .failed),
             (.stagingOut, .cancelled):
            true
        case (.awaitingApproval, .stagingOut), (.awaitingApproval, .completed), (.awaitingApproval, .failed),
             (.awaitingApproval, .cancelled):
            true
        default:
            false
        }
    }
}

/// Why a task failed, as GitLab Runner classifies job failures: the orchestrator can tell the tool's fault
/// from the node's.
public enum FailureClass: String, Sendable, Codable, CaseIterable {
    case taskFailure = "task_failure"
    case timeout
    case stageInFailure = "stage_in_failure"
    case stageOutFailure = "stage_out_failure"
    case runnerSystemFailure = "runner_system_failure"
    case nodeRestart = "node_restart"
    case outOfMemory = "out_of_memory"
    /// The work could not reach its server (a Flower SuperLink) for longer than the node allows.
    case serverUnreachable = "server_unreachable"
    /// A write on the node failed because its filesystem is full (work dir, logs, journal): the node's fault, with
    /// the real cause in the message.
    case nodeDiskFull = "node_disk_full"
    /// The cluster node running the work failed (a Slurm job ended `NODE_FAIL`): not the task's fault.
    case nodeFailure = "node_failure"
    /// The cluster scheduler took the work's resources for other work (a Slurm job ended `PREEMPTED`).
    case preempted
}
