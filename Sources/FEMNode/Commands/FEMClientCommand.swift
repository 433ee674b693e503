import ArgumentParser
import FEMCore
import FEMJournal
import FEMLaunchers
import FEMSystem
import FEMTransport
import Foundation
import Logging

/// `fem-client`: the node daemon and the node's local tools.
public struct FEMClientCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "fem-client",
        abstract: "The node half of a Federated Execution Manager.",
        version: FEMVersion.string,
        subcommands: [Daemon.self, Check.self, Tasks.self, Show.self, OutputsCommand.self, ConsoleCommand.self, Validate.self, Render.self,
                      Run.self, KeysCommand.self, SignCommand.self, VerifyCommand.self, StatusCommand.self, Stats.self, ToolsCommand.self])

    public init() {}
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "The node configuration file (or FEM_CONFIG).")
    var config: String = ProcessInfo.processInfo.environment["FEM_CONFIG"] ?? "config/fem-client.toml"

    func load() throws -> NodeConfig {
        try loadConfig()
    }
}

extension FEMClientCommand {
    struct Daemon: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the receiver daemon: take tasks from the broker, run them, report back.")
        @OptionGroup var options: ConfigOption

        func run() async throws {
            let config = try options.load()
            try await NodeDaemon.run(config: config)
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the configuration, the broker over TLS with these certificates, and the work dir.")
        @OptionGroup var options: ConfigOption

        func run() async throws {
            var failures: [String] = []
            let config: NodeConfig
            if let why = ConfigOption.unreadable(options.config) {
                print("FAIL  \(why)")
                throw ExitCode(1)
            }
            do {
                config = try NodeConfig.load(path: options.config,
                                             environment: ProcessInfo.processInfo.environment)
                print("ok    configuration \(options.config) (node \(config.nodeID))")
                if config.trust.requireSignedPlans || !config.trust.keys.isEmpty {
                    print("ok    plans " + (config.trust.requireSignedPlans ? "must be" : "may be") + " signed by: "
                          + (config.trust.keys.isEmpty ? "no key" : config.trust.keys.map(\.description).joined(separator: ", "))
                          + " (trust)")
                }
                if let drift = StatusCommand.configDrift(configPath: options.config, workDir: config.workDir) {
                    print("warn  \(drift)")
                }
            } catch let e as ConfigError {
                print("FAIL  \(e.description)")
                throw ExitCode(1)
            }
            do {
                try FileManager.default.createDirectory(atPath: config.workDir, withIntermediateDirectories: true)
                let probe = "\(config.workDir)/.fem-check-\(Posix.processID)"
                try Data("x".utf8).write(to: URL(fileURLWithPath: probe))
                try FileManager.default.removeItem(atPath: probe)
                let free = freeDiskBytes(at: config.workDir).map { " (\($0 / 1_048_576) MiB free)" } ?? ""
                print("ok    work dir \(config.workDir) is writable\(free)")
            } catch {
                failures.append("work dir \(config.workDir) is not writable: \(error.localizedDescription)")
                print("FAIL  \(failures.last!)")
            }
            do {
                let endpoint = try config.endpoint()
                let conn = try AMQPConnection(endpoint: endpoint)
                try conn.openChannel(1)
                print("ok    broker \(endpoint) reachable over TLS with client certificate \(config.certFile)")
                // The node only looks the shared exchanges up: they must exist (femctl setup declares them).
                var missing: [String] = []
                for (i, x) in [WireNames.tasksExchange, WireNames.controlExchange, WireNames.eventsExchange].enumerated() {
                    let channel = UInt16(2 + i)
                    do {
                        try conn.openChannel(channel)
                        try conn.declareExchange(x, channel: channel, passive: true)
                    } catch {
                        missing.append(x)
                    }
                }
                if missing.isEmpty {
                    print("ok    broker exchanges fem.tasks, fem.control and fem.events exist")
                } else {
                    failures.append("broker: exchange(s) \(missing.joined(separator: ", ")) missing or not visible to "
                                    + "this account: run `femctl setup` once on this broker")
                    print("FAIL  \(failures.last!)")
                }
                print("ok    tasks and cancels are accepted only from the broker account(s) "
                      + config.orchestrators.joined(separator: ", ") + " (broker.orchestrators)")
            } catch {
                failures.append("broker: \(error)")
                print("FAIL  \(failures.last!)")
            }
            if config.enabledLaunchers.contains("docker") {
                do {
                    let v = try DockerEngine(socket: config.docker.socket).version()
                    print("ok    dockerd \(v.Version) (API \(v.ApiVersion)) on \(config.docker.socket)")
                } catch {
                    failures.append("docker: \(error)")
                    print("FAIL  \(failures.last!)")
                }
            }
            if config.enabledLaunchers.contains("slurm") {
                let shared = config.slurm.sharedDir
                do {
                    let probe = "\(shared)/.fem-check-\(Posix.processID)"
                    try Data("x".utf8).write(to: URL(fileURLWithPath: probe))
                    try FileManager.default.removeItem(atPath: probe)
                    print("ok    slurm: shared dir \(shared) exists and is writable")
                } catch {
                    failures.append("slurm: launchers.slurm.shared_dir \(shared) is not a writable folder: "
                                    + error.localizedDescription)
                    print("FAIL  \(failures.last ?? "")")
                }
                if let why = config.slurm.refusal(workDir: config.workDir) {
                    failures.append("slurm: \(why)")
                    print("FAIL  \(failures.last ?? "")")
                }
            }
            if config.enabledLaunchers.contains("process") {
                // Compared by resolved path: say what each entry really is, and which ones match nothing here.
                for program in config.processAllowedExecutables {
                    if let real = ProcessLauncher.resolvedExecutable(program) {
                        print("ok    process: tasks may run \(program)\(real == program ? "" : " (\(real))")")
                    } else {
                        print("warn  process: launchers.process.allowed_executables lists \(program), which is not an "
                              + "executable file on this host")
                    }
                }
            }
            if config.enabledLaunchers.contains("flower") {
                let python = config.flower.python
                if FileManager.default.isExecutableFile(atPath: python) {
                    print("ok    flower: Python environments from \(python) in \(config.flower.venvDir)"
                          + (config.flower.wheelDir.map { " (wheels from \($0) only)" } ?? " (from PyPI)"))
                } else {
                    failures.append("flower: launchers.flower.python \(python) is not an executable "
                                    + "(apt-get install python3 python3-venv)")
                    print("FAIL  \(failures.last!)")
                }
            }
            for (name, confinement) in [("process", config.processConfinement), ("flower", config.flower.confinement)]
            where config.enabledLaunchers.contains(name) {
                let user = confinement.user.map { "as \($0.name) (uid \($0.uid))" } ?? "as the daemon's user"
                if let why = confinement.unreachable(config.workDir) {
                    failures.append("\(name): \(why)")
                    print("FAIL  \(failures.last!)")
                }
                if Posix.effectiveUserID != 0, let why = confinement.refusal() {
                    failures.append("\(name): \(why)")
                    print("FAIL  \(failures.last!)")
                } else if let why = TaskCgroup.probe(host: confinement.cgroups, node: config.nodeID) {
                    if confinement.allowUnconfined {
                        print("WARN  \(name): no usable cgroup (\(why)); host tasks run \(user) WITHOUT memory, CPU or "
                              + "process limits, and a kill may miss what they started (\(confinement.section)."
                              + "allow_unconfined = true)")
                    } else {
                        failures.append("\(name): no usable cgroup for host tasks (\(why)); the launcher refuses to "
                                        + "start unless \(confinement.section).allow_unconfined = true")
                        print("FAIL  \(failures.last!)")
                    }
                } else {
                    let kind = confinement.cgroups.map(\.description) ?? "no cgroup"
                    print("ok    \(name): host tasks run \(user), each in a cgroup of its own (\(kind))")
                }
            }
            print("info  launchers enabled: \(config.enabledLaunchers.joined(separator: ", "))")
            for (key, list, what) in [("stage_in.git_allowed_urls", config.gitAllowedURLs, "no git source can be fetched"),
                                      ("stage_in.file_allowed_urls", config.fileAllowedURLs, "no task file can be downloaded"),
                                      ("outputs.allowed_urls", config.outputAllowedURLs,
                                       "no task can name a stage_out target; outputs stay in the sandbox")] {
                if list.isEmpty {
                    print("info  \(key) is empty: egress denied (\(what))")
                } else {
                    print("info  \(key): \(list.joined(separator: ", "))")
                }
            }
            print("info  datasets: \(config.datasets.isEmpty ? "none" : config.datasets.keys.sorted().joined(separator: ", "))")
            if config.requireApprovedTools {
                // The tool registry: with nothing approved, every task is declined.
                let approved = FileManager.default.fileExists(atPath: config.journalPath)
                    ? ((try? SQLiteJournal(path: config.journalPath, nodeID: config.nodeID).toolApprovals(includeRevoked: false))?.count ?? 0) : 0
                print((approved == 0 ? "warn  " : "info  ") + "trust.require_approved_tools: only approved tool plans run; "
                      + "\(approved) approved (fem-client tools list)" + (approved == 0 ? ": every task is declined" : ""))
            }
            print("info  libraries: rabbitmq-c \(LibraryVersions.rabbitmq), libgit2 \(LibraryVersions.libgit2), "
                  + LibraryVersions.curl)
            if !failures.isEmpty { throw ExitCode(1) }
        }
    }

