@testable import FEMCore
import Foundation
import Logging
import Testing

/// A journal that passes every call to a memory journal: a fake states only what it breaks.
protocol ForwardingJournal: Journal {
    var inner: MemoryJournal { get }
}

extension ForwardingJournal {
    var nodeID: String { inner.nodeID }
    func admit(_ spec: TaskSpec, document: JSONValue, at: Date) throws -> Admission {
        try inner.admit(spec, document: document, at: at)
    }
    func recordRejection(taskID: String?, executionID: String?, message: String, at: Date) throws {
        try inner.recordRejection(taskID: taskID, executionID: executionID, message: message, at: at)
    }
    func transition(_ taskID: String, to state: TaskState, detail: EventDetail, at: Date) throws -> TaskEvent {
        try inner.transition(taskID, to: state, detail: detail, at: at)
    }
    func note(_ taskID: String, kind: EventKind, detail: EventDetail, at: Date) throws -> TaskEvent {
        try inner.note(taskID, kind: kind, detail: detail, at: at)
    }
    func task(_ id: String) throws -> TaskRecord? { try inner.task(id) }
    func tasks(states: Set<TaskState>?, limit: Int) throws -> [TaskRecord] { try inner.tasks(states: states, limit: limit) }
    func history(_ taskID: String) throws -> [TaskEvent] { try inner.history(taskID) }
    func setHandle(_ taskID: String, _ handle: LaunchHandle?) throws { try inner.setHandle(taskID, handle) }
    func setCancelRequested(_ taskID: String) throws { try inner.setCancelRequested(taskID) }
    func markStep(_ taskID: String, _ step: String, info: String) throws { try inner.markStep(taskID, step, info: info) }
    func completedStep(_ step: String, of taskID: String) throws -> String? { try inner.completedStep(step, of: taskID) }
    func pendingEvents(limit: Int) throws -> [OutboxEntry] { try inner.pendingEvents(limit: limit) }
    func confirmEvents(_ ids: [Int64]) throws { try inner.confirmEvents(ids) }
}

/// A journal whose state changes fail (as on a full disk) while `failing` is set.
final class FailingJournal: ForwardingJournal, @unchecked Sendable {
    let inner: MemoryJournal
    private let lock = NSLock()
    private var failingStates: Set<TaskState> = []
    private(set) var refused = 0

    init(_ inner: MemoryJournal) { self.inner = inner }

    func fail(_ states: Set<TaskState>) { lock.withLock { failingStates = states } }

    func transition(_ taskID: String, to state: TaskState, detail: EventDetail, at: Date) throws -> TaskEvent {
        let fail = lock.withLock { () -> Bool in
            if failingStates.contains(state) { refused += 1; return true }
            return false
        }
        if fail { throw FakeDiskFull() }
        return try inner.transition(taskID, to: state, detail: detail, at: at)
    }
}

struct FakeDiskFull: Error, CustomStringConvertible {
    var description: String { "SQLite error 13: database or disk is full" }
}

/// A stage-in step that blocks until it is cancelled (as a libcurl or libgit2 call that reads its cancel flag), or,
/// with `deaf`, one that never looks at a cancel.
struct BlockingStageIn: StageIn {
    var deaf = false
    let entered: Counter
    func check(_ plan: ToolPlan) -> String? { nil }
    func stageIn(_ job: LaunchJob, reporter: StageReporter) async throws {
        entered.add()
        if deaf {
            // A blocking call that ignores everything, for 30 s.
            try await Task.detached { try? await Task.sleep(for: .seconds(30)) }.value
            return
        }
        try await Task.sleep(for: .seconds(60))
    }
}

/// Keeps unrecorded changes in memory, for the restart test.
final class MemoryUnrecorded: UnrecordedChanges, @unchecked Sendable {
    private let lock = NSLock()
    private var kept: [String: UnrecordedChange] = [:]
    func save(_ taskID: String, _ change: UnrecordedChange) { lock.withLock { kept[taskID] = change } }
    func load(_ taskID: String) -> UnrecordedChange? { lock.withLock { kept[taskID] } }
    func remove(_ taskID: String) { lock.withLock { kept[taskID] = nil } }
    var count: Int { lock.withLock { kept.count } }
}

