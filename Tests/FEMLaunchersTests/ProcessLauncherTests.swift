import FEMCore
import FEMLaunchers
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The process launcher against real host processes.
struct ProcessLauncherTests {
    static let config = ProcessLauncherConfig(allowedExecutables: ["/bin/sh", "/bin/sleep", "/bin/true"])
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("fem-proc-\(UUID().uuidString)").path

    func job(_ base: [String], env: [String: JSONValue] = [:], id: String = "t1") throws -> LaunchJob {
        let doc: JSONValue = ["schema_version": 1, "task_id": .string(id), "execution_id": "e", "plan": [
            "schema_version": 1, "id": "t", "version": "1", "launcher": "process",
            "command": ["base": .array(base.map(JSONValue.string))], "env": .object(env)]]
        let task = try DocumentReader.readTask(doc, requireTaskID: true)
        let paths = ToolPaths.under("\(root)/\(id)")
        for d in [paths.src, paths.input, paths.output, paths.logs] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        let command = try Renderer.render(task, context: RenderContext(nodeID: "n1", nodeName: "n1", paths: paths,
                                                                       datasets: [:]), timeoutSeconds: 30)
        return LaunchJob(task: task, command: command, sandbox: paths)
    }

    /// True once no process of the job is left (a SIGKILL is delivered asynchronously: allow it two seconds).
    func gone(_ j: LaunchJob) async -> Bool {
        for _ in 0..<40 {
            if ChildProcess.processGroups(withEnvironmentEntry: "FEM_SANDBOX=\(j.sandbox.sandbox)").isEmpty { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    func groupAlive(_ handle: LaunchHandle) -> Bool {
        // A zombie still counts for kill(0); look at the leader's state instead.
        guard let pid = try? handle.state(as: HostProcessState.self).pid,
              let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
        return !stat.contains(") Z ")
    }

    @Test func exitCodeAndScrubbedEnvironment() async throws {
        setenv("FEM_LEAK_CHECK", "secret", 1)
        let launcher = ProcessLauncher(config: Self.config)
        let j = try job(["/bin/sh", "-c", "env | sort > \"$FEM_OUTPUT_DIR/env.txt\"; exit 4"], env: ["GREETING": "hi"])
        let handle = try await launcher.start(j) { _ in }
        let outcome = try await launcher.wait(handle)
        #expect(outcome.exitCode == 4)
        let env = try String(contentsOfFile: "\(j.sandbox.output)/env.txt", encoding: .utf8)
        #expect(env.contains("GREETING=hi\n"))
        #expect(env.contains("FEM_TASK_ID=t1\n"))
        #expect(env.contains("HOME=\(j.sandbox.sandbox)\n"))
        #expect(!env.contains("FEM_LEAK_CHECK"), "the daemon's environment does not leak into tasks")
    }

    @Test func stopEndsTheWholeGroup() async throws {
        let launcher = ProcessLauncher(config: Self.config)
        let j = try job(["/bin/sh", "-c", "trap '' TERM; sleep 60 & sleep 61; wait"])
        let handle = try await launcher.start(j) { _ in }
        try await Task.sleep(for: .milliseconds(200))
        #expect(ChildProcess.processGroups(withEnvironmentEntry: "FEM_SANDBOX=\(j.sandbox.sandbox)").count == 1)
        await launcher.stop(handle, grace: .milliseconds(300))
        let outcome = try await launcher.wait(handle)
        #expect(outcome.signal == SIGKILL, "TERM was ignored, so KILL after the grace period")
        #expect(await gone(j), "neither the shell nor its background sleep survives")
    }

    @Test func recoveryFindsWorkWithoutAJournaledHandle() async throws {
        let launcher = ProcessLauncher(config: Self.config)
        let j = try job(["/bin/sleep", "60"], id: "orphan")
        let handle = try await launcher.start(j) { _ in }
        #expect(groupAlive(handle))
        // Until the child has exec'd, /proc shows the parent's environment; a restarted daemon looks much later.
        var visible = false
        for _ in 0..<100 where !visible {
            visible = !ChildProcess.processGroups(withEnvironmentEntry: "FEM_SANDBOX=\(j.sandbox.sandbox)").isEmpty
            if !visible { try await Task.sleep(for: .milliseconds(20)) }
        }
        try #require(visible, "the task's process never showed its environment")
        // As if the daemon died before journaling the handle.
        let result = await ProcessLauncher(config: Self.config).recover(j, handle: nil)
        guard case .lost(let why) = result else { Issue.record("expected lost, got \(result)"); return }
        #expect(why.contains("was stopped and not run again"))
        _ = try await launcher.wait(handle)
        #expect(await gone(j))
    }

    @Test func recoveryOfWorkThatAlreadyEnded() async throws {
        let j = try job(["/bin/true"], id: "ended")
        let result = await ProcessLauncher(config: Self.config).recover(
            // A handle as a daemon before typed launcher state journaled it.
            j, handle: LaunchHandle(launcher: "process", legacy: ["pid": "999999", "pgid": "999999", "start_time": "1"]))
        #expect(result == .lost("the process ended while the daemon was down; its exit status is unknown"))
    }

    /// After a SIGKILL of the daemon, a task's process that had already finished may linger as a zombie whose start
    /// time still matches the journaled handle: it ended, it was not "stopped".
    @Test func recoveryOfAProcessThatEndedButIsAZombieSaysItEnded() async throws {
        let j = try job(["/bin/true"], id: "zombie")
        let child = try ChildProcess.spawn(executable: "/bin/true", arguments: [], environment: [:],
                                           workingDirectory: "/", stdoutPath: "/dev/null", stderrPath: "/dev/null")
        defer { _ = ChildProcess.waitBlocking(pid: child.pid) }
        let deadline = Date().addingTimeInterval(5)
        while ChildProcess.isAlive(child.pid) && Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!ChildProcess.isAlive(child.pid), "the child is a zombie now")
        let result = await ProcessLauncher(config: ProcessLauncherConfig()).recover(
            j, handle: LaunchHandle(launcher: "process", state: HostProcessState(
                pid: child.pid, pgid: child.pid, startTime: child.startTime, cgroup: nil)))
        #expect(result == .lost("the process ended while the daemon was down; its exit status is unknown"))
    }

    @Test func allowlistAndMissingExecutablesAreDeclined() throws {
        let limited = ProcessLauncher(config: ProcessLauncherConfig(allowedExecutables: ["python3", "/bin/echo"]))
        #expect(limited.policyCheck(try job(["/bin/echo", "x"])) == nil)
        #expect(limited.policyCheck(try job(["/usr/bin/echo", "x"])) == nil, "compared by resolved path")
        #expect(limited.policyCheck(try job(["echo", "x"]))
                == "command.base[0]: \"echo\" is a bare program name (it would be looked up on a PATH); this node runs "
                + "only programs named by an absolute path listed in launchers.process.allowed_executables")
        let refused = try #require(limited.policyCheck(try job(["/bin/sh", "-c", "true"])))
        #expect(refused.hasSuffix("is not in this node's launchers.process.allowed_executables"), "\(refused)")
        #expect(limited.policyCheck(try job(["/usr/bin/python3", "-c", "1"]))?.contains("is not in this node's") == true,
                "a bare allowlist entry allows nothing (NodeConfig refuses it at start)")
        #expect(ProcessLauncher(config: Self.config).policyCheck(try job(["/no/such/program-fem"]))
                == "executable \"/no/such/program-fem\" is not found on this node")
        #expect(ProcessLauncher(config: ProcessLauncherConfig()).policyCheck(try job(["/bin/true"]))
                == "this node allows no host programs (launchers.process.allowed_executables is empty)")
    }

    /// The audit's bypass: `usr/bin/python3` was checked from the daemon's cwd and run from the task's src/.
    @Test func aRelativeProgramIsDeclinedAndNeverRunFromSrc() async throws {
        let launcher = ProcessLauncher(config: ProcessLauncherConfig(allowedExecutables: ["/usr/bin/python3"]))
        let j = try job(["usr/bin/python3", "-c", "1"], id: "relative")
        try FileManager.default.createDirectory(atPath: "\(j.sandbox.src)/usr/bin", withIntermediateDirectories: true)
        try "#!/bin/sh\ntouch \"$FEM_OUTPUT_DIR/pwned\"\n".write(toFile: "\(j.sandbox.src)/usr/bin/python3",
                                                               atomically: true, encoding: .utf8)
        chmod("\(j.sandbox.src)/usr/bin/python3", 0o755)
        let reason = try #require(launcher.policyCheck(j))
        #expect(reason.hasPrefix("command.base[0]: \"usr/bin/python3\" is a relative path (it would be looked up "
                                 + "inside the task's src/)"), "\(reason)")
        await #expect(throws: TaskFailure.self) { _ = try await launcher.start(j) { _ in } }
        #expect(!FileManager.default.fileExists(atPath: "\(j.sandbox.output)/pwned"))
    }

    /// The program is resolved once (every symlink followed) and that file is what runs: argv[0] shows it.
    @Test func theResolvedFileIsWhatRuns() async throws {
        let links = "\(root)/links"
        try FileManager.default.createDirectory(atPath: links, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(links)/mysh", withDestinationPath: "/bin/sh")
        let launcher = ProcessLauncher(config: ProcessLauncherConfig(allowedExecutables: ["/bin/sh"]))
        let j = try job(["\(links)/mysh", "-c", "echo \"$0\" > \"$FEM_OUTPUT_DIR/argv0\""], id: "resolved")
        #expect(launcher.policyCheck(j) == nil, "a link to an allowed program is that program")
        let outcome = try await launcher.wait(try await launcher.start(j) { _ in })
        #expect(outcome.exitCode == 0)
        let real = try #require(realpath("/bin/sh", nil).map { p in defer { free(p) }; return String(cString: p) })
        #expect(try String(contentsOfFile: "\(j.sandbox.output)/argv0", encoding: .utf8) == real + "\n")
    }
}

