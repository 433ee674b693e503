import FEMCore
import FEMSystem
import Foundation
import Synchronization

/// Node settings for the `slurm` launcher (`[launchers.slurm]`).
public struct SlurmLauncherConfig: Sendable {
    /// A folder every compute node mounts at the same path; the node's work dir (its sandboxes) must be inside it.
    public var sharedDir: String
    /// The partition jobs go to ("" : the cluster's default), and the ones a job may use.
    public var partition: String
    public var allowedPartitions: [String]
    public var account: String
    public var qos: String
    /// The accounts and QOS a plan may pick (`resources.account`, `resources.qos`), as `allowedPartitions`.
    public var allowedAccounts: [String] = []
    public var allowedQOS: [String] = []
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
    /// How often the jobs' states are read (one `squeue` for all followed jobs per interval, serving every `wait`
    /// and the queue notices; `scontrol` once per job when it ended).
    public var pollInterval: Duration
    /// How long Slurm may stay unreachable before a job is given up (and cancelled); at least SlurmctldTimeout.
    public var unreachableTolerance: Duration
    /// The longest a client command (sbatch, scontrol, squeue, scancel) may take before it is killed.
    public var commandTimeout: Duration
    /// The node's id: in every job's name and comment (`fem-task:<node>:<task>`), so that a node only ever finds and
    /// cancels its own jobs.
    public var nodeID: String
    /// How a plan that names an image runs: `none` (such plans are declined) or `podman` (a job running rootless
    /// `podman run` as the job's user, locked down as the docker launcher's containers).
    public var containerRuntime = "none"
    public var podman = "/usr/bin/podman"
    /// Images such plans may name, with the docker launcher's patterns (`launchers.docker.allowed_images`).
    public var allowedImages: [String] = []
    /// Registries (`host[:port]`) podman pulls from without TLS (a test registry on loopback).
    public var insecureRegistries: [String] = []
    public var pidsLimit = 256
    public var tmpfsMB = 64
    /// Dataset id → host path (bind-mounted read-only into containers at the same path).
    public var datasets: [String: String] = [:]

    public init(sharedDir: String = "", partition: String = "", allowedPartitions: [String] = [], account: String = "",
                qos: String = "", maxCPUs: Int = 2, defaultMemoryMB: Int = 512, maxMemoryMB: Int = 8192,
                allowedExecutables: [String] = [], path: String = "/usr/local/bin:/usr/bin:/bin", user: TaskUser? = nil,
                slurmConf: String = "", sbatch: String = "/usr/bin/sbatch", squeue: String = "/usr/bin/squeue",
                scontrol: String = "/usr/bin/scontrol", scancel: String = "/usr/bin/scancel",
                pollInterval: Duration = .seconds(1), unreachableTolerance: Duration = .seconds(300),
                commandTimeout: Duration = .seconds(120), nodeID: String = "") {
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
        self.unreachableTolerance = unreachableTolerance
        self.commandTimeout = commandTimeout
        self.nodeID = nodeID
    }

    /// `path` with every symlink resolved; for a path that does not exist yet, its nearest existing ancestor is
    /// resolved and the rest appended.
    public static func resolved(_ path: String) -> String {
        if let real = try? Posix.realpath(path) { return real }
        let url = URL(fileURLWithPath: path)
        let parent = url.deletingLastPathComponent().path
        guard parent != path, !parent.isEmpty else { return path }
        let base = resolved(parent)
        return (base.hasSuffix("/") ? base : base + "/") + url.lastPathComponent
    }

