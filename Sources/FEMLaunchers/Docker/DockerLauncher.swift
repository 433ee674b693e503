import FEMCore
import FEMSystem
import Foundation
import Synchronization

/// Node settings for containers: what a plan may ask for and the caps on it.
public struct DockerLauncherConfig: Sendable {
    public var socket: String
    /// Exact references, `repo:*` (any tag of a repository), `path/*` (anything under a path), and digest pins.
    public var allowedImages: [String]
    /// `uid:gid` the container runs as.
    public var user: String
    public var pidsLimit: Int
    public var defaultMemoryMB: Int
    public var maxMemoryMB: Int
    public var maxCPUs: Int
    public var tmpfsMB: Int
    public var allowHostNetwork: Bool
    public var allowGPUs: Bool
    public var nodeID: String
    /// Dataset id → host path, mounted read-only at `/fem/data/<id>`.
    public var datasets: [String: String]
    /// The cgroup the node owns for its containers: each task's container runs below `/<root>/<node>/<task>`,
    /// which holds the memory limit and outlives the container (see `TaskCgroup`).
    public var cgroupRoot = "fem-client"

    public init(socket: String, allowedImages: [String], user: String, pidsLimit: Int, defaultMemoryMB: Int,
                maxMemoryMB: Int, maxCPUs: Int, tmpfsMB: Int, allowHostNetwork: Bool, allowGPUs: Bool, nodeID: String,
                datasets: [String: String]) {
        self.socket = socket
        self.allowedImages = allowedImages
        self.user = user
        self.pidsLimit = pidsLimit
        self.defaultMemoryMB = defaultMemoryMB
        self.maxMemoryMB = maxMemoryMB
        self.maxCPUs = maxCPUs
        self.tmpfsMB = tmpfsMB
        self.allowHostNetwork = allowHostNetwork
        self.allowGPUs = allowGPUs
        self.nodeID = nodeID
        self.datasets = datasets
    }

    public func allows(image: String) -> Bool {
        allowedImages.contains { pattern in
            if pattern == image { return true }
            if pattern.hasSuffix("/*") { return image.hasPrefix(String(pattern.dropLast())) }
            if pattern.hasSuffix(":*") {
                let repo = String(pattern.dropLast(2))
                return DockerEngine.split(image).0 == repo && !image.contains("@")
            }
            return false
        }
    }
}

/// Runs a plan in a container through the Engine API, locked down unless the node allows more and the plan asks:
/// no network, no capabilities, no new privileges, a non-root user, a read-only root with a tmpfs `/tmp`, a PIDs
/// limit, memory and CPU from the plan capped by the node; `src` and `in` read-only, `out` writable, datasets
/// read-only by id. The container id is journaled before the container starts; a restarted daemon re-attaches.
public final class DockerLauncher: Launcher, Sendable {
    public let name = "docker"
    let config: DockerLauncherConfig
    let engine: DockerEngine
    /// Where task cgroups go, decided once: nil when dockerd cannot take a `CgroupParent` path (its systemd driver)
    /// or the host has no usable memory cgroup; the container then holds its own limit.
    private let cgroupHost = Mutex<CgroupHost??>(nil)
    /// The cgroups of the containers this daemon started, by container id, until `wait` collects them.
    private let cgroups = Mutex<[String: TaskCgroup]>([:])

    public init(config: DockerLauncherConfig) {
        self.config = config
        self.engine = DockerEngine(socket: config.socket)
    }

    func taskCgroupHost() -> CgroupHost? {
        if let decided = cgroupHost.withLock({ $0 }) { return decided }
        var host: CgroupHost?
        if let setup = try? engine.cgroupSetup(), setup.driver == "cgroupfs" { host = CgroupHost.detect() }
        cgroupHost.withLock { $0 = .some(host) }
        return host
    }

    public func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths {
        ToolPaths(sandbox: "/fem", src: "/fem/src", input: "/fem/in", output: "/fem/out", logs: "/fem/logs")
    }

    public func datasetPath(id: String, hostPath: String) -> String { "/fem/data/\(id)" }

    public func policyCheck(_ job: LaunchJob) -> String? {
        let plan = job.task.plan
        guard let image = plan.image else { return "a docker plan needs an image" }
        if !config.allows(image: image) {
            return "image \"\(image)\" is not on this node's allowlist (launchers.docker.allowed_images)"
        }
        if plan.network == .host && !config.allowHostNetwork {
            return "the plan asks for the host network, which this node does not allow"
        }
        if (plan.resources.gpus ?? 0) > 0 && !config.allowGPUs {
            return "the plan asks for \(plan.resources.gpus!) GPU(s); this node does not give containers GPUs"
        }
        return nil
    }