struct RunnerFaultTests {
    let memory = MemoryJournal(nodeID: "n1")
    let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func admit(_ id: String) throws {
        let doc: JSONValue = ["schema_version": 1, "task_id": .string(id), "execution_id": "e",
                              "plan": ["schema_version": 1, "id": "t", "version": "1", "launcher": "process",
                                       "command": ["base": ["/bin/true"]]]]
        _ = try memory.admit(try DocumentReader.readTask(doc, requireTaskID: true), document: doc, at: Date())
    }

    func runner(_ journal: any Journal, _ launcher: FakeLauncher, stageIn: any StageIn = NoStageIn(),
                unrecorded: any UnrecordedChanges = NoUnrecordedChanges()) -> Runner {
        var s = RunnerSettings(nodeID: "n1", maxConcurrentTasks: 2, stopGrace: .milliseconds(100))
        s.journalRetryBase = .milliseconds(10)
        s.journalRetryMax = .milliseconds(50)
        s.cancelDeadline = .milliseconds(500)
        return Runner(settings: s, journal: journal, registry: LauncherRegistry([launcher]), sandboxes: FakeSandboxes(),
                      stageIn: stageIn, stageOut: FakeStageOut(), logger: quiet, unrecorded: unrecorded,
                      clock: FastClock())
    }

    func states(_ id: String) throws -> [TaskState] {
        try memory.history(id).filter { $0.kind == .state }.map(\.state)
    }

    /// The journal refuses the final state for a while (a full disk): the runner keeps the real outcome in memory,
    /// retries, and writes it once the journal takes it; meanwhile the task is known as not running.
    @Test func aRefusedStateChangeIsRetriedUntilWrittenWithItsRealOutcome() async throws {
        let journal = FailingJournal(memory)
        journal.fail([.completed])
        try admit("a")
        let kept = MemoryUnrecorded()
        let r = runner(journal, FakeLauncher(script: .exit(0, after: .zero)), unrecorded: kept)
        await r.enqueue("a")
        let deadline = ContinuousClock.now + .seconds(30)
        while await r.unrecordedStates["a"] == nil && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(await r.unrecordedStates["a"] == .completed, "the real state is known while unwritten")
        #expect(kept.load("a")?.error.contains("database or disk is full") == true)
        #expect(try memory.task("a")?.state == .stagingOut)
        while journal.refused <= 2 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(journal.refused > 2, "tried again with backoff")
        journal.fail([])
        await r.waitUntilIdle()
        let rec = try #require(try memory.task("a"))
        #expect(rec.state == .completed && rec.exitCode == 0)
        #expect(await r.unrecordedStates.isEmpty)
        #expect(kept.count == 0)
    }

    /// After a restart, a task whose outcome the journal refused is told the truth: its kept outcome, with the
    /// journal's error, instead of a guess from the launcher.
    @Test func afterARestartAKeptOutcomeIsReportedWithTheJournalError() async throws {
        try admit("a")
        try memory.transition("a", to: .stagingIn, detail: .none, at: Date())
        try memory.transition("a", to: .running, detail: .none, at: Date())
        let kept = MemoryUnrecorded()
        kept.save("a", UnrecordedChange(
            state: .stagingOut,
            detail: EventDetail(exitCode: 0, data: ["outcome": "completed"]),
            error: "SQLite error 13: database or disk is full", time: Date()))
        let launcher = FakeLauncher(script: .exit(0, after: .zero), recovery: .lost("the process ended while the daemon was down"))
        let r = runner(memory, launcher, unrecorded: kept)
        await r.recover()
        await r.waitUntilIdle()
        let rec = try #require(try memory.task("a"))
        #expect(rec.state == .completed)
        #expect(rec.message?.contains("outcome not recorded because the journal failed: SQLite error 13") == true)
        #expect(launcher.started.isEmpty)
    }

