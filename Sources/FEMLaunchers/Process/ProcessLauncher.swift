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

    public init(allowedExecutables: [String] = [], path: String = "/usr/local/bin:/usr/bin:/bin") {
        self.allowedExecutables = allowedExecutables
        self.path = path
    }
}

/// Runs a plan's argv as a host process in the task's sandbox: no shell, its own process group, a scrubbed
/// environment, stdout and stderr to the sandbox's log files. Stop ends the whole group (TERM, then KILL).
public final class ProcessLauncher: Launcher, @unchecked Sendable {
    public let name = "process"
    private let config: ProcessLauncherConfig
    private let lock = NSLock()
    private var exits: [Int32: Task<ExitStatus, Never>] = [:]

    public init(config: ProcessLauncherConfig) {
        self.config = config
    }

    public func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths { sandbox }

    public func datasetPath(id: String, hostPath: String) -> String { hostPath }

    func resolve(_ job: LaunchJob) -> String? {
        guard let program = job.command.argv.first else { return nil }
        return ChildProcess.resolveExecutable(program, path: config.path)
    }

    public func policyCheck(_ job: LaunchJob) -> String? {
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
        let spawned: ChildProcess.Spawned
        do {
            try FileManager.default.createDirectory(atPath: job.sandbox.logs, withIntermediateDirectories: true)
            spawned = try ChildProcess.spawn(executable: executable, arguments: Array(job.command.argv.dropFirst()),
                                             environment: environment(job),
                                             workingDirectory: job.command.workingDirectory,
                                             stdoutPath: job.stdoutPath, stderrPath: job.stderrPath)
        } catch {
            throw TaskFailure(.runnerSystemFailure, "\(error)")
        }
        let pid = spawned.pid
        let waiter = Task { await ChildProcess.exitStatus(of: pid) }
        lock.withLock { exits[pid] = waiter }
        let handle = LaunchHandle(launcher: name, data: ["pid": "\(pid)", "pgid": "\(pid)",
                                                         "start_time": "\(spawned.startTime)"])
        try persist(handle)
        return handle
    }

    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
        guard let pid = Int32(handle.data["pid"] ?? ""),
              let waiter = lock.withLock({ exits[pid] }) else {
            throw TaskFailure(.runnerSystemFailure, "no process is known for this handle")
        }
        let status = await waiter.value
        lock.withLock { _ = exits.removeValue(forKey: pid) }
        // The main process is gone; nothing it started may outlive it.
        ChildProcess.signalGroup(pid, SIGKILL)
        switch status {
        case .exited(let code):
            return LaunchOutcome(exitCode: code)
        case .signaled(let sig):
            return LaunchOutcome(exitCode: 128 + sig, signal: sig, message: "killed by signal \(sig)")
        }
    }

    public func stop(_ handle: LaunchHandle, grace: Duration) async {
        guard let pgid = Int32(handle.data["pgid"] ?? "") else { return }
        await Self.terminateGroup(pgid, grace: grace)
    }

    static func terminateGroup(_ pgid: Int32, grace: Duration) async {
        guard ChildProcess.signalGroup(pgid, SIGTERM) else { return }
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            if !ChildProcess.groupExists(pgid) { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
        ChildProcess.signalGroup(pgid, SIGKILL)
    }

    /// A host process cannot be re-attached (it is no longer our child, so its exit status is lost). Whatever is
    /// left of it is stopped, and the task fails with `node_restart`. The work is found by its journaled PID (if the
    /// kernel's start time still matches) and by the `FEM_SANDBOX` entry every process of the task inherits, which
    /// also covers a daemon that died before it could journal the PID.
    public func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        var groups = ChildProcess.processGroups(withEnvironmentEntry: "FEM_SANDBOX=\(job.command.environment["FEM_SANDBOX"] ?? job.sandbox.sandbox)")
        if let handle, let pid = Int32(handle.data["pid"] ?? ""), let pgid = Int32(handle.data["pgid"] ?? ""),
           ChildProcess.startTime(of: pid).map({ "\($0)" == handle.data["start_time"] }) ?? false {
            groups.insert(pgid)
        }
        guard !groups.isEmpty else {
            return .lost("the process ended while the daemon was down; its exit status is unknown")
        }
        await withTaskGroup(of: Void.self) { all in
            for pgid in groups { all.addTask { await Self.terminateGroup(pgid, grace: .seconds(5)) } }
        }
        return .lost("the daemon restarted while the process ran; a host process cannot be re-attached, so it was "
                     + "stopped and not run again")
    }
}
