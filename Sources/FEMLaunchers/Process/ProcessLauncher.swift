import FEMCore
import FEMSystem
import Foundation

/// Node settings for host processes. Host processes are opt-in: the launcher exists only when the node config
/// enables it, and then runs only the programs in `allowedExecutables`.
public struct ProcessLauncherConfig: Sendable {
    /// Absolute paths of the programs tasks may run (`launchers.process.allowed_executables`), compared by their
    /// resolved path (symlinks followed). Empty: none (NodeConfig refuses to start the launcher that way).
    public var allowedExecutables: [String]
    /// The PATH a task's process gets (its environment is otherwise only what the plan declares).
    public var path: String
    /// The task user, cgroup limits and network (see HostProcesses). Unconfined only for library callers.
    public var confinement: HostConfinementConfig

    public init(allowedExecutables: [String] = [], path: String = "/usr/local/bin:/usr/bin:/bin",
                confinement: HostConfinementConfig = .unconfined(section: "launchers.process")) {
        self.allowedExecutables = allowedExecutables
        self.path = path
        self.confinement = confinement
    }
}

/// Runs a plan's argv as a host process in the task's sandbox: no shell, its own process group, a scrubbed
/// environment, stdout and stderr to the sandbox's log files. Stop ends the whole group (TERM, then KILL).
public final class ProcessLauncher: Launcher, Sendable {
    public let name = "process"
    private let config: ProcessLauncherConfig
    private let processes: HostProcesses

    public init(config: ProcessLauncherConfig) {
        self.config = config
        self.processes = HostProcesses(launcher: "process", confinement: config.confinement)
    }

    public func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths { sandbox }

    public func datasetPath(id: String, hostPath: String) -> String { hostPath }

    /// The file the task's program is, resolved once (`realpath`: every symlink followed) and checked against the
    /// allowlist by that resolved path; the launcher executes exactly this path. A relative program (`usr/bin/python3`
    /// would be looked up inside the task's `src/`) or a bare name (looked up on a PATH) is refused: a plan names
    /// its program by the absolute path the node admin allowed.
    func authorize(_ job: LaunchJob) -> Result<String, PolicyDecline> {
        guard let program = job.command.argv.first, !program.isEmpty else {
            return .failure(PolicyDecline("command.base: the command is empty"))
        }
        guard program.hasPrefix("/") else {
            let what = program.contains("/")
                ? "is a relative path (it would be looked up inside the task's src/)"
                : "is a bare program name (it would be looked up on a PATH)"
            return .failure(PolicyDecline("command.base[0]: \"\(program)\" \(what); this node runs only programs named "
                                          + "by an absolute path listed in launchers.process.allowed_executables"))
        }
        guard !config.allowedExecutables.isEmpty else {
            return .failure(PolicyDecline("this node allows no host programs (launchers.process.allowed_executables "
                                          + "is empty)"))
        }
        guard let resolved = Self.realPath(program) else {
            return .failure(PolicyDecline("executable \"\(program)\" is not found on this node"))
        }
        guard Self.isExecutableFile(resolved) else {
            return .failure(PolicyDecline("executable \"\(program)\" (\(resolved)) is not an executable file"))
        }
        let allowed = Set(config.allowedExecutables.filter { $0.hasPrefix("/") }.compactMap(Self.realPath))
        guard allowed.contains(resolved) else {
            return .failure(PolicyDecline("executable \"\(program)\" (\(resolved)) is not in this node's "
                                          + "launchers.process.allowed_executables"))
        }
        return .success(resolved)
    }

    /// `realpath(3)`: the absolute path with every symlink, `.` and `..` resolved against the real file system.
    static func realPath(_ path: String) -> String? {
        try? Posix.realpath(path)  // not there (or unreadable): the caller declines, naming the path
    }

    /// What an allowlist entry resolves to, if it is an executable file on this host (for `fem-client check`).
    public static func resolvedExecutable(_ path: String) -> String? {
        guard path.hasPrefix("/"), let real = realPath(path), isExecutableFile(real) else { return nil }
        return real
    }

    static func isExecutableFile(_ path: String) -> Bool {
        Posix.isExecutableFile(path)
    }

    public func policyCheck(_ job: LaunchJob) -> String? {
        if let refused = processes.policyCheck(job) { return refused }
        if case .failure(let d) = authorize(job) { return d.reason }
        return nil
    }

    /// The environment is what the plan declares plus the node's FEM_* variables, PATH, HOME and LANG. PATH and
    /// HOME are the node's (a plan cannot set them: EnvironmentPolicy).
    func environment(_ job: LaunchJob) -> [String: String] {
        var env = job.command.environment
        env["PATH"] = config.path
        env["HOME"] = job.sandbox.sandbox
        env["LANG"] = env["LANG"] ?? "C.UTF-8"
        return env
    }

    public func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        // Resolved and checked here, once, and that very path is what runs.
        let executable: String
        switch authorize(job) {
        case .success(let path): executable = path
        case .failure(let d): throw TaskFailure(.taskFailure, d.reason)
        }
        return try await processes.spawn(job, executable: executable, arguments: Array(job.command.argv.dropFirst()),
                                   environment: environment(job), persist: persist)
    }

    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome { try await processes.wait(handle) }

    public func stop(_ handle: LaunchHandle, grace: Duration) async { await processes.stop(handle, grace: grace) }

    public func destroy(_ handle: LaunchHandle) async { await processes.destroy(handle) }

    public func inspect(_ handle: LaunchHandle) async -> LaunchInspection { await processes.inspect(handle) }

    public func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        await processes.recover(job, handle: handle)
    }
}
