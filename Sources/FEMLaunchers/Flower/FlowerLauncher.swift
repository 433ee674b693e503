import FEMCore
import FEMSystem
import Foundation

/// Node settings for Flower clients.
public struct FlowerLauncherConfig: Sendable {
    /// The interpreter virtual environments are made from.
    public var python: String
    /// Virtual environments, one per tool id, version and requirements.
    public var venvDir: String
    /// Install requirements from this folder of wheels only (no index) instead of PyPI.
    public var wheelDir: String?
    /// May a task ask for an unencrypted connection to its SuperLink or server?
    public var allowInsecure: Bool
    /// A PEM bundle the SuperNode trusts for the SuperLink's certificate when the task brings none.
    public var rootCertificates: String?
    /// `script` mode: tries to reach the server before the client starts, with doubling delays from `retryDelay`.
    public var connectAttempts: Int
    public var retryDelay: Duration
    /// A SuperNode that cannot reach its SuperLink for longer than this fails with `server_unreachable`.
    public var unreachableLimit: Duration
    /// The rest of a client's PATH, after its environment's `bin`.
    public var path: String
    /// The only SuperLinks (supernode mode) or servers (script mode) a task may name
    /// (`launchers.flower.allowed_superlinks`). Empty: every flower task is declined.
    public var allowedSuperlinks: [HostPort]
    /// May pip build packages from source (running their build code) instead of installing wheels only?
    public var allowSourceBuilds: Bool
    /// The task user and cgroup limits (see HostProcesses); Flower clients always use the host network.
    public var confinement: HostConfinementConfig

    public init(python: String, venvDir: String, wheelDir: String?, allowInsecure: Bool, rootCertificates: String?,
                connectAttempts: Int, retryDelay: Duration, unreachableLimit: Duration,
                path: String = "/usr/local/bin:/usr/bin:/bin", allowedSuperlinks: [HostPort] = [],
                allowSourceBuilds: Bool = false,
                confinement: HostConfinementConfig = .unconfined(section: "launchers.flower")) {
        self.python = python
        self.venvDir = venvDir
        self.wheelDir = wheelDir
        self.allowInsecure = allowInsecure
        self.rootCertificates = rootCertificates
        self.connectAttempts = connectAttempts
        self.retryDelay = retryDelay
        self.unreachableLimit = unreachableLimit
        self.path = path
        self.allowedSuperlinks = allowedSuperlinks
        self.allowSourceBuilds = allowSourceBuilds
        self.confinement = confinement
    }
}

/// Runs a Flower client as a supervised host process (in its own process group, like `process`):
/// - `supernode`: `flower-supernode` connected to the task's SuperLink, with `--node-config` from the plan; the
///   ClientApp comes from the SuperLink (`flwr run`), its dependencies from the plan's `requirements`.
/// - `script`: a client script from the tool's source (`flower.entry` under `src/`), run with the environment's
///   Python, the server address as its first argument and in `FEM_SERVER_ADDRESS`; started once the server answers.
/// Python dependencies are installed into a virtual environment cached by tool id, version and requirements.
/// The SuperNode's log lines become events: connected to the SuperLink, lost it (past `unreachableLimit`: failed).
public final class FlowerLauncher: ServerLinkedLauncher, Sendable {
    public let name = "flower"
    let config: FlowerLauncherConfig
    private let processes: HostProcesses

    public init(config: FlowerLauncherConfig) {
        self.config = config
        self.processes = HostProcesses(launcher: "flower", confinement: config.confinement)
    }

    public var unreachableLimit: Duration? { config.unreachableLimit }
    /// A ClientApp says `Finished` inside its last round; the SuperNode's reply to that round must still reach the
    /// SuperLink, or the server counts the node as failed in it.
    public var finishDeliveryLimit: Duration? { .seconds(30) }
    /// A SuperLink answers the ServerApp's pull for a node that has left with "Node Unavailable", even when the
    /// node's reply is stored; the ServerApp pulls every 3 s (flwr 1.41 `Grid.send_and_receive`).
    public var finishLinger: Duration { .seconds(5) }

    public func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths { sandbox }

    public func datasetPath(id: String, hostPath: String) -> String { hostPath }

