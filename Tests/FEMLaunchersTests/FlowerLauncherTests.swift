import FEMCore
import FEMLaunchers
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The Flower launcher's reading of SuperNode log lines, and its node policy. The federation itself runs in
/// IntegrationTests/FlowerTests.
@Suite
struct FlowerLauncherTests {
    let launcher = FlowerLauncher(config: FlowerLauncherConfig(
        python: "/usr/bin/python3", venvDir: "/tmp/venvs", wheelDir: nil, allowInsecure: false, rootCertificates: nil,
        connectAttempts: 2, retryDelay: .milliseconds(10), unreachableLimit: .seconds(30)))

    @Test func superNodeLinesBecomeSignals() {
        let esc = "\u{1B}"
        #expect(launcher.linkEvent(inLogLine: "\(esc)[92mINFO \(esc)[0m:      SuperNode ID: 17751755724296302854")
                == .connected("connected to the SuperLink (SuperNode ID 17751755724296302854)"))
        #expect(launcher.linkEvent(inLogLine: "\(esc)[93mWARNING \(esc)[0m:   Connection attempt failed, retrying in 1.72 seconds")
                == .disconnected("cannot reach the SuperLink (the SuperNode keeps retrying)"))
        // The messages a SuperNode takes and the replies it delivers (followed after the ClientApp says Finished).
        #expect(launcher.linkEvent(inLogLine: "\(esc)[92mINFO \(esc)[0m:      Received successfully\r") == .messageReceived)
        #expect(launcher.linkEvent(inLogLine: "\(esc)[92mINFO \(esc)[0m:      Sent successfully") == .replySent)
        #expect(launcher.linkEvent(inLogLine: "INFO :      Sending: evaluate message (ID: f5e0)") == nil)
    }
}

/// A cancel while a Flower task's environment is made, or while it waits for its server, stops that step at once
/// (the Swift task is cancelled, as the runner does): nothing is left running and the client never starts.
@Suite
struct FlowerCancelTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("fem-flower-\(UUID().uuidString)").path

    func job(mode: String, server: String) throws -> LaunchJob {
        var flower: [String: JSONValue] = ["mode": .string(mode), "requirements": ["flwr"]]
        var plan: [String: JSONValue] = ["schema_version": 1, "id": "fl", "version": "1", "launcher": "flower",
                                         "command": ["base": ["flower"]]]
        if mode == "script" {
            flower["entry"] = "client.py"
            plan["source"] = ["files": [["url": "https://example.org/client.py", "path": "client.py"]]]
        }
        plan["flower"] = .object(flower)
        let doc: JSONValue = ["schema_version": 1, "task_id": "fl1", "execution_id": "e", "plan": .object(plan),
                              "flower": ["server": .string(server), "insecure": true]]
        let task = try DocumentReader.readTask(doc, requireTaskID: true)
        let paths = ToolPaths.under("\(root)/fl1")
        for d in [paths.src, paths.input, paths.output, paths.logs] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        try "print('hi')\n".write(toFile: "\(paths.src)/client.py", atomically: true, encoding: .utf8)
        let command = try Renderer.render(task, context: RenderContext(nodeID: "n1", nodeName: "n1", paths: paths,
                                                                       datasets: [:]), timeoutSeconds: 30)
        return LaunchJob(task: task, command: command, sandbox: paths)
    }

    /// Starts, cancels after `after`, and returns how long the start took to give up, and whether it spawned.
    func cancelStart(_ launcher: FlowerLauncher, _ j: LaunchJob, after: Duration) async throws -> (Duration, Bool) {
        let spawned = SpawnFlag()
        let start = Task { try await launcher.start(j) { _ in spawned.set() } }
        try await Task.sleep(for: after)
        let t0 = ContinuousClock.now
        start.cancel()
        let result = await start.result
        if case .success = result { spawned.set() }
        return (ContinuousClock.now - t0, spawned.value)
    }

    @Test func aCancelDuringEnvironmentCreationStopsIt() async throws {
        // A "python" that takes a minute to make the environment, and leaves a marker while it runs.
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let python = "\(root)/slow-python"
        let marker = "\(root)/venv-maker-\(UUID().uuidString.prefix(6))"
        try "#!/bin/sh\nexec sleep 60 \(marker)\n".write(toFile: python, atomically: true, encoding: .utf8)
        chmod(python, 0o755)
        let launcher = FlowerLauncher(config: FlowerLauncherConfig(
            python: python, venvDir: "\(root)/venvs", wheelDir: nil, allowInsecure: true, rootCertificates: nil,
            connectAttempts: 2, retryDelay: .milliseconds(10), unreachableLimit: .seconds(30)))
        let (took, spawned) = try await cancelStart(launcher, try job(mode: "supernode", server: "127.0.0.1:1"),
                                                    after: .milliseconds(500))
        #expect(took < .seconds(40), "stopped \(took) after the cancel, before the step's 60 s")
        #expect(!spawned, "the SuperNode never started")
        // The environment maker's process group was killed.
        var left = processes(marker)
        for _ in 0..<40 where !left.isEmpty {
            try await Task.sleep(for: .milliseconds(50))
            left = processes(marker)
        }
        #expect(left.isEmpty, "nothing of the environment maker is left")
    }

    @Test func aCancelWhileWaitingForTheServerStopsTheWait() async throws {
        // An environment that is already made (the ready marker), a server that never answers.
        let launcher = FlowerLauncher(config: FlowerLauncherConfig(
            python: "/usr/bin/python3", venvDir: "\(root)/venvs", wheelDir: nil, allowInsecure: true,
            rootCertificates: nil, connectAttempts: 100, retryDelay: .seconds(5), unreachableLimit: .seconds(30)))
        let j = try job(mode: "script", server: "127.0.0.1:1")
        let venvs = "\(root)/venvs"
        try FileManager.default.createDirectory(atPath: venvs, withIntermediateDirectories: true)
        // Let the environment be found ready: the folder it would make (named by tool, version and a hash of the
        // interpreter, the wheel source and the requirements), with its ready marker.
        let hasher = SHA256Digest()
        hasher.update(Array((["/usr/bin/python3", "pypi"] + ["flwr"]).joined(separator: "\n").utf8))
        let dir = "\(venvs)/fl-1-\(hasher.finalizeHex().prefix(16))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: "\(dir)/.fem-ready", contents: Data())
        let (took, spawned) = try await cancelStart(launcher, j, after: .milliseconds(800))
        #expect(took < .seconds(40), "stopped \(took) after the cancel, before the step's 60 s")
        #expect(!spawned, "the client never started")
    }

    func processes(_ marker: String) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { name -> Int32? in
            guard let pid = Int32(name), let data = FileManager.default.contents(atPath: "/proc/\(name)/cmdline")
            else { return nil }
            return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(marker) ? pid : nil
        }
    }
}

final class SpawnFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    func set() { lock.withLock { flag = true } }
    var value: Bool { lock.withLock { flag } }
}
