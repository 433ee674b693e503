import FEMCore
import FEMJournal
import Foundation
import Testing

struct SQLiteJournalTests {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-journal-\(UUID().uuidString)").path

    init() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    func spec(_ id: String) throws -> (TaskSpec, JSONValue) {
        let doc: JSONValue = .object([
            "schema_version": .int(1), "task_id": .string(id), "execution_id": .string("e"),
            "plan": .object(["schema_version": .int(1), "id": .string("t"), "version": .string("1"),
                             "launcher": .string("process"), "command": .object(["base": .array([.string("/bin/true")])])]),
        ])
        return (try DocumentReader.readTask(doc, requireTaskID: true), doc)
    }

    @Test func admitOnceThenDuplicate() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let (s, d) = try spec("a")
        #expect(try j.admit(s, document: d, at: Date()) == .admitted)
        guard case .duplicate(let existing) = try j.admit(s, document: d, at: Date()) else {
            Issue.record("second admit should be a duplicate")
            return
        }
        #expect(existing.state == .received)
    }

    /// Group commit: a burst is admitted in one transaction with one result per item, in order; a task already
    /// journaled, or twice in the same burst, is a duplicate; each admitted task has its `received` event.
    @Test func admitAllInOneTransaction() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let (a, da) = try spec("a")
        #expect(try j.admit(a, document: da, at: Date()) == .admitted)
        let items = try ["a", "b", "c", "b"].map { id -> (spec: TaskSpec, document: JSONValue) in
            let (s, d) = try spec(id)
            return (s, d)
        }
        let results = j.admit(all: items, at: Date())
        let kinds = try results.map { r -> String in
            switch try r.get() {
            case .admitted: return "admitted"
            case .duplicate: return "duplicate"
            }
        }
        #expect(kinds == ["duplicate", "admitted", "admitted", "duplicate"])
        for id in ["b", "c"] {
            #expect(try j.task(id)?.state == .received)
            #expect(try j.history(id).map(\.state) == [.received])
        }
        #expect(try j.outboxCount() == 3)
    }

    /// The heartbeat's counts and the sandbox sweep's status come from the columns, agreeing with the full records.
    @Test func countsAndStatusAgreeWithTheRecords() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        for id in ["a", "b", "c"] {
            let (s, d) = try spec(id)
            _ = try j.admit(s, document: d, at: Date())
        }
        let changed = Date()
        _ = try j.transition("b", to: .stagingIn, detail: .none, at: changed)
        #expect(try j.count(states: [.received]) == 2 && j.count(states: [.stagingIn, .running]) == 1)
        #expect(try j.counts() == (running: 1, queued: 2))
        let status = try #require(try j.status("b"))
        let record = try #require(try j.task("b"))
        #expect(status.state == .stagingIn && status.state == record.state && status.updatedAt == record.updatedAt)
        #expect(try j.status("nope") == nil)
    }

    @Test func transitionsAreCheckedAndNumberedAndSurviveReopening() throws {
        let path = "\(dir)/j.sqlite"
        do {
            let j = try SQLiteJournal(path: path, nodeID: "n1")
            let (s, d) = try spec("a")
            _ = try j.admit(s, document: d, at: Date())
            try j.transition("a", to: .stagingIn, detail: .none, at: Date())
            #expect(throws: JournalError.self) { try j.transition("a", to: .completed, detail: .none, at: Date()) }
            try j.transition("a", to: .running, detail: .none, at: Date())
            try j.setHandle("a", LaunchHandle(launcher: "process", state: PIDState(pid: 42)))
            try j.markStep("a", "upload:out/x", info: "abc")
        }
        let j = try SQLiteJournal(path: path, nodeID: "n1")
        let rec = try #require(try j.task("a"))
        #expect(rec.state == .running)
        #expect(try rec.handle?.state(as: PIDState.self) == PIDState(pid: 42))
        #expect(try j.history("a").map(\.seq) == [1, 2, 3])
        #expect(try j.history("a").map(\.state) == [.received, .stagingIn, .running])
        #expect(try j.completedStep("upload:out/x", of: "a") == "abc")
        #expect(try j.completedStep("upload:out/y", of: "a") == nil)
    }

    @Test func outboxKeepsEventsUntilConfirmed() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let (s, d) = try spec("a")
        _ = try j.admit(s, document: d, at: Date())
        try j.transition("a", to: .stagingIn, detail: .none, at: Date())
        try j.recordRejection(taskID: nil, executionID: nil, message: "not JSON", at: Date())
        let pending = try j.pendingEvents(limit: 10)
        #expect(pending.map(\.routingKey) == ["node.n1.task.received", "node.n1.task.staging_in",
                                               "node.n1.task.rejected"])
        try j.confirmEvents([pending[0].id])
        #expect(try j.pendingEvents(limit: 10).map(\.id) == Array(pending.dropFirst().map(\.id)))
        let event = try JSONDecoder.fem.decode(TaskEvent.self, from: pending[2].body)
        #expect(event.taskID == nil && event.detail.message == "not JSON")
    }

    @Test func rejectionOfABadCopyNeverOverwritesAKnownTask() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let (s, d) = try spec("a")
        _ = try j.admit(s, document: d, at: Date())
        try j.recordRejection(taskID: "a", executionID: "e", message: "bad copy", at: Date())
        #expect(try j.task("a")?.state == .received)
        // The live task is not said to be rejected: a notice in its own state, in its own sequence.
        let last = try #require(try j.history("a").last)
        #expect(last.kind == .notice && last.state == .received && last.seq == 2)
        #expect(last.detail.message?.contains("was rejected (the task goes on): bad copy") == true)
    }

    /// A rejected message does not use up its id: nothing is journaled for it but the event, and a later valid
    /// task with that id is admitted, its events continuing the id's sequence.
    @Test func aRejectionLeavesItsIDFree() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        try j.recordRejection(taskID: "a", executionID: "e", message: "execution_id: is required", at: Date())
        #expect(try j.task("a") == nil)
        let (s, d) = try spec("a")
        #expect(try j.admit(s, document: d, at: Date()) == .admitted)
        #expect(try j.history("a").map(\.seq) == [1, 2])
        #expect(try j.history("a").map(\.state) == [.rejected, .received])
    }

    /// A duplicate's event state and its data.state are read in one transaction: they agree.
    @Test func aDuplicateSaysTheJournaledState() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let (s, d) = try spec("a")
        _ = try j.admit(s, document: d, at: Date())
        try j.transition("a", to: .stagingIn, detail: .none, at: Date())
        let e = try j.note("a", kind: .duplicate, detail: EventDetail(message: "already received (now {state})"), at: Date())
        #expect(e.state == .stagingIn && e.detail.data?["state"] == "staging_in")
        #expect(e.detail.message == "already received (now staging_in)")
    }

    /// A row that no longer reads is an error naming the task, never a silent `failed` or "now".
    @Test func aDamagedRowIsAnErrorNotAGuess() throws {
        let path = "\(dir)/j.sqlite"
        let j = try SQLiteJournal(path: path, nodeID: "n1")
        let (s, d) = try spec("a")
        _ = try j.admit(s, document: d, at: Date())
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        p.arguments = [path, "UPDATE tasks SET state = 'exploded' WHERE task_id = 'a'"]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "sqlite3 (apt-get install sqlite3) changed the row")
        #expect(throws: JournalError.self) { _ = try j.task("a") }
    }

    @Test func journalFileIsPrivate() throws {
        let path = "\(dir)/j.sqlite"
        _ = try SQLiteJournal(path: path, nodeID: "n1")
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test func theStageOutTokenLeavesTheJournalWhenTheTaskEnds() throws {
        let path = "\(dir)/j.sqlite"
        let j = try SQLiteJournal(path: path, nodeID: "n1")
        var (s, d) = try spec("tok")
        d = .object((d.objectValue ?? [:]).merging(["stage_out": ["url": "https://h/x", "token": "secret-token-123"]]) { $1 })
        s.stageOut = StageOutTarget(url: "https://h/x", credentials: nil, token: "secret-token-123")
        _ = try j.admit(s, document: d, at: Date())
        for state in [TaskState.stagingIn, .running, .stagingOut] {
            try j.transition("tok", to: state, detail: .none, at: Date())
        }
        #expect(try j.task("tok")?.document["stage_out"]?["token"] == "secret-token-123")
        try j.transition("tok", to: .completed, detail: .none, at: Date())
        let doc = try #require(try j.task("tok")?.document)
        #expect(doc["stage_out"]?["token"] == nil && doc["stage_out"]?["url"] == "https://h/x")
    }

    @Test func documentsOfTasksThatEndedLongAgoArePruned() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let old = Date().addingTimeInterval(-40 * 86_400)
        for id in ["old-done", "new-done", "old-running"] {
            let (s, d) = try spec(id)
            _ = try j.admit(s, document: d, at: old)
            try j.transition(id, to: .stagingIn, detail: .none, at: old)
            try j.markStep(id, "git", info: "abc")
        }
        try j.transition("old-done", to: .failed, detail: .none, at: old)
        try j.transition("new-done", to: .failed, detail: .none, at: Date())
        #expect(try j.pruneDocuments(finishedBefore: Date().addingTimeInterval(-30 * 86_400)) == 1)
        #expect(try j.task("old-done")?.document == .object([:]))
        #expect(try j.completedStep("git", of: "old-done") == nil)
        #expect(try j.task("old-done")?.state == .failed)
        #expect(try j.task("new-done")?.document["execution_id"] == "e")
        #expect(try j.task("old-running")?.document["execution_id"] == "e")
        #expect(try j.completedStep("git", of: "old-running") == "abc")
        // Still recognised as a duplicate.
        let (s, d) = try spec("old-done")
        guard case .duplicate = try j.admit(s, document: d, at: Date()) else {
            Issue.record("a pruned task must still be a duplicate")
            return
        }
    }
}