    public func policyCheck(_ job: LaunchJob) -> String? {
        guard let plan = job.task.plan.flower else { return "flower: the plan has no flower section" }
        guard let task = job.task.flower else { return "flower: the task names no server (flower.server)" }
        if task.insecure && !config.allowInsecure {
            return "flower.insecure: this node does not allow unencrypted connections to a SuperLink or server"
        }
        if plan.mode == .script && job.task.plan.source == nil {
            return "flower.entry: a script client needs the tool's source (git or files) to run \(plan.entry ?? "")"
        }
        guard let server = HostPort.parse(task.server) else {
            return "flower.server: \"\(task.server)\" is not host:port"
        }
        if config.allowedSuperlinks.isEmpty {
            return "flower.server: this node takes part in no Flower federation (launchers.flower.allowed_superlinks "
                + "is empty)"
        }
        if !config.allowedSuperlinks.contains(server) {
            return "flower.server: \"\(task.server)\" is not in this node's launchers.flower.allowed_superlinks"
        }
        if plan.mode == .script && !config.allowInsecure {
            // The node only hands a client script its server's address: it cannot make the script use TLS.
            return "flower.mode: a script client chooses its own connection and the node cannot make it use TLS, so "
                + "script clients run only where launchers.flower.allow_insecure = true"
        }
        if case .failure(let d) = PythonRequirement.parseAll(plan.requirements) { return d.reason }
        return nil
    }

    public func linkEvent(inLogLine line: String) -> LinkEvent? {
        let text = Self.plain(line)
        if let r = text.range(of: "SuperNode ID: ") {
            return .connected("connected to the SuperLink (SuperNode ID \(text[r.upperBound...].trimmingCharacters(in: .whitespaces)))")
        }
        if text.contains("Connection successful after") {
            return .connected("reached the SuperLink again")
        }
        if text.contains("Connection attempt failed") {
            return .disconnected("cannot reach the SuperLink (the SuperNode keeps retrying)")
        }
        // Flower 1.41's SuperNode: "Receiving: <kind> message (ID …)" then "Received successfully"; after the
        // ClientApp ran, "Sending: <kind> message (ID …)" then "Sent successfully".
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasSuffix("Received successfully") { return .messageReceived }
        if trimmed.hasSuffix("Sent successfully") { return .replySent }
        return nil
    }

    /// A log line without its terminal colours.
    static func plain(_ line: String) -> String {
        var out = ""
        var inEscape = false
        for ch in line.unicodeScalars {
            if inEscape {
                if ch == "m" { inEscape = false }
            } else if ch == "\u{1B}" {
                inEscape = true
            } else {
                out.unicodeScalars.append(ch)
            }
        }
        return out
    }

    /// The tool's Python environment is made during stage-in (the first time it takes a while; later tasks of the
    /// same tool, version and requirements find it ready).
    public func prepare(_ job: LaunchJob) async throws {
        guard let plan = job.task.plan.flower else { return }
        _ = try await environment(job, plan: plan)
    }

    private func environment(_ job: LaunchJob, plan: FlowerPlan) async throws -> String {
        let requirements: [PythonRequirement]
        switch PythonRequirement.parseAll(plan.requirements) {
        case .success(let r): requirements = r
        case .failure(let d): throw TaskFailure(.taskFailure, d.reason)
        }
        try FileManager.default.createDirectory(atPath: job.sandbox.logs, withIntermediateDirectories: true)
        return try await PythonEnvironments(python: config.python, root: config.venvDir, wheelDir: config.wheelDir,
                                            allowSourceBuilds: config.allowSourceBuilds,
                                            user: config.confinement.confined ? config.confinement.user : nil)
            .ensure(tool: job.task.plan.id, version: job.task.plan.version, requirements: requirements,
                    log: "\(job.sandbox.logs)/venv.log")
    }

    public func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        guard let plan = job.task.plan.flower, let task = job.task.flower else {
            throw TaskFailure(.runnerSystemFailure, "flower: plan or task section missing")
        }
        let venv = try await environment(job, plan: plan)
        var env = job.command.environment
        env["PATH"] = "\(venv)/bin:\(config.path)"
        env["HOME"] = job.sandbox.sandbox
        env["LANG"] = "C.UTF-8"
        env["PYTHONUNBUFFERED"] = "1"
        env["FLWR_HOME"] = "\(job.sandbox.sandbox)/flwr"
        // Made here so that it is the task user's (the sandbox folder itself stays the daemon's).
        try FileManager.default.createDirectory(atPath: "\(job.sandbox.sandbox)/flwr", withIntermediateDirectories: true)
        env["VIRTUAL_ENV"] = venv
        env["FEM_SERVER_ADDRESS"] = task.server

