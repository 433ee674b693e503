import FEMCore
import FEMJournal
import FEMLaunchers
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The engines the docker launcher runs containers through: dockerd on its usual socket, and podman's
/// Docker-compatible service (scripts/dev-podman.sh, its socket in FEM_TEST_PODMAN_SOCKET). test.sh starts both;
/// each has the image fem-test/busybox:2.
enum ContainerEngine: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case dockerd, podman

    var testDescription: String { rawValue }

    var socket: String {
        get throws {
            switch self {
            case .dockerd: return "/var/run/docker.sock"
            case .podman:
                guard let socket = TestEnv.env["FEM_TEST_PODMAN_SOCKET"], !socket.isEmpty else {
                    throw HarnessError("FEM_TEST_PODMAN_SOCKET is not set: run the tests with `bash test.sh`, which "
                                       + "starts podman's Docker-compatible service (scripts/dev-podman.sh)")
                }
                return socket
            }
        }
    }

    /// The engine, answering; a failure says which one is missing and how to get it.
    func up() throws -> DockerEngine {
        let engine = DockerEngine(socket: try socket)
        guard (try? engine.ping()) ?? false else {
            throw HarnessError("\(rawValue) is not answering on \(engine.socket): run the tests with `bash test.sh`"
                               + (self == .podman ? " (scripts/dev-podman.sh start)" : ""))
        }
        return engine
    }

    /// The `[launchers.docker]` line that points a node at this engine (none for dockerd: the default socket).
    var socketConfig: String {
        get throws { self == .dockerd ? "" : "socket = \"\(try socket)\"" }
    }
}

/// The docker launcher through a real daemon, a real TLS broker and a real container engine: dockerd and podman
/// (test.sh starts them; the image fem-test/busybox:2 comes from scripts/dev-docker.sh and scripts/dev-podman.sh).
@Suite(.serialized)
struct DockerLauncherTests {
    static let image = "fem-test/busybox:2"

    func dockerNode(_ name: String, on kind: ContainerEngine = .dockerd, extra: String = "") throws -> TestNode {
        _ = try kind.up()
        let data = try TestEnv.scratch("dataset")
        try "id,value\n1,42\n".write(toFile: "\(data)/table.csv", atomically: true, encoding: .utf8)
        chmod(data, 0o755)
        chmod("\(data)/table.csv", 0o644)
        return try TestNode(name, extra: """
            [launchers]
            enabled = ["docker", "process"]
            [launchers.process]
            allowed_executables = \(TestNode.hostPrograms)
            [launchers.docker]
            allowed_images = ["fem-test/*"]
            \(try kind.socketConfig)
            \(extra)
            [datasets.demo]
            path = "\(data)"
            """)
    }

    static func task(_ script: String, id: String = UUID().uuidString.lowercased(), image: String = image,
                     timeout: Int? = nil, memoryMB: Int? = nil, outputs: [String] = []) -> [String: JSONValue] {
        var resources: [String: JSONValue] = ["cpus": .double(0.5)]
        if let memoryMB { resources["memory_mb"] = .int(Int64(memoryMB)) }
        var t: [String: JSONValue] = [
            "schema_version": 1, "task_id": .string(id), "execution_id": "exec-docker",
            "plan": ["schema_version": 1, "id": "docker-test", "version": "1", "launcher": "docker",
                     "image": .string(image), "pull_policy": "if-not-present", "inputs": ["demo"],
                     "command": ["base": ["/bin/sh", "-c", .string(script)]],
                     "outputs": .array(outputs.map { ["pattern": .string($0)] }), "resources": .object(resources)],
        ]
        if let timeout { t["timeout_seconds"] = .int(Int64(timeout)) }
        return t
    }

    func sandbox(_ node: TestNode, _ taskID: String) -> String { "\(node.dir)/var/sandboxes/\(taskID)" }

    func containers(of taskID: String, _ engine: DockerEngine) throws -> [String] {
        try engine.containers(labels: ["org.fem-client.task": taskID])
    }