/// Spawn, then persist, or stop: when the handle cannot be journaled, what was started is stopped before the error
/// is reported, so nothing runs unsupervised.
struct SpawnPersistFailureTests {
    struct JournalFull: Error, CustomStringConvertible {
        var description: String { "SQLite error 13: database or disk is full" }
    }

    @Test func aHostProcessWhoseHandleCannotBePersistedIsStopped() async throws {
        let t = ProcessLauncherTests()
        let marker = "persist-fails-\(UUID().uuidString.prefix(8))"
        let j = try t.job(["/bin/sh", "-c", "exec sleep 60 # \(marker)"], id: "pf")
        let launcher = ProcessLauncher(config: ProcessLauncherTests.config)
        do {
            _ = try await launcher.start(j) { _ in throw JournalFull() }
            Issue.record("the start should fail")
        } catch let f as TaskFailure {
            #expect(f.failureClass == .nodeDiskFull, "\(f)")
            #expect(f.message.contains("so it was stopped") && f.message.contains("database or disk is full"))
        }
        #expect(await t.gone(j), "no process of the task is left")
    }

    @Test func aContainerWhoseHandleCannotBePersistedIsRemoved() async throws {
        let engine = DockerEngine()
        try #require((try? engine.ping()) == true, "dockerd is not answering on /var/run/docker.sock")
        let t = ProcessLauncherTests()
        let id = "pf-\(UUID().uuidString.prefix(8).lowercased())"
        let doc: JSONValue = ["schema_version": 1, "task_id": .string(id), "execution_id": "e", "plan": [
            "schema_version": 1, "id": "t", "version": "1", "launcher": "docker", "image": "fem-test/busybox:2",
            "command": ["base": ["/bin/sleep", "60"]]]]
        let task = try DocumentReader.readTask(doc, requireTaskID: true)
        let paths = ToolPaths.under("\(t.root)/\(id)")
        for d in [paths.src, paths.input, paths.output, paths.logs] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        var config = DockerLauncherConfig(socket: "/var/run/docker.sock", allowedImages: ["fem-test/*"],
                                          user: "65534:65534", pidsLimit: 64, defaultMemoryMB: 64, maxMemoryMB: 128,
                                          maxCPUs: 1, tmpfsMB: 8, allowHostNetwork: false, allowGPUs: false,
                                          nodeID: "pf-node", datasets: [:])
        config.nodeID = "pf-node-\(id)"
        let launcher = DockerLauncher(config: config)
        let command = try Renderer.render(task, context: RenderContext(nodeID: "n1", nodeName: "n1",
                                                                       paths: launcher.toolPaths(forHost: paths),
                                                                       datasets: [:]), timeoutSeconds: 30)
        let job = LaunchJob(task: task, command: command, sandbox: paths)
        do {
            _ = try await launcher.start(job) { _ in throw JournalFull() }
            Issue.record("the start should fail")
        } catch let f as TaskFailure {
            #expect(f.message.contains("was removed and not started"), "\(f)")
        }
        let left = try engine.containers(labels: ["org.fem-client.node": config.nodeID])
        #expect(left.isEmpty, "no container of the task is left: \(left)")
    }
}
