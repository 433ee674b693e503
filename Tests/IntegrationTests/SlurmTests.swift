import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The `slurm` launcher through the real daemon and broker, against the real single-node Slurm that
/// scripts/dev-slurm.sh starts (test.sh: FEM_TEST_SLURM_DIR). Every job is checked in Slurm itself by its name,
/// `fem-task:<node id>:<task id>`.
@Suite(.serialized)
struct SlurmTests {
    static func slurmDir() throws -> String {
        guard let d = TestEnv.env["FEM_TEST_SLURM_DIR"], FileManager.default.fileExists(atPath: "\(d)/slurm.conf") else {
            throw HarnessError("FEM_TEST_SLURM_DIR is not set or holds no slurm.conf: run the tests with `bash test.sh`, "
                               + "which starts a single-node Slurm (scripts/dev-slurm.sh start --dir DIR)")
        }
        let r = try Shell.run(["/usr/bin/sinfo", "-h", "-o", "%T"], environment: ["SLURM_CONF": "\(d)/slurm.conf",
                                                                                 "PATH": "/usr/bin:/bin"])
        // A node still completing an earlier job (its epilog, a container's cleanup) is up as well.
        guard r.status == 0, ["idle", "mixed", "alloc", "completing"].contains(where: r.output.contains) else {
            throw HarnessError("the Slurm in \(d) does not answer (sinfo: \(r.output)); start it with "
                               + "scripts/dev-slurm.sh start --dir \(d)")
        }
        return d
    }

    /// A node whose work dir is inside its shared dir (its own scratch folder), running jobs as fem-task.
    func node(_ name: String, extra: String = "") throws -> TestNode {
        let slurm = try Self.slurmDir()
        let node = try TestNode(name)
        try node.editConfig { $0 + """

            [launchers]
            enabled = ["slurm"]
            [launchers.slurm]
            shared_dir = "\(node.dir)"
            slurm_conf = "\(slurm)/slurm.conf"
            allowed_executables = ["/bin/sh", "/usr/bin/python3"]
            poll_interval_ms = 100
            \(extra)
            """ }
        return node
    }

    func task(_ base: [String], timeout: Int? = nil, plan extra: [String: JSONValue] = [:],
              params: [String: JSONValue] = [:], args: [JSONValue] = []) -> [String: JSONValue] {
        var t = Tasks.task(base, timeout: timeout, params: params, args: args)
        if case .object(var plan)? = t["plan"] {
            plan["launcher"] = "slurm"
            for (k, v) in extra { plan[k] = v }
            t["plan"] = .object(plan)
        }
        return t
    }

    /// Slurm's client commands against the test's Slurm.
    func slurm(_ argv: [String]) throws -> String {
        let d = try Self.slurmDir()
        return try Shell.run(argv, environment: ["SLURM_CONF": "\(d)/slurm.conf", "PATH": "/usr/bin:/bin"]).output
    }

    /// The ids of every job of the task Slurm knows (finished ones too, for MinJobAge).
    func jobs(_ t: [String: JSONValue]) throws -> [String] {
        // Names are `fem-task:<node>:<task>`: any node's job for the task.
        try slurm(["/usr/bin/squeue", "-h", "--states=all", "--format=%i %j"])
            .split(whereSeparator: \.isNewline).compactMap { line in
                let w = line.split(separator: " ")
                guard w.count == 2, w[1].hasPrefix("fem-task:"), w[1].hasSuffix(":\(Tasks.id(t))") else { return nil }
                return String(w[0])
            }
    }

    /// The task's job id, once Slurm lists it (the task's `running` event is sent as the submission begins).
    func jobID(_ t: [String: JSONValue]) throws -> String {
        var id: String?
        try eventually("Slurm to list the job of task \(Tasks.id(t))", timeout: 30) {
            id = (try? jobs(t))?.first
            return id != nil
        }
        return try #require(id)
    }

    func jobState(_ id: String) throws -> String {
        let line = try slurm(["/usr/bin/scontrol", "show", "job", "-o", id])
        return line.split(separator: " ").first { $0.hasPrefix("JobState=") }.map { String($0.dropFirst(9)) } ?? line
    }

    /// Jobs pending or running (what plain `squeue` lists).
    func active(_ id: String) throws -> Bool {
        !(try slurm(["/usr/bin/squeue", "-h", "-j", id, "--format=%i"])).trimmingCharacters(in: .whitespacesAndNewlines)
            .isEmpty
    }

    /// An output file of a task without a stage-out target: kept in its sandbox's `out/`, and listed in the
    /// sandbox's manifest (nil when either is missing).
    func kept(_ node: TestNode, _ t: [String: JSONValue], _ name: String) -> String? {
        let sandbox = "\(node.dir)/var/sandboxes/\(Tasks.id(t))"
        guard let manifest = try? String(contentsOfFile: "\(sandbox)/manifest.json", encoding: .utf8),
              manifest.contains("\"out/\(name)\"") else { return nil }
        return "\(sandbox)/out/\(name)"
    }