/// A launcher state for journal tests.
struct PIDState: LauncherState {
    static let version = 2
    var pid: Int32
    init(pid: Int32) { self.pid = pid }
    init?(legacy data: [String: String]) {
        guard let pid = data["pid"].flatMap({ Int32($0) }) else { return nil }
        self.pid = pid
    }
}

/// A daemon upgraded while tasks run: the handles its predecessor journaled (`data`, string pairs) are still read,
/// and a handle written in that format is written back the same way.
struct LegacyHandleTests {
    @Test func aHandleJournaledBeforeTypedStateIsStillRead() throws {
        let dir = NSTemporaryDirectory() + "fem-legacy-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let doc: JSONValue = ["schema_version": 1, "task_id": "old", "execution_id": "e", "plan": [
            "schema_version": 1, "id": "t", "version": "1", "launcher": "process", "command": ["base": ["/bin/true"]]]]
        _ = try j.admit(try DocumentReader.readTask(doc, requireTaskID: true), document: doc, at: Date())
        // Exactly the JSON an older daemon wrote into tasks.handle.
        let old = #"{"launcher":"process","version":1,"data":{"pid":"42","pgid":"42","start_time":"7"}}"#
        let decoded = try JSONDecoder.fem.decode(LaunchHandle.self, from: Data(old.utf8))
        try j.setHandle("old", decoded)
        let handle = try #require(try j.task("old")?.handle)
        #expect(handle.version == 1)
        #expect(try handle.state(as: PIDState.self) == PIDState(pid: 42))
        let written = try JSONValue.parse(JSONEncoder.fem.encode(handle))
        #expect(written == (try JSONValue.parse(Data(old.utf8))), "written back in the old format")
    }
}