    /// True when `path` is `dir` or inside it, both compared resolved (a symlink cannot lead out).
    public static func isInside(_ path: String, _ dir: String) -> Bool {
        let p = resolved(path), d = resolved(dir)
        return p == d || p.hasPrefix(d.hasSuffix("/") ? d : d + "/")
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
        if !Self.isInside(workDir, sharedDir) {
            return "launchers.slurm.shared_dir: the node's work dir \(workDir) (\(Self.resolved(workDir))) is not "
                + "inside \(sharedDir) (\(Self.resolved(sharedDir))), so compute "
                + "nodes could not reach the tasks' sandboxes; put node.work_dir on the shared filesystem"
        }
        for (key, value, allowed) in [("partition", partition, allowedPartitions), ("account", account, allowedAccounts),
                                      ("qos", qos, allowedQOS)]
            where !value.isEmpty && !allowed.isEmpty && !allowed.contains(value) {
            return "launchers.slurm.\(key): \"\(value)\" is not in launchers.slurm.allowed_\(key == "qos" ? "qos" : key + "s")"
        }
        for (key, tool) in [("sbatch", sbatch), ("squeue", squeue), ("scontrol", scontrol), ("scancel", scancel)]
            where !Posix.isExecutableFile(tool) {
            return "launchers.slurm.\(key): \(tool) is not an executable file (apt-get install slurm-client)"
        }
        if containerRuntime == "podman", !Posix.isExecutableFile(podman) {
            return "launchers.slurm.podman: \(podman) is not an executable file (apt-get install podman uidmap "
                + "catatonit), and launchers.slurm.container_runtime is \"podman\""
        }
        return nil
    }
}

