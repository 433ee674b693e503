import FEMCore
import FEMLaunchers
import FEMStaging
import FEMSystem
import FEMTransport
import Foundation
import TOMLKit

/// The node's configuration (`config/fem-client.toml`). Every key can be overridden by an environment variable
/// named `FEM_<SECTION>_<KEY>` (`FEM_BROKER_URL`, `FEM_NODE_MAX_CONCURRENT_TASKS`, …). An unknown key or a bad
/// value stops the daemon at start with the key's name and what is wrong.
public struct NodeConfig: Sendable {
    public struct Dataset: Sendable, Equatable {
        public var path: String
        public var labels: [String: String]
    }

    public var nodeID: String
    public var nodeName: String
    public var workDir: String
    public var logFile: String
    public var maxConcurrentTasks: Int
    public var heartbeatSeconds: Int
    public var defaultTimeoutSeconds: Int
    public var maxTimeoutSeconds: Int
    public var allowTimeoutAbovePlan: Bool
    public var stopGraceSeconds: Int
    /// Below this much free space (MB) on the work dir's or the log's filesystem the node takes no new tasks.
    public var minFreeMB: Int = 256
    /// `[node.capacity]` as configured: nil fields take the host's values (`NodeAssembly.capacity`).
    public var capacityCPUs: Int?
    public var capacityMemoryMB: Int?
    public var capacityGPUs: Int?
    public var capacityStorageMB: Int?
    /// On SIGTERM, running tasks may go on for this long before the daemon stops (work left is recovered at start).
    public var drainSeconds: Int = 30
    /// A task that finds dockerd unreachable waits this long for it (with a notice) before failing.
    public var dockerWaitSeconds: Int = 60
    /// `node.log_max_mb` (0: no size rotation), `node.log_keep`, `node.log_format` ("text" or "json").
    public var logMaxMB: Int = 0
    public var logKeep: Int = 5
    public var logFormat: String = "text"
    /// `[launchers.slurm]` (its task user filled in when the launcher is enabled).
    public var slurm = SlurmLauncherConfig()

    public var brokerURL: String
    public var brokerPassword: String?
    public var caFile: String
    public var certFile: String
    public var keyFile: String
    public var prefetch: Int
    public var maxMessageBytes: Int
    /// Broker accounts whose tasks and control messages this node accepts (checked against the AMQP `user_id`).
    public var orchestrators: [String]
    /// `node.pools`: the work pools this node takes tasks from (`fem.pool.<name>`), besides its own queue.
    public var pools: [String] = []
    /// `node.pool_max_passes`: returns to the pool before a pool task is dead-lettered as unplaceable.
    public var poolMaxPasses: Int = 10
    /// `broker.pool_peers`: node accounts whose returned pool tasks this node accepts.
    public var poolPeers: [String] = []

    /// `launchers.enabled`: nothing runs unless listed.
    public var enabledLaunchers: [String]
    /// `launchers.env_allowed`: the only environment names plans may set (on top of the built-in deny list).
    public var envAllowed: [String]
    public var processAllowedExecutables: [String]
    public var processPath: String
    /// `launchers.process.user`, limits, network and `allow_unconfined`: how host processes are confined.
    public var processConfinement: HostConfinementConfig

    /// `[launchers.docker]`; its node id and datasets are filled in when the launcher is built.
    public var docker: DockerLauncherConfig
    /// `[launchers.flower]`.
    public var flower: FlowerLauncherConfig
    /// `[hooks]`: name → argv of a program a tool may trigger by name (reporter protocol `trigger`); nothing else runs.
    public var hooks: [String: [String]]
    /// Registry host (`127.0.0.1:5000`) → credentials for image pulls (always with a username).
    public var registries: [String: Credential]
    /// `[credentials."name"]`: logins plans and tasks name by reference (git, task files, stage-out).
    public var credentials: [String: Credential]

    /// `[stage_in]`: which URLs sources may come from, checksums, a private CA, retries.
    public var gitAllowedURLs: [String]
    public var fileAllowedURLs: [String]
    public var requireSHA256: Bool
    public var stageInCAFile: String?
    public var retries: Int
    public var retryDelayMilliseconds: Int
    /// `stage_in.max_file_mb`: the largest task file a download may bring.
    public var maxStageInFileMB: Int
    /// `journal.keep_days`: how long a finished task's document stays in the journal.
    public var journalKeepDays: Int

    /// `[sandboxes]`: hours a finished task's sandbox is kept, by how it ended (0: removed at once).
    public var keepCompletedHours: Int
    public var keepFailedHours: Int