    /// The cgroup below the node's (`/<root>/<node>/…`) that holds podman's conmon processes: `+` is no task id's.
    static let podmanConmonCgroup = "podman-conmon+"

    static let labelNode = "org.fem-client.node"
    static let labelTask = "org.fem-client.task"
    static let labelExecution = "org.fem-client.execution"

    /// The Engine API create body: every secure default in one place.
    /// `engine`: podman's compat service mounts writable tmpfs on `/run` and `/var/tmp` of a read-only root (its
    /// `read_only_tmpfs`); mounts of our own there, read-only and tiny, keep the root read-only as under dockerd.
    /// Its `/tmp` tmpfs takes the image's `/tmp` mode whatever `mode=` says (images ship it 1777).
    func createBody(_ job: LaunchJob, cgroupParent: String? = nil, engine: DockerEngine.Kind = .docker) -> [String: Any] {
        let plan = job.task.plan
        let memoryMB = memoryLimitMB(job)
        let cpus = min(plan.resources.cpus ?? 1, Double(config.maxCPUs))
        var binds = ["\(job.sandbox.src):/fem/src:ro", "\(job.sandbox.input):/fem/in:ro", "\(job.sandbox.output):/fem/out:rw"]
        for id in job.command.datasets {
            if let host = config.datasets[id] { binds.append("\(host):/fem/data/\(id):ro") }
        }
        var env = job.command.environment
        env["HOME"] = env["HOME"] ?? "/tmp"
        var host: [String: Any] = [
            "NetworkMode": plan.network == .host && config.allowHostNetwork ? "host" : "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": true,
            "Tmpfs": engine == .podman
                ? ["/tmp": "rw,nosuid,nodev,mode=1777,size=\(config.tmpfsMB)m",
                   "/run": "ro,nosuid,nodev,noexec,size=64k", "/var/tmp": "ro,nosuid,nodev,noexec,size=64k"]
                : ["/tmp": "rw,nosuid,nodev,mode=1777,size=\(config.tmpfsMB)m"],
            "PidsLimit": config.pidsLimit,
            "NanoCpus": Int(cpus * 1_000_000_000),
            "Binds": binds,
        ]
        if let cgroupParent {
            // The task's cgroup holds the memory limit: it reaches the OOM killer there and counts the kill after
            // the container's own cgroup is gone.
            host["CgroupParent"] = cgroupParent
        } else {
            host["Memory"] = memoryMB << 20
            host["MemorySwap"] = memoryMB << 20
        }
        if let gpus = plan.resources.gpus, gpus > 0, config.allowGPUs {
            host["DeviceRequests"] = [["Driver": "", "Count": gpus, "Capabilities": [["gpu"]]]]
        }
        return [
            // An image the tool registry pinned runs by its digest (checked at stage-in): a tag moved since then
            // cannot slip in.
            "Image": job.trust.imageDigest.map { DockerEngine.repository(plan.image ?? "") + "@" + $0 } ?? plan.image ?? "",
            "Entrypoint": Array(job.command.argv.prefix(1)),
            "Cmd": Array(job.command.argv.dropFirst()),
            "Env": env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" },
            "WorkingDir": job.command.workingDirectory,
            "User": config.user,
            "Labels": [Self.labelNode: config.nodeID, Self.labelTask: job.task.taskID,
                       Self.labelExecution: job.task.executionID],
            "HostConfig": host,
        ]
    }

    func memoryLimitMB(_ job: LaunchJob) -> Int {
        min(job.task.plan.resources.memoryMB ?? config.defaultMemoryMB, config.maxMemoryMB)
    }

    /// The container user must be able to read `src` and `in` and write `out`; nothing else of the host is shared.
    /// A change that fails fails the start, naming the folder and why (a daemon that is not root cannot give `out/`
    /// to a numeric container user: the container could not write its outputs).
    func prepareSandbox(_ sandbox: ToolPaths) throws {
        try FileManager.default.createDirectory(atPath: sandbox.logs, withIntermediateDirectories: true)
        let ids = config.user.split(separator: ":").compactMap { UInt32($0) }
        do {
            try Posix.chmod(sandbox.src, mode: 0o755)
            try Posix.chmod(sandbox.input, mode: 0o755)
            if ids.count == 2 {
                try Posix.chown(sandbox.output, uid: ids[0], gid: ids[1])
            } else {
                try Posix.chmod(sandbox.output, mode: 0o777)
            }
        } catch {
            throw TaskFailure(.runnerSystemFailure, "cannot prepare the sandbox for the container user "
                              + "\(config.user) (launchers.docker.user): \(error)")
        }
    }

