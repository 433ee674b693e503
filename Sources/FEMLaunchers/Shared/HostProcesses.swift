import FEMCore
import FEMSystem
import Foundation
import Synchronization

/// Host processes for the launchers that run them (`process`, `flower`). Confined (the daemon's configuration):
/// - as the node's task user, with no supplementary groups, PR_SET_NO_NEW_PRIVS, umask 077 and rlimits (open files,
///   processes, no core files, file size from the plan's `storage_mb`);
/// - in a cgroup of its own, `fem-client/<node>/<task>`, with memory, CPU and PIDs limits from the plan capped by
///   the node. Everything in that cgroup is killed when the main process ends, at cancel and at timeout, so
///   `setsid` children, double forks and daemons do not outlive the task; an OOM kill and the task's CPU time and
///   peak memory are read from the cgroup's own counters;
/// - in a network namespace with only `lo` unless the plan asks for the host network and the node allows it;
/// - with its sandbox (except `logs/`, which the daemon keeps) owned by the task user while it runs, and given back
///   to the daemon (0700) when it ends, so a later task of the same user cannot read it.
/// Unconfined (unit tests, library callers): the daemon's user, its own process group, no cgroup.
final class HostProcesses: Sendable {
    let launcher: String
    let confinement: HostConfinementConfig
    private let running = Mutex<[Int32: Running]>([:])

    private struct Running: Sendable {
        /// Reaped by the event reactor the moment the process ends.
        var exit: ChildExit
        var cgroup: TaskCgroup?
        var sandbox: String
    }

    init(launcher: String, confinement: HostConfinementConfig) {
        self.launcher = launcher
        var confinement = confinement
        // Where the admin allowed unconfined host tasks and no cgroup can be made, run without one (rather than
        // fail every task); `fem-client check` warns about it.
        if confinement.confined, confinement.allowUnconfined,
           TaskCgroup.probe(host: confinement.cgroups, node: confinement.nodeID) != nil {
            confinement.cgroups = nil
        }
        self.confinement = confinement
    }

    /// Node policy for the plan's `network`.
    func policyCheck(_ job: LaunchJob) -> String? {
        confinement.networkRefusal(job.task.plan)
    }

