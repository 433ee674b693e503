import FEMCore
import FEMLaunchers
import FEMSystem
import Foundation
import Testing

/// The slurm launcher's job script, sbatch options and reading of Slurm's job states (the launcher against a real
/// Slurm is in IntegrationTests/SlurmTests).
struct SlurmJobScriptTests {
    static let corpus = [
        "plain", "two words", "semi; colon", "$(touch /tmp/fem-pwned1)", "`touch /tmp/fem-pwned2`",
        "a && touch /tmp/fem-pwned3", "| cat /etc/passwd", "'single' \"double\"", "it's", "'", "''", "\\'", "${PATH}",
        "*", "~", "../../etc/passwd", "-rf", "%%sandbox%%", "\\n\\t", "line\nbreak", "tab\there", "ünïcödé ✓", "",
        "!", "#comment", "a=b", "$'\\x41'",
    ]

    @Test func quotingKeepsEveryValueOneLiteralWord() async throws {
        // The script, run by a real /bin/sh, hands python exactly the corpus, and the environment exactly as given.
        let script = SlurmJobScript.render(
            taskID: "t-1", argv: ["/usr/bin/python3", "-c",
                                  // python itself adds LC_CTYPE (PEP 538)
                                  "import json,os,sys; print(json.dumps([sys.argv[1:], "
                                  + "{k: v for k, v in os.environ.items() if k != 'LC_CTYPE'}]))"] + Self.corpus,
            environment: ["FEM_X": "a'b $(id) `id`", "PATH": "/usr/bin:/bin"])
        let dir = NSTemporaryDirectory() + "fem-slurm-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try script.write(toFile: "\(dir)/job.sh", atomically: true, encoding: .utf8)
        let r = try await ChildProcess.run(executable: "/bin/sh", arguments: ["\(dir)/job.sh"],
                                           environment: ["PATH": "/usr/bin:/bin", "SECRET_OUTER": "leak"])
        #expect(r.succeeded, "\(r.diagnostic)")
        let decoded = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [Any]
        #expect(decoded?.first as? [String] == Self.corpus)
        #expect(decoded?.last as? [String: String] == ["FEM_X": "a'b $(id) `id`", "PATH": "/usr/bin:/bin"])
        for i in 1...3 { #expect(!FileManager.default.fileExists(atPath: "/tmp/fem-pwned\(i)")) }
    }

    @Test func quoteClosesAndReopensAroundSingleQuotes() {
        #expect(SlurmJobScript.quote("a b") == "'a b'")
        #expect(SlurmJobScript.quote("it's") == #"'it'\''s'"#)
        #expect(SlurmJobScript.quote("") == "''")
    }

    @Test func requestIsCappedByTheNode() throws {
        let doc: JSONValue = ["schema_version": 1, "task_id": "t", "execution_id": "e", "plan": [
            "schema_version": 1, "id": "t", "version": "1", "launcher": "slurm",
            "command": ["base": ["/bin/true"]], "resources": ["cpus": .double(1.5), "memory_mb": 100_000, "gpus": 1]]]
        let plan = try DocumentReader.readTask(doc, requireTaskID: true).plan
        let r = SlurmJobScript.request(plan, timeoutSeconds: 61, maxCPUs: 4, defaultMemoryMB: 512, maxMemoryMB: 2048)
        #expect(r == SlurmJobScript.Request(cpus: 2, memoryMB: 2048, gpus: 1, minutes: 3))
        let args = SlurmJobScript.sbatchArguments(nodeID: "n1", taskID: "t", script: "/s/job.sh", workingDirectory: "/s/src",
                                                  stdout: "/s/logs/stdout.log", stderr: "/s/logs/stderr.log",
                                                  request: r, partition: "debug", account: "", qos: "normal",
                                                  user: (999, 995))
        #expect(args == ["--parsable", "--job-name=fem-task:n1:t", "--comment=fem-task:n1:t", "--chdir=/s/src",
                         "--output=/s/logs/stdout.log", "--error=/s/logs/stderr.log", "--export=NONE", "--no-requeue",
                         "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--mem=2048M", "--gres=gpu:1", "--time=3",
                         "--partition=debug", "--qos=normal", "--uid=999", "--gid=995", "/s/job.sh"])
    }

    /// A node finds only its own job for a task: another node's job for the same task (a task sent to `all`), or a
    /// job whose comment differs, is never taken (nor cancelled).
    @Test func onlyJobsWithThisNodesCommentAreFound() {
        let out = "11 fem-task:n1:t\n12 fem-task:n2:t\n13 fem-task:n1:t2\n14 (null)\nx fem-task:n1:t\n15 fem-task:n1:t \n"
        #expect(SlurmJobScript.jobIDs(inSqueue: out, comment: SlurmJobScript.comment(nodeID: "n1", taskID: "t"))
                == ["11", "15"])
        #expect(SlurmJobScript.jobName(nodeID: "n1", taskID: "t") == "fem-task:n1:t")
    }

    /// Paths are compared resolved: a work dir reached through a symlink out of the shared dir is refused, and a
    /// program whose resolved path holds "=" is refused.
    @Test func pathChecksCompareResolvedPaths() throws {
        let dir = try Posix.realpath(NSTemporaryDirectory()) + "/fem-slurm-paths-\(UUID().uuidString)"
        let fm = FileManager.default
        try fm.createDirectory(atPath: "\(dir)/shared", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: "\(dir)/elsewhere/work", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: "\(dir)/a=b", withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: dir) }
        try fm.createSymbolicLink(atPath: "\(dir)/shared/link", withDestinationPath: "\(dir)/elsewhere")
        #expect(!SlurmLauncherConfig.isInside("\(dir)/shared/link/work", "\(dir)/shared"))
        #expect(SlurmLauncherConfig.isInside("\(dir)/shared/new/sub", "\(dir)/shared"))
        #expect(SlurmLauncherConfig.isInside("\(dir)/elsewhere/work", "\(dir)/shared/link"))
        #expect(!SlurmLauncherConfig.isInside("\(dir)/shared/../elsewhere", "\(dir)/shared"))
        var config = SlurmLauncherConfig(sharedDir: "\(dir)/shared", user: TaskUser(name: "x", uid: 999, gid: 999))
        if Posix.effectiveUserID == 0 {
            let why = config.refusal(workDir: "\(dir)/shared/link/work")
            #expect(why?.hasPrefix("launchers.slurm.shared_dir: the node's work dir") == true, "\(why ?? "nil")")
        }
        try Data("#!/bin/sh\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/a=b/prog"))
        try Posix.chmod("\(dir)/a=b/prog", mode: 0o755)
        try fm.createSymbolicLink(atPath: "\(dir)/prog", withDestinationPath: "\(dir)/a=b/prog")
        config.allowedExecutables = ["\(dir)/prog"]
        let doc: JSONValue = ["schema_version": 1, "task_id": "t1", "execution_id": "e", "plan": [
            "schema_version": 1, "id": "t", "version": "1", "launcher": "slurm",
            "command": ["base": [.string("\(dir)/prog")]]]]
        let task = try DocumentReader.readTask(doc, requireTaskID: true)
        let paths = ToolPaths.under("\(dir)/shared/sandboxes/t1")
        let command = try Renderer.render(task, context: RenderContext(nodeID: "n1", nodeName: "n1", paths: paths,
                                                                       datasets: [:]), timeoutSeconds: 30)
        let why = SlurmLauncher(config: config).policyCheck(LaunchJob(task: task, command: command, sandbox: paths))
        #expect(why?.contains("which contains \"=\"") == true, "\(why ?? "nil")")
    }

    /// A plan picks partition, account and QOS among the node's allowed ones, compared exactly; anything else is
    /// declined naming the field and the allowed names.
    @Test func aPlanPicksAccountAndQOSAmongTheAllowedOnes() throws {
        let dir = try Posix.realpath(NSTemporaryDirectory()) + "/fem-slurm-placement-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: "\(dir)/shared", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = SlurmLauncherConfig(sharedDir: "\(dir)/shared", account: "lab-a", qos: "normal",
                                         allowedExecutables: ["/bin/true"])
        config.allowedAccounts = ["lab-a", "lab-b"]
        let launcher = SlurmLauncher(config: config)
        func check(_ resources: [String: JSONValue]) throws -> String? {
            let doc: JSONValue = ["schema_version": 1, "task_id": "t1", "execution_id": "e", "plan": [
                "schema_version": 1, "id": "t", "version": "1", "launcher": "slurm", "resources": .object(resources),
                "command": ["base": ["/bin/true"]]]]
            let task = try DocumentReader.readTask(doc, requireTaskID: true)
            let paths = ToolPaths.under("\(dir)/shared/sandboxes/t1")
            let command = try Renderer.render(task, context: RenderContext(nodeID: "n1", nodeName: "n1", paths: paths,
                                                                           datasets: [:]), timeoutSeconds: 30)
            return launcher.policyCheck(LaunchJob(task: task, command: command, sandbox: paths))
        }
        #expect(try check([:]) == nil)
        #expect(try check(["account": "lab-b"]) == nil)
        #expect(try check(["account": "lab-c"]) == "resources.account: \"lab-c\" is not an account this node's jobs "
                + "may use (launchers.slurm.allowed_accounts: lab-a, lab-b)")
        // Without allowed_qos, only the node's own `qos` may be asked for.
        #expect(try check(["qos": "normal"]) == nil)
        #expect(try check(["qos": "high"]) == "resources.qos: \"high\" is not a QOS this node's jobs may use "
                + "(launchers.slurm.allowed_qos: normal)")
        // Not a Slurm name: refused when the task is read, before any launcher sees it.
        #expect(throws: (any Error).self) { try check(["qos": "--uid=0"]) }
    }

    @Test func jobIDFromParsableOutput() {
        #expect(SlurmJobScript.parseJobID("42\n") == "42")
        #expect(SlurmJobScript.parseJobID("42;cluster\n") == "42")
        #expect(SlurmJobScript.parseJobID("sbatch: error\n") == nil)
    }

    static func info(_ state: String, _ exit: String = "0:0", reason: String = "None") -> SlurmJobInfo? {
        SlurmJobInfo.parse("JobId=7 JobName=fem-t UserId=fem-task(999) Priority=1 Nice=0 Account=(null) "
                           + "JobState=\(state) Reason=\(reason) Dependency=(null) Requeue=0 ExitCode=\(exit) "
                           + "Command=/s p/job.sh WorkDir=/s p/src Comment=fem-task:t")
    }

    @Test func statesMapToOutcomes() throws {
        #expect(Self.info("PENDING", reason: "Resources")?.phase == .pending("Resources"))
        #expect(Self.info("RUNNING")?.phase == .running)
        #expect(Self.info("COMPLETING")?.phase == .running)
        #expect(Self.info("COMPLETED")?.phase == .ended(LaunchOutcome(exitCode: 0)))
        guard case .ended(let failed)? = Self.info("FAILED", "3:0")?.phase else { Issue.record("FAILED"); return }
        #expect(failed.exitCode == 3 && failed.signal == nil && !failed.succeeded)
        guard case .ended(let killed)? = Self.info("FAILED", "0:9")?.phase else { Issue.record("signal"); return }
        #expect(killed.signal == 9 && killed.exitCode == 137)
        guard case .ended(let odd)? = Self.info("FAILED", "0:0", reason: "JobLaunchFailure")?.phase else {
            Issue.record("FAILED 0:0"); return
        }
        #expect(!odd.succeeded, "a job that did not complete never reads as a success")
        guard case .ended(let oom)? = Self.info("OUT_OF_MEMORY", "0:125")?.phase else { Issue.record("oom"); return }
        #expect(oom.outOfMemory)
        for (state, cls) in [("TIMEOUT", FailureClass.timeout), ("NODE_FAIL", .nodeFailure), ("PREEMPTED", .preempted)] {
            guard case .ended(let o)? = Self.info(state, "0:15")?.phase else { Issue.record("\(state)"); continue }
            #expect(o.failureClass == cls, "\(state)")
        }
        guard case .ended(let cancelled)? = Self.info("CANCELLED", "0:15")?.phase else { Issue.record("cancel"); return }
        #expect(cancelled.signal == 15)
        #expect(SlurmJobInfo.parse("slurm_load_jobs error: Invalid job id specified") == nil)
    }

    @Test func squeueRowsAreReadByID() {
        let rows = SlurmJobInfo.parse(squeue: "12|FAILED|NonZeroExitCode\n13|PENDING|Resources\n14|RUNNING|None\nbad line\n")
        #expect(rows["12"]?.state == "FAILED")
        #expect(rows["13"]?.phase == .pending("Resources"))
        #expect(rows["14"]?.phase == .running)
        #expect(rows.count == 3)
        #expect(SlurmJobInfo.parse(squeue: "").isEmpty)
    }

    @Test func imageReferencesAreQualifiedAndChecked() {
        #expect(SlurmContainerScript.qualified("busybox:1") == "docker.io/library/busybox:1")
        #expect(SlurmContainerScript.qualified("fem/x:1") == "docker.io/fem/x:1")
        #expect(SlurmContainerScript.qualified("127.0.0.1:5000/fem/busybox:1.36") == "127.0.0.1:5000/fem/busybox:1.36")
        #expect(SlurmContainerScript.registryHost("127.0.0.1:5000/fem/busybox@sha256:ab") == "127.0.0.1:5000")
        #expect(SlurmContainerScript.imageProblem("--privileged") != nil)
        #expect(SlurmContainerScript.imageProblem("a b") != nil)
        #expect(SlurmContainerScript.imageProblem("127.0.0.1:5000/fem/busybox:1.36") == nil)
        // podman transports read the node's files: refused whatever the allowlist says.
        #expect(SlurmContainerScript.imageProblem("oci-archive:/tmp/x.tar") != nil)
        #expect(SlurmContainerScript.imageProblem("dir:/etc") != nil)
        #expect(SlurmContainerScript.imageProblem("docker://evil.example/x") != nil)
        #expect(SlurmContainerScript.imageProblem("localhost:5000/x@sha256:" + String(repeating: "a", count: 64)) == nil)
        #expect(SlurmContainerScript.envFile(["A": "x y", "B": "it's $(id)"]) == "A=x y\nB=it's $(id)\n")
        #expect(SlurmContainerScript.envFile(["A": "line\nbreak"]) == nil)
        #expect(SlurmContainerScript.registriesConf(insecure: ["127.0.0.1:5000"]).contains(
            "location = \"127.0.0.1:5000\"\ninsecure = true"))
    }

    /// The container script, run by a real /bin/sh with a stand-in podman that records its arguments: podman gets
    /// the locked-down options, the image, and the argv corpus as one item each; no value of the plan's environment is
    /// on its command line; its own environment is only what the script sets.
    @Test func containerScriptHandsPodmanTheHardenedRunAndTheArgvIntact() async throws {
        let dir = NSTemporaryDirectory() + "fem-slurm-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fake = "\(dir)/podman"
        let program = """
            #!/usr/bin/python3
            import json, os, sys
            with open(os.environ["XDG_RUNTIME_DIR"] + "/../../../calls-" + os.path.basename(os.environ["HOME"]), "a") as f:
                f.write(json.dumps([sys.argv[1:], sorted(os.environ)]) + "\\n")

            """
        // Written by a child process: a descriptor of this (threaded) process open for writing it could be inherited
        // by another test's fork, and exec would then fail with ETXTBSY.
        let made = try await ChildProcess.run(executable: "/bin/sh", arguments: [
            "-c", "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"", "sh", program, fake], environment: ["PATH": "/usr/bin:/bin"])
        try #require(made.succeeded, "\(made.diagnostic)")
        let container = SlurmContainerScript.Container(
            podman: fake, image: "127.0.0.1:5000/fem/busybox:1.36", argv: ["/bin/echo"] + Self.corpus,
            workingDirectory: "/s p/src", mounts: [.init(path: "/s p/src", writable: false), .init(path: "/s p/out", writable: true)],
            envFile: "/s p/logs/container.env", registriesConf: "/s p/logs/registries.conf", uid: 999, gid: 995,
            pidsLimit: 64, tmpfsMB: 32)
        let script = SlurmContainerScript.render(taskID: "t-1", container: container)
            .replacingOccurrences(of: "/tmp/fem-podman.XXXXXX", with: "\(dir)/x/fem-podman.XXXXXX")
        try FileManager.default.createDirectory(atPath: "\(dir)/x", withIntermediateDirectories: true)
        try script.write(toFile: "\(dir)/job.sh", atomically: true, encoding: .utf8)
        let r = try await ChildProcess.run(executable: "/bin/sh", arguments: ["\(dir)/job.sh"],
                                           environment: ["PATH": "/usr/bin:/bin", "SECRET_OUTER": "leak"])
        #expect(r.succeeded, "\(r.diagnostic)")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("calls-") }
        #expect(names.count == 1)
        let lines = try String(contentsOfFile: "\(dir)/\(names.first ?? "-")", encoding: .utf8)
            .split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [Any] }
        let calls = lines.compactMap { $0.first as? [String] }
        // pull, run, then the cleanup: any container left (rm), the storage (podman unshare rm).
        #expect(calls.count == 4 && calls.last?.contains("unshare") == true, "\(calls)")
        let pull = calls.first ?? [], run = calls.count > 1 ? calls[1] : []
        #expect(pull.suffix(3) == ["pull", "--quiet", "127.0.0.1:5000/fem/busybox:1.36"], "\(pull)")
        for option in ["--network=none", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only",
                       "--read-only-tmpfs=false", "--userns=keep-id", "--rm", "--init", "--pull=never", "--log-level=error",
                       "--storage-driver=overlay"] {
            #expect(run.contains(option), "\(option) in \(run)")
        }
        func after(_ flag: String) -> [String] {
            run.indices.filter { run[$0] == flag && $0 + 1 < run.count }.map { run[$0 + 1] }
        }
        #expect(after("--user") == ["999:995"])
        #expect(after("--tmpfs") == ["/tmp:rw,nosuid,nodev,size=32m"])
        #expect(after("--ulimit") == ["nproc=64:64"])
        #expect(after("--env-file") == ["/s p/logs/container.env"])
        #expect(after("--mount") == ["type=bind,source=/s p/src,destination=/s p/src,ro=true",
                                     "type=bind,source=/s p/out,destination=/s p/out"])
        #expect(after("--workdir") == ["/s p/src"])
        #expect(after("--entrypoint") == [#"["/bin/echo"]"#])
        let image = try #require(run.firstIndex(of: "127.0.0.1:5000/fem/busybox:1.36"))
        #expect(Array(run[(image + 1)...]) == Self.corpus)
        #expect(!run.contains { $0.contains("leak") })
        let env = (lines.dropFirst().first?.last as? [String])?.filter { $0 != "LC_CTYPE" }  // python adds it (PEP 538)
        #expect(env == ["CONTAINERS_REGISTRIES_CONF", "HOME", "PATH", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                        "XDG_RUNTIME_DIR"], "\(env ?? [])")
        // The per-job folder is gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/x").isEmpty)
        for i in 1...3 { #expect(!FileManager.default.fileExists(atPath: "/tmp/fem-pwned\(i)")) }
    }
}
