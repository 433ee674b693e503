import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real Flower 1.41 federation on loopback: the orchestrator's side (a SuperLink, `flwr run`, a legacy
/// `start_server`) runs from the environment test.sh makes (FEM_TEST_FLWR_VENV); fem-client daemons run the clients
/// with the `flower` launcher, which makes its own environment from the plan's requirements (FEM_TEST_VENV_DIR,
/// kept between runs).
@Suite(.serialized)
struct FlowerTests {
    let venv: String
    let venvDir: String
    static let flowerDir = "\(TestEnv.repoRoot)/Tests/IntegrationTests/Flower"

    init() throws {
        guard let v = TestEnv.env["FEM_TEST_FLWR_VENV"], FileManager.default.isExecutableFile(atPath: "\(v)/bin/flwr"),
              let d = TestEnv.env["FEM_TEST_VENV_DIR"] else {
            throw HarnessError("FEM_TEST_FLWR_VENV / FEM_TEST_VENV_DIR are not set or flwr is missing: run the tests "
                               + "with `bash test.sh`, which installs flwr 1.41.0 into .build-test/cache/flwr")
        }
        venv = v
        venvDir = d
    }

    /// A process of the test's own (SuperLink, legacy server), in its own process group, stopped by its PID.
    final class Service {
        let pid: Int32
        let log: String
        init(_ executable: String, _ args: [String], env: [String: String], dir: String, name: String) throws {
            log = "\(dir)/\(name).log"
            pid = try ChildProcess.spawn(executable: executable, arguments: args, environment: env,
                                         workingDirectory: dir, stdoutPath: log, stderrPath: log).pid
        }
        var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        func stop() {
            ChildProcess.signalGroup(pid, SIGINT)
            for _ in 0..<40 where ChildProcess.groupExists(pid) { Thread.sleep(forTimeInterval: 0.1) }
            ChildProcess.signalGroup(pid, SIGKILL)
            _ = ChildProcess.waitBlocking(pid: pid)
        }
        deinit { if ChildProcess.groupExists(pid) { stop() } }
    }

    var env: [String: String] { ["PATH": "\(venv)/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"] }

    func node(_ name: String, extra: String = "") throws -> TestNode {
        try TestNode(name, extra: """
            [launchers]
            enabled = ["flower"]
            [launchers.flower]
            python = "/usr/bin/python3"
            allowed_superlinks = ["127.0.0.1:19191", "127.0.0.1:19291", "127.0.0.1:19391", "127.0.0.1:19491",
                                  "127.0.0.1:19591", "127.0.0.1:19691"]
            venv_dir = "\(venvDir)"
            allow_insecure = true
            connect_attempts = 20
            retry_delay_ms = 250
            unreachable_seconds = 120
            \(extra)
            [stage_in]
            git_allowed_urls = ["file://"]
            """)
    }

    /// A flower task; the plan's id, version and requirements are the same everywhere, so one environment serves.
    func task(mode: String, server: String, nodeConfig: [String: JSONValue] = [:], source: JSONValue? = nil,
              entry: String? = nil, env: [String: JSONValue] = [:], timeout: Int = 300) -> [String: JSONValue] {
        var flower: [String: JSONValue] = ["mode": .string(mode), "requirements": ["flwr==1.41.0", "numpy==2.4.6"],
                                           "node_config": .object(nodeConfig)]
        if let entry { flower["entry"] = .string(entry) }
        var plan: [String: JSONValue] = ["schema_version": 1, "id": "fem-flower-test", "version": "1.0",
                                         "launcher": "flower", "command": ["base": ["flower"]],
                                         "flower": .object(flower), "env": .object(env),
                                         "timeout_seconds": .int(Int64(timeout))]
        if let source { plan["source"] = source }
        return ["schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()),
                "execution_id": "exec-flower", "plan": .object(plan),
                "flower": ["server": .string(server), "insecure": true]]
    }