        switch plan.mode {
        case .supernode:
            var args = ["--superlink", task.server]
            if task.insecure {
                args.append("--insecure")
            } else if let roots = try rootCertificates(task, sandbox: job.sandbox) {
                args += ["--root-certificates", roots]
            }
            args += ["--port", String(try Self.freePort())]
            let nodeConfig = (job.command.flowerNodeConfig ?? [:]).sorted { $0.key < $1.key }
                .map { "\($0.key)=\(Self.tomlValue($0.value))" }.joined(separator: " ")
            if !nodeConfig.isEmpty { args += ["--node-config", nodeConfig] }
            try Task.checkCancellation()  // cancelled while the environment was made: nothing starts
            return try await processes.spawn(job, executable: "\(venv)/bin/flower-supernode", arguments: args,
                                       environment: env, persist: persist)
        case .script:
            let entry = plan.entry ?? "client.py"
            let script = try SandboxEntry.resolve(entry, in: job.sandbox.src)
            try await waitForServer(task.server)
            try Task.checkCancellation()
            let userArgs = Array(job.command.argv.dropFirst(job.task.plan.command.base.count))
            return try await processes.spawn(job, executable: "\(venv)/bin/python",
                                       arguments: [script, task.server] + userArgs, environment: env, persist: persist)
        }
    }

    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome { try await processes.wait(handle) }

    public func stop(_ handle: LaunchHandle, grace: Duration) async { await processes.stop(handle, grace: grace) }

    public func destroy(_ handle: LaunchHandle) async { await processes.destroy(handle) }

    public func inspect(_ handle: LaunchHandle) async -> LaunchInspection { await processes.inspect(handle) }

    public func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        await processes.recover(job, handle: handle)
    }

    // MARK: - Helpers

    /// The task's PEM (written into the sandbox), else the node's bundle; nil lets Flower use the system's.
    func rootCertificates(_ task: FlowerTask, sandbox: ToolPaths) throws -> String? {
        if let pem = task.rootCertificates {
            let path = "\(sandbox.sandbox)/superlink-ca.pem"
            try Data(pem.utf8).write(to: URL(fileURLWithPath: path))
            return path
        }
        return config.rootCertificates
    }

    /// Waits (with doubling delays) until `server` accepts a TCP connection: a legacy client exits at once when
    /// its server is not up yet.
    func waitForServer(_ server: String) async throws {
        guard let (host, port) = hostPort(server) else {
            throw TaskFailure(.taskFailure, "flower.server: \"\(server)\" is not host:port")
        }
        var delay = config.retryDelay
        for attempt in 1...max(1, config.connectAttempts) {
            try Task.checkCancellation()
            if (try? await offload("fem-flower-probe", { Self.accepts(host: host, port: port) })) == true { return }
            if attempt == config.connectAttempts { break }
            try await Task.sleep(for: delay)  // a cancel ends the wait at once
            delay = min(delay * 2, .seconds(30))
        }
        throw TaskFailure(.serverUnreachable, "the Flower server \(server) did not answer after "
                          + "\(config.connectAttempts) attempts")
    }

    func hostPort(_ server: String) -> (String, UInt16)? {
        guard let colon = server.lastIndex(of: ":"), let port = UInt16(server[server.index(after: colon)...]) else {
            return nil
        }
        let host = String(server[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host.isEmpty ? nil : (host, port)
    }

    static func accepts(host: String, port: UInt16) -> Bool {
        TCPPort.acceptsConnections(host: host, port: port)
    }

    /// A loopback port nobody listens on now (the SuperNode's own API; two on one node must differ).
    static func freePort() throws -> Int {
        do {
            return try TCPPort.unusedLoopbackPort()
        } catch {
            throw TaskFailure(.runnerSystemFailure, "cannot find a free port for the SuperNode: \(error)")
        }
    }

    /// `--node-config` values: numbers and booleans as they are, text quoted.
    static func tomlValue(_ v: String) -> String {
        if Int(v) != nil || Double(v) != nil || v == "true" || v == "false" { return v }
        return "\"" + v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

/// A file named by a plan under the sandbox's `src/`, refused if it is missing or leaves `src/` through a symlink.
enum SandboxEntry {
    static func resolve(_ relative: String, in src: String) throws -> String {
        let path = "\(src)/\(relative)"
        let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        let root = URL(fileURLWithPath: src).resolvingSymlinksInPath().path
        guard real.hasPrefix(root + "/") else {
            throw TaskFailure(.taskFailure, "flower.entry: \(relative) leaves the sandbox's src/")
        }
        guard FileManager.default.isReadableFile(atPath: real) else {
            throw TaskFailure(.taskFailure, "flower.entry: \(relative) is not in the tool's source")
        }
        return path
    }
}
