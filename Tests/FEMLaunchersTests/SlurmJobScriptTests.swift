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
        let args = SlurmJobScript.sbatchArguments(taskID: "t", script: "/s/job.sh", workingDirectory: "/s/src",
                                                  stdout: "/s/logs/stdout.log", stderr: "/s/logs/stderr.log",
                                                  request: r, partition: "debug", account: "", qos: "normal",
                                                  user: (999, 995))
        #expect(args == ["--parsable", "--job-name=fem-t", "--comment=fem-task:t", "--chdir=/s/src",
                         "--output=/s/logs/stdout.log", "--error=/s/logs/stderr.log", "--export=NONE", "--no-requeue",
                         "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--mem=2048M", "--gres=gpu:1", "--time=3",
                         "--partition=debug", "--qos=normal", "--uid=999", "--gid=995", "/s/job.sh"])
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
}
