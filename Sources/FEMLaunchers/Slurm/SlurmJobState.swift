import FEMCore

/// What the `slurm` launcher journals about a submitted job: its id is all a restarted daemon needs to follow it
/// again (or collect how it ended) without submitting it a second time.
public struct SlurmJobState: LauncherState {
    public static let version = 2

    /// Slurm's job id (from `sbatch --parsable`).
    public var jobID: String
    /// The job's name, `fem-task:<node id>:<task id>`, by which a daemon that died before journaling the id finds it.
    public var jobName: String
    /// The task's sandbox (given to the task user while the job runs, and taken back when it ended).
    public var sandbox: String

    public init(jobID: String, jobName: String, sandbox: String) {
        self.jobID = jobID
        self.jobName = jobName
        self.sandbox = sandbox
    }

    /// There were no Slurm handles before typed state.
    public init?(legacy data: [String: String]) {
        guard let id = data["job_id"], let name = data["job_name"], let sandbox = data["sandbox"] else { return nil }
        self.init(jobID: id, jobName: name, sandbox: sandbox)
    }
}