/// Runs each task as one Slurm batch job (`sbatch`), on the cluster the site already runs:
/// - the job script (written by the node into the sandbox's `logs/`, which only the daemon may change) runs the
///   plan's argv with `env -i` and exactly the plan's checked environment, every item single-quoted, so no value is
///   ever read by a shell; `--export=NONE` keeps the daemon's environment out of the job;
/// - `--chdir` the sandbox's working directory, `--output/--error` the sandbox's log files (followed by the runner
///   for the reporter protocol as for the other launchers), job name and comment `fem-task:<node>:<task>`;
/// - resources from the plan capped by the node (`--cpus-per-task`, `--mem`, `--gres=gpu:N`, `--time`), the
///   partition the plan picks (`resources.partition`) among `allowed_partitions`, account and QOS from the node
///   config; `--no-requeue`, so Slurm itself never runs a job twice;
/// - a plan that names an image runs in rootless podman inside the job (`container_runtime = "podman"`, see
///   SlurmContainerScript), and is declined where the node runs no containers on Slurm;
/// - as `launchers.slurm.user` (`--uid/--gid`), never as root; the sandbox is the task user's while the job runs and
///   given back to the daemon after, as for host processes. Memory, CPU and process limits are Slurm's (its cgroups
///   on the compute node); the network is the compute node's (Slurm has no per-job network isolation).
/// The jobs are followed with one `squeue --jobs=…` per poll for all of them, and `scontrol show job` (22.05: no
/// `--json`; `sacct` needs slurmdbd) for a job squeue lists as ended or no longer lists, until it ends; a
/// restarted daemon follows the journaled job id again, or collects how it ended, and never submits it again.
public final class SlurmLauncher: QueuedLauncher, Sendable {
    public let name = "slurm"
    private let config: SlurmLauncherConfig
    /// Each followed job's last state, as `wait` read it (the queue notices read it here).
    private let phases = Mutex<[String: SlurmJobInfo.Phase]>([:])
    /// The jobs `wait` follows (job id → how many waits follow it): what each poll's one `squeue` lists.
    private let followed = Mutex<[String: Int]>([:])
    /// The last `squeue` of the followed jobs: when it began, and its answer, shared by every wait that asks within
    /// half a poll interval (so one squeue per interval serves all the node's jobs).
    private let listing = Mutex<(began: ContinuousClock.Instant, rows: Task<[String: SlurmJobInfo], any Error>)?>(nil)

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
        // The script runs the resolved path, which env(1) must not take for a variable either.
        guard !resolved.contains("=") else {
            return .failure(PolicyDecline("command.base[0]: \"\(program)\" resolves to \(resolved), which contains "
                                          + "\"=\"; env would read it as a variable, so this node cannot run it"))
        }
        let allowed = Set(config.allowedExecutables.compactMap(ProcessLauncher.resolvedExecutable))
        guard allowed.contains(resolved) else {
            return .failure(PolicyDecline("executable \"\(program)\" (\(resolved)) is not in this node's "
                                          + "launchers.slurm.allowed_executables"))
        }
        return .success(resolved)
    }

    public func policyCheck(_ job: LaunchJob) -> String? {
        if job.task.plan.image != nil {
            if let why = containerProblem(job) { return why }
        } else if case .failure(let d) = authorize(job) {
            return d.reason
        }
        if !SlurmLauncherConfig.isInside(job.sandbox.sandbox, config.sharedDir) {
            return "the sandbox \(job.sandbox.sandbox) is not under launchers.slurm.shared_dir (\(config.sharedDir))"
        }
        if case .failure(let d) = placement(for: job) { return d.reason }
        return nil
    }

    /// Where the job goes: partition, account and QOS, each the plan's when it is one of the node's allowed ones
    /// (compared as parsed names, exactly), else the node's setting, else the first allowed one, else "" (the
    /// cluster's default). A plan asking for one the node does not allow is declined, naming it and the allowed ones.
    struct Placement: Equatable {
        var partition: String
        var account: String
        var qos: String
    }

    func placement(for job: LaunchJob) -> Result<Placement, PolicyDecline> {
        let r = job.task.plan.resources
        let choices = [
            Self.choose(r.partition, field: "resources.partition", noun: "a partition", key: "allowed_partitions",
                        setting: config.partition, allowed: config.allowedPartitions),
            Self.choose(r.account, field: "resources.account", noun: "an account", key: "allowed_accounts",
                        setting: config.account, allowed: config.allowedAccounts),
            Self.choose(r.qos, field: "resources.qos", noun: "a QOS", key: "allowed_qos",
                        setting: config.qos, allowed: config.allowedQOS),
        ]
        var chosen: [String] = []
        for choice in choices {
            switch choice {
            case .success(let name): chosen.append(name)
            case .failure(let decline): return .failure(decline)
            }
        }
        return .success(Placement(partition: chosen[0], account: chosen[1], qos: chosen[2]))
    }

    /// One of `placement`'s choices. The names a plan may pick: `allowed`, else only the node's `setting`.
    static func choose(_ asked: String?, field: String, noun: String, key: String, setting: String,
                       allowed configured: [String]) -> Result<String, PolicyDecline> {
        guard let asked else { return .success(setting.isEmpty ? configured.first ?? "" : setting) }
        let allowed = configured.isEmpty ? (setting.isEmpty ? [] : [setting]) : configured
        if allowed.contains(asked) { return .success(asked) }
        return .failure(PolicyDecline("\(field): \"\(asked)\" is not \(noun) this node's jobs may use "
                                      + "(launchers.slurm.\(key): " + (allowed.isEmpty ? "none" : allowed.joined(separator: ", ")) + ")"))
    }

    /// Why a plan that names an image cannot run here, or nil: containers need `container_runtime = "podman"`, an
    /// allowed image, no host network and no GPUs (podman on the compute node is given none).
    func containerProblem(_ job: LaunchJob) -> String? {
        let plan = job.task.plan
        guard let image = plan.image else { return nil }
        guard config.containerRuntime == "podman" else {
            return "the plan names an image (\(image)), and this node runs no containers on Slurm "
                + "(launchers.slurm.container_runtime is \"\(config.containerRuntime)\"; \"podman\" runs them)"
        }
        if let why = SlurmContainerScript.imageProblem(image) { return why }
        // The docker launcher's patterns, and its matching.
        let allowlist = DockerLauncherConfig(socket: "", allowedImages: config.allowedImages, user: "", pidsLimit: 0,
                                             defaultMemoryMB: 0, maxMemoryMB: 0, maxCPUs: 0, tmpfsMB: 0,
                                             allowHostNetwork: false, allowGPUs: false, nodeID: "", datasets: [:])
        if !allowlist.allows(image: image) {
            return "image \"\(image)\" is not on this node's allowlist (launchers.slurm.allowed_images)"
        }
        if plan.network == .host {
            return "the plan asks for the host network; containers on Slurm run without a network"
        }
        if let gpus = plan.resources.gpus, gpus > 0 {
            return "the plan asks for \(gpus) GPU(s); containers on Slurm are given none on this node"
        }
        if job.command.argv.first?.isEmpty ?? true { return "command.base: the command is empty" }
        if SlurmContainerScript.envFile(containerEnvironment(job)) == nil {
            return "env: a value holds a line break, which cannot be passed to a container on Slurm"
        }
        for m in containerMounts(job) where m.path.contains(",") || m.path.contains("=") {
            return "the path \(m.path) holds \",\" or \"=\", so it cannot be bind-mounted into a container"
        }
        return nil
    }

    /// What the container gets: the plan's checked environment, HOME in its tmpfs unless the plan sets one.
    func containerEnvironment(_ job: LaunchJob) -> [String: String] {
        var env = job.command.environment
        env["HOME"] = env["HOME"] ?? "/tmp"
        return env
    }

    /// The sandbox's folders and the plan's datasets, at their host paths (the paths the command was rendered with).
    func containerMounts(_ job: LaunchJob) -> [SlurmContainerScript.Mount] {
        var mounts = [SlurmContainerScript.Mount(path: job.sandbox.src, writable: false),
                      SlurmContainerScript.Mount(path: job.sandbox.input, writable: false),
                      SlurmContainerScript.Mount(path: job.sandbox.output, writable: true)]
        for id in job.command.datasets.sorted() {
            if let host = config.datasets[id] { mounts.append(SlurmContainerScript.Mount(path: host, writable: false)) }
        }
        return mounts
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

    /// One client command, killed past `commandTimeout` or when the calling task is cancelled. `shielded`: it runs
    /// to its end (or deadline) even when the caller is cancelled (cleanup: scancel, and the query before it).
    private func client(_ tool: String, _ args: [String], shielded: Bool = false) async throws -> CommandResult {
        let env = clientEnvironment, deadline = config.commandTimeout
        let run: @Sendable () async throws -> CommandResult = {
            try await ChildProcess.run(executable: tool, arguments: args, environment: env, deadline: deadline)
        }
        do {
            return shielded ? try await Task { try await run() }.value : try await run()
        } catch let e as CancellationError {
            throw e
        } catch {
            throw TaskFailure(.runnerSystemFailure, "cannot run \(tool): \(error)")
        }
    }

    /// scancel; nil when Slurm took the request, else why not.
    private func cancel(_ jobID: String) async -> String? {
        do {
            let r = try await client(config.scancel, [jobID], shielded: true)
            return r.succeeded ? nil : "scancel \(jobID) failed: \(r.diagnostic)"
        } catch {
            return "\(error)"
        }
    }

    /// The ids of this node's jobs for the task in `states`: listed by name and user, and kept only when their
    /// comment is exactly this node's for this task (never another node's job for the same task).
    func findJobs(taskID: String, states: String) async throws -> [String] {
        let uid = config.user?.uid ?? Posix.effectiveUserID
        let r = try await client(config.squeue, [
            "-h", "--states=\(states)", "--name=\(SlurmJobScript.jobName(nodeID: config.nodeID, taskID: taskID))",
            "--user=\(uid)", "--format=%i %k"], shielded: true)
        guard r.succeeded else { throw TaskFailure(.runnerSystemFailure, "squeue failed: \(r.diagnostic)") }
        return SlurmJobScript.jobIDs(inSqueue: r.stdout,
                                     comment: SlurmJobScript.comment(nodeID: config.nodeID, taskID: taskID))
    }

    public func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        if let why = policyCheck(job) { throw TaskFailure(.taskFailure, why) }
        var executable = ""
        if job.task.plan.image == nil {
            switch authorize(job) {
            case .success(let path): executable = path
            case .failure(let d): throw TaskFailure(.taskFailure, d.reason)
            }
        }
        let placement: Placement
        switch self.placement(for: job) {
        case .success(let p): placement = p
        case .failure(let d): throw TaskFailure(.taskFailure, d.reason)
        }
        let partition = placement.partition
        let taskID = job.task.taskID
        let script = "\(job.sandbox.logs)/slurm-job.sh"
        do {
            let fm = FileManager.default
            try fm.createDirectory(atPath: job.sandbox.logs, withIntermediateDirectories: true)
            for name in ["home", "tmp"] {
                try fm.createDirectory(atPath: "\(job.sandbox.sandbox)/\(name)", withIntermediateDirectories: true)
            }
            let text: String
            if let image = job.task.plan.image {
                // An image the tool registry pinned is pulled and run by its digest in the job: only the approved
                // content can run, wherever the tag points now.
                text = try writeContainerFiles(job, image: job.trust.imageDigest.map {
                    DockerEngine.repository(image) + "@" + $0 } ?? image)
            } else {
                text = SlurmJobScript.render(taskID: taskID, argv: [executable] + job.command.argv.dropFirst(),
                                             environment: environment(job))
            }
            // 0600: it holds the task's environment and arguments. sbatch (run as root) reads it at submission and
            // Slurm keeps its own copy, so the job (as the task user) never reads this file.
            try Posix.writeFileAtomically(script, Array(text.utf8), mode: 0o600)
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
            nodeID: config.nodeID, taskID: taskID, script: script, workingDirectory: job.command.workingDirectory, stdout: job.stdoutPath,
            stderr: job.stderrPath, request: request, partition: partition, account: placement.account,
            qos: placement.qos, user: config.user.map { ($0.uid, $0.gid) })
        let submitted: CommandResult
        do {
            submitted = try await client(config.sbatch, args)
        } catch {
            takeBack(job.sandbox.sandbox)
            throw error
        }
        var parsed = submitted.succeeded ? SlurmJobScript.parseJobID(submitted.stdout) : nil
        if submitted.succeeded, parsed == nil {
            // Submitted, but sbatch's answer holds no id: the job is found by its name and comment, and followed.
            let found: [String]
            do {
                found = try await findJobs(taskID: taskID, states: "all")
            } catch {
                takeBack(job.sandbox.sandbox)
                throw TaskFailure(.runnerSystemFailure, "sbatch accepted the job but printed no job id "
                                  + "(\"\(submitted.diagnostic)\"), and Slurm could not be asked for it: \(error)")
            }
            guard found.count == 1 else {
                var problems: [String] = []
                for id in found { if let why = await cancel(id) { problems.append(why) } }
                takeBack(job.sandbox.sandbox)
                throw TaskFailure(.runnerSystemFailure, "sbatch accepted the job but printed no job id "
                                  + "(\"\(submitted.diagnostic)\"), and Slurm lists \(found.count) jobs of this task"
                                  + (found.isEmpty ? "" : problems.isEmpty ? "; they were cancelled"
                                     : "; cancelling them failed: " + problems.joined(separator: "; ")))
            }
            parsed = found[0]
        }
        guard submitted.succeeded, let jobID = parsed else {
            takeBack(job.sandbox.sandbox)
            throw TaskFailure(.taskFailure, "Slurm refused the job (asked: \(request.cpus) CPUs, \(request.memoryMB) MB"
                              + (request.gpus > 0 ? ", \(request.gpus) GPUs" : "")
                              + (partition.isEmpty ? "" : ", partition \(partition)") + "): "
                              + submitted.diagnostic)
        }
        let handle = LaunchHandle(launcher: name, state: SlurmJobState(
            jobID: jobID, jobName: SlurmJobScript.jobName(nodeID: config.nodeID, taskID: taskID),
            sandbox: job.sandbox.sandbox))
        do {
            try await persist(handle)
        } catch {
            // Submitted, then persisted, or cancelled: no job runs that nobody follows.
            let refused = await cancel(jobID)
            takeBack(job.sandbox.sandbox)
            throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .runnerSystemFailure,
                              "cannot record the Slurm job's handle (\(error)), so job \(jobID) "
                              + (refused.map { "should have been cancelled, but it may still run: \($0)" }
                                 ?? "was cancelled"))
        }
        return handle
    }

    /// The files a container job reads besides its script, in the sandbox's `logs/` (the daemon's folder, 0711, so
    /// they cannot be swapped for links): the environment file (the job user's, 0400: it may hold the plan's
    /// values) and podman's registries.conf (0644). Returns the job script.
    private func writeContainerFiles(_ job: LaunchJob, image: String) throws -> String {
        let envFile = "\(job.sandbox.logs)/container.env", registries = "\(job.sandbox.logs)/registries.conf"
        guard let env = SlurmContainerScript.envFile(containerEnvironment(job)) else {
            throw TaskFailure(.taskFailure, "env: a value holds a line break, which cannot be passed to a container")
        }
        try Posix.writeFileAtomically(envFile, Array(env.utf8), mode: 0o400)
        if let user = config.user { try Posix.chown(envFile, uid: user.uid, gid: user.gid) }
        try Posix.writeFileAtomically(registries, Array(SlurmContainerScript.registriesConf(
            insecure: config.insecureRegistries).utf8), mode: 0o644)
        let container = SlurmContainerScript.Container(
            podman: config.podman, image: SlurmContainerScript.qualified(image), argv: job.command.argv,
            workingDirectory: job.command.workingDirectory, mounts: containerMounts(job), envFile: envFile,
            registriesConf: registries, uid: config.user?.uid ?? Posix.effectiveUserID,
            gid: config.user?.gid ?? Posix.effectiveGroupID, pidsLimit: config.pidsLimit, tmpfsMB: config.tmpfsMB)
        return SlurmContainerScript.render(taskID: job.task.taskID, container: container)
    }

    /// The job's state now; nil when Slurm no longer knows the job (older than MinJobAge, or never there).
    func query(_ jobID: String, shielded: Bool = false) async throws -> SlurmJobInfo? {
        let r = try await client(config.scontrol, ["show", "job", "-o", jobID], shielded: shielded)
        if r.succeeded, let info = SlurmJobInfo.parse(r.stdout) { return info }
        if r.diagnostic.contains("Invalid job id") { return nil }
        throw TaskFailure(.runnerSystemFailure, "scontrol show job \(jobID) failed: \(r.diagnostic)")
    }

    /// The states and reasons of every followed job, from one `squeue --jobs=<all of them>` (a fixed `--format`:
    /// Slurm 22.05's `squeue --json` ignores `--jobs` and `--user` and would list every job of the cluster).
    func listed() async throws -> [String: SlurmJobInfo] {
        let now = ContinuousClock.now, fresh = config.pollInterval / 2
        let rows = listing.withLock { last -> Task<[String: SlurmJobInfo], any Error> in
            if let last, now - last.began < fresh { return last.rows }
            let ids = followed.withLock { $0.keys.sorted() }
            let task = Task { try await self.squeue(ids) }
            last = (now, task)
            return task
        }
        return try await rows.value
    }

    func squeue(_ ids: [String]) async throws -> [String: SlurmJobInfo] {
        guard !ids.isEmpty else { return [:] }
        let r = try await client(config.squeue, ["-h", "--states=all", "--jobs=\(ids.joined(separator: ","))",
                                                 "--format=%i|%T|%r"])
        if r.succeeded { return SlurmJobInfo.parse(squeue: r.stdout) }
        // One id that Slurm no longer knows (squeue answers so only when all the listed ids are unknown).
        if r.diagnostic.contains("Invalid job id") { return [:] }
        throw TaskFailure(.runnerSystemFailure, "squeue failed: \(r.diagnostic)")
    }

    /// A followed job's state: squeue's while it is pending or running; once it ended, or when squeue no longer
    /// lists it, `scontrol show job` (which has its exit code and signal).
    func followedState(_ jobID: String) async throws -> SlurmJobInfo? {
        if let info = try await listed()[jobID] {
            switch info.phase {
            case .pending, .running: return info
            case .ended: break
            }
        }
        return try await query(jobID)
    }

    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
        let state = try handle.state(as: SlurmJobState.self)
        followed.withLock { $0[state.jobID, default: 0] += 1 }
        defer {
            phases.withLock { _ = $0.removeValue(forKey: state.jobID) }
            followed.withLock {
                let left = ($0[state.jobID] ?? 1) - 1
                $0[state.jobID] = left > 0 ? left : nil
            }
        }
        var unreachableSince: ContinuousClock.Instant?
        while true {
            try Task.checkCancellation()
            let info: SlurmJobInfo?
            do {
                info = try await followedState(state.jobID)
                unreachableSince = nil
            } catch let e as CancellationError {
                throw e
            } catch {
                // slurmctld restarting or unreachable: keep asking for unreachable_seconds (the job is cancelled
                // by destroy when it is given up).
                let since = unreachableSince ?? ContinuousClock.now
                unreachableSince = since
                if ContinuousClock.now - since >= config.unreachableTolerance {
                    throw TaskFailure(.runnerSystemFailure, "Slurm did not answer about job \(state.jobID) for "
                                      + "\(config.unreachableTolerance.components.seconds) s "
                                      + "(launchers.slurm.unreachable_seconds): \(error)")
                }
                try await Task.sleep(for: config.pollInterval)
                continue
            }
            guard let info else {
                takeBack(state.sandbox)
                throw TaskFailure(.runnerSystemFailure, "Slurm no longer knows job \(state.jobID)")
            }
            // The queue-state loop reads this: one squeue per interval serves every job's wait and notices.
            phases.withLock { $0[state.jobID] = info.phase }
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
        _ = await cancel(state.jobID)
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            if let info = try? await query(state.jobID), case .ended = info.phase { return }
            try? await Task.sleep(for: .milliseconds(100))
        }
        _ = try? await client(config.scancel, ["--signal=KILL", "--full", state.jobID], shielded: true)
    }

    public func destroy(_ handle: LaunchHandle) async {
        guard let state = try? handle.state(as: SlurmJobState.self) else { return }
        // scancel unless Slurm says the job ended (cancelling an ended job is harmless): a job whose state is
        // unknown (Slurm unreachable) is never left running unsupervised.
        if let info = try? await query(state.jobID, shielded: true), case .ended = info.phase {} else {
            _ = await cancel(state.jobID)
        }
        takeBack(state.sandbox)
    }

    /// A pending job's reason (`Resources`, `Priority`, a limit), for the runner's `notice`; Slurm's `None` (not
    /// yet looked at by the scheduler) is no reason.
    public func queueState(_ handle: LaunchHandle) async -> QueueState {
        guard let state = try? handle.state(as: SlurmJobState.self) else { return .started }
        // What `wait` read last (no scontrol of its own); nothing yet: still waiting, for no known reason.
        guard let phase = phases.withLock({ $0[state.jobID] }) else { return .waiting(nil) }
        if case .pending(let reason) = phase { return .waiting(reason == "None" ? nil : reason) }
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
                // Slurm unreachable for now: the job may still run and write into the sandbox. It is followed:
                // wait keeps asking for unreachable_seconds, and destroy cancels it if it is given up.
                return .running
            }
        }
        // Only this node's jobs for this task (name, user and comment), never another node's for the same task.
        var problems: [String] = []
        do {
            for id in try await findJobs(taskID: job.task.taskID,
                                         states: "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED") {
                if let why = await cancel(id) { problems.append(why) }
            }
        } catch {
            problems.append("cannot list the task's jobs: \(error)")
        }
        takeBack(job.sandbox.sandbox)
        return .lost("the daemon stopped before it recorded the Slurm job; "
                     + (problems.isEmpty ? "any job it submitted was cancelled"
                        : "a job it submitted may still run: " + problems.joined(separator: "; ")))
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
