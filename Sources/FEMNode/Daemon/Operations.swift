import FEMCore
import FEMJournal
import FEMSystem
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// What `fem-client status` shows, written by the daemon to `<work_dir>/status.json` (atomically: a rename) when it
/// connects or loses the broker, with every heartbeat, and after a config reload. Nothing secret is in it.
public struct NodeStatusFile: Codable, Sendable, Equatable {
    public var pid: Int32
    public var nodeID: String
    public var version: String
    public var protocolVersion: Int
    public var startedAt: Date
    public var configPath: String
    public var configLoadedAt: Date
    /// The config file's modification time when it was (re)loaded: `fem-client check` compares it with the file's.
    public var configModified: Date?
    public var broker: String
    public var brokerConnected: Bool
    public var brokerConnectedSince: Date?
    public var brokerDisconnectedSince: Date?
    public var lastHeartbeat: Date?
    public var heartbeatInterval: Int
    public var running: Int
    public var queued: Int
    public var awaitingApproval: Int
    public var freeDiskBytes: UInt64?
    public var pressure: String?
    public var draining: Bool
    public var launchers: [String]
    /// fem-client, protocol, and the engines of enabled launchers (docker: dockerd's or podman's version; slurm).
    public var versions: [String: String]
    public var writtenAt: Date

    enum CodingKeys: String, CodingKey {
        case pid, nodeID = "node_id", version, protocolVersion = "protocol_version", startedAt = "started_at",
             configPath = "config_path", configLoadedAt = "config_loaded_at", configModified = "config_modified",
             broker, brokerConnected = "broker_connected", brokerConnectedSince = "broker_connected_since",
             brokerDisconnectedSince = "broker_disconnected_since", lastHeartbeat = "last_heartbeat",
             heartbeatInterval = "heartbeat_interval", running, queued, awaitingApproval = "awaiting_approval",
             freeDiskBytes = "free_disk_bytes", pressure, draining, launchers, versions, writtenAt = "written_at"
    }

    public static func path(workDir: String) -> String { "\(workDir)/status.json" }

    /// The file's modification time (nil when it cannot be read).
    static func modified(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }
}

/// The daemon's side of operations: systemd notifications and the status file.
final class Operations: Sendable {
    let systemd: SystemdNotify
    let path: String
    let logger: Logger
    private struct State {
        var status: NodeStatusFile
        var ready = false
    }
    private let state: Mutex<State>

    init(config: NodeConfig, broker: String, launchers: [String], logger: Logger, systemd: SystemdNotify = SystemdNotify()) {
        self.systemd = systemd
        self.logger = logger
        path = NodeStatusFile.path(workDir: config.workDir)
        let now = Date()
        state = Mutex(State(status: NodeStatusFile(
            pid: Posix.processID, nodeID: config.nodeID, version: FEMVersion.string,
            protocolVersion: WireNames.protocolVersion, startedAt: now, configPath: NodeConfig.absolutePath(config.source),
            configLoadedAt: now,
            configModified: NodeStatusFile.modified(config.source), broker: broker, brokerConnected: false,
            brokerConnectedSince: nil, brokerDisconnectedSince: now, lastHeartbeat: nil,
            heartbeatInterval: config.heartbeatSeconds, running: 0, queued: 0, awaitingApproval: 0,
            freeDiskBytes: freeDiskBytes(at: config.workDir), pressure: nil, draining: false, launchers: launchers,
            versions: ["fem-client": FEMVersion.string, "protocol": "\(WireNames.protocolVersion)"], writtenAt: now)))
    }

    /// The broker connection came up or went down. The first time it is up (journaled state was recovered before
    /// the services started), systemd hears `READY=1`.
    func broker(connected: Bool) {
        let first = state.withLock { s -> Bool in
            s.status.brokerConnected = connected
            if connected {
                s.status.brokerConnectedSince = Date()
                s.status.brokerDisconnectedSince = nil
            } else if s.status.brokerDisconnectedSince == nil {
                s.status.brokerDisconnectedSince = Date()
            }
            guard connected, !s.ready else { return false }
            s.ready = true
            return true
        }
        if first {
            notify("READY=1\nSTATUS=connected to the broker; taking tasks")
        } else {
            notify(connected ? "STATUS=connected to the broker again; taking tasks"
                   : "STATUS=lost the broker connection; reconnecting")
        }
        write()
    }

