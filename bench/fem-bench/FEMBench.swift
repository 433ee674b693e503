import FEMCore
import FEMLaunchers
import FEMStaging
import FEMSystem
import Foundation

/// Benchmarks' driver, each run side by side with a peer tool, alternating:
/// - `fem-bench docker IMAGE N`: one container run (create → start → wait → logs → remove) through the docker
///   launcher vs `docker run --rm --network none IMAGE true`.
/// - `fem-bench git URL N`: git stage-in (clone into a fresh cache, checkout into a fresh sandbox) vs `git clone`;
///   then a cached update (fetch + checkout) vs `git fetch` + `git checkout` in the peer's clone.
/// - `fem-bench upload URL FILE N` (FEM_BENCH_USER / FEM_BENCH_PASSWORD_FILE, FEM_BENCH_CA): stage-out of FILE as a
///   task's only output (collect, sha256, PUT) vs `curl -T FILE` to the same server.
/// - `fem-bench slurm SLURM_DIR N` (bench/slurm.sh): one `/bin/true` task through the slurm launcher (submit →
///   completed, as fem-task) vs `sbatch --wait` of the same job script with the same options, and vs `sbatch` +
///   `scontrol show job` polled every 100 ms (the launcher's own way of following a job, without the launcher).
/// - `fem-bench publish BROKER_DIR PORT NODE FILE` (bench/fuzz.py): publishes the raw bodies in FILE (each a 4-byte
///   big-endian length, then the bytes) to the node's task queue as the broker's `fem` user with the operator's
///   certificate, unchecked, with publisher confirms.
@main
struct FEMBench {
    static func main() async throws {
        let args = CommandLine.arguments
        let usage = "usage: fem-bench docker IMAGE ROUNDS | git URL ROUNDS | upload URL FILE ROUNDS | "
            + "slurm SLURM_DIR ROUNDS | publish BROKER_DIR PORT NODE FILE\n"
        switch (args.count, args.count > 1 ? args[1] : "") {
        case (4, "docker"): try await docker(image: args[2], rounds: Int(args[3]) ?? 10)
        case (4, "git"): try await git(url: args[2], rounds: Int(args[3]) ?? 5)
        case (5, "upload"): try await upload(url: args[2], file: args[3], rounds: Int(args[4]) ?? 3)
        case (4, "slurm"): try await slurm(dir: args[2], rounds: Int(args[3]) ?? 10)
        case (6, "publish"): try publish(brokerDir: args[2], port: Int(args[3]) ?? 5671, node: args[4], file: args[5])
        default:
            FileHandle.standardError.write(Data(usage.utf8))
            exit(2)
        }
    }

