import FEMCore
import FEMSystem
import Foundation

/// Node settings for the `slurm` launcher (`[launchers.slurm]`).
public struct SlurmLauncherConfig: Sendable {
    /// A folder every compute node mounts at the same path; the node's work dir (its sandboxes) must be inside it.
    public var sharedDir: String
    /// The partition jobs go to ("" : the cluster's default), and the ones a job may use.
    public var partition: String
    public var allowedPartitions: [String]
    public var account: String
    public var qos: String
    /// Caps on what a plan may ask (the plan's request is lowered to these).
    public var maxCPUs: Int
    public var defaultMemoryMB: Int
    public var maxMemoryMB: Int
    /// Programs tasks may run (absolute paths, compared resolved), as `launchers.process.allowed_executables`.
    public var allowedExecutables: [String]
    /// The PATH the job's program gets.
    public var path: String
    /// Who the jobs run as (`sbatch --uid/--gid`); nil only for library callers (the daemon's own user).
    public var user: TaskUser?
    /// `SLURM_CONF` for the client commands ("": Slurm's default, /etc/slurm/slurm.conf).
    public var slurmConf: String
    public var sbatch: String
    public var squeue: String
    public var scontrol: String
    public var scancel: String
    public var pollInterval: Duration

    public init(sharedDir: String = "", partition: String = "", allowedPartitions: [String] = [], account: String = "",
                qos: String = "", maxCPUs: Int = 2, defaultMemoryMB: Int = 512, maxMemoryMB: Int = 8192,
                allowedExecutables: [String] = [], path: String = "/usr/local/bin:/usr/bin:/bin", user: TaskUser? = nil,
                slurmConf: String = "", sbatch: String = "/usr/bin/sbatch", squeue: String = "/usr/bin/squeue",
                scontrol: String = "/usr/bin/scontrol", scancel: String = "/usr/bin/scancel",
                pollInterval: Duration = .milliseconds(250)) {
        self.sharedDir = sharedDir
        self.partition = partition
        self.allowedPartitions = allowedPartitions
        self.account = account
        self.qos = qos
        self.maxCPUs = maxCPUs
        self.defaultMemoryMB = defaultMemoryMB
        self.maxMemoryMB = maxMemoryMB
        self.allowedExecutables = allowedExecutables
        self.path = path
        self.user = user
        self.slurmConf = slurmConf
        self.sbatch = sbatch
        self.squeue = squeue
        self.scontrol = scontrol
        self.scancel = scancel
        self.pollInterval = pollInterval
    }

    /// Why the daemon must not start with this launcher enabled (naming the key), or nil. Jobs never run as root:
    /// Slurm runs a job as the user who submits it, and the daemon (root, to hand sandboxes to the task user)
    /// submits every job with `--uid/--gid` of `launchers.slurm.user`.
    public func refusal(workDir: String) -> String? {
        if user == nil && Posix.effectiveUserID == 0 {
            return "launchers.slurm.user: no task user is configured, so Slurm jobs would run as root; set an "
                + "unprivileged user (such as fem-task) that exists on every compute node"
        }
        if let user, Posix.effectiveUserID != 0 {
            return "launchers.slurm.user: the daemon runs as uid \(Posix.effectiveUserID), not root, so it cannot "
                + "submit jobs as \(user.name) nor hand it the sandboxes; run the daemon as root"
        }
        guard sharedDir.hasPrefix("/") else {
            return "launchers.slurm.shared_dir: must be the absolute path of a folder every compute node mounts "
                + "(got \"\(sharedDir)\")"
        }
        let shared = sharedDir.hasSuffix("/") ? sharedDir : sharedDir + "/"
        if !(workDir + "/").hasPrefix(shared) {
            return "launchers.slurm.shared_dir: the node's work dir \(workDir) is not inside \(sharedDir), so compute "
                + "nodes could not reach the tasks' sandboxes; put node.work_dir on the shared filesystem"
        }
        if !partition.isEmpty, !allowedPartitions.isEmpty, !allowedPartitions.contains(partition) {
            return "launchers.slurm.partition: \"\(partition)\" is not in launchers.slurm.allowed_partitions"
        }
        for (key, tool) in [("sbatch", sbatch), ("squeue", squeue), ("scontrol", scontrol), ("scancel", scancel)]
            where !Posix.isExecutableFile(tool) {
            return "launchers.slurm.\(key): \(tool) is not an executable file (apt-get install slurm-client)"
        }
        return nil
    }
}