    /// A cancel while a stage-in step runs (a clone, a download, a pull) stops it; the tool never starts.
    @Test func aCancelDuringStageInStopsItAndTheToolNeverStarts() async throws {
        try admit("a")
        let entered = Counter()
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        let r = runner(memory, launcher, stageIn: BlockingStageIn(entered: entered))
        await r.enqueue("a")
        let deadline = ContinuousClock.now + .seconds(30)
        while entered.value == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let t0 = ContinuousClock.now
        await r.cancel("a", reason: "wrong cohort")
        await r.waitUntilIdle()
        // Promptly, well before the step would end (the 2 s bound is checked through the daemon in FaultTests; here the
        // test process's threads may be busy with other suites).
        #expect(ContinuousClock.now - t0 < .seconds(25), "ended on the cancel, before the step's 30 s")
        #expect(try memory.task("a")?.state == .cancelled)
        #expect(try states("a").contains(.running) == false)
        #expect(try memory.task("a")?.message?.contains("the tool was not started") == true)
        #expect(launcher.started.isEmpty)
    }

    /// A step that does not listen is left behind after the cancel deadline: the task still ends cancelled at once
    /// and the tool never starts.
    @Test func aStageInStepThatIgnoresTheCancelIsLeftBehind() async throws {
        try admit("a")
        let entered = Counter()
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        let r = runner(memory, launcher, stageIn: BlockingStageIn(deaf: true, entered: entered))
        await r.enqueue("a")
        let deadline = ContinuousClock.now + .seconds(30)
        while entered.value == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let t0 = ContinuousClock.now
        await r.cancel("a", reason: nil)
        await r.waitUntilIdle()
        // Promptly, well before the step would end (the 2 s bound is checked through the daemon in FaultTests; here the
        // test process's threads may be busy with other suites).
        #expect(ContinuousClock.now - t0 < .seconds(25), "ended on the cancel, before the step's 30 s")
        #expect(try memory.task("a")?.state == .cancelled)
        #expect(launcher.started.isEmpty)
    }

    /// A cancel while the launcher starts (a Flower environment being made, a wait for the server) interrupts the
    /// start; the task ends cancelled.
    @Test func aCancelDuringStartInterruptsIt() async throws {
        try admit("a")
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        launcher.startDelay = .seconds(60)
        let r = runner(memory, launcher)
        await r.enqueue("a")
        let deadline = ContinuousClock.now + .seconds(30)
        while try memory.task("a")?.state != .running && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let t0 = ContinuousClock.now
        await r.cancel("a", reason: nil)
        await r.waitUntilIdle()
        // Promptly, well before the step would end (the 2 s bound is checked through the daemon in FaultTests; here the
        // test process's threads may be busy with other suites).
        #expect(ContinuousClock.now - t0 < .seconds(25), "ended on the cancel, before the step's 30 s")
        #expect(try memory.task("a")?.state == .cancelled)
        #expect(launcher.started.isEmpty, "the start was interrupted before anything ran")
    }