    func spawn(_ job: LaunchJob, executable: String, arguments: [String], environment: [String: String],
               persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        let (spawned, cgroup) = try await offload("fem-spawn") { [self] in
            try prepareAndSpawn(job, executable: executable, arguments: arguments, environment: environment)
        }
        let pid = spawned.pid
        let exit = ChildProcess.watchExit(pid)
        running.withLock { $0[pid] = Running(exit: exit, cgroup: cgroup, sandbox: job.sandbox.sandbox) }
        let handle = LaunchHandle(launcher: launcher, state: HostProcessState(
            pid: pid, pgid: pid, startTime: spawned.startTime,
            cgroup: cgroup.map { "\($0.path) (\($0.host.version.rawValue))" }))
        do {
            try await persist(handle)
        } catch {
            // Spawn, then persist, or stop: a process nobody supervises is not left behind. Everything it started
            // is killed (it ran for moments only) before the error is reported; its waiter reaps it.
            ChildProcess.signalGroup(pid, SIGKILL)
            cgroup?.killAll()
            cgroup?.remove()
            running.withLock { _ = $0.removeValue(forKey: pid) }
            if confinement.confined, let user = confinement.user { SandboxOwnership.takeBack(job.sandbox, from: user) }
            throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .runnerSystemFailure,
                              "cannot record the process's handle, so it was stopped: \(error)")
        }
        return handle
    }

    /// The sandbox's folders, the task's cgroup, the sandbox handed to the task user, and the confined spawn: all
    /// blocking (mkdir, cgroup files, chown, clone + execve), so run on the blocking pool. On failure, what was made
    /// is undone before the error is thrown.
    private func prepareAndSpawn(_ job: LaunchJob, executable: String, arguments: [String],
                                 environment: [String: String]) throws -> (ChildProcess.Spawned, TaskCgroup?) {
        var cgroup: TaskCgroup?
        var environment = environment
        do {
            try FileManager.default.createDirectory(atPath: job.sandbox.logs, withIntermediateDirectories: true)
            var confined: ChildProcess.Confinement?
            if confinement.confined {
                guard confinement.user != nil else {
                    throw TaskFailure(.runnerSystemFailure, "\(confinement.section).user: no task user is configured; "
                                      + "host tasks never run as the daemon's user")
                }
                // The sandbox folder itself is the daemon's: a writable home and temporary folder of the task's own
                // (the host's /tmp is shared by every user).
                for name in ["home", "tmp"] {
                    try FileManager.default.createDirectory(atPath: "\(job.sandbox.sandbox)/\(name)",
                                                            withIntermediateDirectories: true)
                }
                if environment["HOME"] == job.sandbox.sandbox { environment["HOME"] = "\(job.sandbox.sandbox)/home" }
                if environment["TMPDIR"] == nil { environment["TMPDIR"] = "\(job.sandbox.sandbox)/tmp" }
                let plan = job.task.plan
                if let host = confinement.cgroups {
                    cgroup = try TaskCgroup.create(
                        host: host, path: TaskCgroup.hostTaskPath(node: confinement.nodeID, task: job.task.taskID),
                        limits: confinement.limits(plan))
                } else if !confinement.allowUnconfined {
                    throw TaskFailure(.runnerSystemFailure, "no usable cgroup for host tasks (\(CgroupHost.unavailable)) "
                                      + "and \(confinement.section).allow_unconfined is off")
                }
                if let user = confinement.user { try SandboxOwnership.give(job.sandbox, to: user) }
                let hostNetwork = confinement.alwaysHostNetwork
                    || (plan.network == .host && confinement.allowHostNetwork)
                // RLIMIT_NPROC counts every process of the user, across all its tasks; the per-task limit is the
                // cgroup's pids.max, this is only a backstop (it also holds where no cgroup is used).
                confined = ChildProcess.Confinement(
                    uid: confinement.user?.uid, gid: confinement.user?.gid,
                    openFiles: UInt64(confinement.openFiles),
                    processes: UInt64(cgroup == nil ? confinement.pidsLimit : max(4096, confinement.pidsLimit * 4)),
                    fileSize: plan.resources.storageMB.map { UInt64($0) << 20 },
                    cgroupProcs: cgroup?.procsFiles ?? [], newNetwork: !hostNetwork)
            }
            let spawned = try ChildProcess.spawn(executable: executable, arguments: arguments, environment: environment,
                                                 workingDirectory: job.command.workingDirectory,
                                                 stdoutPath: job.stdoutPath, stderrPath: job.stderrPath,
                                                 confinement: confined)
            return (spawned, cgroup)
        } catch {
            cgroup?.killAll()
            cgroup?.remove()
            if confinement.confined, let user = confinement.user { SandboxOwnership.takeBack(job.sandbox, from: user) }
            if let failure = error as? TaskFailure { throw failure }
            throw TaskFailure(.runnerSystemFailure, "\(error)")
        }
    }

    func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
        guard let pid = try? handle.state(as: HostProcessState.self).pid,
              let entry = running.withLock({ $0[pid] }) else {
            throw TaskFailure(.runnerSystemFailure, "no process is known for this handle")
        }
        let status = await entry.exit.wait()
        running.withLock { _ = $0.removeValue(forKey: pid) }
        // The main process is gone; nothing it started may outlive it.
        var usage: CgroupUsage?
        if let cgroup = entry.cgroup {
            usage = try? await offload("fem-cgroup-end") {
                cgroup.killAll()
                let counted = cgroup.usage()
                cgroup.remove()
                return counted
            }
        } else {
            ChildProcess.signalGroup(pid, SIGKILL)
        }
        if confinement.confined, let user = confinement.user {
            SandboxOwnership.takeBack(ToolPaths.under(entry.sandbox), from: user)
        }
        var outcome: LaunchOutcome
        let oom = (usage?.oomKills ?? 0) > 0 && status != .exited(0)
        switch status {
        case .exited(let code):
            outcome = LaunchOutcome(exitCode: code, outOfMemory: oom,
                                    message: oom ? "killed for exceeding its memory limit" : nil)
        case .signaled(let sig):
            outcome = LaunchOutcome(exitCode: 128 + sig, signal: sig, outOfMemory: oom,
                                    message: oom ? "killed for exceeding its memory limit" : "killed by signal \(sig)")
        case .unknown(let why):
            outcome = LaunchOutcome(exitCode: nil, outOfMemory: oom,
                                    message: oom ? "killed for exceeding its memory limit" : "its exit status is unknown: \(why)")
        }
        outcome.cpuSeconds = usage?.cpuSeconds
        outcome.peakMemoryBytes = usage?.peakMemoryBytes.map { UInt64(max(0, $0)) }
        return outcome
    }

    func stop(_ handle: LaunchHandle, grace: Duration) async {
        guard let pgid = try? handle.state(as: HostProcessState.self).pgid else { return }
        guard let cgroup = running.withLock({ $0[pgid]?.cgroup }) else {
            await Self.terminateGroup(pgid, grace: grace)
            return
        }
        // TERM to every member (not only the group), wait for their exits (events, not a poll) up to the grace
        // period, then the cgroup kill for whatever is left.
        let members = cgroup.processes()
        cgroup.signalAll(SIGTERM)
        _ = await ChildProcess.awaitExits(of: members, upTo: grace)
        _ = try? await offload("fem-cgroup-kill") { cgroup.killAll() }
    }

    /// After a `wait` that did not end (it threw, or was left behind): nothing the work started outlives it. After
    /// a `wait` that returned there is nothing left to do.
    func destroy(_ handle: LaunchHandle) async {
        guard let state = try? handle.state(as: HostProcessState.self),
              let entry = running.withLock({ $0.removeValue(forKey: state.pid) }) else { return }
        if let cgroup = entry.cgroup {
            _ = try? await offload("fem-cgroup-destroy") {
                cgroup.killAll()
                cgroup.remove()
            }
        } else {
            ChildProcess.signalGroup(state.pgid, SIGKILL)
        }
        if confinement.confined, let user = confinement.user {
            SandboxOwnership.takeBack(ToolPaths.under(entry.sandbox), from: user)
        }
    }

    /// Whether the work's process group still has live members, and the CPU time and peak memory of its cgroup.
    func inspect(_ handle: LaunchHandle) async -> LaunchInspection {
        guard let state = try? handle.state(as: HostProcessState.self) else {
            return LaunchInspection(state: .gone("the handle does not describe a host process"))
        }
        guard let entry = running.withLock({ $0[state.pid] }) else {
            return LaunchInspection(state: .gone("no process of this daemon is known for the handle (it was collected, "
                                                 + "or the daemon restarted)"))
        }
        let usage = try? await offload("fem-cgroup-usage") { entry.cgroup?.usage() }
        let live = !ChildProcess.liveMembers(ofGroup: state.pgid).isEmpty
        return LaunchInspection(state: live ? .running : .exited(nil), cpuSeconds: usage?.cpuSeconds,
                                memoryBytes: usage?.peakMemoryBytes.map { UInt64(max(0, $0)) })
    }

    /// TERM to the group, its members' exits awaited up to `grace` (pidfd events), then KILL to what is left.
    static func terminateGroup(_ pgid: Int32, grace: Duration) async {
        let members = ChildProcess.liveMembers(ofGroup: pgid)
        guard ChildProcess.signalGroup(pgid, SIGTERM) else { return }
        if await ChildProcess.awaitExits(of: members, upTo: grace), !ChildProcess.groupExists(pgid) { return }
        ChildProcess.signalGroup(pgid, SIGKILL)
    }

    /// A host process cannot be re-attached (it is no longer our child, so its exit status is lost). Whatever is
    /// left of it is stopped, and the task fails with `node_restart`. The work is found by its cgroup (everything
    /// the task started, whatever it did to its environment or process group), by its journaled PID (if the
    /// kernel's start time still matches) and by the `FEM_SANDBOX` entry every process of the task inherits, which
    /// also covers unconfined work and a daemon that died before it could journal the PID.
    func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        let sandbox = job.command.environment["FEM_SANDBOX"] ?? job.sandbox.sandbox
        var found = false
        if confinement.confined, let host = confinement.cgroups,
           let path = try? TaskCgroup.hostTaskPath(node: confinement.nodeID, task: job.task.taskID),
           let cgroup = TaskCgroup.existing(host: host, path: path) {
            found = cgroup.processes().contains(where: ChildProcess.isAlive)
            _ = try? await offload("fem-cgroup-recover") {
                cgroup.killAll()
                cgroup.remove()
            }
        }
        var groups = ChildProcess.processGroups(withEnvironmentEntry: "FEM_SANDBOX=\(sandbox)")
        if let state = try? handle?.state(as: HostProcessState.self),
           ChildProcess.startTime(of: state.pid) == state.startTime {
            groups.insert(state.pgid)
        }
        // A process that already ended may linger as a zombie (its start time still matches): it is not running,
        // and a task whose work had finished must not be told it was stopped.
        groups = groups.filter { !ChildProcess.liveMembers(ofGroup: $0).isEmpty }
        if !groups.isEmpty {
            found = true
            await withTaskGroup(of: Void.self) { all in
                for pgid in groups { all.addTask { await Self.terminateGroup(pgid, grace: .seconds(5)) } }
            }
        }
        if confinement.confined, let user = confinement.user { SandboxOwnership.takeBack(job.sandbox, from: user) }
        guard found else {
            return .lost("the process ended while the daemon was down; its exit status is unknown")
        }
        return .lost("the process was still running when the daemon restarted (stopped at restart): a host process "
                     + "cannot be re-attached, so it was stopped and not run again")
    }
}