    func heartbeat(_ beat: Heartbeat, awaitingApproval: Int?, draining: Bool) {
        state.withLock { s in
            s.status.lastHeartbeat = beat.time
            s.status.running = beat.running
            s.status.queued = beat.queued
            if let awaitingApproval { s.status.awaitingApproval = awaitingApproval }
            s.status.freeDiskBytes = beat.freeDiskBytes
            s.status.pressure = beat.pressure
            s.status.draining = draining
        }
        write()
    }

    func versions(_ more: [String: String]) {
        state.withLock { s in s.status.versions.merge(more) { $1 } }
        write()
    }

    func configLoaded(_ config: NodeConfig) {
        state.withLock { s in
            s.status.configLoadedAt = Date()
            s.status.configModified = NodeStatusFile.modified(config.source)
        }
        write()
    }

    func draining() {
        state.withLock { $0.status.draining = true }
        notify("STOPPING=1\nSTATUS=draining: no new tasks")
        write()
    }

    /// One datagram to systemd (nothing without NOTIFY_SOCKET); a failure is logged, never fatal.
    func notify(_ message: String) {
        if let why = systemd.send(message) { logger.warning("systemd notification failed: \(why)") }
    }

    /// Under the lock: writers share one temporary file, and the last snapshot taken is the one left in place.
    private func write() {
        state.withLock { s in
            s.status.writtenAt = Date()
            guard let body = try? Self.encoder.encode(s.status) else { return }
            do {
                try Posix.writeFileAtomically(path, Array(body) + [0x0A], mode: 0o644)
            } catch {
                logger.debug("cannot write the status file \(path): \(error)")
            }
        }
    }

    static var encoder: JSONEncoder {
        let e = JSONEncoder.fem
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
        return e
    }
}

/// `WATCHDOG=1` every WATCHDOG_USEC/2 while the daemon runs, the drain included: first in the service list, so the
/// graceful shutdown reaches it last.
struct WatchdogService: Service {
    let operations: Operations
    let interval: Duration

    func run() async throws {
        while !Task.isCancelled {
            operations.notify("WATCHDOG=1")
            do { try await Task.sleep(for: interval) } catch { return }
            if Task.isShuttingDownGracefully { break }
        }
    }
}

/// SIGHUP: receiver.log is reopened (after logrotate moved it) and the config file is read again (`ConfigReload`).
struct HangupService: Service {
    let app: NodeApplication

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                if let why = app.logSink?.reopen() {
                    app.logger.warning("SIGHUP: cannot reopen the log \(app.config.logFile) (\(why)); writing on to the old file")
                } else {
                    app.logger.notice("SIGHUP: log reopened")
                }
                await app.reload.reload()
            }
        }
    }
}

/// The config the daemon runs with now; a reload replaces what may change live.
final class LiveConfig: Sendable {
    private let current: Mutex<NodeConfig>
    init(_ config: NodeConfig) { current = Mutex(config) }
    var value: NodeConfig { current.withLock { $0 } }
    func set(_ config: NodeConfig) { current.withLock { $0 = config } }
}

/// A config reload: the file is read and validated again; allowlists, datasets, limits, credentials and launcher
/// settings take effect for tasks that start from now on (running tasks keep theirs). What cannot change live is
/// named in the log and keeps its running value. A file that does not validate is refused: the old config stays.
struct ConfigReload: Sendable {
    let live: LiveConfig
    let runner: Runner
    /// Where the tool registry's approvals are (`[trust] require_approved_tools`).
    let journal: SQLiteJournal
    let operations: Operations
    let logger: Logger

