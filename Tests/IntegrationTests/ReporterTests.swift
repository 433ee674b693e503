import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The reporter protocol through real daemons: JSON lines on a tool's stdout become progress events, log lines,
/// a failure, a completion or a hook, whatever the launcher (process here; docker and flower in their suites).
@Suite(.serialized)
struct ReporterTests {
    func node(_ name: String, hookFile: String? = nil) throws -> TestNode {
        var extra = TestNode.hostProcesses
        if let hookFile {
            // The node passes `--` before the tool's text: sh -c gets it as $0 and the text as $1.
            extra += """

                [hooks]
                notify = ["/bin/sh", "-c", "echo \\"triggered with $1 after $0\\" >> \(hookFile)"]
                """
        }
        return try TestNode(name, extra: extra)
    }

    func run(_ op: Operator, _ t: [String: JSONValue], timeout: Double = 30) throws -> TaskEvent {
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: timeout)
        return try #require(op.finalState(of: Tasks.id(t)))
    }

    @Test func modelLinesBecomeProgressAndOtherLinesStayLogLines() throws {
        let node = try node("rep-model")
        try node.start()
        let op = try Operator(node: node)
        let script = """
            echo '{"type": "model", "round": 1, "metrics": {"accuracy": 0.5, "loss": 0.9}}'
            echo '{"type": "model", "round": "2", "acc": "0.75"}'
            echo '{"type": "print", "message": "halfway there"}'
            echo '{"type": "info", "info": "warming up"}'
            echo '{"type": "model", "round": 3'
            echo 'not json at all'
            echo '["type", "model"]'
            echo '{"type": "unknown-kind"}'
            """
        let t = Tasks.task(["/bin/sh", "-c", script])
        let e = try run(op, t)
        #expect(e.state == .completed && e.detail.exitCode == 0, "\(e.detail)")
        let progress = op.events(of: Tasks.id(t)).filter { $0.kind == .progress && $0.detail.data?["round"] != nil }
        #expect(progress.map { $0.detail.data?["round"] } == [1, 2])
        #expect(progress.first?.detail.data?["metrics"]?["accuracy"] == JSONValue.double(0.5))
        #expect(progress.first?.detail.data?["metrics"]?["loss"] == JSONValue.double(0.9))
        #expect(progress.last?.detail.data?["metrics"]?["acc"] == JSONValue.double(0.75),
                "FLMNGR's string metrics are read as numbers")
        #expect(node.log.contains("tool: halfway there"))
        #expect(node.log.contains("tool info: warming up"))
        // Malformed and unknown lines are plain log lines: in stdout.log, no event, no crash.
        let stdout = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/stdout.log", encoding: .utf8)
        #expect(stdout.contains("not json at all") && stdout.contains("{\"type\": \"model\", \"round\": 3"))
    }

    @Test func anErrorReportFailsTheTaskWithItsMessageAndStopsTheGroup() throws {
        let node = try node("rep-error")
        try node.start()
        let op = try Operator(node: node)
        let marker = "rep-error-\(UUID().uuidString.prefix(8))"
        let t = Tasks.task(["/bin/sh", "-c", """
            sleep 60 & echo '{"type": "error", "exception": "ValueError: cohort too small (n=3)"}'; sleep 60 # \(marker)
            """])
        let started = Date()
        let e = try run(op, t)
        #expect(e.state == .failed && e.detail.failureClass == .taskFailure, "\(e.detail)")
        #expect(e.detail.message == "ValueError: cohort too small (n=3)")
        #expect(Date().timeIntervalSince(started) < 20, "the error stopped the task, not its own exit")
        try eventually("the task's processes to be gone") { processes(withMarker: marker).isEmpty }
    }

    @Test func anErrorReportedJustBeforeExitingIsTheFailureMessage() throws {
        let node = try node("rep-exit")
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/sh", "-c", "echo '{\"type\": \"error\", \"exception\": \"disk quota\"}'; exit 2"])
        let e = try run(op, t)
        #expect(e.state == .failed && e.detail.message == "disk quota" && e.detail.exitCode == 2, "\(e.detail)")
    }

    @Test func finishedCompletesTheTaskAndStopsWhatIsStillRunning() throws {
        let node = try node("rep-finished")
        try node.start()
        let op = try Operator(node: node)
        let marker = "rep-finished-\(UUID().uuidString.prefix(8))"
        let t = Tasks.task(["/bin/sh", "-c", "echo '{\"type\": \"info\", \"info\": \"Finished\"}'; sleep 60 # \(marker)"])
        let e = try run(op, t)
        #expect(e.state == .completed, "\(e.detail)")
        #expect(e.detail.message?.contains("reported Finished") == true)
        try eventually("the task's processes to be gone") { processes(withMarker: marker).isEmpty }
    }

    @Test func triggersRunOnlyTheHooksTheNodeDefines() throws {
        let hookFile = try TestEnv.scratch("hook") + "/hook.out"
        let node = try node("rep-trigger", hookFile: hookFile)
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/sh", "-c", """
            echo '{"type": "trigger", "trigger_name": "notify", "trigger_arguments": "round 3 done; rm -rf /"}'
            echo '{"type": "trigger", "trigger_name": "wipe-disk", "trigger_arguments": "/"}'
            """])
        let e = try run(op, t)
        #expect(e.state == .completed)
        try eventually("the hook to run") { FileManager.default.fileExists(atPath: hookFile) }
        #expect(try String(contentsOfFile: hookFile, encoding: .utf8) == "triggered with round 3 done; rm -rf / after --\n",
                "the arguments reach the hook as one argument, never through a shell")
        let notices = op.events(of: Tasks.id(t)).filter { $0.kind == .notice }.compactMap(\.detail.message)
        #expect(notices.contains { $0.hasPrefix("trigger \"notify\": ran hook /bin/sh") }, "\(notices)")
        #expect(notices.contains("trigger \"wipe-disk\" ignored: this node defines no hook of that name"), "\(notices)")
    }

    // MARK: - The reporter channel under control (issue 12, item 4)

    func progress(_ op: Operator, _ t: [String: JSONValue]) -> [TaskEvent] {
        op.events(of: Tasks.id(t)).filter { $0.kind == .progress && $0.detail.data?["round"] != nil }
    }

    @Test func metricsAreScreenedErrorTextIsCutAndLongLinesAreOnlyLogLines() throws {
        let node = try node("rep-screen")
        try node.start()
        let op = try Operator(node: node)
        let long = String(repeating: "x", count: 100)
        let big = String(repeating: "y", count: 5000)
        let esc = "\\u001b"
        let script = """
            echo '{"type": "model", "round": 1, "metrics": {"ok": 1, "s": "short", "long": "\(long)", "bad name!": 2, \
            "obj": {"a": 1}, "flag": true}}'
            echo '{"type": "model", "round": 2, "metrics": {"ok": 2, "blob": "\(big)"}}'
            printf '%s\\n' '{"type": "trigger", "trigger_name": "no\(esc)[2Jpe", "trigger_arguments": "x"}'
            e=$(head -c 3000 /dev/zero | tr '\\0' 'e')
            printf '%s\\n' '{"type": "error", "exception": "bad\(esc)[31m row '"$e"'"}'
            """
        let t = Tasks.task(["/bin/sh", "-c", script])
        let e = try run(op, t)
        #expect(e.state == .failed && e.detail.failureClass == .taskFailure, "\(e.detail)")
        let message = try #require(e.detail.message)
        #expect(message.hasPrefix("bad[31m row eee"), "control characters are removed: \(message.prefix(40))")
        #expect(message.utf8.count <= 1024 + 3 && message.hasSuffix("…"), "cut to 1 KiB: \(message.utf8.count) bytes")
        #expect(!message.unicodeScalars.contains { $0.value < 0x20 })
        let p = progress(op, t)
        #expect(p.map { $0.detail.data?["round"] } == [1], "the 5 KB line is no report: \(p.map(\.detail))")
        #expect(p.first?.detail.data?["metrics"] == ["ok": 1, "s": "short"], "\(String(describing: p.first?.detail.data))")
        #expect(p.first?.detail.data?["dropped_metrics"] == 4)
        #expect(node.log.contains("metrics dropped from round 1") && node.log.contains("long (a string over 64"),
                "\(node.log)")
        #expect(node.log.contains("is over the reporter's 4096 bytes: a log line only"))
        let notices = op.events(of: Tasks.id(t)).filter { $0.kind == .notice }.compactMap(\.detail.message)
        #expect(notices.contains { $0.contains("its name is not a short plain name") }, "\(notices)")
        #expect(!notices.joined().unicodeScalars.contains { $0.value == 0x1B })
    }

    @Test func pastTheEventCapsOneNoticeSaysSoAndTheRestGoOnlyToTheLog() throws {
        let node = try TestNode("rep-caps", extra: """
            \(TestNode.hostProcesses)
            [reporter]
            max_events_per_task = 5
            max_event_bytes_per_task = 1024
            """)
        try node.start()
        let op = try Operator(node: node)
        let small = Tasks.task(["/bin/sh", "-c", """
            for i in $(seq 1 20); do echo "{\\"type\\": \\"model\\", \\"round\\": $i, \\"metrics\\": {\\"loss\\": $i}}"; done
            """])
        let pad = String(repeating: "z", count: 60)
        let large = Tasks.task(["/bin/sh", "-c", """
            for i in $(seq 1 20); do echo "{\\"type\\": \\"model\\", \\"round\\": $i, \\"metrics\\": {\\"a\\": \\"\(pad)\\", \
            \\"b\\": \\"\(pad)\\", \\"c\\": \\"\(pad)\\", \\"n\\": $i}}"; done
            """])
        for t in [small, large] {
            let e = try run(op, t)
            #expect(e.state == .completed, "\(e.detail)")
        }
        #expect(progress(op, small).count == 5, "the count cap: \(progress(op, small).count) progress events")
        let largeCount = progress(op, large).count
        #expect(largeCount >= 1 && largeCount < 5, "the byte cap stops it first: \(largeCount) progress events")
        for t in [small, large] {
            let caps = op.events(of: Tasks.id(t)).filter { $0.detail.data?["cap_reached"] == true }
            #expect(caps.count == 1, "one notice per task: \(caps.map(\.detail))")
            #expect(caps.first?.detail.message?.contains("reached the node's cap on tool events (5 events, 1024 bytes)")
                    == true)
            // Nothing tool-originated after the notice.
            let after = op.events(of: Tasks.id(t)).drop { $0.detail.data?["cap_reached"] != true }.dropFirst()
            #expect(after.allSatisfy { $0.kind == .state }, "\(after.map(\.detail))")
        }
        #expect(node.log.contains("over the event cap, not sent: round 20: loss 20"), "\(node.log)")
    }

    @Test func aContainerStreamingItsDatasetAsProgressGetsOnlyNumbersOutWhileTheAirlockIsOn() throws {
        let engine = DockerEngine()
        try #require((try? engine.ping()) ?? false,
                     "dockerd is not answering on /var/run/docker.sock: run the tests with `bash test.sh`")
        let data = try TestEnv.scratch("cohort")
        let rows = (1...12).map { "patient-7f3a\($0),diabetes,19\(50 + $0)" }
        try (rows.joined(separator: "\n") + "\n").write(toFile: "\(data)/cohort.csv", atomically: true, encoding: .utf8)
        chmod(data, 0o755)
        chmod("\(data)/cohort.csv", 0o644)
        let outbox = try TestEnv.scratch("outbox")
        let hookFile = try TestEnv.scratch("hook") + "/hook.out"
        let node = try TestNode("rep-airlock", extra: """
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            allowed_images = ["fem-test/*"]
            [outputs]
            allowed_urls = ["file://\(outbox)/"]
            require_approval = true
            [hooks]
            notify = ["/bin/sh", "-c", "echo \\"$0\\" >> \(hookFile)"]
            [datasets.cohort]
            path = "\(data)"
            """)
        try node.start()
        let op = try Operator(node: node)
        let script = """
            f=/fem/data/cohort/cohort.csv; i=0
            while read l; do i=$((i+1)); \
            echo "{\\"type\\":\\"model\\",\\"round\\":$i,\\"metrics\\":{\\"row\\":\\"$l\\",\\"n\\":$i},\\"leak\\":\\"$l\\"}"; done < $f
            echo "{\\"type\\":\\"print\\",\\"message\\":\\"$(head -1 $f)\\"}"
            echo "{\\"type\\":\\"trigger\\",\\"trigger_name\\":\\"notify\\",\\"trigger_arguments\\":\\"$(sed -n 2p $f)\\"}"
            echo "{\\"type\\":\\"trigger\\",\\"trigger_name\\":\\"$(sed -n 3p $f | cut -c1-12)\\",\\"trigger_arguments\\":\\"x\\"}"
            echo "{\\"type\\":\\"error\\",\\"exception\\":\\"$(tr '\\n' ';' < $f)\\"}"
            """
        var t: [String: JSONValue] = [
            "schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-airlock",
            "plan": ["schema_version": 1, "id": "docker-test", "version": "1", "launcher": "docker",
                     "image": "fem-test/busybox:2", "pull_policy": "if-not-present", "inputs": ["cohort"],
                     "command": ["base": ["/bin/sh", "-c", .string(script)]], "outputs": [],
                     "resources": ["cpus": .double(0.5)]],
        ]
        t["stage_out"] = ["url": .string("file://\(outbox)/")]
        try op.submit(t)
        try op.waitFor("the outputs to wait for approval", timeout: 90) { evs in
            evs.contains { $0.taskID == Tasks.id(t) && ($0.state == .awaitingApproval || $0.state.isTerminal) }
        }
        let events = op.events(of: Tasks.id(t))
        try #require(events.contains { $0.state == .awaitingApproval }, "\(events.map(\.detail))")
        for e in events {
            let json = String(decoding: try JSONEncoder.fem.encode(e), as: UTF8.self)
            #expect(!json.contains("patient-7f3a") && !json.contains("diabetes"), "an event carries data: \(json)")
        }
        let p = progress(op, t)
        #expect(p.count == rows.count, "\(p.map(\.detail))")
        for (i, e) in p.enumerated() {
            #expect(e.detail.data?["metrics"] == .object(["n": .int(Int64(i + 1))]), "\(String(describing: e.detail.data))")
        }
        let failed = try #require(events.last { $0.state == .stagingOut }?.detail.message)
        #expect(failed.contains("its text is held for approval"), "\(failed)")
        try eventually("the hook to run") { FileManager.default.fileExists(atPath: hookFile) }
        let notices = events.filter { $0.kind == .notice }.compactMap(\.detail.message)
        #expect(notices.contains { $0.hasPrefix("trigger \"notify\": ran hook") }, "\(notices)")
        #expect(notices.contains { $0.contains("naming no hook of this node was ignored; its name is held") },
                "\(notices)")
        // The steward sees what was held.
        let show = try node.run(["outputs", "show", Tasks.id(t)])
        #expect(show.status == 0, "\(show.output)")
        #expect(show.output.contains("error: patient-7f3a1,diabetes,1951;") && show.output.contains("print: patient-7f3a1"),
                "\(show.output)")
        let no = try node.run(["outputs", "reject", Tasks.id(t), "--reason", "row-level data"])
        #expect(no.status == 0, "\(no.output)")
        try op.waitForFinal([Tasks.id(t)])
        #expect(op.finalState(of: Tasks.id(t))?.state == .failed)
    }
}