    public var maxOutputFileBytes: Int64
    public var maxOutputTaskBytes: Int64
    /// `[outputs]`: where stage-out may send, the airlock, a private CA for https targets, retries.
    public var outputAllowedURLs: [String]
    public var requireApproval: Bool
    public var holdLogs: Bool
    public var outputCAFile: String?
    public var outputRetries: Int
    public var outputRetryDelayMilliseconds: Int
    /// `[outputs.checks]`: disclosure checks over the outputs at collection.
    public var outputChecks = OutputCheckSettings()

    /// `[reporter]`: caps on the events a tool's reports cause, per task.
    public var reporterMaxEventsPerTask: Int
    public var reporterMaxEventBytesPerTask: Int
    public var reporterMaxMetricsPerLine: Int

    public var datasets: [String: Dataset]
    /// `[metrics] listen`: where `GET /metrics` is served (nil: metrics are off).
    public var metricsListen: MetricsListen?
    /// `[console]`: the steward's web console (nil: off).
    public var console: ConsoleSettings?
    /// `[trust] require_approved_tools`: only plans approved in the node's tool registry run.
    public var requireApprovedTools = false
    /// `[node.labels]`: free-form attributes for constraints, as `labels.<key>`.
    public var labels: [String: AttributeValue] = [:]
    /// `[trust]`: the authors' keys this node trusts and whether plans must be signed.
    public var trust = TrustConfig()
    /// Where the file was read from, for messages.
    public var source: String

    public var journalPath: String { "\(workDir)/journal.sqlite" }

    /// The broker endpoint parsed from the URL, with the password from `password_file` or
    /// `FEM_BROKER_PASSWORD` (never from the URL or the file itself).
    public func endpoint() throws -> AMQPEndpoint {
        do {
            return try BrokerURL.parse(brokerURL, password: brokerPassword, caFile: caFile, certFile: certFile,
                                       keyFile: keyFile)
        } catch {
            throw ConfigError(problems: [error.description])
        }
    }
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var problems: [String]
    public var description: String {
        "configuration is not valid:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

extension NodeConfig {
    public static let knownLaunchers = ["process", "docker", "flower", "slurm"]

    /// Loads `path` and checks everything, reporting every problem at once. `environment` is the daemon's (its
    /// `FEM_*` overrides, FEM_BROKER_PASSWORD and the variables `*_env` keys name are read from it and nowhere else).
    /// `brokerFiles: false` skips reading the broker's certificate and password files and the credentials' secrets,
    /// for local commands that never connect (`fem-client run`, `render`).
    public static func load(path: String, environment: [String: String], brokerFiles: Bool = true) throws -> NodeConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(problems: ["cannot read the configuration file \(path) (run install.sh to create it "
                                         + "from config/fem-client.example.toml)"])
        }
        return try parse(text, source: path, environment: environment, brokerFiles: brokerFiles)
    }