    struct Tasks: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tasks from the node's journal, newest first.")
        @OptionGroup var options: ConfigOption
        @Option(help: "Only tasks in this state (repeatable).") var state: [String] = []
        @Option(help: "At most this many tasks.") var limit = 50
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let config = try options.load()
            let journal = try config.openJournal()
            var states: Set<TaskState>?
            if !state.isEmpty {
                states = Set(try state.map {
                    guard let s = TaskState(rawValue: $0) else {
                        throw CommandFailure.invalid("--state: \"\($0)\" is not one of "
                                              + TaskState.allCases.map(\.rawValue).joined(separator: ", "))
                    }
                    return s
                })
            }
            let rows = try journal.tasks(states: states, limit: limit)
            let now = Date()
            let timings = rows.map { TaskView.timings($0, history: (try? journal.history($0.taskID)) ?? [], now: now) }
            if json {
                let items: [JSONValue] = zip(rows, timings).map { r, t in
                    var o = TaskView.json(r).objectValue ?? [:]
                    o["timings"] = t.json
                    return .object(o)
                }
                print(String(decoding: JSONValue.array(items).encoded(), as: UTF8.self))
                return
            }
            print(TaskView.tableHeader)
            for (r, t) in zip(rows, timings) { print(TaskView.tableRow(r, timings: t)) }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one task and every event it had.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The task id.") var taskID: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let config = try options.load()
            let journal = try config.openJournal()
            guard let rec = try journal.task(taskID) else {
                throw CommandFailure("task \(taskID) is not in the journal at \(config.journalPath)")
            }
            let history = try journal.history(taskID)
            if json {
                var obj = TaskView.json(rec).objectValue ?? [:]
                obj["events"] = .array(history.compactMap { try? JSONDecoder().decode(JSONValue.self, from: $0.encoded()) })
                obj["sandbox"] = .string("\(config.workDir)/sandboxes/\(taskID)")
                print(String(decoding: JSONValue.object(obj).encoded(), as: UTF8.self))
                return
            }
            print("task       \(rec.taskID)")
            print("execution  \(TextEscaping.escaped(rec.executionID))")
            print("state      \(rec.state.rawValue)")
            print("launcher   \(rec.launcher)")
            if let e = rec.exitCode { print("exit code  \(e)") }
            if let c = rec.failureClass { print("class      \(c.rawValue)") }
            if let m = rec.message { print("message    \(TextEscaping.escaped(m))") }
            print("sandbox    \(config.workDir)/sandboxes/\(taskID)")
            print("events:")
            for e in history { print("  " + TaskView.eventLine(e)) }
        }
    }
}

