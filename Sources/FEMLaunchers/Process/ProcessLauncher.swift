import FEMCore
import FEMSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Node settings for host processes. Host processes are opt-in: the launcher exists only when the node config
/// enables it, and `allowedExecutables` can limit it further.
public struct ProcessLauncherConfig: Sendable {
    /// Absolute paths or names resolved on `path`. Empty means any executable.
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

    func resolve(_ job: LaunchJob) -> String? {
        guard let program = job.command.argv.first else { return nil }
        return ChildProcess.resolveExecutable(program, path: config.path)
    }

    public func policyCheck(_ job: LaunchJob) -> String? {
        if let refused = processes.policyCheck(job) { return refused }
        guard let program = job.command.argv.first else { return "the command is empty" }
        guard let resolved = resolve(job) else {
            return "executable \"\(program)\" is not found on this node (PATH \(config.path))"
        }
        if !config.allowedExecutables.isEmpty {
            let allowed = config.allowedExecutables.compactMap { ChildProcess.resolveExecutable($0, path: config.path) }
            let real = URL(fileURLWithPath: resolved).resolvingSymlinksInPath().path
            let allowedReal = allowed.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path }
            if !allowed.contains(resolved) && !allowedReal.contains(real) {
                return "executable \"\(program)\" (\(resolved)) is not in this node's allowed executables"
            }
        }
        return nil
    }

    /// The environment is what the plan declares plus the node's FEM_* variables, PATH, HOME and LANG.
    func environment(_ job: LaunchJob) -> [String: String] {
        var env = job.command.environment
        env["PATH"] = env["PATH"] ?? config.path
        env["HOME"] = env["HOME"] ?? job.sandbox.sandbox
        env["LANG"] = env["LANG"] ?? "C.UTF-8"
        return env
    }

    public func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) throws -> Void) async throws -> LaunchHandle {
        guard let executable = resolve(job) else {
            throw TaskFailure(.taskFailure, "executable \"\(job.command.argv.first ?? "")\" is not found")
        }
        return try processes.spawn(job, executable: executable, arguments: Array(job.command.argv.dropFirst()),
                                   environment: environment(job), persist: persist)
    }

    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome { try await processes.wait(handle) }

    public func stop(_ handle: LaunchHandle, grace: Duration) async { await processes.stop(handle, grace: grace) }

    public func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        await processes.recover(job, handle: handle)
    }
}
