import FEMCore
import FEMLaunchers
import FEMSystem
import Foundation

/// `fem-bench docker IMAGE N`: N rounds, each one container run (create → start → wait → logs → remove) through
/// the docker launcher and one `docker run --rm --network none IMAGE true`, alternating, timed side by side.
@main
struct FEMBench {
    static func main() async throws {
        let args = CommandLine.arguments
        guard args.count == 4, args[1] == "docker", let n = Int(args[3]) else {
            FileHandle.standardError.write(Data("usage: fem-bench docker IMAGE ROUNDS\n".utf8))
            exit(2)
        }
        let image = args[2]
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

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