/// How tasks and events print, shared by `tasks`, `show`, `run` and `femctl watch`.
enum TaskView {
    static let tableHeader = pad("TASK", 38) + pad("STATE", 18) + pad("LAUNCHER", 10) + pad("TOOL", 24)
        + pad("EXECUTION", 20) + pad("UPDATED", 26) + pad("TIMINGS", 40) + "DETAIL"

    static func tableRow(_ r: TaskRecord, timings: TaskTimings? = nil) -> String {
        var detail = r.failureClass.map { "\($0.rawValue) " } ?? ""
        if let e = r.exitCode { detail += "exit=\(e) " }
        detail += r.message ?? ""
        return pad(TextEscaping.escaped(r.taskID), 38) + pad(r.state.rawValue, 18) + pad(r.launcher, 10)
            + pad(TextEscaping.escaped(tool(r)), 24) + pad(TextEscaping.escaped(r.executionID), 20)
            + pad(FEMTime.format(r.updatedAt), 26)
            + pad(timings?.compact ?? "", 40) + TextEscaping.escaped(detail)
    }

    /// `id@version` of the task's plan (`?` when the journal no longer keeps its document).
    static func tool(_ r: TaskRecord) -> String {
        guard let plan = r.document["plan"], let id = plan["id"]?.stringValue else { return "?" }
        return id + (plan["version"]?.stringValue.map { "@\($0)" } ?? "")
    }

    /// The timings of the task's terminal event, or, while it is not over, its steps so far (until `now`).
    static func timings(_ r: TaskRecord, history: [TaskEvent], now: Date) -> TaskTimings {
        if r.state.isTerminal {
            let end = history.last { $0.kind == .state && $0.state.isTerminal }
            return TaskTimings(end?.detail.data?["timings"]) ?? TaskTimings(history: history)
        }
        return TaskTimings(history: history, end: now)
    }

    static func json(_ r: TaskRecord) -> JSONValue {
        var o: [String: JSONValue] = [
            "task_id": .string(r.taskID), "execution_id": .string(r.executionID), "state": .string(r.state.rawValue),
            "launcher": .string(r.launcher), "received_at": .string(FEMTime.format(r.receivedAt)),
            "updated_at": .string(FEMTime.format(r.updatedAt)), "seq": .int(Int64(r.seq)),
        ]
        if let e = r.exitCode { o["exit_code"] = .int(Int64(e)) }
        if let c = r.failureClass { o["failure_class"] = .string(c.rawValue) }
        if let m = r.message { o["message"] = .string(m) }
        o["tool"] = .string(tool(r))
        return .object(o)
    }

    static func eventLine(_ e: TaskEvent) -> String {
        var s = "\(FEMTime.format(e.time))  #\(e.seq)  \(e.kind == .state ? e.state.rawValue : e.kind.rawValue)"
        if let c = e.detail.failureClass { s += "  class=\(c.rawValue)" }
        if let x = e.detail.exitCode { s += "  exit=\(x)" }
        if let m = e.detail.message { s += "  \(TextEscaping.escaped(m))" }
        return s
    }

    static func pad(_ s: String, _ n: Int) -> String {
        s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count)
    }
}

/// Flushes standard output (so piped readers see lines at once).
func flushOut() {
    fflush(nil)
}
