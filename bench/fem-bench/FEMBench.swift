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
@main
struct FEMBench {
    static func main() async throws {
        let args = CommandLine.arguments
        guard args.count == 4, let n = Int(args[3]), ["docker", "git"].contains(args[1]) else {
            FileHandle.standardError.write(Data("usage: fem-bench docker IMAGE ROUNDS | fem-bench git URL ROUNDS\n".utf8))
            exit(2)
        }
        if args[1] == "git" {
            try await git(url: args[2], rounds: n)
        } else {
            try await docker(image: args[2], rounds: n)
        }
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
                gitURLPrefixes: ["file://"], fileURLPrefixes: [], requireSHA256: true, caFile: nil,
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

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