    /// The journal is synchronous SQLite that may wait seconds for a lock: the runner's writes (state changes, the
    /// handle, the tool's events and held text) run on the journal thread, never on the cooperative pool.
    @Test func everyJournalWriteOfTheRunnerRunsOnTheJournalThread() async throws {
        try admit("a")
        let journal = ThreadRecordingJournal(memory)
        var s = RunnerSettings(nodeID: "n1", stopGrace: .milliseconds(100))
        s.reporter.holdToolText = true
        let r = Runner(settings: s, journal: journal, registry: LauncherRegistry([FakeLauncher(script: .exit(0, after: .milliseconds(20)))]),
                       sandboxes: FakeSandboxes(), stageIn: NoStageIn(), stageOut: FakeStageOut(), logger: quiet,
                       follower: ScriptedFollower(stdout: [#"{"type": "model", "round": 1, "metrics": {"loss": 0.5}}"#,
                                                           #"{"type": "print", "message": "hello"}"#]),
                       clock: FastClock())
        await r.enqueue("a")
        await r.waitUntilIdle()
        #expect(try memory.task("a")?.state == .completed)
        let kinds = try memory.history("a").map(\.kind)
        #expect(kinds.contains(.progress), "\(kinds)")
        #expect(journal.writes.count >= 5, "\(journal.writes)")
        #expect(journal.writes.allSatisfy { $0 }, "\(journal.writes)")
    }

    /// A task the node cannot journal goes back to the broker (never held), with a notice saying why.
    @Test func aDeliveryThatCannotBeJournaledIsReturnedWithANotice() async throws {
        let broken = BrokenAdmitJournal(memory)
        let r = runner(broken, FakeLauncher(script: .exit(0, after: .zero)))
        let notices = NoticeBox()
        let receiver = Receiver(nodeID: "n1", maxMessageBytes: 4000, journal: broken, runner: r, logger: quiet,
                                notify: { reason, message, _ in notices.add(reason, message) },
                                requeueDelay: .milliseconds(10), eventsAdded: {})
        let acks = Counter(), requeues = Counter()
        let valid = #"{"schema_version":1,"task_id":"ok","execution_id":"e","plan":{"schema_version":1,"id":"t","version":"1","launcher":"process","command":{"base":["/bin/true"]}}}"#
        await receiver.handle(InboundMessage(channel: .task, body: Array(valid.utf8), redelivered: false,
                                             ack: { acks.add() }, requeue: { requeues.add() }))
        let deadline = ContinuousClock.now + .seconds(30)
        while requeues.value == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(requeues.value == 1 && acks.value == 0)
        #expect(notices.items.first?.0 == "delivery_returned")
        #expect(notices.items.first?.1.contains("database or disk is full") == true)
    }

    /// Under pressure (or draining) deliveries go back to the broker unread; cancels are still read.
    @Test func underPressureDeliveriesAreReturnedAndCancelsStillRead() async throws {
        let r = runner(memory, FakeLauncher(script: .exit(0, after: .zero)))
        let receiver = Receiver(nodeID: "n1", maxMessageBytes: 4000, journal: memory, runner: r, logger: quiet,
                                admission: { "disk: full" }, requeueDelay: .milliseconds(10), eventsAdded: {})
        let acks = Counter(), requeues = Counter()
        await receiver.handle(InboundMessage(channel: .task, body: Array("{}".utf8), redelivered: false,
                                             ack: { acks.add() }, requeue: { requeues.add() }))
        await receiver.handle(InboundMessage(channel: .control, body: Array(#"{"schema_version":1,"type":"cancel","task_id":"x"}"#.utf8),
                                             redelivered: false, ack: { acks.add() }, requeue: { requeues.add() }))
        let deadline = ContinuousClock.now + .seconds(30)
        while requeues.value == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(requeues.value == 1)
        #expect(acks.value == 1, "the control message was read and acknowledged")
        #expect(try memory.tasks(states: nil, limit: 10).isEmpty)
    }
}

/// Notes the thread every journal write of the runner ran on.
final class ThreadRecordingJournal: ForwardingJournal, @unchecked Sendable {
    let inner: MemoryJournal
    private let lock = NSLock()
    private var onJournalThread: [Bool] = []
    init(_ inner: MemoryJournal) { self.inner = inner }
    /// For each write: whether it ran on the runner's journal thread.
    var writes: [Bool] { lock.withLock { onJournalThread } }
    private func seen() { let on = JournalThread.shared.isCurrent; lock.withLock { onJournalThread.append(on) } }

    func transition(_ taskID: String, to state: TaskState, detail: EventDetail, at: Date) throws -> TaskEvent {
        seen()
        return try inner.transition(taskID, to: state, detail: detail, at: at)
    }
    func note(_ taskID: String, kind: EventKind, detail: EventDetail, at: Date) throws -> TaskEvent {
        seen()
        return try inner.note(taskID, kind: kind, detail: detail, at: at)
    }
    func markStep(_ taskID: String, _ step: String, info: String) throws {
        seen()
        try inner.markStep(taskID, step, info: info)
    }
}

final class BrokenAdmitJournal: ForwardingJournal, @unchecked Sendable {
    let inner: MemoryJournal
    init(_ inner: MemoryJournal) { self.inner = inner }
    func admit(_ spec: TaskSpec, document: JSONValue, at: Date) throws -> Admission { throw FakeDiskFull() }
    func recordRejection(taskID: String?, executionID: String?, message: String, at: Date) throws { throw FakeDiskFull() }
}

final class NoticeBox: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [(String, String)] = []
    func add(_ r: String, _ m: String) { lock.withLock { list.append((r, m)) } }
    var items: [(String, String)] { lock.withLock { list } }
}
