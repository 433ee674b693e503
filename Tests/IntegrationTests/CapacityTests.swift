import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Admission by resources through a real daemon and broker: `[node.capacity]`, the `queued` state, declines of tasks
/// bigger than the node, timings on terminal events, `fem-client tasks` and `fem-client stats`.
@Suite(.serialized)
struct CapacityTests {
    static let twoCPUs = TestNode.hostProcesses + "\n[node.capacity]\ncpus = 2\nmemory_mb = 4000\n"

    /// A process task whose plan asks for `cpus` CPUs.
    func task(_ script: String, cpus: Double, id: String = UUID().uuidString.lowercased()) throws
        -> [String: JSONValue] {
        var t = Tasks.task(["/bin/sh", "-c", script], id: id)
        var plan = try #require(t["plan"]?.objectValue)
        plan["resources"] = .object(["cpus": .double(cpus), "memory_mb": .int(64)])
        t["plan"] = .object(plan)
        return t
    }

    func states(_ op: Operator, _ id: String) -> [TaskState] {
        op.events(of: id).filter { $0.kind == .state }.map(\.state)
    }

    @Test func aTaskWaitsInQueuedForCPUsAndATaskBiggerThanTheNodeIsDeclined() throws {
        let node = try TestNode("capacity", extra: Self.twoCPUs)
        try node.start()
        defer { node.stop() }
        let op = try Operator(node: node)
        let marker = "fem-capacity-\(UUID().uuidString.prefix(8))"
        let first = try task("sleep 60; : \(marker)", cpus: 2)
        let second = try task("echo second", cpus: 2)
        let huge = try task("echo never", cpus: 4)
        let a = Tasks.id(first), b = Tasks.id(second), c = Tasks.id(huge)
        try op.submit(first)
        try op.waitFor("the first task to run") { evs in evs.contains { $0.taskID == a && $0.state == .running } }
        try op.submit(second)
        try op.submit(huge)
        let queued = try #require(try op.waitFor("the second task to be queued") { evs in
            evs.contains { $0.taskID == b && $0.state == .queued }
        }.first { $0.taskID == b && $0.state == .queued })
        #expect(queued.detail.message == "waiting for 2 CPUs (0 free of 2)", "\(queued.detail)")
        try op.waitForFinal([c])
        let declined = try #require(op.finalState(of: c))
        #expect(declined.state == .declined)
        #expect(declined.detail.message?.contains("resources.cpus: 4 requested, the node has 2") == true,
                "\(declined.detail.message ?? "")")
        #expect(!states(op, c).contains(.stagingIn), "a task that can never fit is not started")

        // While b waits: the heartbeat shows the capacity, nothing free, one running and one queued.
        try op.waitFor("a heartbeat with the node's capacity in use") { _ in
            op.heartbeats.contains { $0.capacity?.cpus == 2 && $0.free?.cpus == 0 && $0.running == 1 && $0.queued == 1 }
        }
        let beat = try #require(op.heartbeats.last { $0.capacity != nil })
        #expect(beat.capacity?.memoryMB == 4000 && beat.capacity?.gpus == 0)
        #expect(beat.free?.memoryMB == 4000 - 64)
        // `fem-client tasks` lists b as queued, with its tool.
        let listing = try node.run(["tasks"])
        #expect(listing.status == 0, "\(listing.output)")
        let bLine = listing.output.split(separator: "\n").first { $0.hasPrefix(b) } ?? ""
        #expect(bLine.contains("queued") && bLine.contains("test-tool@1.0"), "\(listing.output)")
        #expect(!states(op, b).contains(.stagingIn), "b did not start while a held the CPUs")

        // a ends (cancelled): its CPUs come back and b runs.
        try op.cancel(a)
        try op.waitForFinal([a, b])
        #expect(op.finalState(of: a)?.state == .cancelled)
        #expect(states(op, b) == [.received, .queued, .stagingIn, .running, .stagingOut, .completed])
        let aEnd = try #require(op.finalState(of: a)).time
        let bStart = try #require(op.events(of: b).first { $0.state == .stagingIn }).time
        #expect(bStart >= aEnd, "b started after a ended")
        try eventually("the cancelled process to be gone") { processes(withMarker: marker).isEmpty }

        // Every terminal event carries its step timings.
        for id in [a, b, c] {
            let end = try #require(op.finalState(of: id))
            let timings = try #require(end.detail.data?["timings"]?.objectValue, "\(id): \(end.detail)")
            for key in ["queued_ms", "stage_in_ms", "run_ms", "stage_out_ms"] {
                #expect(timings[key]?.intValue != nil, "\(id): \(key) in \(timings)")
            }
        }
        let bTimings = try #require(op.finalState(of: b)?.detail.data?["timings"])
        #expect((bTimings["queued_ms"]?.intValue ?? 0) > 0, "b waited: \(bTimings)")
        #expect((op.finalState(of: a)?.detail.data?["timings"]?["run_ms"]?.intValue ?? 0) > 0)

        // `fem-client tasks` shows the timings; `--json` has them as numbers.
        let after = try node.run(["tasks"])
        let bDone = after.output.split(separator: "\n").first { $0.hasPrefix(b) } ?? ""
        #expect(bDone.contains("completed") && bDone.contains("q=") && bDone.contains("run="), "\(after.output)")
        let json = try node.run(["tasks", "--json"])
        let rows = try JSONValue.parse(Data(json.output.utf8))
        guard case .array(let items) = rows else { Issue.record("tasks --json: \(json.output)"); return }
        let bRow = items.first { $0["task_id"]?.stringValue == b }
        #expect(bRow?["timings"]?["run_ms"]?.intValue != nil && bRow?["tool"] == "test-tool@1.0", "\(json.output)")

        // `fem-client stats`: per tool, counts by outcome and percentiles of each step.
        let stats = try node.run(["stats", "--since", "1h"])
        #expect(stats.status == 0, "\(stats.output)")
        let line = stats.output.split(separator: "\n").first { $0.hasPrefix("test-tool@1.0") }.map(String.init) ?? ""
        let columns = line.split(separator: " ", omittingEmptySubsequences: true)
        #expect(columns.count == 10 && columns[1] == "3" && columns[2] == "1" && columns[4] == "1" && columns[5] == "1",
                "3 tasks: 1 completed, 0 failed, 1 cancelled, 1 declined:\n\(stats.output)")
        #expect(columns.count == 10 && columns[6].contains("/") && columns[8].contains("/"), "\(stats.output)")
        let statsJSON = try JSONValue.parse(Data(try node.run(["stats", "--json"]).output.utf8))
        let tool = { () -> JSONValue? in
            if case .array(let list)? = statsJSON["tools"] { return list.first }
            return nil
        }()
        #expect(tool?["tool"] == "test-tool@1.0" && tool?["tasks"] == 3, "\(statsJSON)")
        #expect(tool?["outcomes"]?["declined"] == 1 && tool?["outcomes"]?["cancelled"] == 1)
        let run = tool?["steps"]?["run_ms"]
        #expect(run?["p50"]?.intValue != nil && run?["p95"]?.intValue != nil && run?["count"] == 2,
                "the declined task never ran, so it is not a 0 in the run times: \(statsJSON)")
        let bad = try node.run(["stats", "--since", "yesterday-ish"])
        #expect(bad.status != 0 && bad.output.contains("--since: \"yesterday-ish\" is neither a duration"),
                "\(bad.output)")
    }

    /// Tasks start by priority (the task's, else its plan's), then arrival; after a restart queued tasks are still
    /// queued, in order, and run.
    @Test func queuedTasksStartByPriorityAndSurviveARestart() throws {
        let node = try TestNode("capprio", extra: Self.twoCPUs)
        try node.start()
        let op = try Operator(node: node)
        let marker = "fem-capprio-\(UUID().uuidString.prefix(8))"
        let blocker = try task("sleep 60; : \(marker)", cpus: 2)
        try op.submit(blocker)
        try op.waitFor("the blocker to run") { evs in
            evs.contains { $0.taskID == Tasks.id(blocker) && $0.state == .running }
        }
        let order = "\(node.dir)/order.txt"
        FileManager.default.createFile(atPath: order, contents: nil)
        try giveToTaskUser(order)
        var low = try task("echo low >> \(order)", cpus: 2)
        var high = try task("echo high >> \(order)", cpus: 2)
        high["priority"] = 5
        low["priority"] = -1
        let plain = try task("echo plain >> \(order)", cpus: 2)
        for t in [low, plain, high] { try op.submit(t) }
        try op.waitFor("three tasks queued") { evs in
            Set(evs.filter { $0.state == .queued }.compactMap(\.taskID)).count == 3
        }
        // A restart: the blocker's process is left behind and re-attached; the queued tasks keep their state.
        node.kill(SIGKILL)
        try node.start()
        try op.cancel(Tasks.id(blocker))
        try op.waitForFinal([Tasks.id(blocker), Tasks.id(low), Tasks.id(plain), Tasks.id(high)], timeout: 60)
        defer { node.stop() }
        for t in [low, plain, high] {
            #expect(op.finalState(of: Tasks.id(t))?.state == .completed)
            #expect(states(op, Tasks.id(t)).filter { $0 == .queued }.count == 1, "queued is evented once")
        }
        let ran = try String(contentsOfFile: order, encoding: .utf8)
        #expect(ran == "high\nplain\nlow\n", "\(ran)")
        try eventually("the blocker's process to be gone") { processes(withMarker: marker).isEmpty }
    }

    @Test func aBadCapacityIsRefusedNamingTheKey() throws {
        let node = try TestNode("capbad", extra: TestNode.hostProcesses + "\n[node.capacity]\ncpus = 0\ngpu = 1\n")
        let out = try node.run(["tasks"])
        #expect(out.status != 0)
        #expect(out.output.contains("node.capacity.cpus: 0 is out of range"), "\(out.output)")
        #expect(out.output.contains("node.capacity.gpu"), "the unknown key is named: \(out.output)")
    }
}
