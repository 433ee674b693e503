import ArgumentParser
import FEMCore
import FEMSystem
import Foundation

/// `fem-client status`: one screen about the running daemon, read from the status file it writes under its work dir
/// (`status.json`, rewritten with each heartbeat). Exit 0: running; 3: not running (as `systemctl status`).
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show whether the daemon runs: broker, tasks, last heartbeat, disk, versions.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Print JSON.") var json = false

    /// What the daemon's status file says, and whether that daemon still runs.
    enum Reading {
        case noFile(path: String)
        case unreadable(path: String, why: String)
        case stale(NodeStatusFile, path: String)
        case running(NodeStatusFile, path: String)
    }

    static func read(workDir: String) -> Reading {
        let path = NodeStatusFile.path(workDir: workDir)
        guard FileManager.default.fileExists(atPath: path) else { return .noFile(path: path) }
        let status: NodeStatusFile
        do {
            status = try JSONDecoder.fem.decode(NodeStatusFile.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            return .unreadable(path: path, why: "\(error)")
        }
        return isDaemon(status.pid) ? .running(status, path: path) : .stale(status, path: path)
    }

    /// The pid is alive and is a fem-client (not another process that got the number since).
    static func isDaemon(_ pid: Int32) -> Bool {
        guard ChildProcess.isAlive(pid),
              let cmdline = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return false }
        let args = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return args.first.map { ($0 as NSString).lastPathComponent == "fem-client" } == true && args.contains("daemon")
    }

    func run() async throws {
        let config = try options.loadConfig(brokerFiles: false)
        let reading = Self.read(workDir: config.workDir)
        if json {
            var object: [String: JSONValue] = [:]
            switch reading {
            case .noFile(let path):
                object = ["running": false, "reason": .string("no status file \(path): the daemon has not run here")]
            case .unreadable(let path, let why):
                object = ["running": false, "reason": .string("cannot read the status file \(path): \(why)")]
            case .stale(let s, _), .running(let s, _):
                let encoded = try JSONValue.parse(Operations.encoder.encode(s))
                if case .object(let fields) = encoded { object = fields }
                object["running"] = .bool({ if case .running = reading { true } else { false } }())
                if case .stale = reading {
                    object["reason"] = .string("pid \(s.pid) is not running (the status file is from its last run)")
                }
            }
            print(String(decoding: JSONValue.object(object).encoded(), as: UTF8.self))
        } else {
            print(Self.screen(reading, now: Date()))
        }
        if case .running = reading { return }
        throw ExitCode(3)
    }

    static func screen(_ reading: Reading, now: Date) -> String {
        func ago(_ d: Date?) -> String {
            guard let d else { return "never" }
            let s = Int(now.timeIntervalSince(d).rounded())
            let span = s < 120 ? "\(s) s" : s < 7200 ? "\(s / 60) min" : s < 172_800 ? "\(s / 3600) h" : "\(s / 86_400) days"
            return "\(FEMTime.format(d)) (\(span) ago)"
        }
        let s: NodeStatusFile
        var lines: [String] = []
        switch reading {
        case .noFile(let path):
            return "fem-client is not running: no status file \(path) (the daemon has not run with this work dir)"
        case .unreadable(let path, let why):
            return "fem-client: cannot read the status file \(path): \(why)"
        case .stale(let status, let path):
            s = status
            lines.append("fem-client is NOT running: pid \(s.pid) from \(path) is gone (stale status, last written "
                         + "\(ago(s.writtenAt)))")
        case .running(let status, _):
            s = status
            lines.append("fem-client is running: pid \(s.pid), node \(s.nodeID), up since \(ago(s.startedAt))")
        }
        if s.brokerConnected {
            lines.append("broker      connected since \(ago(s.brokerConnectedSince)) (\(s.broker))")
        } else {
            lines.append("broker      NOT connected since \(ago(s.brokerDisconnectedSince)) (\(s.broker))")
        }
        lines.append("tasks       \(s.running) running, \(s.queued) queued, \(s.awaitingApproval) awaiting approval"
                     + (s.draining ? " (draining for a stop: no new tasks)" : ""))
        var beat = "heartbeat   last \(ago(s.lastHeartbeat)), every \(s.heartbeatInterval) s"
        if case .running = reading, let last = s.lastHeartbeat,
           now.timeIntervalSince(last) > Double(3 * s.heartbeatInterval + 5) {
            beat += " — LATE: the daemon may be stuck"
        }
        lines.append(beat)
        let free = s.freeDiskBytes.map { "\($0 / 1_048_576) MiB free in the work dir" } ?? "free space unknown"
        lines.append("disk        \(free); " + (s.pressure.map { "PRESSURE: \($0)" } ?? "no pressure"))
        lines.append("launchers   \(s.launchers.joined(separator: ", "))")
        lines.append("versions    " + s.versions.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            .joined(separator: ", "))
        lines.append("config      \(s.configPath), loaded \(ago(s.configLoadedAt))")
        return lines.joined(separator: "\n")
    }

    /// For `fem-client check`: a warning when the running daemon loaded the file before its last change.
    static func configDrift(configPath: String, workDir: String) -> String? {
        guard case .running(let s, _) = read(workDir: workDir),
              let now = NodeStatusFile.modified(configPath) else { return nil }
        let loadedPath = NodeConfig.absolutePath(s.configPath)
        guard loadedPath == NodeConfig.absolutePath(configPath) else { return nil }
        // The status file keeps milliseconds: a file changed later than that is newer.
        if let loaded = s.configModified, now.timeIntervalSince(loaded) < 0.001 { return nil }
        return "the configuration file \(configPath) changed (\(FEMTime.format(now))) after the running daemon (pid "
            + "\(s.pid)) loaded it (\(FEMTime.format(s.configLoadedAt))): send SIGHUP (systemctl reload fem-client) "
            + "to apply it"
    }
}