    /// /proc/<pid>/status of the processes whose environment holds `entry`.
    func processStatuses(withEnvironmentEntry entry: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap { name -> String? in
            guard Int32(name) != nil, let environ = FileManager.default.contents(atPath: "/proc/\(name)/environ"),
                  environ.split(separator: 0).contains(where: { Array($0) == Array(entry.utf8) }) else { return nil }
            return try? String(contentsOfFile: "/proc/\(name)/status", encoding: .utf8)
        }
    }

    func progressRounds(_ op: Operator, _ id: String) -> [Int64] {
        op.events(of: id).filter { $0.kind == .progress }.compactMap { $0.detail.data?["round"]?.intValue }
    }

    func superlink(_ dir: String, port: Int) throws -> Service {
        // The ServerApp runs in this environment (flwr and numpy): no `uv sync` of the app's dependencies at run time.
        let s = try Service("\(venv)/bin/flower-superlink", ["--insecure", "--port", "\(port)",
                                                            "--database", "\(dir)/superlink.db",
                                                            "--disable-runtime-dependency-installation"],
                            env: env.merging(["FLWR_HOME": "\(dir)/superlink-home"]) { $1 }, dir: dir, name: "superlink")
        try eventually("the SuperLink to listen on \(port)", timeout: 30) {
            FlowerProbe.accepts(port: port) || !ChildProcess.groupExists(s.pid)
        }
        try #require(ChildProcess.groupExists(s.pid), "flower-superlink exited: \(s.output)")
        return s
    }