    /// Outputs go to the WebDAV server of scripts/dev-web.sh (nginx, TLS, its upload account).
    static func davOutputs(_ web: String) -> String {
        """
        [outputs]
        allowed_urls = ["https://localhost:18443/dav/"]
        ca_file = "\(web)/ca.pem"
        [credentials.upload-login]
        username = "fem-upload"
        password_file = "\(web)/password-fem-upload"
        urls = ["https://localhost:18443/dav/"]
        """
    }

    /// Staged out over WebDAV (nginx of scripts/dev-web.sh), as for the other launchers.
    @Test func aTaskRunsAsAJobAndItsOutputsAreStagedOut() throws {
        let web = try TestEnv.webDir()
        let node = try node("slurm-ok", extra: """
            \(Self.davOutputs(web))
            """)
        try node.start()
        let op = try Operator(node: node)
        let prefix = "slurm-\(UUID().uuidString.prefix(6).lowercased())"
        var t = task(["/bin/sh", "-c", "echo '{\"type\": \"model\", \"round\": 1, \"metrics\": {\"accuracy\": 0.5}}'; "
                      + "sleep 1; echo from-slurm; id -un > \"$FEM_OUTPUT_DIR/who.txt\"; "
                      + "id -gn >> \"$FEM_OUTPUT_DIR/who.txt\"; env | sort > \"$FEM_OUTPUT_DIR/env.txt\""],
                     plan: ["outputs": [["pattern": "*.txt"]]])
        t["stage_out"] = ["url": .string("https://localhost:18443/dav/\(prefix)"), "credentials": "upload-login"]
        let dest = "\(web)/dav/\(prefix)/exec-test/\(node.id)/\(Tasks.id(t))"
        func delivered(_ node: TestNode, _ name: String) -> String? {
            FileManager.default.fileExists(atPath: "\(dest)/out/\(name)") ? "\(dest)/out/\(name)" : nil
        }
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed, "\(final.detail)")
        #expect(final.detail.exitCode == 0)
        let ids = try jobs(t)
        #expect(ids.count == 1, "one job per task: \(ids)")
        #expect(try jobState(ids.first ?? "-") == "COMPLETED")
        let who = try String(contentsOfFile: try #require(delivered(node, "who.txt")), encoding: .utf8)
        #expect(who == "fem-task\nfem-task\n", "the job ran as the task user and group (not root's group)")
        let env = try String(contentsOfFile: try #require(delivered(node, "env.txt")), encoding: .utf8)
        // Only the plan's checked environment: nothing of Slurm's or the daemon's.
        #expect(!env.contains("SLURM_"), "\(env)")
        #expect(env.contains("FEM_TASK_ID=\(Tasks.id(t))"), "\(env)")
        let stdout = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/stdout.log",
                                encoding: .utf8)
        #expect(stdout.contains("from-slurm"))
        // The job script holds the task's environment and arguments: the daemon's alone (0600), read by sbatch as
        // root at submission; the job above ran all the same, as fem-task, from Slurm's copy.
        var st = stat()
        #expect(stat("\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/slurm-job.sh", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600 && st.st_uid == 0, "mode \(String(st.st_mode & 0o777, radix: 8))")
        // The reporter protocol: the job's stdout, followed while it runs, becomes progress events.
        let progress = op.events(of: Tasks.id(t)).filter { $0.kind == .progress && $0.detail.data?["round"] != nil }
        #expect(progress.map { $0.detail.data?["round"] } == [1], "\(op.events(of: Tasks.id(t)).map(\.detail))")
        #expect(progress.first?.detail.data?["metrics"]?["accuracy"] == JSONValue.double(0.5))
    }

    @Test func exitCodesAndAnImpossibleRequest() throws {
        let node = try node("slurm-exit", extra: "max_cpus = 64")
        try node.start()
        let op = try Operator(node: node)
        let three = task(["/bin/sh", "-c", "exit 3"])
        let killed = task(["/bin/sh", "-c", "kill -9 $$"])
        let huge = task(["/bin/sh", "-c", "true"], plan: ["resources": ["cpus": 48]])
        for t in [three, killed, huge] { try op.submit(t) }
        try op.waitForFinal([three, killed, huge].map(Tasks.id), timeout: 60)
        let e3 = try #require(op.finalState(of: Tasks.id(three)))
        #expect(e3.state == .failed && e3.detail.exitCode == 3 && e3.detail.failureClass == .taskFailure, "\(e3.detail)")
        let e9 = try #require(op.finalState(of: Tasks.id(killed)))
        #expect(e9.state == .failed && e9.detail.exitCode == 137, "\(e9.detail)")
        #expect(e9.detail.message?.contains("signal 9") == true, "\(e9.detail)")
        let eh = try #require(op.finalState(of: Tasks.id(huge)))
        #expect(eh.state == .failed, "\(eh.detail)")
        #expect(eh.detail.message?.contains("48 CPUs") == true, "the request is named: \(eh.detail)")
        #expect(eh.detail.message?.contains("More processors requested than permitted") == true, "\(eh.detail)")
        #expect(try jobs(huge).isEmpty, "nothing was queued")
    }