    func reload() async {
        operations.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotify.monotonicMicroseconds)")
        defer { operations.notify("READY=1\nSTATUS=config reloaded; taking tasks") }
        let old = live.value
        let loaded: NodeConfig
        do {
            // Files, users and cgroups are read: blocking, so on the pool.
            let source = old.source
            loaded = try await offload("config-reload") {
                try NodeConfig.load(path: source, environment: ProcessInfo.processInfo.environment)
            }
        } catch let e as ConfigError {
            let problems = e.problems.joined(separator: "; ")
            logger.error("config reload refused: \(old.source) is not valid (\(problems)); the running configuration is kept")
            return
        } catch {
            logger.error("config reload refused: \(error); the running configuration is kept")
            return
        }
        let fixed = Self.restartOnly.filter { $0.value(old) != $0.value(loaded) }.map(\.key)
        // What cannot change live keeps its running value.
        var next = loaded
        Self.keepRunning(old, in: &next)
        let changed = Self.live.filter { $0.value(old) != $0.value(next) }.map(\.key)
        do {
            // The launchers' own refusals (a host launcher that could not be confined), as at start.
            try NodeAssembly.prepareWorkDir(next)
            var settings = RunnerSettings(
                nodeID: next.nodeID, nodeName: next.nodeName, defaultTimeoutSeconds: next.defaultTimeoutSeconds,
                allowTimeoutAbovePlan: next.allowTimeoutAbovePlan, maxTimeoutSeconds: next.maxTimeoutSeconds,
                datasets: next.datasets.mapValues(\.path), envAllowed: next.envAllowed)
            settings.trust = NodeAssembly.trust(next, journal: journal)
            await runner.reload(settings: settings, registry: NodeAssembly.launchers(next),
                                stageIn: try NodeAssembly.stageIn(next), stageOut: try NodeAssembly.stageOut(next))
        } catch {
            logger.error("config reload refused: \(error); the running configuration is kept")
            return
        }
        live.set(next)
        operations.configLoaded(next)
        for key in fixed {
            logger.warning("config reload: \(key) changed; restart to apply")
        }
        if changed.isEmpty {
            logger.notice("config reloaded from \(old.source): nothing that applies live changed")
        } else {
            let keys = changed.joined(separator: ", ")
            logger.notice("config reloaded from \(old.source): \(keys) changed; tasks that start from now on use the new settings")
        }
    }

    /// A key and how to read it from a config, for comparison only (values, secrets included, are never logged).
    struct Key: Sendable {
        let key: String
        let value: @Sendable (NodeConfig) -> String
        init(_ key: String, _ value: @escaping @Sendable (NodeConfig) -> String) {
            self.key = key
            self.value = value
        }
    }

    /// Read once at start: identity, connections, folders, slots, timers, and the airlock (the supervisor holds
    /// tool text by it, so both must change together).
    static let restartOnly: [Key] = [
        Key("node.id") { $0.nodeID }, Key("node.name") { $0.nodeName }, Key("node.work_dir") { $0.workDir },
        Key("node.log_file") { $0.logFile },
        Key("node.log_max_mb, node.log_keep or node.log_format") { "\($0.logMaxMB) \($0.logKeep) \($0.logFormat)" },
        Key("node.max_concurrent_tasks") { "\($0.maxConcurrentTasks)" },
        // The runner's ledger holds reservations against the capacity it started with, like the slot count.
        Key("node.capacity") {
            "\(String(describing: $0.capacityCPUs)) \(String(describing: $0.capacityMemoryMB)) "
                + "\(String(describing: $0.capacityGPUs)) \(String(describing: $0.capacityStorageMB))"
        },
        Key("node.heartbeat_interval") { "\($0.heartbeatSeconds)" }, Key("node.stop_grace") { "\($0.stopGraceSeconds)" },
        Key("node.min_free_mb") { "\($0.minFreeMB)" }, Key("node.drain_seconds") { "\($0.drainSeconds)" },
        Key("broker.url") { $0.brokerURL }, Key("broker.password_file") { "\($0.brokerPassword ?? "")" },
        Key("broker.ca_file") { $0.caFile }, Key("broker.cert_file") { $0.certFile },
        Key("broker.key_file") { $0.keyFile }, Key("broker.prefetch") { "\($0.prefetch)" },
        Key("broker.max_message_bytes") { "\($0.maxMessageBytes)" },
        Key("broker.orchestrators") { "\($0.orchestrators)" }, Key("launchers.enabled") { "\($0.enabledLaunchers)" },
        Key("node.pools, node.pool_max_passes or broker.pool_peers") {
            "\($0.pools) \($0.poolMaxPasses) \($0.poolPeers)"
        },
        Key("hooks") { "\($0.hooks)" }, Key("journal.keep_days") { "\($0.journalKeepDays)" },
        // The console's listener and accounts are read when it starts: a removed account or a changed role takes
        // effect at the restart the log line asks for.
        Key("console") { String(describing: $0.console) },
        Key("sandboxes") { "\($0.keepCompletedHours) \($0.keepFailedHours)" },
        Key("outputs.require_approval") { "\($0.requireApproval)" }, Key("outputs.hold_logs") { "\($0.holdLogs)" },
        Key("reporter") {
            "\($0.reporterMaxEventsPerTask) \($0.reporterMaxEventBytesPerTask) \($0.reporterMaxMetricsPerLine)"
        },
        // The metrics endpoint is bound once, at start.
        Key("metrics.listen") { $0.metricsListen?.description ?? "" },
    ]

    static func keepRunning(_ old: NodeConfig, in next: inout NodeConfig) {
        next.nodeID = old.nodeID
        next.nodeName = old.nodeName
        next.workDir = old.workDir
        next.logFile = old.logFile
        next.logMaxMB = old.logMaxMB
        next.logKeep = old.logKeep
        next.logFormat = old.logFormat
        next.maxConcurrentTasks = old.maxConcurrentTasks
        next.capacityCPUs = old.capacityCPUs
        next.capacityMemoryMB = old.capacityMemoryMB
        next.capacityGPUs = old.capacityGPUs
        next.capacityStorageMB = old.capacityStorageMB
        next.heartbeatSeconds = old.heartbeatSeconds
        next.stopGraceSeconds = old.stopGraceSeconds
        next.minFreeMB = old.minFreeMB
        next.drainSeconds = old.drainSeconds
        next.metricsListen = old.metricsListen
        next.brokerURL = old.brokerURL
        next.brokerPassword = old.brokerPassword
        next.caFile = old.caFile
        next.certFile = old.certFile
        next.keyFile = old.keyFile
        next.prefetch = old.prefetch
        next.maxMessageBytes = old.maxMessageBytes
        next.orchestrators = old.orchestrators
        next.pools = old.pools
        next.poolMaxPasses = old.poolMaxPasses
        next.poolPeers = old.poolPeers
        next.enabledLaunchers = old.enabledLaunchers
        next.hooks = old.hooks
        next.journalKeepDays = old.journalKeepDays
        next.console = old.console
        next.keepCompletedHours = old.keepCompletedHours
        next.keepFailedHours = old.keepFailedHours
        next.requireApproval = old.requireApproval
        next.holdLogs = old.holdLogs
        next.reporterMaxEventsPerTask = old.reporterMaxEventsPerTask
        next.reporterMaxEventBytesPerTask = old.reporterMaxEventBytesPerTask
        next.reporterMaxMetricsPerLine = old.reporterMaxMetricsPerLine
    }

    /// What applies live, named in the reload's log line when it changed.
    static let live: [Key] = [
        Key("stage_in.git_allowed_urls") { "\($0.gitAllowedURLs)" },
        Key("stage_in.file_allowed_urls") { "\($0.fileAllowedURLs)" },
        Key("stage_in (checksums, ca_file, retries, max_file_mb)") {
            "\($0.requireSHA256) \($0.stageInCAFile ?? "") \($0.retries) \($0.retryDelayMilliseconds) \($0.maxStageInFileMB)"
        },
        Key("outputs.allowed_urls") { "\($0.outputAllowedURLs)" },
        Key("outputs (limits, ca_file, retries)") {
            "\($0.maxOutputFileBytes) \($0.maxOutputTaskBytes) \($0.outputCAFile ?? "") \($0.outputRetries) "
                + "\($0.outputRetryDelayMilliseconds)"
        },
        Key("outputs.checks") { "\($0.outputChecks)" },
        Key("datasets") { "\($0.datasets.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })" },
        Key("launchers.env_allowed") { "\($0.envAllowed)" },
        Key("node.labels") { "\($0.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })" },
        Key("node.default_timeout, node.max_timeout or node.allow_timeout_above_plan") {
            "\($0.defaultTimeoutSeconds) \($0.maxTimeoutSeconds) \($0.allowTimeoutAbovePlan)"
        },
        Key("launchers.process") { "\($0.processAllowedExecutables) \($0.processPath) \($0.processConfinement)" },
        Key("launchers.docker") { "\($0.docker) \($0.dockerWaitSeconds)" },
        Key("launchers.flower") { "\($0.flower)" },
        Key("launchers.slurm") { "\($0.slurm)" },
        Key("credentials") { "\($0.credentials.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })" },
        Key("registries") { "\($0.registries.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })" },
        Key("trust") { "\($0.trust) approved_tools=\($0.requireApprovedTools)" },
    ]
}

/// Engine versions for the status file, asked once at start (blocking: on the pool).
func engineVersions(_ config: NodeConfig) async -> [String: String] {
    var versions: [String: String] = [:]
    if config.enabledLaunchers.contains("docker") {
        let socket = config.docker.socket
        versions["docker"] = (try? await offload("docker-version") {
            let v = try DockerEngine(socket: socket).version()
            return "\(v.Version) (API \(v.ApiVersion))"
        }) ?? "unreachable"
    }
    if config.enabledLaunchers.contains("slurm") {
        var env = ["PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"]
        if !config.slurm.slurmConf.isEmpty { env["SLURM_CONF"] = config.slurm.slurmConf }
        let result = try? await ChildProcess.run(executable: config.slurm.sbatch, arguments: ["--version"],
                                                  environment: env, deadline: .seconds(10))
        versions["slurm"] = result.map { $0.succeeded ? $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            : "unknown (\($0.diagnostic))" } ?? "unknown"
    }
    return versions
}
