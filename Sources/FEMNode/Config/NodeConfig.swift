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
    /// On SIGTERM, running tasks may go on for this long before the daemon stops (work left is recovered at start).
    public var drainSeconds: Int = 30
    /// A task that finds dockerd unreachable waits this long for it (with a notice) before failing.
    public var dockerWaitSeconds: Int = 60

    public var brokerURL: String
    public var brokerPassword: String?
    public var caFile: String
    public var certFile: String
    public var keyFile: String
    public var prefetch: Int
    public var maxMessageBytes: Int
    /// Broker accounts whose tasks and control messages this node accepts (checked against the AMQP `user_id`).
    public var orchestrators: [String]

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

    /// `[reporter]`: caps on the events a tool's reports cause, per task.
    public var reporterMaxEventsPerTask: Int
    public var reporterMaxEventBytesPerTask: Int
    public var reporterMaxMetricsPerLine: Int

    public var datasets: [String: Dataset]
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
    enum Kind {
        case string, path, int(min: Int, max: Int), bool, strings
    }

    struct Key: @unchecked Sendable {
        var name: String
        var kind: Kind
        var fallback: Any?
        var envName: String { "FEM_" + name.replacingOccurrences(of: ".", with: "_").uppercased() }
    }

    static let keys: [Key] = [
        Key(name: "node.id", kind: .string, fallback: nil),
        Key(name: "node.name", kind: .string, fallback: ""),
        Key(name: "node.work_dir", kind: .path, fallback: absolutePath("var")),
        Key(name: "node.log_file", kind: .path, fallback: absolutePath("receiver.log")),
        Key(name: "node.max_concurrent_tasks", kind: .int(min: 1, max: 1024), fallback: 2),
        Key(name: "node.heartbeat_interval", kind: .int(min: 1, max: 86_400), fallback: 30),
        Key(name: "node.default_timeout", kind: .int(min: 1, max: 31_536_000), fallback: 3600),
        Key(name: "node.max_timeout", kind: .int(min: 1, max: 31_536_000), fallback: 604_800),
        Key(name: "node.allow_timeout_above_plan", kind: .bool, fallback: false),
        Key(name: "node.stop_grace", kind: .int(min: 0, max: 3600), fallback: 10),
        Key(name: "node.min_free_mb", kind: .int(min: 0, max: 1 << 30), fallback: 256),
        Key(name: "node.drain_seconds", kind: .int(min: 0, max: 86_400), fallback: 30),
        Key(name: "broker.url", kind: .string, fallback: nil),
        Key(name: "broker.password_file", kind: .path, fallback: ""),
        Key(name: "broker.ca_file", kind: .path, fallback: nil),
        Key(name: "broker.cert_file", kind: .path, fallback: nil),
        Key(name: "broker.key_file", kind: .path, fallback: nil),
        Key(name: "broker.prefetch", kind: .int(min: 1, max: 65_535), fallback: 16),
        Key(name: "broker.max_message_bytes", kind: .int(min: 1024, max: 128 << 20), fallback: 1 << 20),
        Key(name: "broker.orchestrators", kind: .strings, fallback: ["fem-orchestrator"]),
        Key(name: "launchers.enabled", kind: .strings, fallback: [String]()),
        Key(name: "launchers.env_allowed", kind: .strings, fallback: [String]()),
        Key(name: "launchers.process.allowed_executables", kind: .strings, fallback: [String]()),
        Key(name: "launchers.process.path", kind: .string, fallback: "/usr/local/bin:/usr/bin:/bin"),
        Key(name: "launchers.process.user", kind: .string, fallback: "fem-task"),
        Key(name: "launchers.process.allow_unconfined", kind: .bool, fallback: false),
        Key(name: "launchers.process.allow_host_network", kind: .bool, fallback: false),
        Key(name: "launchers.process.pids_limit", kind: .int(min: 16, max: 1_000_000), fallback: 256),
        Key(name: "launchers.process.open_files", kind: .int(min: 64, max: 1_048_576), fallback: 1024),
        Key(name: "launchers.process.default_memory_mb", kind: .int(min: 6, max: 1 << 20), fallback: 512),
        Key(name: "launchers.process.max_memory_mb", kind: .int(min: 6, max: 1 << 20), fallback: 8192),
        Key(name: "launchers.process.max_cpus", kind: .int(min: 1, max: 1024), fallback: 2),
        Key(name: "launchers.docker.socket", kind: .path, fallback: "/var/run/docker.sock"),
        Key(name: "launchers.docker.allowed_images", kind: .strings, fallback: [String]()),
        Key(name: "launchers.docker.user", kind: .string, fallback: "65534:65534"),
        Key(name: "launchers.docker.pids_limit", kind: .int(min: 16, max: 1_000_000), fallback: 256),
        Key(name: "launchers.docker.default_memory_mb", kind: .int(min: 6, max: 1 << 20), fallback: 512),
        Key(name: "launchers.docker.max_memory_mb", kind: .int(min: 6, max: 1 << 20), fallback: 8192),
        Key(name: "launchers.docker.max_cpus", kind: .int(min: 1, max: 1024), fallback: 2),
        Key(name: "launchers.docker.tmpfs_mb", kind: .int(min: 1, max: 1 << 20), fallback: 64),
        Key(name: "launchers.docker.allow_host_network", kind: .bool, fallback: false),
        Key(name: "launchers.docker.allow_gpus", kind: .bool, fallback: false),
        Key(name: "launchers.docker.wait_for_daemon_seconds", kind: .int(min: 0, max: 86_400), fallback: 60),
        Key(name: "launchers.flower.python", kind: .string, fallback: "/usr/bin/python3"),
        Key(name: "launchers.flower.allowed_superlinks", kind: .strings, fallback: [String]()),
        Key(name: "launchers.flower.allow_source_builds", kind: .bool, fallback: false),
        Key(name: "launchers.flower.venv_dir", kind: .path, fallback: ""),
        Key(name: "launchers.flower.wheel_dir", kind: .path, fallback: ""),
        Key(name: "launchers.flower.allow_insecure", kind: .bool, fallback: false),
        Key(name: "launchers.flower.root_certificates", kind: .path, fallback: ""),
        Key(name: "launchers.flower.connect_attempts", kind: .int(min: 1, max: 100), fallback: 10),
        Key(name: "launchers.flower.retry_delay_ms", kind: .int(min: 0, max: 600_000), fallback: 1000),
        Key(name: "launchers.flower.unreachable_seconds", kind: .int(min: 1, max: 86_400), fallback: 120),
        Key(name: "launchers.flower.user", kind: .string, fallback: "fem-task"),
        Key(name: "launchers.flower.allow_unconfined", kind: .bool, fallback: false),
        Key(name: "launchers.flower.pids_limit", kind: .int(min: 16, max: 1_000_000), fallback: 1024),
        Key(name: "launchers.flower.open_files", kind: .int(min: 64, max: 1_048_576), fallback: 4096),
        Key(name: "launchers.flower.default_memory_mb", kind: .int(min: 6, max: 1 << 20), fallback: 2048),
        Key(name: "launchers.flower.max_memory_mb", kind: .int(min: 6, max: 1 << 20), fallback: 8192),
        Key(name: "launchers.flower.max_cpus", kind: .int(min: 1, max: 1024), fallback: 2),
        Key(name: "stage_in.git_allowed_urls", kind: .strings, fallback: [String]()),
        Key(name: "stage_in.file_allowed_urls", kind: .strings, fallback: [String]()),
        Key(name: "stage_in.max_file_mb", kind: .int(min: 1, max: 1 << 20), fallback: 1024),
        Key(name: "stage_in.require_sha256", kind: .bool, fallback: true),
        Key(name: "stage_in.ca_file", kind: .path, fallback: ""),
        Key(name: "stage_in.retries", kind: .int(min: 1, max: 20), fallback: 4),
        Key(name: "stage_in.retry_delay_ms", kind: .int(min: 0, max: 600_000), fallback: 1000),
        Key(name: "sandboxes.keep_completed_hours", kind: .int(min: 0, max: 87_600), fallback: 24),
        Key(name: "sandboxes.keep_failed_hours", kind: .int(min: 0, max: 87_600), fallback: 168),
        Key(name: "outputs.max_file_bytes", kind: .int(min: 1, max: Int.max), fallback: 1 << 30),
        Key(name: "outputs.max_task_bytes", kind: .int(min: 1, max: Int.max), fallback: 4 << 30),
        Key(name: "outputs.allowed_urls", kind: .strings, fallback: [String]()),
        Key(name: "outputs.require_approval", kind: .bool, fallback: false),
        Key(name: "outputs.hold_logs", kind: .bool, fallback: true),
        Key(name: "outputs.ca_file", kind: .path, fallback: ""),
        Key(name: "outputs.retries", kind: .int(min: 1, max: 50), fallback: 5),
        Key(name: "outputs.retry_delay_ms", kind: .int(min: 0, max: 600_000), fallback: 1000),
        Key(name: "journal.keep_days", kind: .int(min: 1, max: 36_500), fallback: 30),
        Key(name: "reporter.max_events_per_task", kind: .int(min: 1, max: 10_000_000), fallback: 1000),
        Key(name: "reporter.max_event_bytes_per_task", kind: .int(min: 1024, max: 1 << 30), fallback: 1 << 20),
        Key(name: "reporter.max_metrics_per_line", kind: .int(min: 1, max: 1000), fallback: 32),
    ]

    /// The URL allowlists: each entry must parse (scheme://host[:port]/path, `*.domain` for subdomains).
    static let urlListKeys = ["stage_in.git_allowed_urls", "stage_in.file_allowed_urls", "outputs.allowed_urls"]

    public static let knownLaunchers = ["process", "docker", "flower"]

    /// Loads `path`, applies environment overrides, and checks everything, reporting every problem at once.
    /// `brokerFiles: false` skips reading the broker's certificate and password files, for local commands that never
    /// connect (`fem-client run`, `render`).
    public static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment,
                            brokerFiles: Bool = true) throws -> NodeConfig {
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
        var problems: [String] = []
        var flat: [String: TOMLValueConvertible] = [:]
        var datasets: [String: Dataset] = [:]
        var registries: [String: Credential] = [:]
        if let r = table["registries"] {
            registries = readLogins(r, section: "registries", tokens: false, brokerFiles: brokerFiles, problems: &problems)
            table.remove(at: "registries")
        }
        var hooks: [String: [String]] = [:]
        if let h = table["hooks"] {
            hooks = readHooks(h, problems: &problems)
            table.remove(at: "hooks")
        }
        var credentials: [String: Credential] = [:]
        if let c = table["credentials"] {
            credentials = readLogins(c, section: "credentials", tokens: true, brokerFiles: brokerFiles,
                                     problems: &problems)
            table.remove(at: "credentials")
        }
        flatten(table, prefix: "", into: &flat, datasets: &datasets, problems: &problems)
        let known = Set(keys.map(\.name))
        for name in flat.keys.sorted() where !known.contains(name) {
            problems.append("\(name): is not a known key (known keys are listed in config/fem-client.example.toml)")
        }

        var values: [String: Any] = [:]
        for key in keys {
            if let env = environment[key.envName] {
                if let v = fromEnvironment(env, key: key, problems: &problems) { values[key.name] = v }
            } else if let v = flat[key.name] {
                if let v = fromTOML(v, key: key, problems: &problems) { values[key.name] = v }
            } else if let f = key.fallback {
                values[key.name] = f
            } else {
                problems.append("\(key.name): is required (or set \(key.envName))")
            }
        }
        let enabled = values["launchers.enabled"] as? [String] ?? []
        for l in enabled where !knownLaunchers.contains(l) {
            problems.append("launchers.enabled: \"\(l)\" is not a launcher this build has (it has: "
                            + knownLaunchers.joined(separator: ", ") + ")")
        }
        problems += launcherProblems(values, enabled: enabled)
        if let id = values["node.id"] as? String, !Patterns.matches(#"^[a-z0-9][a-z0-9-]{0,62}$"#, id) {
            problems.append("node.id: \"\(id)\" must be lowercase letters, digits and '-' (it names queues)")
        }
        if let accounts = values["broker.orchestrators"] as? [String] {
            if accounts.isEmpty {
                problems.append("broker.orchestrators: is empty, so this node would accept no task and no cancel; list "
                                + "the broker accounts of your orchestrators (femctl's login)")
            }
            for a in accounts where !Patterns.matches(#"^[A-Za-z0-9_.@-]{1,64}$"#, a) {
                problems.append("broker.orchestrators: \"\(TextEscaping.escaped(a))\" is not a broker account name "
                                + "(letters, digits, _ . @ -, at most 64)")
            }
        }
        var password = environment["FEM_BROKER_PASSWORD"]
        if brokerFiles, password == nil, let file = values["broker.password_file"] as? String, !file.isEmpty {
            if let text = try? String(contentsOfFile: file, encoding: .utf8) {
                password = text.trimmingCharacters(in: .whitespacesAndNewlines)
            } else {
                problems.append("broker.password_file: cannot read \(file)")
            }
        }
        if let url = values["broker.url"] as? String {
            do {
                _ = try BrokerURL.parse(url, password: nil, caFile: "", certFile: "", keyFile: "")
            } catch {
                problems.append(error.description)
            }
        }
        for name in ["broker.ca_file", "broker.cert_file", "broker.key_file"] where brokerFiles {
            if let p = values[name] as? String, !FileManager.default.isReadableFile(atPath: p) {
                problems.append("\(name): cannot read \(p)")
            }
        }
        for name in urlListKeys {
            if let list = values[name] as? [String] {
                do {
                    _ = try URLPolicy(list)
                } catch {
                    problems.append("\(name): \(error)")
                }
            }
        }
        for name in ["stage_in.ca_file", "outputs.ca_file"] {
            if let ca = nonEmpty(values[name]), !FileManager.default.isReadableFile(atPath: ca) {
                problems.append("\(name): cannot read \(ca)")
            }
        }
        var taskUsers: [String: TaskUser] = [:]
        for launcher in ["process", "flower"] where enabled.contains(launcher) {
            let key = "launchers.\(launcher).user"
            guard let name = values[key] as? String else { continue }
            if let user = taskUser(name, key: key, problems: &problems) { taskUsers[launcher] = user }
        }
        if !problems.isEmpty { throw ConfigError(problems: problems) }

        let id = values["node.id"] as! String
        let cgroups = CgroupHost.detect()
        func confinement(_ launcher: String) -> HostConfinementConfig {
            let section = "launchers.\(launcher)"
            return HostConfinementConfig(
                section: section, user: taskUsers[launcher], nodeID: id, cgroups: cgroups,
                allowUnconfined: values["\(section).allow_unconfined"] as? Bool ?? false,
                defaultMemoryMB: values["\(section).default_memory_mb"] as? Int ?? 512,
                maxMemoryMB: values["\(section).max_memory_mb"] as? Int ?? 8192,
                maxCPUs: values["\(section).max_cpus"] as? Int ?? 2,
                pidsLimit: values["\(section).pids_limit"] as? Int ?? 256,
                openFiles: values["\(section).open_files"] as? Int ?? 1024,
                allowHostNetwork: values["\(section).allow_host_network"] as? Bool ?? false,
                alwaysHostNetwork: launcher == "flower")
        }
        let name = values["node.name"] as! String
        var config = NodeConfig(
            nodeID: id, nodeName: name.isEmpty ? id : name, workDir: values["node.work_dir"] as! String,
            logFile: values["node.log_file"] as! String,
            maxConcurrentTasks: values["node.max_concurrent_tasks"] as! Int,
            heartbeatSeconds: values["node.heartbeat_interval"] as! Int,
            defaultTimeoutSeconds: values["node.default_timeout"] as! Int,
            maxTimeoutSeconds: values["node.max_timeout"] as! Int,
            allowTimeoutAbovePlan: values["node.allow_timeout_above_plan"] as! Bool,
            stopGraceSeconds: values["node.stop_grace"] as! Int,
            brokerURL: values["broker.url"] as! String, brokerPassword: password,
            caFile: values["broker.ca_file"] as! String, certFile: values["broker.cert_file"] as! String,
            keyFile: values["broker.key_file"] as! String, prefetch: values["broker.prefetch"] as! Int,
            maxMessageBytes: values["broker.max_message_bytes"] as! Int,
            orchestrators: values["broker.orchestrators"] as! [String],
            enabledLaunchers: enabled,
            envAllowed: values["launchers.env_allowed"] as! [String],
            processAllowedExecutables: values["launchers.process.allowed_executables"] as! [String],
            processPath: values["launchers.process.path"] as! String,
            processConfinement: confinement("process"),
            docker: DockerLauncherConfig(
                socket: values["launchers.docker.socket"] as! String,
                allowedImages: values["launchers.docker.allowed_images"] as! [String],
                user: values["launchers.docker.user"] as! String, pidsLimit: values["launchers.docker.pids_limit"] as! Int,
                defaultMemoryMB: values["launchers.docker.default_memory_mb"] as! Int,
                maxMemoryMB: values["launchers.docker.max_memory_mb"] as! Int,
                maxCPUs: values["launchers.docker.max_cpus"] as! Int, tmpfsMB: values["launchers.docker.tmpfs_mb"] as! Int,
                allowHostNetwork: values["launchers.docker.allow_host_network"] as! Bool,
                allowGPUs: values["launchers.docker.allow_gpus"] as! Bool, nodeID: id, datasets: [:]),
            flower: FlowerLauncherConfig(
                python: values["launchers.flower.python"] as! String,
                venvDir: nonEmpty(values["launchers.flower.venv_dir"]) ?? "\(values["node.work_dir"] as! String)/venvs",
                wheelDir: nonEmpty(values["launchers.flower.wheel_dir"]),
                allowInsecure: values["launchers.flower.allow_insecure"] as! Bool,
                rootCertificates: nonEmpty(values["launchers.flower.root_certificates"]),
                connectAttempts: values["launchers.flower.connect_attempts"] as! Int,
                retryDelay: .milliseconds(values["launchers.flower.retry_delay_ms"] as! Int),
                unreachableLimit: .seconds(values["launchers.flower.unreachable_seconds"] as! Int),
                path: values["launchers.process.path"] as! String,
                allowedSuperlinks: (values["launchers.flower.allowed_superlinks"] as! [String]).compactMap(HostPort.parse),
                allowSourceBuilds: values["launchers.flower.allow_source_builds"] as! Bool,
                confinement: confinement("flower")),
            hooks: hooks,
            registries: registries, credentials: credentials,
            gitAllowedURLs: values["stage_in.git_allowed_urls"] as! [String],
            fileAllowedURLs: values["stage_in.file_allowed_urls"] as! [String],
            requireSHA256: values["stage_in.require_sha256"] as! Bool,
            stageInCAFile: nonEmpty(values["stage_in.ca_file"]),
            retries: values["stage_in.retries"] as! Int, retryDelayMilliseconds: values["stage_in.retry_delay_ms"] as! Int,
            maxStageInFileMB: values["stage_in.max_file_mb"] as! Int,
            journalKeepDays: values["journal.keep_days"] as! Int,
            keepCompletedHours: values["sandboxes.keep_completed_hours"] as! Int,
            keepFailedHours: values["sandboxes.keep_failed_hours"] as! Int,
            maxOutputFileBytes: Int64(values["outputs.max_file_bytes"] as! Int),
            maxOutputTaskBytes: Int64(values["outputs.max_task_bytes"] as! Int),
            outputAllowedURLs: values["outputs.allowed_urls"] as! [String],
            requireApproval: values["outputs.require_approval"] as! Bool, holdLogs: values["outputs.hold_logs"] as! Bool,
            outputCAFile: nonEmpty(values["outputs.ca_file"]),
            outputRetries: values["outputs.retries"] as! Int,
            outputRetryDelayMilliseconds: values["outputs.retry_delay_ms"] as! Int,
            reporterMaxEventsPerTask: values["reporter.max_events_per_task"] as! Int,
            reporterMaxEventBytesPerTask: values["reporter.max_event_bytes_per_task"] as! Int,
            reporterMaxMetricsPerLine: values["reporter.max_metrics_per_line"] as! Int,
            datasets: datasets, source: source)
        config.minFreeMB = values["node.min_free_mb"] as! Int
        config.drainSeconds = values["node.drain_seconds"] as! Int
        config.dockerWaitSeconds = values["launchers.docker.wait_for_daemon_seconds"] as! Int
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

    /// Host launchers run only what the admin listed: `process` needs a non-empty allowlist of absolute paths, and
    /// `flower` an absolute interpreter; SuperLink entries must be host:port; env allowlist entries must be names.
    static func launcherProblems(_ values: [String: Any], enabled: [String]) -> [String] {
        var problems: [String] = []
        if enabled.contains("process") {
            let list = values["launchers.process.allowed_executables"] as? [String] ?? []
            if list.isEmpty {
                problems.append("launchers.process.allowed_executables: must list the absolute paths of the programs "
                                + "host-process tasks may run while \"process\" is in launchers.enabled")
            }
            for p in list where !p.hasPrefix("/") {
                problems.append("launchers.process.allowed_executables: \"\(p)\" is not an absolute path")
            }
        }
        if enabled.contains("flower"), let python = values["launchers.flower.python"] as? String, !python.hasPrefix("/") {
            problems.append("launchers.flower.python: \"\(python)\" is not an absolute path (the interpreter Flower "
                            + "environments are made from, e.g. /usr/bin/python3)")
        }
        for entry in values["launchers.flower.allowed_superlinks"] as? [String] ?? [] where HostPort.parse(entry) == nil {
            problems.append("launchers.flower.allowed_superlinks: \"\(entry)\" is not host:port (e.g. "
                            + "\"superlink.example.org:9092\" or \"[2001:db8::1]:9092\")")
        }
        for entry in values["launchers.env_allowed"] as? [String] ?? []
            where !Patterns.matches(#"^[A-Za-z_][A-Za-z0-9_]{0,127}\*?$"#, entry) {
            problems.append("launchers.env_allowed: \"\(entry)\" is not a variable name (or NAME_PREFIX*)")
        }
        return problems
    }

    private static func flatten(_ table: TOMLTable, prefix: String, into flat: inout [String: TOMLValueConvertible],
                                datasets: inout [String: Dataset], problems: inout [String]) {
        for key in table.keys {
            let name = prefix.isEmpty ? key : "\(prefix).\(key)"
            guard let value = table[key] else { continue }
            if name == "datasets" {
                guard let t = value.table else {
                    problems.append("datasets: expected a table of [datasets.<id>] sections")
                    continue
                }
                for id in t.keys {
                    readDataset(id, t[id], into: &datasets, problems: &problems)
                }
            } else if let sub = value.table {
                flatten(sub, prefix: name, into: &flat, datasets: &datasets, problems: &problems)
            } else {
                flat[name] = value
            }
        }
    }

    /// Named logins: `[registries."host:port"]` (username and password) and `[credentials."name"]` (username and
    /// password for basic, or a token for bearer). Secrets come from a file or an environment variable, never from
    /// the configuration itself.
    private static func readLogins(_ value: TOMLValueConvertible, section: String, tokens: Bool, brokerFiles: Bool,
                                   problems: inout [String]) -> [String: Credential] {
        var logins: [String: Credential] = [:]
        let secretKeys = ["password_file", "password_env"] + (tokens ? ["token_file", "token_env"] : [])
        // Node credentials name where they may be sent; a registry login goes only to its own registry.
        let allowed = ["username"] + secretKeys + (tokens ? ["urls"] : [])
        guard let t = value.table else {
            problems.append("\(section): expected [\(section).\"name\"] sections")
            return logins
        }
        for name in t.keys {
            let at = "\(section).\"\(name)\""
            guard let r = t[name]?.table else {
                problems.append("\(at): expected a table with \(allowed.joined(separator: ", "))")
                continue
            }
            for k in r.keys where !allowed.contains(k) {
                problems.append("\(at).\(k): is not a known key (\(allowed.joined(separator: ", ")))")
            }
            let user = r["username"]?.string
            let given = secretKeys.filter { r[$0] != nil }
            guard given.count == 1, let source = r[given[0]]?.string else {
                problems.append("\(at): needs exactly one of \(secretKeys.joined(separator: ", "))")
                continue
            }
            let isToken = given[0].hasPrefix("token")
            if isToken && user != nil {
                problems.append("\(at).username: a token login has no username (use password_file for basic auth)")
            }
            if !isToken && user == nil {
                problems.append("\(at).username: is required with \(given[0])")
            }
            var secret = ""
            if given[0].hasSuffix("_env") {
                secret = ProcessInfo.processInfo.environment[source] ?? ""
                if secret.isEmpty && brokerFiles { problems.append("\(at).\(given[0]): \(source) is not set") }
            } else if let text = try? String(contentsOfFile: absolutePath(source), encoding: .utf8) {
                secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
            } else if brokerFiles {
                problems.append("\(at).\(given[0]): cannot read \(source)")
            }
            var urls = URLPolicy(entries: [])
            if tokens {
                if let list = r["urls"]?.array, list.count > 0, list.allSatisfy({ $0.string != nil }) {
                    do {
                        urls = try URLPolicy(list.compactMap { $0.string })
                    } catch {
                        problems.append("\(at).urls: \(error)")
                    }
                } else {
                    problems.append("\(at).urls: is required: a non-empty array of the URL prefixes this credential "
                                    + "may be sent to (\"https://git.example.org/team/\")")
                }
            }
            logins[name] = Credential(username: isToken ? nil : user, secret: secret, urls: urls)
        }
        return logins
    }

    /// `[hooks]`: `name = ["/absolute/program", "fixed", "args"]`.
    private static func readHooks(_ value: TOMLValueConvertible, problems: inout [String]) -> [String: [String]] {
        guard let t = value.table else {
            problems.append("hooks: expected a table of name = [\"/program\", \"args\"...]")
            return [:]
        }
        var hooks: [String: [String]] = [:]
        for name in t.keys {
            let argv = t[name]?.array?.compactMap { $0.string } ?? []
            guard let program = argv.first, program.hasPrefix("/"), argv.count == t[name]?.array?.count else {
                problems.append("hooks.\(name): expected an array of strings starting with an absolute program path")
                continue
            }
            if !FileManager.default.isExecutableFile(atPath: program) {
                problems.append("hooks.\(name): \(program) is not an executable file")
            }
            hooks[name] = argv
        }
        return hooks
    }

    private static func readDataset(_ id: String, _ value: TOMLValueConvertible?, into datasets: inout [String: Dataset],
                                    problems: inout [String]) {
        let where_ = "datasets.\(id)"
        guard Patterns.matches(Patterns.datasetID, id) else {
            problems.append("\(where_): \"\(id)\" is not a valid dataset id")
            return
        }
        guard let t = value?.table else {
            problems.append("\(where_): expected a table with path and labels")
            return
        }
        var labels: [String: String] = [:]
        for k in t.keys where k != "path" && k != "labels" {
            problems.append("\(where_).\(k): is not a known key (path, labels)")
        }
        if let l = t["labels"] {
            if let lt = l.table {
                for k in lt.keys { labels[k] = lt[k]?.string ?? lt[k].map { "\($0)" } }
            } else {
                problems.append("\(where_).labels: expected a table of strings")
            }
        }
        guard let path = t["path"]?.string, path.hasPrefix("/") else {
            problems.append("\(where_).path: is required and must be an absolute path")
            return
        }
        if !FileManager.default.fileExists(atPath: path) {
            problems.append("\(where_).path: \(path) does not exist")
        }
        datasets[id] = Dataset(path: path, labels: labels)
    }

    private static func fromTOML(_ v: TOMLValueConvertible, key: Key, problems: inout [String]) -> Any? {
        switch key.kind {
        case .string, .path:
            guard let s = v.string else {
                problems.append("\(key.name): expected a string, got \(v.type)")
                return nil
            }
            if case .path = key.kind { return absolutePath(s) }
            return s
        case .int(let min, let max):
            guard let i = v.int else {
                problems.append("\(key.name): expected an integer, got \(v.type)")
                return nil
            }
            return checkRange(i, key: key, min: min, max: max, problems: &problems)
        case .bool:
            guard let b = v.bool else {
                problems.append("\(key.name): expected true or false, got \(v.type)")
                return nil
            }
            return b
        case .strings:
            guard let a = v.array else {
                problems.append("\(key.name): expected an array of strings, got \(v.type)")
                return nil
            }
            var out: [String] = []
            for item in a {
                guard let s = item.string else {
                    problems.append("\(key.name): expected an array of strings, found \(item.type)")
                    return nil
                }
                out.append(s)
            }
            return out
        }
    }

    private static func fromEnvironment(_ text: String, key: Key, problems: inout [String]) -> Any? {
        switch key.kind {
        case .string:
            return text
        case .path:
            return absolutePath(text)
        case .int(let min, let max):
            guard let i = Int(text) else {
                problems.append("\(key.name) (from \(key.envName)): \"\(text)\" is not an integer")
                return nil
            }
            return checkRange(i, key: key, min: min, max: max, problems: &problems)
        case .bool:
            switch text.lowercased() {
            case "true", "1", "yes": return true
            case "false", "0", "no": return false
            default:
                problems.append("\(key.name) (from \(key.envName)): \"\(text)\" is not true or false")
                return nil
            }
        case .strings:
            return text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
    }

    private static func nonEmpty(_ value: Any?) -> String? {
        guard let s = value as? String, !s.isEmpty else { return nil }
        return s
    }

    /// Relative paths are taken from the current directory (start.sh runs from the checkout).
    public static func absolutePath(_ path: String) -> String {
        guard !path.isEmpty, !path.hasPrefix("/") else { return path }
        return URL(fileURLWithPath: path).standardizedFileURL.path
    }

    private static func checkRange(_ i: Int, key: Key, min: Int, max: Int, problems: inout [String]) -> Int? {
        guard i >= min && i <= max else {
            problems.append("\(key.name): \(i) is out of range (\(min)…\(max))")
            return nil
        }
        return i
    }
}