    @Test func timeoutAndCancelEndTheJobInSlurm() throws {
        let node = try node("slurm-stop")
        try node.start()
        let op = try Operator(node: node)
        let slow = task(["/bin/sh", "-c", "sleep 60"], timeout: 3)
        let cancelled = task(["/bin/sh", "-c", "sleep 60"])
        try op.submit(slow)
        try op.submit(cancelled)
        try op.waitFor("the second task to run", timeout: 60) { events in
            events.contains { $0.taskID == Tasks.id(cancelled) && $0.kind == .state && $0.state == .running }
        }
        let cid = try jobID(cancelled)
        try eventually("job \(cid) to run", timeout: 30) { (try? jobState(cid)) == "RUNNING" }
        try op.cancel(Tasks.id(cancelled))
        try op.waitForFinal([Tasks.id(slow), Tasks.id(cancelled)], timeout: 60)
        let es = try #require(op.finalState(of: Tasks.id(slow)))
        #expect(es.state == .failed && es.detail.failureClass == .timeout, "\(es.detail)")
        let ec = try #require(op.finalState(of: Tasks.id(cancelled)))
        #expect(ec.state == .cancelled, "\(ec.detail)")
        let sid = try jobID(slow)
        for id in [sid, cid] {
            #expect(try !active(id), "job \(id) is gone from squeue")
            #expect(try jobState(id) == "CANCELLED")
        }
    }