    /// The task's container once it runs. Created is not started: a daemon killed between the two is a different
    /// case (the container is removed, not run), so restart tests wait for a running one.
    func runningContainer(of t: [String: JSONValue], _ op: Operator, _ engine: DockerEngine) throws -> String {
        try op.waitFor("the container to run", timeout: 60) { evs in
            evs.contains { $0.taskID == Tasks.id(t) && $0.state == .running }
        }
        try eventually("the container to exist", timeout: 20) { ((try? containers(of: Tasks.id(t), engine)) ?? []).count == 1 }
        let container = try containers(of: Tasks.id(t), engine)[0]
        try eventually("the container to be running", timeout: 20) {
            (try? engine.inspectContainer(container))??.running == true
        }
        return container
    }

    @Test(arguments: ContainerEngine.allCases)
    func everySecureDefaultHoldsInsideTheContainer(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-secure-\(kind)", on: kind)
        try node.start()
        let op = try Operator(node: node)
        let probe = """
            exec > /fem/out/report.txt
            echo uid=$(id -u) gid=$(id -g)
            grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status
            echo net=$(ls /sys/class/net | tr '\\n' ' ')
            touch /probe 2>/dev/null && echo root=writable || echo root=readonly
            touch /tmp/probe 2>/dev/null && echo tmp=writable || echo tmp=readonly
            touch /run/probe 2>/dev/null && echo run=writable || echo run=readonly
            touch /var/tmp/probe 2>/dev/null && echo vartmp=writable || echo vartmp=readonly
            touch /fem/in/probe 2>/dev/null && echo in=writable || echo in=readonly
            touch /fem/src/probe 2>/dev/null && echo src=writable || echo src=readonly
            touch /fem/data/demo/probe 2>/dev/null && echo data=writable || echo data=readonly
            echo data=$(tail -1 /fem/data/demo/table.csv)
            echo pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max 2>/dev/null)
            echo dataset_env=$FEM_DATASET_DEMO out_env=$FEM_OUTPUT_DIR
            echo on-stderr >&2
            """
        let t = Self.task(probe, outputs: ["report.txt"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed, "\(final.detail.message ?? "")")
        let report = try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/out/report.txt", encoding: .utf8)
        for line in ["uid=65534 gid=65534", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000", "NoNewPrivs:\t1",
                     "net=lo", "root=readonly", "tmp=writable", "run=readonly", "vartmp=readonly", "in=readonly", "src=readonly", "data=readonly",
                     "data=1,42", "pids=256", "dataset_env=/fem/data/demo out_env=/fem/out"] {
            #expect(report.contains(line + "\n"), "report lacks \(line):\n\(report)")
        }
        let stderr = try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/logs/stderr.log", encoding: .utf8)
        #expect(stderr == "on-stderr\n")
        #expect(try containers(of: Tasks.id(t), engine).isEmpty, "the container is removed after the task")
        #expect(op.events(of: Tasks.id(t)).contains { $0.kind == .progress && $0.detail.message?.contains("ready") == true })
    }

    @Test func anImageOffTheAllowlistIsDeclinedBeforeAnyPull() throws {
        let node = try dockerNode("dk-allow")
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("true", image: "127.0.0.1:5999/miner/xmrig:latest")
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .declined)
        #expect(final.detail.message == "image \"127.0.0.1:5999/miner/xmrig:latest\" is not on this node's allowlist (launchers.docker.allowed_images)")
        #expect(!op.events(of: Tasks.id(t)).contains { $0.state == .stagingIn }, "nothing was staged, nothing pulled")
    }