    /// A git repository (file://) holding the legacy client and the reporter helper shipped in docs/templates: the
    /// `script` mode's source.
    func legacySource(_ dir: String) throws -> JSONValue {
        let repo = "\(dir)/legacy-repo"
        try FileManager.default.createDirectory(atPath: repo, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "\(Self.flowerDir)/legacy/client.py", toPath: "\(repo)/client.py")
        try FileManager.default.copyItem(atPath: "\(TestEnv.repoRoot)/docs/templates/fem_reporter.py",
                                         toPath: "\(repo)/fem_reporter.py")
        for args in [["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "client"]] {
            let r = try Shell.run(["/usr/bin/git", "-c", "user.name=t", "-c", "user.email=t@example.org"] + args, cwd: repo)
            try #require(r.status == 0, "git \(args): \(r.output)")
        }
        return ["git": ["url": .string("file://\(repo)"), "ref": "main"]]
    }

    // MARK: - Tests

    @Test func twoSuperNodesTakePartInAThreeRoundRunAndComplete() throws {
        let dir = try TestEnv.scratch("flower-run")
        let port = 19191
        let link = try superlink(dir, port: port)
        defer { link.stop() }
        let node = try node("fl-supernode")
        try node.start()
        // The node lives (with its broker account) until the test ends, not until its last use here.
        defer { node.stop() }
        let op = try Operator(node: node)
        let tasks = (0..<2).map { i in
            task(mode: "supernode", server: "127.0.0.1:\(port)",
                 nodeConfig: ["partition-id": .int(Int64(i)), "num-partitions": 2])
        }
        for t in tasks { try op.submit(t) }
        _ = try op.waitFor("both SuperNodes to connect to the SuperLink", timeout: 240) { events in
            tasks.allSatisfy { t in
                events.contains { $0.taskID == Tasks.id(t) && $0.detail.message?.hasPrefix("connected to the SuperLink") == true }
            }
        }

        // The SuperNodes (and the ClientApps they start) run as the unprivileged task user, with no new privileges.
        for t in tasks {
            let statuses = processStatuses(withEnvironmentEntry: "FEM_TASK_ID=\(Tasks.id(t))")
            #expect(!statuses.isEmpty, "the SuperNode of \(Tasks.id(t)) runs")
            for status in statuses {
                #expect(!status.contains("Uid:\t0\t"), "a SuperNode runs as root: \(status)")
                #expect(status.contains("NoNewPrivs:\t1"), "\(status)")
            }
        }

        // The orchestrator's side: `flwr run` of the app against this SuperLink.
        let app = "\(dir)/app"
        try FileManager.default.copyItem(atPath: "\(Self.flowerDir)/numpy-app", toPath: app)
        try FileManager.default.copyItem(atPath: "\(TestEnv.repoRoot)/docs/templates/fem_reporter.py",
                                         toPath: "\(app)/femtestapp/fem_reporter.py")
        var pyproject = try String(contentsOfFile: "\(app)/pyproject.toml", encoding: .utf8)
        pyproject = pyproject.replacingOccurrences(of: "127.0.0.1:19093", with: "127.0.0.1:\(port)")
        try pyproject.write(toFile: "\(app)/pyproject.toml", atomically: true, encoding: .utf8)
        let cli = env.merging(["FLWR_HOME": "\(dir)/cli-home"]) { $1 }
        let run = try Shell.run(["\(venv)/bin/flwr", "run", app, "local", "--stream"], environment: cli, cwd: app)
        try run.output.write(toFile: "\(dir)/flwr-run.log", atomically: true, encoding: .utf8)
        let runID = try #require(run.output.range(of: #"started run (\d+)"#, options: .regularExpression)
            .map { String(run.output[$0].split(separator: " ").last!) }, "flwr run printed no run id: \(run.output)")

        try op.waitForFinal(tasks.map(Tasks.id), timeout: 120)
        // Every round's evaluation got an answer from both nodes, the last one too: a node stopped right after its
        // ClientApp said `Finished` would fail the last evaluation ("0 results and 2 failures").
        let evaluations = run.output.split(separator: "\n").filter { $0.contains("aggregate_evaluate: Received") }
        #expect(evaluations.count == 3 && evaluations.allSatisfy {
            $0.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix("Received 2 results and 0 failures")
        },
                "evaluations: \(evaluations)")
        for t in tasks {
            let final = try #require(op.finalState(of: Tasks.id(t)))
            #expect(final.state == .completed, "\(final.detail)")
            #expect(Set(progressRounds(op, Tasks.id(t))) == [1, 2, 3], "rounds: \(progressRounds(op, Tasks.id(t)))")
        }
        // `flwr run` exits 0 even when a run failed: the run's status is asked of the SuperLink.
        // (`flwr run` moved the pyproject's connection into FLWR_HOME as "local".)
        let ls = try Shell.run(["\(venv)/bin/flwr", "ls", "local", "--run-id", runID, "--format", "json"],
                               environment: cli, cwd: dir)
        #expect(ls.output.contains("\"success\": true") && ls.output.contains("finished:completed"),
                "flwr ls: \(ls.output)")
        #expect(ChildProcess.processGroups(withEnvironmentEntry: "FEM_EXECUTION_ID=exec-flower").isEmpty
                || tasks.allSatisfy { t in
                    ChildProcess.processGroups(withEnvironmentEntry: "FEM_TASK_ID=\(Tasks.id(t))").isEmpty
                }, "no SuperNode outlives its task")
    }

    @Test func aLegacyScriptClientReportsEachRoundAndCompletes() throws {
        let dir = try TestEnv.scratch("flower-legacy")
        let port = 19291
        // The client is submitted first: the node waits for the server to answer before it starts the script.
        let node = try node("fl-script")
        try node.start()
        let op = try Operator(node: node)
        let t = task(mode: "script", server: "127.0.0.1:\(port)", source: try legacySource(dir), entry: "client.py")
        try op.submit(t)
        Thread.sleep(forTimeInterval: 1)
        let server = try Service("\(venv)/bin/python", ["\(Self.flowerDir)/legacy/server.py", "127.0.0.1:\(port)"],
                                 env: env, dir: dir, name: "server")
        defer { server.stop() }
        try op.waitForFinal([Tasks.id(t)], timeout: 300)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed && final.detail.exitCode == 0, "\(final.detail)\n\(server.output)")
        #expect(progressRounds(op, Tasks.id(t)) == [1, 2, 3])
    }

    @Test func aClientThatRaisesFailsWithTheErrorsMessage() throws {
        let dir = try TestEnv.scratch("flower-raise")
        let port = 19391
        let server = try Service("\(venv)/bin/python", ["\(Self.flowerDir)/legacy/server.py", "127.0.0.1:\(port)"],
                                 env: env, dir: dir, name: "server")
        defer { server.stop() }
        let node = try node("fl-raise")
        try node.start()
        let op = try Operator(node: node)
        let t = task(mode: "script", server: "127.0.0.1:\(port)", source: try legacySource(dir), entry: "client.py",
                     env: ["FAIL_AT_ROUND": "2"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 300)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .taskFailure, "\(final.detail)")
        #expect(final.detail.message?.contains("bad data in partition 7") == true, "\(final.detail)")
        #expect(progressRounds(op, Tasks.id(t)).first == 1)
    }

    @Test func cancellingARunningSuperNodeLeavesNoFlowerProcess() throws {
        let dir = try TestEnv.scratch("flower-cancel")
        let port = 19491
        let link = try superlink(dir, port: port)
        defer { link.stop() }
        let node = try node("fl-cancel")
        try node.start()
        let op = try Operator(node: node)
        let t = task(mode: "supernode", server: "127.0.0.1:\(port)")
        try op.submit(t)
        _ = try op.waitFor("the SuperNode to connect", timeout: 240) { events in
            events.contains { $0.taskID == Tasks.id(t) && $0.detail.message?.hasPrefix("connected to the SuperLink") == true }
        }
        let groups = ChildProcess.processGroups(withEnvironmentEntry: "FEM_TASK_ID=\(Tasks.id(t))")
        #expect(!groups.isEmpty, "the SuperNode runs with the task's environment")
        try op.cancel(Tasks.id(t))
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        #expect(op.finalState(of: Tasks.id(t))?.state == .cancelled)
        try eventually("every process of the SuperNode (superexec included) to be gone", timeout: 20) {
            ChildProcess.processGroups(withEnvironmentEntry: "FEM_TASK_ID=\(Tasks.id(t))").isEmpty
        }
    }

    /// With the output airlock on, what the launcher quotes of the SuperNode's lines (its id) stays on the node.
    @Test func withTheAirlockOnTheSuperNodesOwnWordsAreHeld() throws {
        let dir = try TestEnv.scratch("flower-held")
        let port = 19691
        let link = try superlink(dir, port: port)
        defer { link.stop() }
        let node = try node("fl-held")
        try node.editConfig { $0 + "\n[outputs]\nrequire_approval = true\n" }
        try node.start()
        let op = try Operator(node: node)
        let t = task(mode: "supernode", server: "127.0.0.1:\(port)")
        try op.submit(t)
        _ = try op.waitFor("the SuperNode to connect", timeout: 240) { events in
            events.contains { $0.taskID == Tasks.id(t) && $0.detail.message?.hasPrefix("connected to the SuperLink") == true }
        }
        let notice = op.events(of: Tasks.id(t)).first { $0.detail.message?.hasPrefix("connected to the SuperLink") == true }
        #expect(notice?.detail.message == "connected to the SuperLink (details held for approval)",
                "\(String(describing: notice?.detail))")
        try op.cancel(Tasks.id(t))
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let show = try node.run(["outputs", "show", Tasks.id(t)])
        #expect(show.output.contains("signal: connected to the SuperLink (SuperNode ID "), "\(show.output)")
    }

    @Test func aSuperLinkThatNeverAnswersFailsTheTaskWithItsOwnClass() throws {
        let node = try node("fl-unreachable", extra: "")
        try node.editConfig { $0.replacingOccurrences(of: "unreachable_seconds = 120", with: "unreachable_seconds = 3") }
        try node.start()
        let op = try Operator(node: node)
        let t = task(mode: "supernode", server: "127.0.0.1:19591")  // nothing listens there
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 240)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .serverUnreachable, "\(final.detail)")
        #expect(final.detail.message?.contains("cannot reach the SuperLink") == true, "\(final.detail)")
        #expect(ChildProcess.processGroups(withEnvironmentEntry: "FEM_TASK_ID=\(Tasks.id(t))").isEmpty)
    }
}

enum FlowerProbe {
    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}