    /// Slurm does not answer (scontrol and squeue fail every time) for longer than unreachable_seconds: the task fails
    /// saying so, and its job, still running in Slurm, is cancelled (not left running unsupervised).
    @Test func aJobSlurmDoesNotAnswerAboutIsCancelledWhenGivenUp() throws {
        let tools = try FakeTools()
        defer { tools.remove() }
        let broken = try tools.script("scontrol-unreachable", FakeTools.unreachableScontrol)
        let node = try node("slurm-unreach", extra: """
            scontrol = "\(broken)"
            squeue = "\(broken)"
            unreachable_seconds = 3
            """)
        try node.start()
        let op = try Operator(node: node)
        let t = task(["/bin/sh", "-c", "sleep 120"])
        try op.submit(t)
        let id = try jobID(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .runnerSystemFailure, "\(final.detail)")
        #expect(final.detail.message?.contains("Slurm did not answer about job \(id) for 3 s") == true,
                "\(final.detail)")
        try eventually("job \(id) to be cancelled", timeout: 30) { (try? active(id)) == false }
        #expect(try jobState(id) == "CANCELLED")
    }

    /// One squeue per poll interval, for all of the node's jobs, serves every job's wait and the queue notices, also
    /// while a job waits in the queue; scontrol is asked about a job only once it ended (its exit code). Counted
    /// through wrappers that log each call, then run the real command.
    @Test func oneSqueuePerIntervalForAllJobs() throws {
        let tools = try FakeTools()
        defer { tools.remove() }
        let dir = tools.dir
        let scontrol = try tools.script("scontrol-counting",
                                        "echo \"$*\" >> '\(dir)/scontrol-calls'\nexec /usr/bin/scontrol \"$@\"\n")
        let squeue = try tools.script("squeue-counting", "echo \"$*\" >> '\(dir)/squeue-calls'\nexec /usr/bin/squeue \"$@\"\n")
        let node = try node("slurm-polls", extra: """
            scontrol = "\(scontrol)"
            squeue = "\(squeue)"
            max_cpus = 2
            """)
        try node.editConfig { $0.replacingOccurrences(of: "poll_interval_ms = 100", with: "poll_interval_ms = 500") }
        try node.start()
        let op = try Operator(node: node)
        let cpus = ProcessInfo.processInfo.processorCount
        let first = task(["/bin/sh", "-c", "sleep 6"], plan: ["resources": ["cpus": .int(Int64(cpus))]])
        let second = task(["/bin/sh", "-c", "true"], plan: ["resources": ["cpus": .int(Int64(cpus))]])
        try op.submit(first)
        let firstJob = try jobID(first)
        try eventually("job \(firstJob) to run", timeout: 30) { (try? jobState(firstJob)) == "RUNNING" }
        let t0 = Date()
        try op.submit(second)
        try op.waitForFinal([Tasks.id(first), Tasks.id(second)], timeout: 90)
        let elapsed = Date().timeIntervalSince(t0)
        #expect(op.finalState(of: Tasks.id(second))?.state == .completed)
        let secondJob = try jobID(second)
        func lines(_ name: String) -> [Substring] {
            ((try? String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8)) ?? "").split(whereSeparator: \.isNewline)
        }
        let polls = lines("squeue-calls").filter { $0.contains("--jobs=") }
        let both = polls.filter { $0.contains("--jobs=\(firstJob),\(secondJob)") || $0.contains("--jobs=\(secondJob),\(firstJob)") }
        let scontrolLines = lines("scontrol-calls").filter { $0.hasSuffix(" \(secondJob)") }
        let scontrolCalls = scontrolLines.count
        // The second job waited about 5 s while the first ran: both listed in the same squeue, about one per
        // interval (two loops polling on their own would make twice as many).
        #expect(elapsed > 3, "the second job waited in the queue (\(elapsed) s)")
        #expect(both.count >= 3, "squeue listed both jobs at once: \(polls)")
        #expect(Double(polls.count) <= elapsed / 0.5 + 4, "\(polls.count) squeue calls in \(elapsed) s")
        // scontrol: for a wait that began after the shared squeue did (until the next one lists the job), once for
        // the ended job's exit code, and in the cleanup (destroy); never once per poll.
        #expect(scontrolCalls >= 1 && scontrolCalls <= 4 && Double(scontrolCalls) < elapsed / 0.5 / 2,
                "scontrol only around the job's start and end: \(scontrolLines) in \(elapsed) s")
    }

    /// sbatch submits but prints no job id: the job is found by its name and comment and followed to its end (not
    /// reported refused while it runs). Then sbatch cannot be started at all: the task fails saying why, and the
    /// sandbox is the daemon's again (not left to the task user).
    @Test func sbatchAnswersWithoutAnIdOrCannotRun() throws {
        let tools = try FakeTools()
        defer { tools.remove() }
        let sbatch = try tools.script("sbatch-garbled",
                                      "/usr/bin/sbatch \"$@\" > /dev/null || exit $?\necho 'Submitted, id withheld'\n")
        let node = try node("slurm-sbatch", extra: """
            sbatch = "\(sbatch)"
            """)
        try node.start()
        let op = try Operator(node: node)
        let t = task(["/bin/sh", "-c", "sleep 1; echo found-by-name"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .completed, "\(e.detail)")
        let ids = try jobs(t)
        let state = try jobState(ids.first ?? "-")
        #expect(ids.count == 1 && state == "COMPLETED", "\(ids) \(state)")

        try FileManager.default.removeItem(atPath: sbatch)
        let gone = task(["/bin/sh", "-c", "true"])
        try op.submit(gone)
        try op.waitForFinal([Tasks.id(gone)], timeout: 60)
        let g = try #require(op.finalState(of: Tasks.id(gone)))
        #expect(g.state == .failed && g.detail.message?.contains("cannot run \(sbatch)") == true, "\(g.detail)")
        var st = stat()
        #expect(stat("\(node.dir)/var/sandboxes/\(Tasks.id(gone))/home", &st) == 0)
        #expect(st.st_uid == 0, "the sandbox was taken back (home is uid \(st.st_uid))")
        #expect(try jobs(gone).isEmpty)
    }

    /// A job that waits for resources (both CPUs of the node are taken) is reported with Slurm's reason, then runs.
    @Test func aPendingJobIsReportedWithSlurmsReason() throws {
        let node = try node("slurm-pending", extra: "max_cpus = 2")
        try node.start()
        let op = try Operator(node: node)
        let cpus = ProcessInfo.processInfo.processorCount
        let first = task(["/bin/sh", "-c", "sleep 6"], plan: ["resources": ["cpus": .int(Int64(cpus))]])
        let second = task(["/bin/sh", "-c", "true"], plan: ["resources": ["cpus": .int(Int64(cpus))]])
        try op.submit(first)
        try op.waitFor("the first task to run", timeout: 60) { events in
            events.contains { $0.taskID == Tasks.id(first) && $0.kind == .state && $0.state == .running }
        }
        let firstJob = try jobID(first)
        try eventually("job \(firstJob) to run", timeout: 30) { (try? jobState(firstJob)) == "RUNNING" }
        try op.submit(second)
        try op.waitForFinal([Tasks.id(first), Tasks.id(second)], timeout: 60)
        let notices = op.events(of: Tasks.id(second)).filter { $0.kind == .notice && $0.detail.data?["queued"] == true }
        #expect(notices.first?.detail.data?["reason"] == "Resources", "\(op.events(of: Tasks.id(second)).map(\.detail))")
        #expect(notices.first?.detail.message == "the work waits in the slurm queue: Resources")
        #expect(op.finalState(of: Tasks.id(second))?.state == .completed)
    }

    @Test func aJobOverItsMemoryEndsOutOfMemory() throws {
        let node = try node("slurm-oom")
        try node.start()
        let op = try Operator(node: node)
        let t = task(["/usr/bin/python3", "-c", "import time; x = bytearray(400 << 20); time.sleep(5)"],
                     plan: ["resources": ["memory_mb": 100]])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .failed && e.detail.failureClass == .outOfMemory, "\(e.detail)")
        #expect(try jobState(try jobID(t)) == "OUT_OF_MEMORY")
    }

    /// Injection attempts in parameter values reach the program through the job script as one literal argv item
    /// each.
    @Test func injectionCorpusReachesTheProgramAsOneItemEach() throws {
        let node = try node("slurm-inject")
        try node.start()
        let op = try Operator(node: node)
        let marker = "\(node.dir)/pwned"
        let corpus = [
            "plain", "two words", "semi; colon", "$(touch \(marker)1)", "`touch \(marker)2`", "a && touch \(marker)3",
            "| cat /etc/passwd", "'single' \"double\"", "it's", "'", "${PATH}", "*", "../../etc/passwd", "-rf",
            "%%sandbox%%", "\\n\\t", "ünïcödé ✓", "#x", "a=b", "$'\\x41'",
        ]
        var params: [String: JSONValue] = [:]
        for (i, v) in corpus.enumerated() { params["v\(i)"] = .string(v) }
        var t = task(["/usr/bin/python3", "-c",
                      "import json,os,sys; json.dump(sys.argv[1:], open(os.environ['FEM_OUTPUT_DIR']+'/argv.json','w'))"],
                     params: params,
                     args: corpus.indices.map { .object(["id": .string("v\($0)"), "type": "str", "position": .int(Int64($0))]) })
        if case .object(var plan)? = t["plan"] {
            plan["outputs"] = .array([.object(["pattern": "argv.json"])])
            t["plan"] = .object(plan)
        }
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .completed, "\(e.detail)")
        let argv = try JSONDecoder().decode([String].self, from: Data(contentsOf: URL(
            fileURLWithPath: try #require(kept(node, t, "argv.json")))))
        #expect(argv == corpus)
        for i in 1...3 { #expect(!FileManager.default.fileExists(atPath: "\(marker)\(i)")) }
    }

    /// Starts the node, submits `script` (its `end.txt` declared as an output), waits until Slurm runs the job
    /// (sbatch returned well before, so the daemon has journaled the job id), then SIGKILLs the daemon.
    func runThenKillTheDaemon(_ node: TestNode, _ script: String) throws
        -> (op: Operator, task: [String: JSONValue], job: String) {
        try node.start()
        let op = try Operator(node: node)
        let t = task(["/bin/sh", "-c", script], timeout: 120, plan: ["outputs": [["pattern": "end.txt"]]])
        try op.submit(t)
        try op.waitFor("the task to run", timeout: 60) { events in
            events.contains { $0.taskID == Tasks.id(t) && $0.kind == .state && $0.state == .running }
        }
        let id = try jobID(t)
        try eventually("job \(id) to run", timeout: 30) { (try? jobState(id)) == "RUNNING" }
        node.kill(SIGKILL)
        return (op, t, id)
    }

    /// The daemon is SIGKILLed while a 20 s job runs; restarted, it follows the same job (by the journaled id) to its
    /// end: the task completes, and Slurm has exactly one job for it.
    @Test func aRestartedDaemonFollowsTheSameJobToItsEnd() throws {
        let node = try node("slurm-restart")
        let (op, t, id) = try runThenKillTheDaemon(node, "sleep 20; echo survived > \"$FEM_OUTPUT_DIR/end.txt\"")
        #expect(try jobState(id) == "RUNNING", "the job outlives the daemon")
        try node.start()
        try op.waitForFinal([Tasks.id(t)], timeout: 90)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .completed, "\(e.detail)")
        #expect(try jobs(t) == [id], "submitted once")
        #expect(try jobState(id) == "COMPLETED")
        let end = try String(contentsOfFile: try #require(kept(node, t, "end.txt")), encoding: .utf8)
        #expect(end == "survived\n")
    }

    /// Restarted while Slurm does not answer (scontrol and squeue fail): the job is not declared lost and left running in
    /// the sandbox; it is followed, and once Slurm stayed silent for unreachable_seconds it is cancelled.
    @Test func aRestartWhileSlurmIsSilentFollowsTheJobThenCancelsIt() throws {
        let node = try node("slurm-restart-silent")
        try node.start()
        let op = try Operator(node: node)
        let t = task(["/bin/sh", "-c", "sleep 120"], timeout: 300)
        try op.submit(t)
        let id = try jobID(t)
        try eventually("job \(id) to run", timeout: 30) { (try? jobState(id)) == "RUNNING" }
        // The handle is journaled right after sbatch answers.
        try eventually("the job id in the journal", timeout: 30) {
            (try? Shell.run(["/usr/bin/grep", "-rqa", "\"\(id)\"", "\(node.dir)/var"]))?.status == 0
        }
        node.kill(SIGKILL)
        let tools = try FakeTools()
        defer { tools.remove() }
        let broken = try tools.script("scontrol-unreachable", FakeTools.unreachableScontrol)
        try node.editConfig { $0 + "\nscontrol = \"\(broken)\"\nsqueue = \"\(broken)\"\nunreachable_seconds = 3\n" }
        try node.start()
        try op.waitForFinal([Tasks.id(t)], timeout: 90)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .failed, "\(e.detail)")
        #expect(e.detail.message?.contains("Slurm did not answer about job \(id)") == true, "\(e.detail)")
        try eventually("job \(id) to be cancelled", timeout: 30) { (try? active(id)) == false }
        #expect(try jobState(id) == "CANCELLED")
        #expect(try jobs(t) == [id], "submitted once")
    }

    /// A job that ended while the daemon was down is collected from Slurm after the restart, not run again.
    @Test func aJobThatEndedWhileTheDaemonWasDownIsCollected() throws {
        let node = try node("slurm-collect")
        let (op, t, id) = try runThenKillTheDaemon(node, "sleep 3; echo collected > \"$FEM_OUTPUT_DIR/end.txt\"; exit 4")
        try eventually("job \(id) to end while the daemon is down", timeout: 30) { (try? jobState(id)) == "FAILED" }
        try node.start()
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .failed && e.detail.exitCode == 4 && e.detail.failureClass == .taskFailure, "\(e.detail)")
        #expect(try jobs(t) == [id], "submitted once")
        let end = try String(contentsOfFile: try #require(kept(node, t, "end.txt")), encoding: .utf8)
        #expect(end == "collected\n")
    }

    /// The open test registry's image, pinned by the digest scripts/dev-registry.sh pushed.
    static func pinnedImage() throws -> String {
        guard let d = TestEnv.env["FEM_TEST_REGISTRY_DIR"], FileManager.default.fileExists(atPath: "\(d)/digest") else {
            throw HarnessError("FEM_TEST_REGISTRY_DIR is not set or holds no digest: the registries of "
                               + "scripts/dev-registry.sh are needed (bash test.sh starts them)")
        }
        let digest = try String(contentsOfFile: "\(d)/digest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard digest.hasPrefix("sha256:") else { throw HarnessError("\(d)/digest holds no digest: \(digest)") }
        return "127.0.0.1:5000/fem/busybox@\(digest)"
    }

    /// A plan that names an image runs as a Slurm job executing rootless podman (pulled from the test registry by
    /// digest): as the non-root task user, with no network (only `lo`) and no capabilities, on a read-only root;
    /// parameters reach it as one argv item each; its output is staged out over WebDAV. An image off the allowlist,
    /// and the host network, are declined saying why.
    @Test func aContainerPlanRunsThroughPodmanOnSlurm() throws {
        let web = try TestEnv.webDir()
        let image = try Self.pinnedImage()
        let node = try node("slurm-podman", extra: """
            container_runtime = "podman"
            allowed_images = ["127.0.0.1:5000/fem/*"]
            insecure_registries = ["127.0.0.1:5000"]
            \(Self.davOutputs(web))
            """)
        try node.start()
        let op = try Operator(node: node)
        let prefix = "slurm-podman-\(UUID().uuidString.prefix(6).lowercased())"
        let corpus = ["two words", "$(touch \(node.dir)/pwned1)", "`touch \(node.dir)/pwned2`", "it's", "'", "${PATH}",
                      "*", "-rf", "a=b", "ünïcödé ✓"]
        var params: [String: JSONValue] = [:]
        for (i, v) in corpus.enumerated() { params["v\(i)"] = .string(v) }
        let script = "o=$FEM_OUTPUT_DIR; id -u > $o/who.txt; id -g >> $o/who.txt; ls /sys/class/net > $o/net.txt; "
            + "ip -o link | cut -d: -f2 | tr -d ' ' > $o/links.txt; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > $o/caps.txt; "
            + "if touch /rootfs-probe 2>/dev/null; then echo writable; else echo read-only; fi > $o/rootfs.txt; "
            + "touch /tmp/probe && echo tmp-ok >> $o/rootfs.txt; "
            + "if touch $FEM_INPUT_DIR/probe 2>/dev/null; then echo in-writable; else echo in-read-only; fi >> $o/rootfs.txt; "
            + "grep memory /proc/self/cgroup > $o/cgroup.txt; "
            + "for a in \"$@\"; do printf '%s\\n' \"$a\"; done > $o/args.txt; echo from-podman"
        var t = task(["/bin/sh", "-c", script, "sh"], plan: ["image": .string(image), "outputs": [["pattern": "*.txt"]]],
                     params: params,
                     args: corpus.indices.map { .object(["id": .string("v\($0)"), "type": "str", "position": .int(Int64($0))]) })
        t["stage_out"] = ["url": .string("https://localhost:18443/dav/\(prefix)"), "credentials": "upload-login"]
        let dest = "\(web)/dav/\(prefix)/exec-test/\(node.id)/\(Tasks.id(t))/out"
        let offList = task(["/bin/sh", "-c", "true"], plan: ["image": "127.0.0.1:5001/fem/private:1"])
        let hostNet = task(["/bin/sh", "-c", "true"], plan: ["image": .string(image), "network": "host"])
        for x in [t, offList, hostNet] { try op.submit(x) }
        try op.waitForFinal([t, offList, hostNet].map(Tasks.id), timeout: 120)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed, "\(final.detail) \(op.events(of: Tasks.id(t)).map(\.detail))")
        let ids = try jobs(t)
        #expect(ids.count == 1, "one job per task: \(ids)")
        #expect(try jobState(ids.first ?? "-") == "COMPLETED")
        func delivered(_ name: String) throws -> String {
            try String(contentsOfFile: "\(dest)/\(name)", encoding: .utf8)
        }
        let user = try #require(getpwnam("fem-task"))
        #expect(try delivered("who.txt") == "\(user.pointee.pw_uid)\n\(user.pointee.pw_gid)\n",
                "the container ran as the task user, not root")
        #expect(try delivered("net.txt") == "lo\n", "no network but loopback")
        #expect(try delivered("links.txt") == "lo\n", "ip link shows only lo")
        #expect(try delivered("caps.txt") == "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n")
        #expect(try delivered("rootfs.txt") == "read-only\ntmp-ok\nin-read-only\n")
        #expect(try delivered("args.txt") == corpus.map { $0 + "\n" }.joined())
        // Rootless podman makes no cgroup of its own here (v1): the container stays in the job's, where Slurm's
        // --mem holds it.
        let cgroup = try delivered("cgroup.txt")
        #expect(cgroup.contains("/job_\(ids.first ?? "-")/"), "\(cgroup)")
        for i in 1...2 { #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/pwned\(i)")) }
        let stdout = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/stdout.log", encoding: .utf8)
        #expect(stdout == "from-podman\n", "only the container's output: \(stdout)")
        // The environment file is the job user's and no one else's; the podman command line holds no values.
        var st = stat()
        #expect(stat("\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/container.env", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o400, "mode \(String(st.st_mode & 0o777, radix: 8))")
        let off = try #require(op.finalState(of: Tasks.id(offList)))
        #expect(off.state == .declined && off.detail.message == "image \"127.0.0.1:5001/fem/private:1\" is not on this "
                + "node's allowlist (launchers.slurm.allowed_images)", "\(off.detail)")
        let net = try #require(op.finalState(of: Tasks.id(hostNet)))
        #expect(net.state == .declined && net.detail.message?.contains("host network") == true, "\(net.detail)")
        #expect(try jobs(offList).isEmpty && jobs(hostNet).isEmpty, "nothing declined was submitted")
    }

    /// A container over the plan's memory is stopped by Slurm's limit (the container's cgroup is below the job's):
    /// killed by SIGKILL, and the job's stderr says the memory limit was reached. (On cgroup v1 the kernel counts the
    /// kill only in the container's own cgroup, so Slurm records FAILED 137, not OUT_OF_MEMORY.)
    @Test func aContainerOverItsMemoryIsKilledAtTheJobsLimit() throws {
        let node = try node("slurm-podman-oom", extra: """
            container_runtime = "podman"
            allowed_images = ["127.0.0.1:5000/fem/*"]
            insecure_registries = ["127.0.0.1:5000"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let t = task(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=600M", "count=1"],
                     plan: ["image": .string(try Self.pinnedImage()), "resources": ["memory_mb": 300]])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 90)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .failed && e.detail.exitCode == 137, "\(e.detail)")
        #expect(try jobState(try jobID(t)) == "FAILED")
        let stderr = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/stderr.log", encoding: .utf8)
        #expect(stderr.contains("the container was killed (SIGKILL) when the job reached its memory limit"), "\(stderr)")
    }

    /// The per-job podman folders in /tmp (storage and runroot) that exist now.
    func podmanFolders() -> Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []).filter { $0.hasPrefix("fem-podman.") })
    }

    /// A container task that outlives its timeout is stopped through Slurm (scancel): the program, not the
    /// container's init, gets the SIGTERM, the task fails `timeout`, the job is CANCELLED and gone from squeue, and
    /// the job's podman storage in /tmp is removed.
    @Test func aContainerTimeoutEndsTheJobAndLeavesNoStorage() throws {
        let node = try node("slurm-podman-stop", extra: """
            container_runtime = "podman"
            allowed_images = ["127.0.0.1:5000/fem/*"]
            insecure_registries = ["127.0.0.1:5000"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let before = podmanFolders()
        let t = task(["/bin/sleep", "120"], timeout: 8, plan: ["image": .string(try Self.pinnedImage())])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 90)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .failed && e.detail.failureClass == .timeout, "\(e.detail)")
        let id = try jobID(t)
        #expect(try !active(id), "job \(id) is gone from squeue")
        #expect(try jobState(id) == "CANCELLED")
        try eventually("the job's podman folder to be removed", timeout: 30) { podmanFolders().subtracting(before).isEmpty }
    }

    /// Where the node runs no containers on Slurm (container_runtime left at "none"), a plan naming an image is
    /// declined saying so, and nothing is submitted.
    @Test func aContainerPlanIsDeclinedWithoutAContainerRuntime() throws {
        let node = try node("slurm-nopodman")
        try node.start()
        let op = try Operator(node: node)
        let t = task(["/bin/sh", "-c", "true"], plan: ["image": .string(try Self.pinnedImage())])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .declined, "\(e.detail)")
        #expect(e.detail.message?.contains("this node runs no containers on Slurm (launchers.slurm.container_runtime "
                                           + "is \"none\"") == true, "\(e.detail)")
        #expect(try jobs(t).isEmpty)
    }

    /// A plan picks its partition among the node's allowed ones (`resources.partition`), and the job runs there;
    /// without one, the node's default; one not allowed is declined naming it and the allowed ones.
    @Test func aPlanPicksItsPartitionAmongTheAllowedOnes() throws {
        let node = try node("slurm-partition", extra: """
            allowed_partitions = ["debug", "short"]
            allowed_accounts = ["lab-a", "lab-b"]
            """)
        try node.start()
        let op = try Operator(node: node)
        // `short` allows 10 minutes (scripts/dev-slurm.sh): the job's --time (the timeout plus a minute) fits.
        let short = task(["/bin/sh", "-c", "true"], timeout: 60,
                         plan: ["resources": ["partition": "short", "account": "lab-b"]])
        let plain = task(["/bin/sh", "-c", "true"])
        let other = task(["/bin/sh", "-c", "true"], plan: ["resources": ["partition": "gpu"]])
        let spaced = task(["/bin/sh", "-c", "true"], plan: ["resources": ["partition": "short "]])
        let account = task(["/bin/sh", "-c", "true"], plan: ["resources": ["account": "lab-c"]])
        for t in [short, plain, other, spaced, account] { try op.submit(t) }
        try op.waitForFinal([short, plain, other, spaced, account].map(Tasks.id), timeout: 60)
        func field(_ name: String, _ t: [String: JSONValue]) throws -> String {
            let line = try slurm(["/usr/bin/scontrol", "show", "job", "-o", try jobID(t)])
            return line.split(separator: " ").first { $0.hasPrefix("\(name)=") }
                .map { String($0.dropFirst(name.count + 1)) } ?? line
        }
        func partition(_ t: [String: JSONValue]) throws -> String { try field("Partition", t) }
        #expect(op.finalState(of: Tasks.id(short))?.state == .completed, "\(String(describing: op.finalState(of: Tasks.id(short))?.detail))")
        #expect(try partition(short) == "short")
        #expect(op.finalState(of: Tasks.id(plain))?.state == .completed)
        #expect(try partition(plain) == "debug", "the first allowed one is the default")
        #expect(try field("Account", short) == "lab-b")
        #expect(try field("Account", plain) == "lab-a", "the first allowed account is the default")
        let a = try #require(op.finalState(of: Tasks.id(account)))
        #expect(a.state == .declined && a.detail.message == "resources.account: \"lab-c\" is not an account this "
                + "node's jobs may use (launchers.slurm.allowed_accounts: lab-a, lab-b)", "\(a.detail)")
        #expect(try jobs(account).isEmpty)
        let e = try #require(op.finalState(of: Tasks.id(other)))
        #expect(e.state == .declined && e.detail.message == "resources.partition: \"gpu\" is not a partition this "
                + "node's jobs may use (launchers.slurm.allowed_partitions: debug, short)", "\(e.detail)")
        #expect(try jobs(other).isEmpty)
        // Not a Slurm name at all: refused when the task is read.
        let s = try #require(op.finalState(of: Tasks.id(spaced)))
        #expect(s.state == .rejected, "\(s.detail)")
        #expect(s.detail.message?.contains("partition") == true, "\(s.detail)")
        #expect(try jobs(spaced).isEmpty)
    }

    /// Unsafe configurations are refused at start, naming the key.
    @Test func unsafeConfigurationsAreRefused() throws {
        let slurm = try Self.slurmDir()
        for (name, section, key) in [
            ("slurm-noshare", "shared_dir = \"/nonexistent-shared\"", "launchers.slurm.shared_dir"),
            ("slurm-root", "shared_dir = \"/\"\nuser = \"root\"", "launchers.slurm.user"),
            ("slurm-runtime", "shared_dir = \"%DIR%\"\ncontainer_runtime = \"docker\"",
             "launchers.slurm.container_runtime: \"docker\" is not one of none, podman"),
            ("slurm-podman-bin", "shared_dir = \"%DIR%\"\ncontainer_runtime = \"podman\"\npodman = \"/nonexistent/podman\"",
             "launchers.slurm.podman: /nonexistent/podman is not an executable file"),
            ("slurm-insecure", "shared_dir = \"%DIR%\"\ninsecure_registries = [\"evil\\\"]\\n[x]\"]",
             "launchers.slurm.insecure_registries:"),
        ] {
            let node = try TestNode(name)
            try node.editConfig { $0 + """

                [launchers]
                enabled = ["slurm"]
                [launchers.slurm]
                slurm_conf = "\(slurm)/slurm.conf"
                allowed_executables = ["/bin/sh"]
                \(section.replacingOccurrences(of: "%DIR%", with: node.dir))
                """ }
            let r = try Shell.run([try TestEnv.binary("fem-client"), "daemon", "--config", node.configPath],
                                  environment: ["PATH": "/usr/bin:/bin"], cwd: node.dir)
            #expect(r.status != 0, "\(name): \(r.output)")
            #expect(r.output.contains(key), "\(name) names \(key): \(r.output)")
        }
    }
}

/// A folder of stand-in Slurm client commands for one test (a Slurm that does not answer, a wrapper that counts),
/// removed when the test ends.
struct FakeTools {
    let dir = FileManager.default.temporaryDirectory.path + "/fem-slurm-tools-\(UUID().uuidString.prefix(8))"

    /// scontrol as it answers while slurmctld is down.
    static let unreachableScontrol = "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n"

    init() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    /// Writes the shell script `name` (`body` after the #! line), executable; returns its path.
    func script(_ name: String, _ body: String) throws -> String {
        let path = "\(dir)/\(name)"
        try Data(("#!/bin/sh\n" + body).utf8).write(to: URL(fileURLWithPath: path))
        try Posix.chmod(path, mode: 0o755)
        return path
    }

    func remove() { try? FileManager.default.removeItem(atPath: dir) }
}
