import FEMCore
import FEMJournal
import FEMLaunchers
import FEMStaging
import FEMSystem
import Foundation
import Logging

/// The one place where concrete parts are chosen and wired together, for the daemon and for `fem-client run`.
public struct NodeAssembly: Sendable {
    public let config: NodeConfig
    public let journal: SQLiteJournal
    public let registry: LauncherRegistry
    public let runner: Runner
    public let sandboxes: DirectorySandboxes

    /// `journal`: one the caller opened already (after `prepareWorkDir`), else the work dir is prepared and the
    /// journal opened here.
    public init(config: NodeConfig, journal: SQLiteJournal? = nil, logger: Logger,
                diskPressure: @escaping @Sendable (Date) -> String? = { _ in nil },
                taskEnded: @escaping @Sendable (String, TaskState, EventDetail) -> Void = { _, _, _ in },
                eventsAdded: @escaping @Sendable () -> Void) throws {
        self.config = config
        if let journal {
            self.journal = journal
        } else {
            try Self.prepareWorkDir(config)
            self.journal = try SQLiteJournal(path: config.journalPath, nodeID: config.nodeID)
        }
        registry = Self.launchers(config)
        sandboxes = DirectorySandboxes(workDir: config.workDir, retention: SandboxRetention(
            completed: .seconds(config.keepCompletedHours * 3600), other: .seconds(config.keepFailedHours * 3600)))
        var settings = RunnerSettings(
            nodeID: config.nodeID, nodeName: config.nodeName, maxConcurrentTasks: config.maxConcurrentTasks,
            defaultTimeoutSeconds: config.defaultTimeoutSeconds, allowTimeoutAbovePlan: config.allowTimeoutAbovePlan,
            maxTimeoutSeconds: config.maxTimeoutSeconds, stopGrace: .seconds(config.stopGraceSeconds),
            datasets: config.datasets.mapValues(\.path), envAllowed: config.envAllowed,
            reporter: ReporterLimits(maxEventsPerTask: config.reporterMaxEventsPerTask,
                                     maxEventBytesPerTask: config.reporterMaxEventBytesPerTask,
                                     maxMetricsPerLine: config.reporterMaxMetricsPerLine,
                                     holdToolText: config.requireApproval))
        settings.diskPressure = diskPressure
        settings.taskEnded = taskEnded
        settings.capacity = HostCapacity.of(config)
        settings.trust = Self.trust(config, journal: self.journal)
        runner = Runner(settings: settings, journal: self.journal, registry: registry, sandboxes: sandboxes,
                        stageIn: try Self.stageIn(config),
                        stageOut: try Self.stageOut(config),
                        logger: logger, follower: LogFiles(),
                        hooks: NodeHooks(hooks: config.hooks, logFile: "\(config.workDir)/hooks.log", logger: logger),
                        unrecorded: UnrecordedFiles(dir: "\(config.workDir)/unrecorded"),
                        eventsAdded: eventsAdded)
    }