    @Test(arguments: ContainerEngine.allCases)
    func exitCodeAndLogs(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-exit-\(kind)", on: kind)
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("echo line one; echo line two; echo oops >&2; exit 3")
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .taskFailure && final.detail.exitCode == 3)
        #expect(try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/logs/stdout.log", encoding: .utf8)
            == "line one\nline two\n")
        #expect(try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/logs/stderr.log", encoding: .utf8) == "oops\n")
    }

    @Test(arguments: ContainerEngine.allCases)
    func reporterLinesFromAContainerBecomeEvents(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-report-\(kind)", on: kind)
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("""
            echo '{"type": "model", "round": 1, "metrics": {"accuracy": 0.8}}'
            echo '{"type": "error", "exception": "RuntimeError: no rows in /fem/data/demo"}'
            sleep 30
            """)
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.message == "RuntimeError: no rows in /fem/data/demo", "\(final.detail)")
        #expect(op.events(of: Tasks.id(t)).contains { $0.kind == .progress && $0.detail.data?["round"] == 1 })
        try eventually("the container to be removed", timeout: 20) { ((try? containers(of: Tasks.id(t), engine)) ?? [""]).isEmpty }
    }

    @Test(arguments: ContainerEngine.allCases)
    func aMemoryLimitKillIsReportedAsOutOfMemory(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-oom-\(kind)", on: kind)
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("dd if=/dev/zero of=/dev/null bs=64M count=4", memoryMB: 8)
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .outOfMemory, "\(final.detail)")
    }

    @Test(arguments: ContainerEngine.allCases)
    func timeoutAndCancelStopAndRemoveTheContainer(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-stop-\(kind)", on: kind)
        try node.start()
        let op = try Operator(node: node)
        let slow = Self.task("sleep 60", timeout: 2)
        let cancelled = Self.task("sleep 60")
        try op.submit(slow)
        try op.submit(cancelled)
        try op.waitFor("the second container to run", timeout: 60) { evs in
            evs.contains { $0.taskID == Tasks.id(cancelled) && $0.state == .running }
        }
        try eventually("its container to exist", timeout: 20) { ((try? containers(of: Tasks.id(cancelled), engine)) ?? []).count == 1 }
        try op.cancel(Tasks.id(cancelled))
        try op.waitForFinal([Tasks.id(slow), Tasks.id(cancelled)], timeout: 60)
        #expect(op.finalState(of: Tasks.id(slow))?.detail.failureClass == .timeout)
        #expect(op.finalState(of: Tasks.id(cancelled))?.state == .cancelled)
        #expect(try containers(of: Tasks.id(slow), engine).isEmpty)
        #expect(try containers(of: Tasks.id(cancelled), engine).isEmpty)
    }

    @Test(arguments: ContainerEngine.allCases)
    func afterSIGKILLTheDaemonReattachesAndCompletesExactlyOnce(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-reattach-\(kind)", on: kind)
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("echo started; sleep 20; echo finished > /fem/out/done.txt; echo done", outputs: ["done.txt"])
        try op.submit(t)
        let container = try runningContainer(of: t, op, engine)
        node.kill(SIGKILL)
        #expect(try engine.inspectContainer(container)?.running == true, "the container outlives the daemon")
        try node.start()
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let events = op.events(of: Tasks.id(t))
        #expect(op.finalState(of: Tasks.id(t))?.state == .completed)
        #expect(events.filter { $0.kind == .state && $0.state == .running }.count == 1, "started once")
        #expect(events.contains { $0.kind == .notice && $0.detail.message?.contains("re-attached") == true })
        #expect(try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/logs/stdout.log", encoding: .utf8)
            == "started\ndone\n")
        #expect(try containers(of: Tasks.id(t), engine).isEmpty)
    }

    /// A daemon upgraded while a task runs: the handle its predecessor journaled (version 1, string pairs) still leads
    /// the new daemon to the container, which it re-attaches to and collects.
    @Test func anUpgradedDaemonReattachesThroughAnOldFormatHandle() throws {
        let engine = try ContainerEngine.dockerd.up()
        let node = try dockerNode("dk-upgrade")
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("echo started; sleep 8; echo done", outputs: [])
        try op.submit(t)
        let container = try runningContainer(of: t, op, engine)
        node.kill(SIGKILL)
        // Written back as a daemon before typed launcher state wrote it.
        let journal = try SQLiteJournal(path: "\(node.dir)/var/journal.sqlite", nodeID: node.id)
        let typed = try #require(try journal.task(Tasks.id(t))?.handle)
        #expect(typed.version == 2)
        let state = try typed.state(as: ContainerHandleState.self)
        #expect(state.container == container)
        var pairs = ["container": state.container, "stdout": state.stdout, "stderr": state.stderr]
        if let cgroup = state.cgroup { pairs["cgroup"] = cgroup }
        try journal.setHandle(Tasks.id(t), LaunchHandle(launcher: "docker", legacy: pairs))
        #expect(try journal.task(Tasks.id(t))?.handle?.version == 1)
        try node.start()
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        #expect(op.finalState(of: Tasks.id(t))?.state == .completed)
        let events = op.events(of: Tasks.id(t))
        #expect(events.filter { $0.kind == .state && $0.state == .running }.count == 1, "started once")
        #expect(events.contains { $0.kind == .notice && $0.detail.message?.contains("re-attached") == true })
        #expect(try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/logs/stdout.log", encoding: .utf8)
            == "started\ndone\n")
        #expect(try containers(of: Tasks.id(t), engine).isEmpty)
    }

    @Test(arguments: ContainerEngine.allCases)
    func aContainerThatFinishedWhileTheDaemonWasDownIsCollected(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-collect-\(kind)", on: kind)
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("echo working; sleep 3; echo result > /fem/out/r.txt; exit 5", outputs: ["r.txt"])
        try op.submit(t)
        let container = try runningContainer(of: t, op, engine)
        node.kill(SIGKILL)
        try eventually("the container to exit while the daemon is down", timeout: 30) {
            (try? engine.inspectContainer(container))??.running == false
        }
        try node.start()
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.exitCode == 5 && final.detail.failureClass == .taskFailure)
        #expect(try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/logs/stdout.log", encoding: .utf8) == "working\n")
        #expect(try String(contentsOfFile: "\(sandbox(node, Tasks.id(t)))/out/r.txt", encoding: .utf8) == "result\n")
        #expect(op.events(of: Tasks.id(t)).filter { $0.kind == .state && $0.state == .running }.count == 1)
        #expect(try containers(of: Tasks.id(t), engine).isEmpty, "collected and removed")
    }

    @Test(arguments: ContainerEngine.allCases)
    func containersOfUnknownTasksAreLeftAloneAndLogged(_ kind: ContainerEngine) throws {
        let engine = try kind.up()
        let node = try dockerNode("dk-foreign-\(kind)", on: kind)
        let foreign = try engine.createContainer(name: nil, body: [
            "Image": Self.image, "Cmd": ["true"],
            "Labels": ["org.fem-client.node": node.id, "org.fem-client.task": "not-in-the-journal"],
            "HostConfig": ["NetworkMode": "none"],
        ])
        defer { try? engine.remove(foreign) }
        try node.start()
        try eventually("the notice in receiver.log") { node.log.contains("task not-in-the-journal") }
        #expect(node.log.contains("container \(foreign.prefix(12)) is labelled for task not-in-the-journal, which this node's journal does not know; left alone"))
        #expect(try engine.inspectContainer(foreign) != nil, "left alone")
    }

    @Test func anUnreachableDockerdFailsTheTaskAndTheDaemonGoesOn() throws {
        // It waits (launchers.docker.wait_for_daemon_seconds) with a notice, then fails.
        let node = try dockerNode("dk-down", extra: "socket = \"/nonexistent/docker.sock\"\nwait_for_daemon_seconds = 2")
        let check = try node.run(["check"])
        #expect(check.status == 1)
        #expect(check.output.contains("FAIL  docker: dockerd is not reachable on /nonexistent/docker.sock"))
        try node.start()
        let op = try Operator(node: node)
        let t = Self.task("true")
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .runnerSystemFailure)
        #expect(final.detail.message?.contains("dockerd is not reachable") == true)
        #expect(op.events(of: Tasks.id(t)).contains { $0.kind == .notice
            && $0.detail.message?.contains("waiting up to 2 s for it to come back") == true }, "it said it waits")
        let after = Tasks.task(["/bin/true"])
        try op.submit(after)
        try op.waitForFinal([Tasks.id(after)])
        #expect(op.finalState(of: Tasks.id(after))?.state == .completed, "the daemon keeps running")
    }
}