/// Runs each task as one Slurm batch job (`sbatch`), on the cluster the site already runs:
/// - the job script (written by the node into the sandbox's `logs/`, which only the daemon may change) runs the
///   plan's argv with `env -i` and exactly the plan's checked environment, every item single-quoted, so no value is
///   ever read by a shell; `--export=NONE` keeps the daemon's environment out of the job;
/// - `--chdir` the sandbox's working directory, `--output/--error` the sandbox's log files (followed by the runner
///   for the reporter protocol as for the other launchers), job name `fem-<task>` and `--comment=fem-task:<task>`;
/// - resources from the plan capped by the node (`--cpus-per-task`, `--mem`, `--gres=gpu:N`, `--time`), partition,
///   account and QOS from the node config; `--no-requeue`, so Slurm itself never runs a job twice;
/// - as `launchers.slurm.user` (`--uid/--gid`), never as root; the sandbox is the task user's while the job runs and
///   given back to the daemon after, as for host processes. Memory, CPU and process limits are Slurm's (its cgroups
///   on the compute node); the network is the compute node's (Slurm has no per-job network isolation).
/// The job is followed with `scontrol show job` (22.05: no `--json`; `sacct` needs slurmdbd) until it ends; a
/// restarted daemon follows the journaled job id again, or collects how it ended, and never submits it again.
public final class SlurmLauncher: QueuedLauncher, Sendable {
    public let name = "slurm"
    private let config: SlurmLauncherConfig

    public init(config: SlurmLauncherConfig) {
        self.config = config
    }

    public func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths { sandbox }

    public func datasetPath(id: String, hostPath: String) -> String { hostPath }

    /// The program, resolved and checked against `allowed_executables` (as the process launcher does).
    func authorize(_ job: LaunchJob) -> Result<String, PolicyDecline> {
        guard let program = job.command.argv.first, !program.isEmpty else {
            return .failure(PolicyDecline("command.base: the command is empty"))
        }
        guard program.hasPrefix("/"), !program.contains("=") else {
            return .failure(PolicyDecline("command.base[0]: \"\(program)\" is not an absolute path (without \"=\"); "
                                          + "this node runs only programs listed in launchers.slurm.allowed_executables"))
        }
        guard !config.allowedExecutables.isEmpty else {
            return .failure(PolicyDecline("this node allows no programs for Slurm jobs "
                                          + "(launchers.slurm.allowed_executables is empty)"))
        }
        guard let resolved = ProcessLauncher.resolvedExecutable(program) else {
            return .failure(PolicyDecline("executable \"\(program)\" is not an executable file on this node"))
        }
        let allowed = Set(config.allowedExecutables.compactMap(ProcessLauncher.resolvedExecutable))
        guard allowed.contains(resolved) else {
            return .failure(PolicyDecline("executable \"\(program)\" (\(resolved)) is not in this node's "
                                          + "launchers.slurm.allowed_executables"))
        }
        return .success(resolved)
    }

    public func policyCheck(_ job: LaunchJob) -> String? {
        if case .failure(let d) = authorize(job) { return d.reason }
        let shared = config.sharedDir.hasSuffix("/") ? config.sharedDir : config.sharedDir + "/"
        if !job.sandbox.sandbox.hasPrefix(shared) {
            return "the sandbox \(job.sandbox.sandbox) is not under launchers.slurm.shared_dir (\(config.sharedDir))"
        }
        return nil
    }

    func environment(_ job: LaunchJob) -> [String: String] {
        var env = job.command.environment
        env["PATH"] = config.path
        env["HOME"] = config.user == nil ? job.sandbox.sandbox : "\(job.sandbox.sandbox)/home"
        env["TMPDIR"] = env["TMPDIR"] ?? "\(job.sandbox.sandbox)/tmp"
        env["LANG"] = env["LANG"] ?? "C.UTF-8"
        return env
    }

    /// The environment of the client commands: only Slurm's config path and a PATH.
    private var clientEnvironment: [String: String] {
        var env = ["PATH": "/usr/bin:/bin", "LANG": "C"]
        if !config.slurmConf.isEmpty { env["SLURM_CONF"] = config.slurmConf }
        return env
    }

    private func client(_ tool: String, _ args: [String]) async throws -> CommandResult {
        do {
            return try await ChildProcess.run(executable: tool, arguments: args, environment: clientEnvironment)
        } catch {
            throw TaskFailure(.runnerSystemFailure, "cannot run \(tool): \(error)")
        }
    }

