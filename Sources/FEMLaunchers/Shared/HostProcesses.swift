import FEMCore
import FEMSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Host processes for the launchers that run them (`process`, `flower`): each in its own process group with the
/// environment it is given and its output in the sandbox's logs. Stop and exit end the whole group, so nothing a
/// task started outlives it; after a daemon restart what is left is found and stopped.
final class HostProcesses: @unchecked Sendable {
    let launcher: String
    private let lock = NSLock()
    private var exits: [Int32: Task<ExitStatus, Never>] = [:]

    init(launcher: String) {
        self.launcher = launcher
    }

    func spawn(_ job: LaunchJob, executable: String, arguments: [String], environment: [String: String],
               persist: @Sendable (LaunchHandle) throws -> Void) throws -> LaunchHandle {
        let spawned: ChildProcess.Spawned
        do {
            try FileManager.default.createDirectory(atPath: job.sandbox.logs, withIntermediateDirectories: true)
            spawned = try ChildProcess.spawn(executable: executable, arguments: arguments, environment: environment,
                                             workingDirectory: job.command.workingDirectory,
                                             stdoutPath: job.stdoutPath, stderrPath: job.stderrPath)
        } catch {
            throw TaskFailure(.runnerSystemFailure, "\(error)")
        }
        let pid = spawned.pid
        let waiter = Task { await ChildProcess.exitStatus(of: pid) }
        lock.withLock { exits[pid] = waiter }
        let handle = LaunchHandle(launcher: launcher, data: ["pid": "\(pid)", "pgid": "\(pid)",
                                                             "start_time": "\(spawned.startTime)"])
        do {
            try persist(handle)
        } catch {
            // Spawn, then persist, or stop: a process nobody supervises is not left behind. Its whole group is
            // killed (it ran for moments only) before the error is reported; its waiter reaps it.
            ChildProcess.signalGroup(pid, SIGKILL)
            lock.withLock { _ = exits.removeValue(forKey: pid) }
            throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .runnerSystemFailure,
                              "cannot record the process's handle, so it was stopped: \(error)")
        }
        return handle
    }

    func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
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

    func stop(_ handle: LaunchHandle, grace: Duration) async {
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
    func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        let sandbox = job.command.environment["FEM_SANDBOX"] ?? job.sandbox.sandbox
        var groups = ChildProcess.processGroups(withEnvironmentEntry: "FEM_SANDBOX=\(sandbox)")
        if let handle, let pid = Int32(handle.data["pid"] ?? ""), let pgid = Int32(handle.data["pgid"] ?? ""),
           ChildProcess.startTime(of: pid).map({ "\($0)" == handle.data["start_time"] }) ?? false {
            groups.insert(pgid)
        }
        // A process that already ended may linger as a zombie (its start time still matches): it is not running,
        // and a task whose work had finished must not be told it was stopped.
        groups = groups.filter { !ChildProcess.liveMembers(ofGroup: $0).isEmpty }
        guard !groups.isEmpty else {
            return .lost("the process ended while the daemon was down; its exit status is unknown")
        }
        await withTaskGroup(of: Void.self) { all in
            for pgid in groups { all.addTask { await Self.terminateGroup(pgid, grace: .seconds(5)) } }
        }
        return .lost("the process was still running when the daemon restarted (stopped at restart): a host process "
                     + "cannot be re-attached, so it was stopped and not run again")
    }
}