    public func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        let engine = self.engine
        var cgroup: TaskCgroup?
        do {
            try prepareSandbox(job.sandbox)
            if let host = try await offload("fem-docker-info", { self.taskCgroupHost() }) {
                let path = try TaskCgroup.relativePath(root: config.cgroupRoot, node: config.nodeID, task: job.task.taskID)
                cgroup = try TaskCgroup.create(host: host, path: path,
                                               limits: CgroupLimits(memoryBytes: memoryLimitMB(job) << 20))
            }
            let kind = try await offload("fem-docker-version") { try engine.kind() }
            let body = try JSONSerialization.data(withJSONObject: createBody(job, cgroupParent: cgroup?.path, engine: kind))
            let id = try await offload("fem-docker-create") { try engine.createContainer(name: nil, json: body) }
            if let cgroup { cgroups.withLock { $0[id] = cgroup } }
            let handle = LaunchHandle(launcher: name, state: ContainerHandleState(
                container: id, stdout: job.stdoutPath, stderr: job.stderrPath, cgroup: cgroup?.path))
            do {
                try await persist(handle)
            } catch {
                // Spawn, then persist, or stop: a container nobody could re-attach to is removed before the error is
                // reported (it was created, not started; force covers a start that raced in).
                try? await offload("fem-docker-remove") { try engine.remove(id) }
                cgroups.withLock { _ = $0.removeValue(forKey: id) }
                cgroup?.remove()
                throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .runnerSystemFailure,
                                  "cannot record the container's handle, so it was removed and not started: \(error)")
            }
            let taskCgroup = cgroup
            try await offload("fem-docker-start") {
                try engine.start(id)
                // Podman (unless its containers.conf says cgroups = "no-conmon") runs conmon in
                // <CgroupParent>/conmon: under the task's memory limit, where a memory kill can take it, and the
                // container's end is then never reported. It goes to a sibling cgroup of the node's, unlimited.
                if kind == .podman, let taskCgroup { taskCgroup.evict(child: "conmon", to: Self.podmanConmonCgroup) }
            }
            return handle
        } catch let e as DockerError {
            cgroup?.remove()
            throw TaskFailure(.runnerSystemFailure, e.message)
        } catch let e as SystemError {
            cgroup?.remove()
            throw TaskFailure(.runnerSystemFailure, "cannot set up the task's cgroup: \(e)")
        }
    }

    /// Streams the logs into the sandbox while the container runs, then collects the exit status and removes it.
    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
        let state = try handle.state(as: ContainerHandleState.self)
        let (id, stdout, stderr) = (state.container, state.stdout, state.stderr)
        let engine = self.engine
        let cgroup = cgroups.withLock { $0.removeValue(forKey: id) }
            ?? state.cgroup.flatMap { path in taskCgroupHost().flatMap { TaskCgroup.existing(host: $0, path: path) } }
        do {
            // The logs are followed and the end awaited on the one HTTP streams thread: a running container holds
            // no thread; the OOM count is in the task's cgroup (an event on v1, a counter on v2).
            try await Self.followLogs(engine, id, stdout: stdout, stderr: stderr)
            let code = try await engine.waitForExit(id)
            return try await offload("fem-docker-end") {
                let state = try engine.inspectContainer(id)
                let oom = try Self.wasOOMKilled(engine, id, code: code, state: state, cgroup: cgroup)
                try? engine.remove(id)
                cgroup?.removeSibling(Self.podmanConmonCgroup)
                cgroup?.remove()
                return Self.outcome(code: code, oom: oom)
            }
        } catch let e as DockerError {
            throw TaskFailure(.runnerSystemFailure, e.message)
        }
    }

    /// Read from the task's cgroup, which outlives the container: exact where it counts kills (v2, or v1 with the
    /// OOM eventfd this daemon registered); after a daemon restart on v1, a SIGKILL exit with the limit reached. A
    /// container without a cgroup of the node's (dockerd's systemd driver) falls back to dockerd's own record; podman
    /// keeps none (no `oom` event, `OOMKilled` stays false), so there only the task cgroup tells.
    static func wasOOMKilled(_ engine: DockerEngine, _ id: String, code: Int, state: DockerEngine.ContainerState?,
                             cgroup: TaskCgroup?) throws -> Bool {
        if let cgroup {
            let usage = cgroup.usage()
            if usage.oomKills > 0 { return true }
            if cgroup.countsOOMKillsExactly { return false }
            return code == 137 && usage.limitHits > 0
        }
        if try engine.kind() == .podman { return state?.oomKilled ?? false }
        return try state.map { try engine.wasOOMKilled(id, state: $0, since: $0.created) } ?? false
    }

    static func outcome(code: Int, oom: Bool) -> LaunchOutcome {
        if oom {
            return LaunchOutcome(exitCode: Int32(code), outOfMemory: true, message: "killed for exceeding its memory limit")
        }
        if code > 128 && code < 160 {
            return LaunchOutcome(exitCode: Int32(code), signal: Int32(code - 128), message: "killed by signal \(code - 128)")
        }
        return LaunchOutcome(exitCode: Int32(code))
    }

    /// Writes the container's stdout and stderr, from the start, into the job's log files (replacing what an
    /// earlier attempt wrote, so a re-attached task's logs are whole and not doubled).
    /// A write that fails (a full disk) never stops the copy nor the daemon: the bytes that could not be written are
    /// dropped (later ones are tried again, in case space returns), the container's end is still collected, and the
    /// first write error is returned for the caller to report (`node_disk_full` when the disk is full).
    @discardableResult
    static func writeLogs(_ engine: DockerEngine, _ id: String, follow: Bool, stdout: String, stderr: String) throws
        -> SystemError? {
        // A log file that cannot even be opened (no inode, no space) takes the bytes nowhere: the copy, and with it
        // the wait for the container's end, goes on.
        var failed: SystemError?
        func open(_ path: String) -> Int32 {
            do {
                return try FileWriter.open(path, append: false)
            } catch {
                if failed == nil { failed = error as? SystemError ?? SystemError("open", errno: EIO, "\(error)") }
                return (try? Posix.open("/dev/null", O_WRONLY)) ?? -1  // -1: writes fail (EBADF), and are counted
            }
        }
        let out = open(stdout), err = open(stderr)
        // Closing reports what the writes did not (a delayed ENOSPC); the first error is the one returned.
        func closeBoth() {
            for (fd, path) in [(out, stdout), (err, stderr)] where fd >= 0 {
                do {
                    try Posix.close(fd, path: path)
                } catch {
                    if failed == nil { failed = error as? SystemError }
                }
            }
        }
        do {
            try engine.logs(id, follow: follow) { stream, bytes in
                do {
                    try FileWriter.writeAll(stream == .stdout ? out : err, bytes,
                                            context: stream == .stdout ? stdout : stderr)
                } catch {
                    if failed == nil { failed = error as? SystemError ?? SystemError("write", errno: EIO, "\(error)") }
                }
            }
        } catch {
            closeBoth()
            throw error
        }
        closeBoth()
        return failed
    }

    /// As `writeLogs(follow: true)`, on the HTTP streams thread (no thread is held while the container runs).
    @discardableResult
    static func followLogs(_ engine: DockerEngine, _ id: String, stdout: String, stderr: String) async throws
        -> SystemError? {
        let failed = Mutex<SystemError?>(nil)
        @Sendable func note(_ error: Error, _ call: String) {
            failed.withLock { if $0 == nil { $0 = error as? SystemError ?? SystemError(call, errno: EIO, "\(error)") } }
        }
        func open(_ path: String) -> Int32 {
            do {
                return try FileWriter.open(path, append: false)
            } catch {
                note(error, "open")
                return (try? Posix.open("/dev/null", O_WRONLY)) ?? -1  // -1: writes fail (EBADF), and are counted
            }
        }
        let out = open(stdout), err = open(stderr)
        // Closing reports what the writes did not (a delayed ENOSPC); the first error is the one returned.
        func closeBoth() {
            for (fd, path) in [(out, stdout), (err, stderr)] where fd >= 0 {
                do { try Posix.close(fd, path: path) } catch { note(error, "close") }
            }
        }
        do {
            try await engine.followLogs(id, follow: true) { stream, bytes in
                do {
                    try FileWriter.writeAll(stream == .stdout ? out : err, bytes,
                                            context: stream == .stdout ? stdout : stderr)
                } catch {
                    note(error, "write")
                }
            }
        } catch {
            closeBoth()
            throw error
        }
        closeBoth()
        return failed.withLock { $0 }
    }

    /// TERM, then dockerd's answer to a wait for the container's end (an event, not a poll) up to `grace`, then KILL.
    public func stop(_ handle: LaunchHandle, grace: Duration) async {
        guard let id = try? handle.state(as: ContainerHandleState.self).container else { return }
        let engine = self.engine
        guard (try? await offload("fem-docker-stop") { try engine.kill(id, signal: "TERM") }) != nil else { return }
        if (try? await engine.waitStopped(id, upTo: grace)) == true { return }
        _ = try? await offload("fem-docker-kill") { try engine.kill(id, signal: "KILL") }
    }

    /// Removes the container (force: also one still running after a failed wait) and the task's cgroup. A container
    /// already removed (by `wait`, which collects its end first) is skipped.
    public func destroy(_ handle: LaunchHandle) async {
        guard let state = try? handle.state(as: ContainerHandleState.self) else { return }
        let engine = self.engine
        let cgroup = cgroups.withLock { $0.removeValue(forKey: state.container) }
        _ = try? await offload("fem-docker-destroy") {
            if try engine.inspectContainer(state.container) != nil { try engine.remove(state.container) }
            (cgroup ?? state.cgroup.flatMap { path in
                self.taskCgroupHost().flatMap { TaskCgroup.existing(host: $0, path: path) } })?.remove()
        }
    }

    /// Whether the container runs (or how it exited), and the CPU time and peak memory of the task's cgroup.
    public func inspect(_ handle: LaunchHandle) async -> LaunchInspection {
        guard let state = try? handle.state(as: ContainerHandleState.self) else {
            return LaunchInspection(state: .gone("the handle does not name a container"))
        }
        let engine = self.engine
        let cgroup = cgroups.withLock { $0[state.container] }
        do {
            return try await offload("fem-docker-inspect") {
                let usage = (cgroup ?? state.cgroup.flatMap { path in
                    self.taskCgroupHost().flatMap { TaskCgroup.existing(host: $0, path: path) } })?.usage()
                let cpu = usage?.cpuSeconds
                let memory = usage?.peakMemoryBytes.map { UInt64(max(0, $0)) }
                guard let container = try engine.inspectContainer(state.container) else {
                    return LaunchInspection(state: .gone("the container is gone"), cpuSeconds: cpu, memoryBytes: memory)
                }
                if container.running {
                    return LaunchInspection(state: .running, cpuSeconds: cpu, memoryBytes: memory)
                }
                if container.status == "created" {
                    return LaunchInspection(state: .gone("the container was created but not started"))
                }
                return LaunchInspection(state: .exited(Self.outcome(code: container.exitCode, oom: container.oomKilled)),
                                        cpuSeconds: cpu, memoryBytes: memory)
            }
        } catch {
            return LaunchInspection(state: .gone("cannot inspect the container: \(error)"))
        }
    }

    /// Finds the task's container by its journaled id, or by its labels if the daemon died before journaling it.
    public func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        let engine = self.engine
        let labels = [Self.labelNode: config.nodeID, Self.labelTask: job.task.taskID]
        let journaled = try? handle?.state(as: ContainerHandleState.self)
        do {
            return try await offload("fem-docker-recover") {
                // The task's cgroup is found by its path (a daemon that died before journaling the handle made it
                // too); it goes with the container, whatever became of that.
                let cgroup = self.taskCgroupHost().flatMap { host in
                    (journaled?.cgroup ?? (try? TaskCgroup.relativePath(
                        root: self.config.cgroupRoot, node: self.config.nodeID, task: job.task.taskID)))
                        .flatMap { TaskCgroup.existing(host: host, path: $0) }
                }
                let id = try journaled?.container
                    ?? engine.containers(labels: labels).first
                guard let id, let state = try engine.inspectContainer(id) else {
                    cgroup?.remove()
                    return .lost("the task's container is gone")
                }
                if state.running { return .running }
                if state.status == "created" {
                    try? engine.remove(id)
                    cgroup?.remove()
                    return .lost("the container was created but never started; it was removed and not run again")
                }
                try Self.writeLogs(engine, id, follow: false, stdout: job.stdoutPath, stderr: job.stderrPath)
                let oom = try Self.wasOOMKilled(engine, id, code: state.exitCode, state: state, cgroup: cgroup)
                try? engine.remove(id)
                cgroup?.remove()
                return .exited(Self.outcome(code: state.exitCode, oom: oom))
            }
        } catch {
            return .lost("cannot inspect the task's container: \(error)")
        }
    }
}