    static func publish(brokerDir: String, port: Int, node: String, file: String) throws {
        // As the orchestrator account (with its user_id), so the bodies reach the node's parser.
        let password = try String(contentsOfFile: "\(brokerDir)/orchestrator.password", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let conn = try AMQPConnection(endpoint: AMQPEndpoint(
            host: "localhost", port: port, vhost: "/", user: "fem-orchestrator", password: password,
            caFile: "\(brokerDir)/ca.pem", certFile: "\(brokerDir)/operator.pem", keyFile: "\(brokerDir)/operator.key"))
        try conn.openChannel(1)
        try conn.enablePublisherConfirms()
        let data = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
        var offset = 0, sent = 0
        while offset + 4 <= data.count {
            let n = Int(data[offset]) << 24 | Int(data[offset + 1]) << 16 | Int(data[offset + 2]) << 8 | Int(data[offset + 3])
            offset += 4
            guard offset + n <= data.count else { break }
            _ = try conn.publish(exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(node),
                                 body: Array(data[offset..<(offset + n)]), userID: "fem-orchestrator")
            offset += n
            sent += 1
            if sent % 200 == 0, !(try conn.waitForConfirms()).isEmpty { throw BenchError("the broker refused publishes") }
        }
        if !(try conn.waitForConfirms()).isEmpty { throw BenchError("the broker refused publishes") }
        print("published \(sent)")
    }

    struct BenchError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    static func docker(image: String, rounds n: Int) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("fem-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let launcher = DockerLauncher(config: DockerLauncherConfig(
            socket: "/var/run/docker.sock", allowedImages: [image], user: "65534:65534", pidsLimit: 256,
            defaultMemoryMB: 64, maxMemoryMB: 64, maxCPUs: 1, tmpfsMB: 16, allowHostNetwork: false, allowGPUs: false,
            nodeID: "bench", datasets: [:]))
        guard let docker = ChildProcess.resolveExecutable("docker", path: "/usr/local/bin:/usr/bin:/bin") else {
            FileHandle.standardError.write(Data("docker CLI not found\n".utf8))
            exit(1)
        }
        var ours: [Double] = []
        var theirs: [Double] = []
        for i in 0..<n {
            let job = try makeJob(image: image, root: root, id: "b\(i)")
            let t0 = Date()
            let handle = try await launcher.start(job) { _ in }
            let outcome = try await launcher.wait(handle)
            ours.append(Date().timeIntervalSince(t0))
            guard outcome.exitCode == 0 else { fatalError("launcher run \(i) exited \(outcome.exitCode ?? -1)") }

            let t1 = Date()
            let p = try ChildProcess.spawn(executable: docker, arguments: ["run", "--rm", "--network", "none", image, "true"],
                                           environment: ["PATH": "/usr/bin:/bin"], workingDirectory: root,
                                           stdoutPath: "/dev/null", stderrPath: "\(root)/docker-cli.err")
            let status = await ChildProcess.exitStatus(of: p.pid)
            theirs.append(Date().timeIntervalSince(t1))
            guard status == .exited(0) else { fatalError("docker run \(i) ended \(status)") }
        }
        let a = median(ours), b = median(theirs)
        print(String(format: "rounds                  %d (alternating)", n))
        print(String(format: "fem-client launcher     median %.1f ms (create, start, wait, logs, remove; hardened)", a * 1000))
        print(String(format: "docker run --rm         median %.1f ms (--network none)", b * 1000))
        print(String(format: "ratio launcher / docker %.2f", a / b))
    }

    static func slurm(dir: String, rounds n: Int) async throws {
        guard let user = TaskUser.lookup("fem-task") else {
            FileHandle.standardError.write(Data("no user fem-task (scripts/create-task-user.sh)\n".utf8))
            exit(1)
        }
        let shared = "\(dir)/shared"
        let root = "\(shared)/bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o711])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let conf = "\(dir)/slurm.conf"
        let launcher = SlurmLauncher(config: SlurmLauncherConfig(
            sharedDir: shared, maxCPUs: 1, defaultMemoryMB: 100, maxMemoryMB: 100, allowedExecutables: ["/bin/true"],
            user: user, slurmConf: conf, pollInterval: .milliseconds(100)))
        let env = ["PATH": "/usr/bin:/bin", "SLURM_CONF": conf]
        func sbatch(_ job: LaunchJob, wait: Bool) throws -> [String] {
            let script = "\(job.sandbox.logs)/peer-job.sh"
            try SlurmJobScript.render(taskID: job.task.taskID, argv: ["/bin/true"], environment: job.command.environment)
                .write(toFile: script, atomically: true, encoding: .utf8)
            for log in ["peer-out.log", "peer-err.log"] {
                let path = "\(job.sandbox.logs)/\(log)"
                _ = FileManager.default.createFile(atPath: path, contents: nil)
                try Posix.chown(path, uid: user.uid, gid: user.gid)
            }
            try Posix.chmod(job.sandbox.logs, mode: 0o711)
            let request = SlurmJobScript.Request(cpus: 1, memoryMB: 100, gpus: 0, minutes: 2)
            var args = SlurmJobScript.sbatchArguments(
                nodeID: "bench", taskID: "peer-\(job.task.taskID)", script: script, workingDirectory: job.sandbox.sandbox,
                stdout: "\(job.sandbox.logs)/peer-out.log", stderr: "\(job.sandbox.logs)/peer-err.log",
                request: request, partition: nil, account: nil, qos: nil, user: (user.uid, user.gid))
            if wait { args.insert("--wait", at: 0) }
            return args
        }
        var ours: [Double] = [], waited: [Double] = [], polled: [Double] = []
        // The three take turns going first: a job submitted right after another waits for slurmd to clean up
        // the previous one, which would otherwise always count against the same contender.
        func launcherRun(_ i: Int) async throws {
            let job = try makeSlurmJob(root: root, id: "s\(i)")
            let t0 = Date()
            let handle = try await launcher.start(job) { _ in }
            let outcome = try await launcher.wait(handle)
            ours.append(Date().timeIntervalSince(t0))
            guard outcome.exitCode == 0 else { fatalError("launcher run \(i) ended \(outcome)") }
        }
        func waitRun(_ i: Int) async throws {
            let peer = try makeSlurmJob(root: root, id: "w\(i)")
            let waitArgs = try sbatch(peer, wait: true)
            let t1 = Date()
            let r = try await ChildProcess.run(executable: "/usr/bin/sbatch", arguments: waitArgs, environment: env)
            waited.append(Date().timeIntervalSince(t1))
            guard r.succeeded else { fatalError("sbatch --wait \(i): \(r.diagnostic)") }
        }
        func pollRun(_ i: Int) async throws {
            let peer2 = try makeSlurmJob(root: root, id: "p\(i)")
            let pollArgs = try sbatch(peer2, wait: false)
            let t2 = Date()
            let s = try await ChildProcess.run(executable: "/usr/bin/sbatch", arguments: pollArgs, environment: env)
            guard s.succeeded, let id = SlurmJobScript.parseJobID(s.stdout) else { fatalError("sbatch \(i): \(s.diagnostic)") }
            while true {
                let q = try await ChildProcess.run(executable: "/usr/bin/scontrol", arguments: ["show", "job", "-o", id],
                                                   environment: env)
                if let info = SlurmJobInfo.parse(q.stdout), case .ended = info.phase { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            polled.append(Date().timeIntervalSince(t2))
        }
        for i in 0..<n {
            for k in 0..<3 {
                switch (i + k) % 3 {
                case 0: try await launcherRun(i)
                case 1: try await waitRun(i)
                default: try await pollRun(i)
                }
            }
        }
        let a = median(ours), b = median(waited), c = median(polled)
        print(String(format: "rounds                     %d (taking turns)", n))
        print(String(format: "fem-client slurm launcher  median %.1f ms (job script, sbatch, one squeue for all jobs every 100 ms, "
                     + "sandbox to fem-task and back)", a * 1000))
        print(String(format: "sbatch --wait              median %.1f ms (same script and options)", b * 1000))
        print(String(format: "sbatch + scontrol polling  median %.1f ms (every 100 ms)", c * 1000))
        print(String(format: "ratio launcher / sbatch --wait      %.2f", a / b))
        print(String(format: "ratio launcher / sbatch + polling   %.2f", a / c))
    }

    static func makeSlurmJob(root: String, id: String) throws -> LaunchJob {
        let doc: JSONValue = ["schema_version": 1, "task_id": .string(id), "execution_id": "bench", "plan": [
            "schema_version": 1, "id": "bench", "version": "1", "launcher": "slurm", "command": ["base": ["/bin/true"]]]]
        let task = try DocumentReader.readTask(doc, requireTaskID: true)
        let host = ToolPaths.under("\(root)/\(id)")
        for d in [host.src, host.input, host.output, host.logs] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        try Posix.chmod(host.sandbox, mode: 0o711)
        let command = try Renderer.render(task, context: RenderContext(nodeID: "bench", nodeName: "bench", paths: host,
                                                                       datasets: [:]), timeoutSeconds: 60)
        return LaunchJob(task: task, command: command, sandbox: host)
    }

    static func makeJob(image: String, root: String, id: String) throws -> LaunchJob {
        let doc: JSONValue = ["schema_version": 1, "task_id": .string(id), "execution_id": "bench", "plan": [
            "schema_version": 1, "id": "bench", "version": "1", "launcher": "docker", "image": .string(image),
            "command": ["base": ["true"]]]]
        let task = try DocumentReader.readTask(doc, requireTaskID: true)
        let host = ToolPaths.under("\(root)/\(id)")
        for d in [host.src, host.input, host.output, host.logs] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        let view = ToolPaths(sandbox: "/fem", src: "/fem/src", input: "/fem/in", output: "/fem/out", logs: "/fem/logs")
        let command = try Renderer.render(task, context: RenderContext(nodeID: "bench", nodeName: "bench", paths: view,
                                                                       datasets: [:]), timeoutSeconds: 60)
        return LaunchJob(task: task, command: command, sandbox: host)
    }

    static func git(url: String, rounds n: Int) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("fem-bench-git-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        guard let gitCLI = ChildProcess.resolveExecutable("git", path: "/usr/local/bin:/usr/bin:/bin") else {
            fatalError("git CLI not found")
        }
        func runGit(_ args: [String], in cwd: String) async {
            let p = try! ChildProcess.spawn(executable: gitCLI, arguments: args, environment: ["PATH": "/usr/bin:/bin"],
                                            workingDirectory: cwd, stdoutPath: "/dev/null", stderrPath: "\(root)/git.err")
            let status = await ChildProcess.exitStatus(of: p.pid)
            guard status == .exited(0) else { fatalError("git \(args.joined(separator: " ")) ended \(status)") }
        }
        func stageIn(cache: String, sandbox: String) async throws {
            let stage = try SourceStageIn(policy: SourcePolicy(
                gitURLs: try URLPolicy(["file:///"]), fileURLs: URLPolicy(entries: []), requireSHA256: true, caFile: nil,
                retry: RetryPolicy(attempts: 1, base: .zero), credentials: [:], cacheDir: cache))
            let doc: JSONValue = ["schema_version": 1, "task_id": "b", "execution_id": "bench", "plan": [
                "schema_version": 1, "id": "bench", "version": "1", "launcher": "process",
                "source": ["git": ["url": .string(url), "ref": "main"]], "command": ["base": ["true"]]]]
            let task = try DocumentReader.readTask(doc, requireTaskID: true)
            let paths = ToolPaths.under(sandbox)
            try FileManager.default.createDirectory(atPath: paths.src, withIntermediateDirectories: true)
            let command = try Renderer.render(task, context: RenderContext(nodeID: "bench", nodeName: "bench",
                                                                           paths: paths, datasets: [:]), timeoutSeconds: 60)
            let reporter = StageReporter(progress: { _, _ in }, isDone: { _ in nil }, markDone: { _, _ in })
            try await stage.stageIn(LaunchJob(task: task, command: command, sandbox: paths), reporter: reporter)
        }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var ours: [Double] = [], theirs: [Double] = [], oursUpdate: [Double] = [], theirsUpdate: [Double] = []
        for i in 0..<n {
            let t0 = Date()
            try await stageIn(cache: "\(root)/cache-\(i)", sandbox: "\(root)/sb-\(i)")
            ours.append(Date().timeIntervalSince(t0))
            let t1 = Date()
            await runGit(["clone", "-q", url, "\(root)/clone-\(i)"], in: root)
            theirs.append(Date().timeIntervalSince(t1))

            let t2 = Date()
            try await stageIn(cache: "\(root)/cache-\(i)", sandbox: "\(root)/sb-\(i)-again")
            oursUpdate.append(Date().timeIntervalSince(t2))
            let t3 = Date()
            await runGit(["fetch", "-q", "origin"], in: "\(root)/clone-\(i)")
            await runGit(["checkout", "-q", "origin/main"], in: "\(root)/clone-\(i)")
            theirsUpdate.append(Date().timeIntervalSince(t3))
            for d in ["cache-\(i)", "sb-\(i)", "sb-\(i)-again", "clone-\(i)"] {
                try? FileManager.default.removeItem(atPath: "\(root)/\(d)")
            }
        }
        let a = median(ours), b = median(theirs)
        print(String(format: "rounds                   %d (alternating)", n))
        print(String(format: "fem-client git stage-in  median %.0f ms (clone into a fresh cache + checkout)", a * 1000))
        print(String(format: "git clone                median %.0f ms", b * 1000))
        print(String(format: "ratio stage-in / git     %.2f", a / b))
        print(String(format: "cached update            median %.0f ms (fetch, nothing new, + checkout into a new sandbox)",
                     median(oursUpdate) * 1000))
        print(String(format: "git fetch + checkout     median %.0f ms", median(theirsUpdate) * 1000))
    }

    static func upload(url: String, file: String, rounds n: Int) async throws {
        let env = ProcessInfo.processInfo.environment
        let user = env["FEM_BENCH_USER"] ?? ""
        let password = env["FEM_BENCH_PASSWORD_FILE"].flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("fem-bench-upload-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let paths = ToolPaths.under(root)
        for d in [paths.src, paths.input, paths.output, paths.logs] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        // A copy of the benchmark file in out/ (made once, before the timed rounds): a hard link is refused as an output.
        try FileManager.default.copyItem(atPath: file, toPath: "\(paths.output)/big.bin")
        let size = (try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int64) ?? 0
        let delivery = OutputDelivery(policy: DeliveryPolicy(
            nodeID: "bench", limits: OutputLimits(maxFileBytes: Int64.max, maxTaskBytes: Int64.max),
            allowedURLs: try URLPolicy([url]), requireApproval: false, holdLogs: true, retry: RetryPolicy(attempts: 1, base: .zero),
            credentials: ["bench": Credential(username: user, secret: password, urls: try URLPolicy([url]))],
            caFile: env["FEM_BENCH_CA"]))
        guard let curl = ChildProcess.resolveExecutable("curl", path: "/usr/local/bin:/usr/bin:/bin") else {
            fatalError("curl not found")
        }
        var ours: [Double] = [], theirs: [Double] = [], hashing: [Double] = []
        for i in 0..<n {
            let doc: JSONValue = ["schema_version": 1, "task_id": .string("up\(i)"), "execution_id": .string("bench-\(i)"),
                                  "stage_out": ["url": .string(url), "credentials": "bench"],
                                  "plan": ["schema_version": 1, "id": "bench", "version": "1", "launcher": "process",
                                           "command": ["base": ["true"]], "outputs": [["pattern": "big.bin"]]]]
            let task = try DocumentReader.readTask(doc, requireTaskID: true)
            let command = try Renderer.render(task, context: RenderContext(nodeID: "bench", nodeName: "bench",
                                                                           paths: paths, datasets: [:]), timeoutSeconds: 60)
            let job = LaunchJob(task: task, command: command, sandbox: paths)
            let record = TaskRecord(taskID: "up\(i)", executionID: "bench-\(i)", state: .stagingOut, document: doc,
                                    launcher: "process", receivedAt: Date(), updatedAt: Date(), seq: 0, handle: nil,
                                    exitCode: 0, failureClass: nil, message: nil, cancelRequested: false)
            let reporter = StageReporter(progress: { _, _ in }, isDone: { _ in nil }, markDone: { _, _ in })
            let th = Date()
            _ = try OutputCollector.describe("\(paths.output)/big.bin", as: "out/big.bin")
            hashing.append(Date().timeIntervalSince(th))

            let t0 = Date()
            _ = try await delivery.stageOut(job, record: record, outcome: TaskOutcome(state: .completed, detail: .none),
                                            reporter: reporter)
            ours.append(Date().timeIntervalSince(t0))

            let t1 = Date()
            var args = ["-sS", "-f", "-o", "/dev/null", "-T", file, "-u", "\(user):\(password)",
                        "\(url)/curl-\(i)/big.bin"]
            if let ca = env["FEM_BENCH_CA"] { args += ["--cacert", ca] }
            let p = try ChildProcess.spawn(executable: curl, arguments: args, environment: ["PATH": "/usr/bin:/bin"],
                                           workingDirectory: root, stdoutPath: "/dev/null", stderrPath: "\(root)/curl.err")
            let status = await ChildProcess.exitStatus(of: p.pid)
            theirs.append(Date().timeIntervalSince(t1))
            guard status == .exited(0) else { fatalError("curl \(i) ended \(status)") }
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let mb = Double(size) / 1_000_000
        let a = median(ours), b = median(theirs)
        print(String(format: "file                     %.0f MB, %d rounds (alternating)", mb, n))
        print(String(format: "fem-client stage-out     median %.2f s = %.0f MB/s (collect + sha256 + PUT + manifest)", a, mb / a))
        print(String(format: "  of which sha256        median %.2f s", median(hashing)))
        print(String(format: "curl -T                  median %.2f s = %.0f MB/s", b, mb / b))
        print(String(format: "ratio throughput         %.2f (stage-out / curl)", b / a))
        print(String(format: "bench peak RSS           %.0f MiB (the file is streamed, never held in memory)",
                     Double(usage.ru_maxrss) / 1024))
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
