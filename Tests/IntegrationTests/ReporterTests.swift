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
}
