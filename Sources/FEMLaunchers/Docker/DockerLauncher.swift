import FEMCore
import FEMSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

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
public final class DockerLauncher: Launcher, @unchecked Sendable {
    public let name = "docker"
    let config: DockerLauncherConfig
    let engine: DockerEngine

    public init(config: DockerLauncherConfig) {
        self.config = config
        self.engine = DockerEngine(socket: config.socket)
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

    static let labelNode = "org.fem-client.node"
    static let labelTask = "org.fem-client.task"
    static let labelExecution = "org.fem-client.execution"

    /// The Engine API create body: every secure default in one place.
    func createBody(_ job: LaunchJob) -> [String: Any] {
        let plan = job.task.plan
        let memoryMB = min(plan.resources.memoryMB ?? config.defaultMemoryMB, config.maxMemoryMB)
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
            "Tmpfs": ["/tmp": "rw,nosuid,nodev,mode=1777,size=\(config.tmpfsMB)m"],
            "PidsLimit": config.pidsLimit,
            "Memory": memoryMB << 20,
            "MemorySwap": memoryMB << 20,
            "NanoCpus": Int(cpus * 1_000_000_000),
            "Binds": binds,
        ]
        if let gpus = plan.resources.gpus, gpus > 0, config.allowGPUs {
            host["DeviceRequests"] = [["Driver": "", "Count": gpus, "Capabilities": [["gpu"]]]]
        }
        return [
            "Image": plan.image ?? "",
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

    /// The container user must be able to read `src` and `in` and write `out`; nothing else of the host is shared.
    func prepareSandbox(_ sandbox: ToolPaths) throws {
        try FileManager.default.createDirectory(atPath: sandbox.logs, withIntermediateDirectories: true)
        let ids = config.user.split(separator: ":").compactMap { UInt32($0) }
        chmod(sandbox.src, 0o755)
        chmod(sandbox.input, 0o755)
        if ids.count == 2 {
            chown(sandbox.output, ids[0], ids[1])
        } else {
            chmod(sandbox.output, 0o777)
        }
    }

    public func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) throws -> Void) async throws -> LaunchHandle {
        let engine = self.engine
        do {
            let body = try JSONSerialization.data(withJSONObject: createBody(job))
            try prepareSandbox(job.sandbox)
            let id = try await offload("fem-docker-create") { try engine.createContainer(name: nil, json: body) }
            let handle = LaunchHandle(launcher: name, data: ["container": id, "stdout": job.stdoutPath,
                                                             "stderr": job.stderrPath])
            do {
                try persist(handle)
            } catch {
                // Spawn, then persist, or stop: a container nobody could re-attach to is removed before the error is
                // reported (it was created, not started; force covers a start that raced in).
                try? await offload("fem-docker-remove") { try engine.remove(id) }
                throw TaskFailure(FileWriter.isDiskFull(error) ? .nodeDiskFull : .runnerSystemFailure,
                                  "cannot record the container's handle, so it was removed and not started: \(error)")
            }
            try await offload("fem-docker-start") { try engine.start(id) }
            return handle
        } catch let e as DockerError {
            throw TaskFailure(.runnerSystemFailure, e.message)
        }
    }

    /// Streams the logs into the sandbox while the container runs, then collects the exit status and removes it.
    public func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
        guard let id = handle.data["container"] else { throw TaskFailure(.runnerSystemFailure, "no container in handle") }
        let engine = self.engine
        guard let stdout = handle.data["stdout"], let stderr = handle.data["stderr"] else {
            throw TaskFailure(.runnerSystemFailure, "no log files in handle")
        }
        return try await offload("fem-docker-wait") {
            do {
                let memory = try engine.inspectContainer(id).flatMap { MemoryEventsWatch(pid: $0.pid) }
                try Self.writeLogs(engine, id, follow: true, stdout: stdout, stderr: stderr)
                let code = try engine.wait(id)
                let seen = memory?.stop()
                var oom = try engine.inspectContainer(id).map { try engine.wasOOMKilled(id, state: $0, since: $0.created) }
                    ?? false
                // Killed (137) after hitting its memory limit, or with an OOM kill counted in its cgroup.
                if code == 137, let seen, seen.oomKills > 0 || seen.limitHits > 0 { oom = true }
                try? engine.remove(id)
                return Self.outcome(code: code, oom: oom)
            } catch let e as DockerError {
                throw TaskFailure(.runnerSystemFailure, e.message)
            }
        }
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
                return Glibc.open("/dev/null", O_WRONLY | O_CLOEXEC)
            }
        }
        let out = open(stdout), err = open(stderr)
        defer {
            if out >= 0 { close(out) }
            if err >= 0 { close(err) }
        }
        try engine.logs(id, follow: follow) { stream, bytes in
            do {
                try FileWriter.writeAll(stream == .stdout ? out : err, bytes, context: stream == .stdout ? stdout : stderr)
            } catch {
                if failed == nil { failed = error as? SystemError ?? SystemError("write", errno: EIO, "\(error)") }
            }
        }
        return failed
    }

    public func stop(_ handle: LaunchHandle, grace: Duration) async {
        guard let id = handle.data["container"] else { return }
        let engine = self.engine
        let seconds = Double(grace.components.seconds) + Double(grace.components.attoseconds) / 1e18
        _ = try? await offload("fem-docker-stop") {
            try engine.kill(id, signal: "TERM")
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline, try engine.inspectContainer(id)?.running == true {
                Thread.sleep(forTimeInterval: 0.1)
            }
            try engine.kill(id, signal: "KILL")
        }
    }

    /// Finds the task's container by its journaled id, or by its labels if the daemon died before journaling it.
    public func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery {
        let engine = self.engine
        let labels = [Self.labelNode: config.nodeID, Self.labelTask: job.task.taskID]
        do {
            return try await offload("fem-docker-recover") {
                let id = try handle?.data["container"]
                    ?? engine.containers(labels: labels).first
                guard let id, let state = try engine.inspectContainer(id) else {
                    return .lost("the task's container is gone")
                }
                if state.running { return .running }
                if state.status == "created" {
                    try? engine.remove(id)
                    return .lost("the container was created but never started; it was removed and not run again")
                }
                try Self.writeLogs(engine, id, follow: false, stdout: job.stdoutPath, stderr: job.stderrPath)
                let oom = try engine.wasOOMKilled(id, state: state, since: state.created)
                try? engine.remove(id)
                return .exited(Self.outcome(code: state.exitCode, oom: oom))
            }
        } catch {
            return .lost("cannot inspect the task's container: \(error)")
        }
    }
}