    /// The work dir and what is in it are the daemon's alone. Host tasks (another user) may pass through the work
    /// dir and `sandboxes/` to reach their own sandbox (0711: no listing, no reading), nothing more; the git cache
    /// (private repositories) and local deliveries (`outputs/`) are 0700. Host launchers refuse to start where their processes cannot be confined.
    static func prepareWorkDir(_ config: NodeConfig) throws {
        let hostTasks = config.enabledLaunchers.contains("process") || config.enabledLaunchers.contains("flower")
            || config.enabledLaunchers.contains("slurm")
        let passable: mode_t = hostTasks ? 0o711 : 0o700
        // The work dir itself may be passed through, never listed (0711): the task user must reach its sandbox, and
        // the development broker's files (var/dev-broker, start.sh) live in the default work dir and its broker runs
        // as the rabbitmq user. What is inside is protected on its own (journal 0600, cache/outputs/staging 0700).
        for (dir, mode) in [(config.workDir, mode_t(0o711)), ("\(config.workDir)/sandboxes", passable),
                            ("\(config.workDir)/cache", mode_t(0o700)), ("\(config.workDir)/outputs", mode_t(0o700))] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: Int(mode)])
            try Posix.chmod(dir, mode: mode)  // a failure names the folder, the call and why
        }
        var refusals: [String] = []
        for (name, confinement) in [("process", config.processConfinement), ("flower", config.flower.confinement)]
        where config.enabledLaunchers.contains(name) {
            if let why = confinement.refusal() { refusals.append(why) }
            if let why = confinement.unreachable("\(config.workDir)/sandboxes") { refusals.append(why) }
        }
        if config.enabledLaunchers.contains("slurm") {
            if let why = config.slurm.refusal(workDir: config.workDir) { refusals.append(why) }
            if let user = config.slurm.user,
               let why = HostConfinementConfig(section: "launchers.slurm", user: user, nodeID: config.nodeID,
                                               cgroups: nil).unreachable("\(config.workDir)/sandboxes") {
                refusals.append(why)
            }
        }
        if !refusals.isEmpty { throw ConfigError(problems: refusals) }
    }

    /// The explicit launcher registry: only what the node config enables.
    static func launchers(_ config: NodeConfig) -> LauncherRegistry {
        var list: [any Launcher] = []
        for name in config.enabledLaunchers {
            switch name {
            case "process":
                list.append(ProcessLauncher(config: ProcessLauncherConfig(
                    allowedExecutables: config.processAllowedExecutables, path: config.processPath,
                    confinement: config.processConfinement)))
            case "flower":
                list.append(FlowerLauncher(config: config.flower))
            case "slurm":
                list.append(SlurmLauncher(config: config.slurm))
            case "docker":
                var docker = config.docker
                docker.nodeID = config.nodeID
                docker.datasets = config.datasets.mapValues(\.path)
                list.append(DockerLauncher(config: docker))
            default:
                continue  // NodeConfig rejects launchers this build does not have.
            }
        }
        return LauncherRegistry(list)
    }

    /// `[trust]`: the signature policy, then the tool registry when it is on (each in turn; the first refusal wins).
    static func trust(_ config: NodeConfig, journal: SQLiteJournal) -> any PlanTrust {
        var policies: [any PlanTrust] = [SignaturePolicy(config.trust)]
        if config.requireApprovedTools { policies.append(ToolRegistryPolicy(journal: journal)) }
        return CombinedPlanTrust(policies)
    }

    /// Stage-out: where outputs may go, the airlock, limits and retries.
    static func stageOut(_ config: NodeConfig) throws -> OutputDelivery {
        var policy = DeliveryPolicy(
            nodeID: config.nodeID,
            limits: OutputLimits(maxFileBytes: config.maxOutputFileBytes, maxTaskBytes: config.maxOutputTaskBytes),
            allowedURLs: try URLPolicy(config.outputAllowedURLs),
            requireApproval: config.requireApproval,
            holdLogs: config.holdLogs,
            retry: RetryPolicy(attempts: config.outputRetries, base: .milliseconds(config.outputRetryDelayMilliseconds)),
            credentials: config.credentials, caFile: config.outputCAFile)
        policy.checks = config.outputChecks
        return OutputDelivery(policy: policy)
    }

    /// Stage-in steps: the plan's source (git or task files) into `src/`, then the image pull when docker is enabled.
    static func stageIn(_ config: NodeConfig) throws -> any StageIn {
        let sources = try SourceStageIn(policy: SourcePolicy(
            gitURLs: try URLPolicy(config.gitAllowedURLs), fileURLs: try URLPolicy(config.fileAllowedURLs),
            maxFileBytes: Int64(config.maxStageInFileMB) << 20, requireSHA256: config.requireSHA256, caFile: config.stageInCAFile,
            retry: RetryPolicy(attempts: config.retries, base: .milliseconds(config.retryDelayMilliseconds)),
            credentials: config.credentials, cacheDir: "\(config.workDir)/cache/git"))
        guard config.enabledLaunchers.contains("docker") else { return sources }
        var auth: [String: String] = [:]
        for (host, login) in config.registries {
            auth[host] = ImageStageIn.authHeader(username: login.username ?? "", password: login.secret, server: host)
        }
        return ImageStageIn(engine: DockerEngine(socket: config.docker.socket), registryAuth: auth, next: sources,
                            waitForDaemon: .seconds(config.dockerWaitSeconds))
    }

    /// `pressure`: why the node takes no new tasks now (nil: it does); `draining`: it stops.
    public func heartbeat(version: String, pressure: String? = nil, draining: Bool = false) async -> Heartbeat {
        var counts = (try? journal.counts()) ?? (running: 0, queued: 0)
        // A task whose end the journal refused is not running any more, whatever the journal still says.
        let unrecorded = await runner.unrecordedStates
        for (id, state) in unrecorded where !state.isActiveForHeartbeat {
            if let rec = try? journal.task(id), rec.state.isActiveForHeartbeat { counts.running = max(0, counts.running - 1) }
        }
        var beat = Heartbeat(nodeID: config.nodeID, version: version, time: Date(), running: counts.running,
                             queued: counts.queued, freeDiskBytes: freeDiskBytes(at: config.workDir),
                             launchers: registry.names,
                             datasets: config.datasets.sorted { $0.key < $1.key }.map {
                                 DatasetAdvert(id: $0.key, labels: $0.value.labels)
                             })
        beat.pressure = pressure
        beat.unrecorded = unrecorded.isEmpty ? nil : unrecorded.count
        beat.draining = draining ? true : nil
        beat.capacity = await runner.capacity
        beat.free = await runner.freeCapacity
        return beat
    }
}

/// Task logs followed through the file system.
struct LogFiles: LineFollower {
    func follow(_ path: String) -> (lines: AsyncStream<String>, finish: @Sendable () -> Void) {
        FileTail.follow(path)
    }
}

/// The node's `[hooks]`: a tool's `trigger` runs the program of that name, with `--` and then the trigger's arguments
/// as one more argument, in the background; its output goes to `<work_dir>/hooks.log`. Names not in the config run nothing.
struct NodeHooks: HookRunner {
    let hooks: [String: [String]]
    let logFile: String
    let logger: Logger

    func run(_ name: String, arguments: String, taskID: String) -> String? {
        guard let argv = hooks[name] else { return nil }
        // `--` ends the hook's options: the tool's text is one operand, never an option of the admin's program.
        let args = Array(argv.dropFirst()) + (arguments.isEmpty ? [] : ["--", arguments])
        do {
            let child = try ChildProcess.spawn(executable: argv[0], arguments: args,
                                               environment: ["PATH": "/usr/local/bin:/usr/bin:/bin", "FEM_TASK_ID": taskID,
                                                             "LANG": "C.UTF-8"],
                                               workingDirectory: "/", stdoutPath: logFile, stderrPath: logFile)
            let logger = self.logger
            Task {
                let status = await ChildProcess.exitStatus(of: child.pid)
                logger.info("hook \(name) (pid \(child.pid)) ended: \(status)", metadata: ["task": "\(taskID)"])
            }
            return "ran hook \(argv[0]) (pid \(child.pid))"
        } catch {
            return "hook \(argv[0]) could not start: \(error)"
        }
    }
}

extension TaskState {
    /// The states the heartbeat counts as running.
    var isActiveForHeartbeat: Bool { self == .stagingIn || self == .running || self == .stagingOut }
}