    public static func parse(_ text: String, source: String, environment: [String: String],
                             brokerFiles: Bool = true) throws -> NodeConfig {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ConfigError(problems: ["\(source): \(e.description) at line \(e.source.begin.line)"])
        } catch {
            throw ConfigError(problems: ["\(source): \(error)"])
        }
        // 1. Decode the sections (overrides applied, wrong types named), 2. name unknown keys, 3. validate,
        // 4. resolve what lives outside the file (secrets, the task users, cgroups).
        let reading = ConfigReading(root: table, environment: environment)
        reading.prepareSections()
        var file = ConfigFile()
        var decoder = TOMLDecoder()
        if let key = ConfigReading.userInfoKey { decoder.userInfo[key] = reading }
        do {
            file = try decoder.decode(ConfigFile.self, from: table)
        } catch {
            reading.note(reading.describe(error, expected: "a table"))
        }
        var problems = reading.problems
        for name in reading.unknownKeys() {
            problems.append("\(name): is not a known key (known keys are listed in config/fem-client.example.toml)")
        }
        problems += file.validate(brokerFiles: brokerFiles)
        let config = resolve(file, source: source, environment: environment, brokerFiles: brokerFiles,
                             problems: &problems)
        guard problems.isEmpty, let config else { throw ConfigError(problems: problems) }
        return config
    }

    /// The running configuration from a decoded, validated file: absolute paths, secrets, task users.
    static func resolve(_ file: ConfigFile, source: String, environment: [String: String], brokerFiles: Bool,
                        problems: inout [String]) -> NodeConfig? {
        var password = environment["FEM_BROKER_PASSWORD"]
        let passwordFile = absolutePath(file.broker.passwordFile)
        if brokerFiles, password == nil, !passwordFile.isEmpty {
            do {
                password = try SecretSource.file(passwordFile).read(field: "broker.password_file", environment: environment)
            } catch {
                problems.append(error.description)
            }
        }
        var registries: [String: Credential] = [:]
        for (name, entry) in file.registries.sorted(by: { $0.key < $1.key }) {
            registries[name] = entry.credential(tokens: false, environment: environment, readSecrets: brokerFiles,
                                                problems: &problems)
        }
        var credentials: [String: Credential] = [:]
        for (name, entry) in file.credentials.sorted(by: { $0.key < $1.key }) {
            credentials[name] = entry.credential(tokens: true, environment: environment, readSecrets: brokerFiles,
                                                 problems: &problems)
        }
        let enabled = file.launchers.enabled
        var taskUsers: [String: TaskUser] = [:]
        for (launcher, name) in [("process", file.launchers.process.user), ("flower", file.launchers.flower.user),
                                 ("slurm", file.launchers.slurm.user)]
            where enabled.contains(launcher) {
            if let user = taskUser(name, key: "launchers.\(launcher).user", problems: &problems) {
                taskUsers[launcher] = user
            }
        }
        guard problems.isEmpty, let id = file.node.id, let url = file.broker.url, let ca = file.broker.caFile,
              let cert = file.broker.certFile, let key = file.broker.keyFile else { return nil }

        let cgroups = CgroupHost.detect()
        let p = file.launchers.process, d = file.launchers.docker, f = file.launchers.flower
        let processConfinement = HostConfinementConfig(
            section: "launchers.process", user: taskUsers["process"], nodeID: id, cgroups: cgroups,
            allowUnconfined: p.allowUnconfined, defaultMemoryMB: p.defaultMemoryMB, maxMemoryMB: p.maxMemoryMB,
            maxCPUs: p.maxCPUs, pidsLimit: p.pidsLimit, openFiles: p.openFiles, allowHostNetwork: p.allowHostNetwork,
            alwaysHostNetwork: false)
        let flowerConfinement = HostConfinementConfig(
            section: "launchers.flower", user: taskUsers["flower"], nodeID: id, cgroups: cgroups,
            allowUnconfined: f.allowUnconfined, defaultMemoryMB: f.defaultMemoryMB, maxMemoryMB: f.maxMemoryMB,
            maxCPUs: f.maxCPUs, pidsLimit: f.pidsLimit, openFiles: f.openFiles, allowHostNetwork: false,
            alwaysHostNetwork: true)
        let workDir = absolutePath(file.node.workDir)
        var config = NodeConfig(
            nodeID: id, nodeName: file.node.name.isEmpty ? id : file.node.name, workDir: workDir,
            logFile: absolutePath(file.node.logFile), maxConcurrentTasks: file.node.maxConcurrentTasks,
            heartbeatSeconds: file.node.heartbeatInterval, defaultTimeoutSeconds: file.node.defaultTimeout,
            maxTimeoutSeconds: file.node.maxTimeout, allowTimeoutAbovePlan: file.node.allowTimeoutAbovePlan,
            stopGraceSeconds: file.node.stopGrace,
            brokerURL: url, brokerPassword: password, caFile: absolutePath(ca), certFile: absolutePath(cert),
            keyFile: absolutePath(key), prefetch: file.broker.prefetch, maxMessageBytes: file.broker.maxMessageBytes,
            orchestrators: file.broker.orchestrators,
            enabledLaunchers: enabled, envAllowed: file.launchers.envAllowed,
            processAllowedExecutables: p.allowedExecutables, processPath: p.path,
            processConfinement: processConfinement,
            docker: DockerLauncherConfig(
                socket: absolutePath(d.socket), allowedImages: d.allowedImages, user: d.user, pidsLimit: d.pidsLimit,
                defaultMemoryMB: d.defaultMemoryMB, maxMemoryMB: d.maxMemoryMB, maxCPUs: d.maxCPUs, tmpfsMB: d.tmpfsMB,
                allowHostNetwork: d.allowHostNetwork, allowGPUs: d.allowGPUs, nodeID: id, datasets: [:]),
            flower: FlowerLauncherConfig(
                python: f.python, venvDir: nonEmpty(absolutePath(f.venvDir)) ?? "\(workDir)/venvs",
                wheelDir: nonEmpty(absolutePath(f.wheelDir)), allowInsecure: f.allowInsecure,
                rootCertificates: nonEmpty(absolutePath(f.rootCertificates)), connectAttempts: f.connectAttempts,
                retryDelay: .milliseconds(f.retryDelayMS), unreachableLimit: .seconds(f.unreachableSeconds),
                // Flower clients get the process launcher's PATH (there is no launchers.flower.path).
                path: p.path, allowedSuperlinks: f.allowedSuperlinks.compactMap(HostPort.parse),
                allowSourceBuilds: f.allowSourceBuilds, confinement: flowerConfinement),
            hooks: file.hooks, registries: registries, credentials: credentials,
            gitAllowedURLs: file.stageIn.gitAllowedURLs, fileAllowedURLs: file.stageIn.fileAllowedURLs,
            requireSHA256: file.stageIn.requireSHA256, stageInCAFile: nonEmpty(absolutePath(file.stageIn.caFile)),
            retries: file.stageIn.retries, retryDelayMilliseconds: file.stageIn.retryDelayMS,
            maxStageInFileMB: file.stageIn.maxFileMB, journalKeepDays: file.journal.keepDays,
            keepCompletedHours: file.sandboxes.keepCompletedHours, keepFailedHours: file.sandboxes.keepFailedHours,
            maxOutputFileBytes: Int64(file.outputs.maxFileBytes), maxOutputTaskBytes: Int64(file.outputs.maxTaskBytes),
            outputAllowedURLs: file.outputs.allowedURLs, requireApproval: file.outputs.requireApproval,
            holdLogs: file.outputs.holdLogs, outputCAFile: nonEmpty(absolutePath(file.outputs.caFile)),
            outputRetries: file.outputs.retries, outputRetryDelayMilliseconds: file.outputs.retryDelayMS,
            reporterMaxEventsPerTask: file.reporter.maxEventsPerTask,
            reporterMaxEventBytesPerTask: file.reporter.maxEventBytesPerTask,
            reporterMaxMetricsPerLine: file.reporter.maxMetricsPerLine,
            datasets: file.validDatasets, source: source)
        config.minFreeMB = file.node.minFreeMB
        config.outputChecks = file.outputs.checks.settings
        config.drainSeconds = file.node.drainSeconds
        config.metricsListen = file.metrics.listen.isEmpty ? nil : try? MetricsListen.parse(file.metrics.listen)
        config.console = file.console.settings(brokerCert: absolutePath(cert), brokerKey: absolutePath(key),
                                               resolve: absolutePath)
        config.pools = file.node.pools
        config.requireApprovedTools = file.trust.requireApprovedTools
        config.poolMaxPasses = file.node.poolMaxPasses
        config.poolPeers = file.broker.poolPeers
        config.labels = file.node.labels
        config.trust = file.trust.config
        config.logMaxMB = file.node.logMaxMB
        config.logKeep = file.node.logKeep
        config.logFormat = file.node.logFormat
        config.capacityCPUs = file.node.capacity.cpus
        config.capacityMemoryMB = file.node.capacity.memoryMB
        config.capacityGPUs = file.node.capacity.gpus
        config.capacityStorageMB = file.node.capacity.storageMB
        config.dockerWaitSeconds = d.waitForDaemonSeconds
        let s = file.launchers.slurm
        config.slurm = SlurmLauncherConfig(
            sharedDir: absolutePath(s.sharedDir), partition: s.partition, allowedPartitions: s.allowedPartitions,
            account: s.account, qos: s.qos, maxCPUs: s.maxCPUs, defaultMemoryMB: s.defaultMemoryMB,
            maxMemoryMB: s.maxMemoryMB, allowedExecutables: s.allowedExecutables, path: s.path,
            user: taskUsers["slurm"], slurmConf: absolutePath(s.slurmConf), sbatch: s.sbatch, squeue: s.squeue,
            scontrol: s.scontrol, scancel: s.scancel, pollInterval: .milliseconds(s.pollIntervalMS),
            unreachableTolerance: .seconds(s.unreachableSeconds), nodeID: id)
        config.slurm.allowedAccounts = s.allowedAccounts
        config.slurm.allowedQOS = s.allowedQOS
        config.slurm.containerRuntime = s.containerRuntime
        config.slurm.podman = s.podman
        config.slurm.allowedImages = s.allowedImages
        config.slurm.insecureRegistries = s.insecureRegistries
        config.slurm.pidsLimit = s.pidsLimit
        config.slurm.tmpfsMB = s.tmpfsMB
        config.slurm.datasets = config.datasets.mapValues(\.path)
        return config
    }

    /// The account host tasks run as: it must exist, and must not be root.
    static func taskUser(_ name: String, key: String, problems: inout [String]) -> TaskUser? {
        guard let user = TaskUser.lookup(name) else {
            problems.append("\(key): there is no user \"\(name)\" on this host; run install.sh, or create it with "
                            + "`useradd --system --no-create-home --shell /usr/sbin/nologin \(name)`")
            return nil
        }
        if user.uid == 0 || user.gid == 0 {
            problems.append("\(key): \"\(name)\" is root (uid \(user.uid), gid \(user.gid)); host tasks must run as an "
                            + "unprivileged user such as the dedicated fem-task")
            return nil
        }
        return user
    }

    private static func nonEmpty(_ s: String) -> String? { s.isEmpty ? nil : s }

    /// Relative paths are taken from the current directory (start.sh runs from the checkout).
    public static func absolutePath(_ path: String) -> String {
        guard !path.isEmpty, !path.hasPrefix("/") else { return path }
        return URL(fileURLWithPath: path).standardizedFileURL.path
    }
}