    public func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        let executable: String
        switch authorize(job) {
        case .success(let path): executable = path
        case .failure(let d): throw TaskFailure(.taskFailure, d.reason)
        }
        if let why = policyCheck(job) { throw TaskFailure(.taskFailure, why) }
        let taskID = job.task.taskID
        let script = "\(job.sandbox.logs)/slurm-job.sh"
        do {
            let fm = FileManager.default
            try fm.createDirectory(atPath: job.sandbox.logs, withIntermediateDirectories: true)
            for name in ["home", "tmp"] {
                try fm.createDirectory(atPath: "\(job.sandbox.sandbox)/\(name)", withIntermediateDirectories: true)
            }
            let text = SlurmJobScript.render(taskID: taskID, argv: [executable] + job.command.argv.dropFirst(),
                                             environment: environment(job))
            try Posix.writeFileAtomically(script, Array(text.utf8), mode: 0o644)
            // Slurm's step daemon opens the log files as the job's user: they are made here and handed over; the
            // logs folder stays the daemon's (0711), so the files cannot be swapped for links.
            for log in [job.stdoutPath, job.stderrPath] {
                try Posix.writeFileAtomically(log, [], mode: 0o600)
                if let user = config.user { try Posix.chown(log, uid: user.uid, gid: user.gid) }
            }
            if let user = config.user {
                try SandboxOwnership.give(job.sandbox, to: user)
                try Posix.chmod(job.sandbox.logs, mode: 0o711)
            }
        } catch {
            takeBack(job.sandbox.sandbox)
            if let failure = error as? TaskFailure { throw failure }
            throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .runnerSystemFailure,
                              "cannot prepare the Slurm job: \(error)")
        }
        let request = SlurmJobScript.request(job.task.plan, timeoutSeconds: job.command.timeoutSeconds,
                                             maxCPUs: config.maxCPUs, defaultMemoryMB: config.defaultMemoryMB,
                                             maxMemoryMB: config.maxMemoryMB)
        let args = SlurmJobScript.sbatchArguments(
            taskID: taskID, script: script, workingDirectory: job.command.workingDirectory, stdout: job.stdoutPath,
            stderr: job.stderrPath, request: request, partition: config.partition, account: config.account,
            qos: config.qos, user: config.user.map { ($0.uid, $0.gid) })
        let submitted = try await client(config.sbatch, args)
        guard submitted.succeeded, let jobID = SlurmJobScript.parseJobID(submitted.stdout) else {
            takeBack(job.sandbox.sandbox)
            throw TaskFailure(.taskFailure, "Slurm refused the job (asked: \(request.cpus) CPUs, \(request.memoryMB) MB"
                              + (request.gpus > 0 ? ", \(request.gpus) GPUs" : "")
                              + (config.partition.isEmpty ? "" : ", partition \(config.partition)") + "): "
                              + submitted.diagnostic)
        }
        let handle = LaunchHandle(launcher: name, state: SlurmJobState(
            jobID: jobID, jobName: SlurmJobScript.jobName(taskID), sandbox: job.sandbox.sandbox))
        do {
            try await persist(handle)
        } catch {
            // Submitted, then persisted, or cancelled: no job runs that nobody follows.
            _ = try? await client(config.scancel, [jobID])
            takeBack(job.sandbox.sandbox)
            throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .runnerSystemFailure,
                              "cannot record the Slurm job's handle, so job \(jobID) was cancelled: \(error)")
        }
        return handle
    }

    /// The job's state now; nil when Slurm no longer knows the job (older than MinJobAge, or never there).
    func query(_ jobID: String) async throws -> SlurmJobInfo? {
        let r = try await client(config.scontrol, ["show", "job", "-o", jobID])
        if r.succeeded, let info = SlurmJobInfo.parse(r.stdout) { return info }
        if r.diagnostic.contains("Invalid job id") { return nil }
        throw TaskFailure(.runnerSystemFailure, "scontrol show job \(jobID) failed: \(r.diagnostic)")
    }

    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
        let state = try handle.state(as: SlurmJobState.self)
        var failures = 0
        while true {
            try Task.checkCancellation()
            let info: SlurmJobInfo?
            do {
                info = try await query(state.jobID)
                failures = 0
            } catch {
                // slurmctld restarting or briefly unreachable: keep asking, for a while.
                failures += 1
                if failures > 120 { throw error }
                try await Task.sleep(for: config.pollInterval)
                continue
            }
            guard let info else {
                takeBack(state.sandbox)
                throw TaskFailure(.runnerSystemFailure, "Slurm no longer knows job \(state.jobID)")
            }
            if case .ended(let outcome) = info.phase {
                takeBack(state.sandbox)
                return outcome
            }
            try await Task.sleep(for: config.pollInterval)
        }
    }

    public func stop(_ handle: LaunchHandle, grace: Duration) async {
        guard let state = try? handle.state(as: SlurmJobState.self) else { return }
        // scancel sends SIGTERM to the job's processes (then SIGKILL after Slurm's KillWait).
        _ = try? await client(config.scancel, [state.jobID])
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            if let info = try? await query(state.jobID), case .ended = info.phase { return }
            try? await Task.sleep(for: .milliseconds(100))
        }
        _ = try? await client(config.scancel, ["--signal=KILL", "--full", state.jobID])
    }

    public func destroy(_ handle: LaunchHandle) async {
        guard let state = try? handle.state(as: SlurmJobState.self) else { return }
        if let info = try? await query(state.jobID) {
            if case .ended = info.phase {} else { _ = try? await client(config.scancel, [state.jobID]) }
        }
        takeBack(state.sandbox)
    }

    /// A pending job's reason (`Resources`, `Priority`, a limit), for the runner's `notice`; Slurm's `None` (not
    /// yet looked at by the scheduler) is no reason.
    public func queueState(_ handle: LaunchHandle) async -> QueueState {
        guard let state = try? handle.state(as: SlurmJobState.self) else { return .started }
        guard let info = try? await query(state.jobID) else { return .waiting(nil) }
        if case .pending(let reason) = info.phase { return .waiting(reason == "None" ? nil : reason) }
        return .started
    }

    public var queuePollInterval: Duration { config.pollInterval }

    public func inspect(_ handle: LaunchHandle) async -> LaunchInspection {
        guard let state = try? handle.state(as: SlurmJobState.self) else {
            return LaunchInspection(state: .gone("the handle does not describe a Slurm job"))
        }
        do {
            guard let info = try await query(state.jobID) else {
                return LaunchInspection(state: .gone("Slurm no longer knows job \(state.jobID)"))
            }
            switch info.phase {
            case .pending, .running: return LaunchInspection(state: .running)
            case .ended(let outcome): return LaunchInspection(state: .exited(outcome))
            }
        } catch {
            return LaunchInspection(state: .gone("\(error)"))
        }
    }

    /// The journaled job id is followed again: a job still queued or running is waited for, one that ended while
    /// the daemon was down is collected. Nothing is submitted again. Without a handle (the daemon died between
    /// sbatch and the journal) the job is found by its name and cancelled: it cannot be followed.
    public func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        if let state = try? handle?.state(as: SlurmJobState.self) {
            do {
                guard let info = try await query(state.jobID) else {
                    takeBack(state.sandbox)
                    return .lost("Slurm no longer knows job \(state.jobID) (it ended longer ago than Slurm keeps jobs)")
                }
                switch info.phase {
                case .pending, .running: return .running
                case .ended(let outcome):
                    takeBack(state.sandbox)
                    return .exited(outcome)
                }
            } catch {
                return .lost("cannot ask Slurm about job \(state.jobID): \(error)")
            }
        }
        let name = SlurmJobScript.jobName(job.task.taskID)
        if let r = try? await client(config.squeue, ["-h", "--states=PENDING,RUNNING,SUSPENDED", "--name=\(name)",
                                                      "--format=%i"]), r.succeeded {
            for id in r.stdout.split(whereSeparator: \.isNewline) where id.allSatisfy(\.isNumber) {
                _ = try? await client(config.scancel, [String(id)])
            }
        }
        takeBack(job.sandbox.sandbox)
        return .lost("the daemon stopped before it recorded the Slurm job; any job it submitted was cancelled")
    }

    private func takeBack(_ sandbox: String) {
        guard let user = config.user else { return }
        let paths = ToolPaths.under(sandbox)
        for log in [paths.logs + "/stdout.log", paths.logs + "/stderr.log"] {
            try? Posix.chown(log, uid: Posix.realUserID, gid: Posix.realGroupID)
        }
        try? Posix.chmod(paths.logs, mode: 0o700)
        SandboxOwnership.takeBack(paths, from: user)
    }
}
