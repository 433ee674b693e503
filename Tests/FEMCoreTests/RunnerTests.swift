@testable import FEMCore
import Foundation
import Logging
import Testing

/// The fake's handle state: the id of its piece of work.
struct FakeState: LauncherState {
    static let version = 2
    var id: String
    init(id: String) { self.id = id }
    init?(legacy data: [String: String]) {
        guard let id = data["id"] else { return nil }
        self.id = id
    }
}

/// A launcher whose work is scripted: exit with a code after a delay, or run until stopped.
final class FakeLauncher: Launcher, @unchecked Sendable {
    enum Script: Sendable { case exit(Int32, after: Duration), hang, failToStart, oom }
    let name: String
    let script: Script
    let recovery: Recovery
    private let lock = NSLock()
    private var stopped: [String: AsyncStream<Void>.Continuation] = [:]
    private var streams: [String: AsyncStream<Void>] = [:]
    private(set) var started: [String] = []
    private(set) var stops = 0
    private(set) var destroyed: [String] = []
    var declineReason: String?
    /// A start that takes this long first (a Flower environment being made); a cancel interrupts it.
    var startDelay: Duration?
    /// A preparation (during stage-in) that takes this long.
    var prepareDelay: Duration?
    private(set) var prepared: [String] = []

    init(name: String = "process", script: Script, recovery: Recovery = .lost("gone")) {
        self.name = name
        self.script = script
        self.recovery = recovery
    }

    func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths { sandbox }
    func datasetPath(id: String, hostPath: String) -> String { hostPath }
    func policyCheck(_ job: LaunchJob) -> String? { declineReason }

    func prepare(_ job: LaunchJob) async throws {
        lock.withLock { prepared.append(job.task.taskID) }
        if let prepareDelay { try await Task.sleep(for: prepareDelay) }
    }

    func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        if case .failToStart = script { throw TaskFailure(.runnerSystemFailure, "engine unreachable") }
        if let startDelay { try await Task.sleep(for: startDelay) }
        let id = job.task.taskID
        lock.withLock { started.append(id) }
        _ = signal(id)
        let h = LaunchHandle(launcher: name, state: FakeState(id: id))
        try await persist(h)
        return h
    }

    /// The stop signal of one piece of work, made on first use (at start, or at re-attach).
    private func signal(_ id: String) -> AsyncStream<Void> {
        lock.withLock {
            if let s = streams[id] { return s }
            let (s, c) = AsyncStream<Void>.makeStream()
            streams[id] = s
            stopped[id] = c
            return s
        }
    }

    func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome {
        let stream: AsyncStream<Void>? = signal(try handle.state(as: FakeState.self).id)
        switch script {
        case .exit(let code, let delay):
            try? await Task.sleep(for: delay)
            return LaunchOutcome(exitCode: code)
        case .oom:
            return LaunchOutcome(exitCode: 137, outOfMemory: true)
        case .hang, .failToStart:
            if let stream { for await _ in stream { break } }
            return LaunchOutcome(exitCode: 143, signal: 15)
        }
    }

    func stop(_ handle: LaunchHandle, grace: Duration) async {
        guard let id = try? handle.state(as: FakeState.self).id else { return }
        _ = signal(id)
        lock.withLock {
            stops += 1
            stopped[id]?.yield()
        }
    }

    func destroy(_ handle: LaunchHandle) async {
        guard let id = try? handle.state(as: FakeState.self).id else { return }
        lock.withLock { destroyed.append(id) }
    }

    func inspect(_ handle: LaunchHandle) async -> LaunchInspection { LaunchInspection(state: .running) }

    func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery { recovery }
}

/// A fake that hands its work to an inner `FakeLauncher`; the fakes built on it add what one kind of launcher adds.
protocol ForwardingFake: Launcher {
    var inner: FakeLauncher { get }
}

extension ForwardingFake {
    var name: String { inner.name }
    func toolPaths(forHost sandbox: ToolPaths) -> ToolPaths { sandbox }
    func datasetPath(id: String, hostPath: String) -> String { hostPath }
    func policyCheck(_ job: LaunchJob) -> String? { nil }
    func start(_ job: LaunchJob, persist: @Sendable (LaunchHandle) async throws -> Void) async throws -> LaunchHandle {
        try await inner.start(job, persist: persist)
    }
    func destroy(_ handle: LaunchHandle) async { await inner.destroy(handle) }
    func inspect(_ handle: LaunchHandle) async -> LaunchInspection { await inner.inspect(handle) }
    func wait(_ handle: LaunchHandle) async throws -> LaunchOutcome { try await inner.wait(handle) }
    func stop(_ handle: LaunchHandle, grace: Duration) async { await inner.stop(handle, grace: grace) }
    func recover(_ job: LaunchJob, handle: LaunchHandle?) async -> Recovery { await inner.recover(job, handle: handle) }
}

/// A fake whose work talks to a server: its log lines say when it reached it or lost it (as a Flower SuperNode's).
struct LinkedFakeLauncher: ServerLinkedLauncher, ForwardingFake {
    let inner: FakeLauncher
    var unreachableLimit: Duration? = .seconds(30)
    var finishDeliveryLimit: Duration? = .seconds(30)
    var finishLinger: Duration = .seconds(5)
    func linkEvent(inLogLine line: String) -> LinkEvent? {
        switch line {
        case "lost": .disconnected("lost the server")
        case "linked": .connected("reached the server")
        default: nil
        }
    }
}

/// Log lines a task's work "wrote": given per log (stdout, stderr), then the logs stay open until the runner stops
/// reading them.
struct ScriptedFollower: LineFollower {
    var stdout: [String] = []
    var stderr: [String] = []
    func follow(_ path: String) -> (lines: AsyncStream<String>, finish: @Sendable () -> Void) {
        let (lines, c) = AsyncStream<String>.makeStream()
        for line in path.hasSuffix("stdout.log") ? stdout : stderr { c.yield(line) }
        return (lines, { c.finish() })
    }
}

struct FakeSandboxes: SandboxProvider {
    func prepare(taskID: String) throws -> ToolPaths { paths(taskID: taskID) }
    func paths(taskID: String) -> ToolPaths { .under("/fake/\(taskID)") }
    func finished(taskID: String, state: TaskState) {}
}

final class FakeStageOut: StageOut, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var outcomes: [TaskState] = []
    var fail = false
    func check(_ target: StageOutTarget?) -> String? {
        target?.url.hasPrefix("https://") == true ? "no https here" : nil
    }
    func stageOut(_ job: LaunchJob, record: TaskRecord, outcome: TaskOutcome, reporter: StageReporter) async throws
        -> StageOutSummary {
        lock.withLock { outcomes.append(outcome.state) }
        if fail { throw TaskFailure(.stageOutFailure, "upload server said 500") }
        return StageOutSummary(files: 2, bytes: 10, location: "file:///x")
    }
}

struct RunnerTests {
    let journal = MemoryJournal(nodeID: "n1")

    func runner(_ launcher: (any Launcher)?, stageOut: FakeStageOut = FakeStageOut(), max: Int = 2,
                follower: any LineFollower = NoLineFollower(),
                settings: ((inout RunnerSettings) -> Void)? = nil) -> Runner {
        var s = RunnerSettings(nodeID: "n1", maxConcurrentTasks: max, stopGrace: .milliseconds(100))
        settings?(&s)
        return Runner(settings: s, journal: journal, registry: LauncherRegistry(launcher.map { [$0] } ?? []),
                      sandboxes: FakeSandboxes(), stageIn: NoStageIn(), stageOut: stageOut,
                      logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), follower: follower,
                      clock: FastClock())
    }

    func admit(_ id: String, launcher: String = "process", timeout: Int? = nil, planTimeout: Int? = nil,
               stageOut: String? = nil, constraints: String? = nil) throws {
        var plan: [String: JSONValue] = ["schema_version": 1, "id": "t", "version": "1", "launcher": .string(launcher),
                                         "command": .object(["base": .array(["/bin/true"])])]
        if launcher == "docker" { plan["image"] = "x" }
        if let planTimeout { plan["timeout_seconds"] = .int(Int64(planTimeout)) }
        var doc: [String: JSONValue] = ["schema_version": 1, "task_id": .string(id), "execution_id": "e", "plan": .object(plan)]
        if let timeout { doc["timeout_seconds"] = .int(Int64(timeout)) }
        if let stageOut { doc["stage_out"] = .object(["url": .string(stageOut)]) }
        if let constraints { doc["constraints"] = .string(constraints) }
        let spec = try DocumentReader.readTask(.object(doc), requireTaskID: true)
        #expect(try journal.admit(spec, document: .object(doc), at: Date()) == .admitted)
    }

    func states(_ id: String) throws -> [TaskState] {
        try journal.history(id).filter { $0.kind == .state }.map(\.state)
    }

    @Test func successGoesThroughEveryStateInOrder() async throws {
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)))
        try admit("a")
        await r.enqueue("a")
        await r.waitUntilIdle()
        #expect(try states("a") == [.received, .stagingIn, .running, .stagingOut, .completed])
        #expect(try journal.history("a").map(\.seq) == [1, 2, 3, 4, 5])
    }

    /// What a launcher prepares (a Flower tool's Python environment) is stage-in: the task is not `running` while
    /// it is made, and a cancel then never starts the tool.
    @Test func aLaunchersPreparationIsStageInAndACancelThereNeverStartsTheTool() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        launcher.prepareDelay = .seconds(60)
        let r = runner(launcher)
        try admit("a")
        await r.enqueue("a")
        let deadline = ContinuousClock.now + .seconds(10)
        while launcher.prepared.isEmpty {
            try #require(ContinuousClock.now < deadline, "the launcher was never asked to prepare")
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(try journal.task("a")?.state == .stagingIn)
        await r.cancel("a", reason: "operator")
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.state == .cancelled)
        let seen = try states("a")
        #expect(!seen.contains(.running), "\(seen)")
        #expect(try journal.task("a")?.message?.contains("the tool was not started") == true)
        #expect(launcher.started.isEmpty)
    }

    @Test func nonZeroExitFailsWithTheCode() async throws {
        let r = runner(FakeLauncher(script: .exit(3, after: .zero)))
        try admit("a")
        await r.enqueue("a")
        await r.waitUntilIdle()
        let rec = try #require(try journal.task("a"))
        #expect(rec.state == .failed && rec.exitCode == 3 && rec.failureClass == .taskFailure)
    }

    @Test func timeoutStopsTheWork() async throws {
        let launcher = FakeLauncher(script: .hang)
        let r = runner(launcher)
        try admit("a", timeout: 1)
        await r.enqueue("a")
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.failureClass == .timeout)
        #expect(launcher.stops == 1)
        #expect(launcher.destroyed == ["a"], "what is left of stopped work is removed")
    }

    /// The injected clock (`FastClock`): a 30 s limit on being away from the server passes in milliseconds of the
    /// test. No wall-clock bound is asserted: a loaded machine may take seconds for anything.
    @Test func workAwayFromItsServerPastTheLimitFailsUnreachableAndIsStopped() async throws {
        let fake = FakeLauncher(script: .hang)
        let r = runner(LinkedFakeLauncher(inner: fake), follower: ScriptedFollower(stderr: ["lost"]))
        try admit("a")
        await r.enqueue("a")
        await r.waitUntilIdle()
        let rec = try #require(try journal.task("a"))
        #expect(rec.state == .failed && rec.failureClass == .serverUnreachable)
        #expect(rec.message == "lost the server, for longer than 30 s")
        #expect(fake.stops == 1)
    }

    /// After `Finished` the work may deliver its last reply (up to its limit), then it is stopped; the task completed.
    @Test func aFinishedReportCompletesTheTaskAndStopsTheWork() async throws {
        let fake = FakeLauncher(script: .hang)
        let r = runner(LinkedFakeLauncher(inner: fake),
                       follower: ScriptedFollower(stdout: [#"{"type": "info", "info": "Finished"}"#]))
        try admit("a")
        await r.enqueue("a")
        await r.waitUntilIdle()
        let rec = try #require(try journal.task("a"))
        #expect(rec.state == .completed, "\(rec.message ?? "")")
        #expect(rec.message == "the tool reported Finished; its processes were stopped")
        #expect(fake.stops == 1)
    }

    @Test func cancelWhileRunningAndWhileQueued() async throws {
        let launcher = FakeLauncher(script: .hang)
        let r = runner(launcher, max: 1)
        try admit("a")
        try admit("b")
        await r.enqueue("a")
        await r.enqueue("b")
        let deadline = ContinuousClock.now + .seconds(30)
        while try journal.task("a")?.handle == nil {
            try #require(ContinuousClock.now < deadline, "the work never started")
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(await r.inspect("a")?.state == .running, "the launcher is asked about the journaled handle")
        #expect(await r.inspect("b") == nil, "no handle: nothing to ask")
        await r.cancel("b", reason: "operator")
        await r.cancel("a", reason: nil)
        await r.waitUntilIdle()
        #expect(try states("b") == [.received, .queued, .cancelled], "it waited for the slot in `queued`")
        #expect(try journal.task("a")?.state == .cancelled)
        #expect(launcher.started == ["a"])
    }

    @Test func launcherNotEnabledIsDeclinedWithTheReason() async throws {
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)))
        try admit("a", launcher: "docker")
        await r.enqueue("a")
        await r.waitUntilIdle()
        let rec = try #require(try journal.task("a"))
        #expect(rec.state == .declined)
        #expect(rec.message?.contains("launcher \"docker\" is not enabled") == true)
    }

    /// A task journaled but not yet checked against its constraints when the daemon stopped (the receiver checks
    /// right after journaling) is checked by the runner before it starts: declined with the reason, never run.
    @Test func aRecoveredTaskIsCheckedAgainstItsConstraintsBeforeItStarts() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        let r = runner(launcher)
        await r.checkConstraints(against: { NodeAttributes(["labels.site": .string("hospital-a")]) })
        try admit("elsewhere", constraints: "labels.site == \"hospital-b\"")
        try admit("here", constraints: "labels.site == \"hospital-a\"")
        await r.recover()
        await r.waitUntilIdle()
        let declined = try #require(try journal.task("elsewhere"))
        #expect(declined.state == .declined)
        #expect(declined.message?.contains("labels.site is \"hospital-a\"") == true)
        #expect(try journal.task("here")?.state == .completed)
        #expect(launcher.started == ["here"])
    }

    @Test func timeoutAbovePlanIsDeclinedUnlessAllowed() async throws {
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)))
        try admit("a", timeout: 100, planTimeout: 10)
        await r.enqueue("a")
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.state == .declined)
        let allowing = runner(FakeLauncher(script: .exit(0, after: .zero))) { $0.allowTimeoutAbovePlan = true }
        try admit("b", timeout: 100, planTimeout: 10)
        await allowing.enqueue("b")
        await allowing.waitUntilIdle()
        #expect(try journal.task("b")?.state == .completed)
    }

    @Test func aSourceTheNodeCannotFetchIsDeclinedNotIgnored() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        let r = runner(launcher)
        let doc: JSONValue = ["schema_version": 1, "task_id": "src", "execution_id": "e", "plan": [
            "schema_version": 1, "id": "t", "version": "1", "launcher": "process",
            "source": ["git": ["url": "git://127.0.0.1/x.git"]], "command": ["base": ["/bin/true"]]]]
        _ = try journal.admit(try DocumentReader.readTask(doc, requireTaskID: true), document: doc, at: Date())
        await r.enqueue("src")
        await r.waitUntilIdle()
        #expect(try journal.task("src")?.state == .declined)
        #expect(try journal.task("src")?.message == "this node cannot fetch git sources (git stage-in is not enabled)")
        #expect(launcher.started.isEmpty)
    }

    @Test func unsupportedStageOutTargetIsDeclined() async throws {
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)))
        try admit("a", stageOut: "https://up/x")
        await r.enqueue("a")
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.message == "no https here")
    }

    @Test func stageOutFailureFailsACompletedTask() async throws {
        let so = FakeStageOut()
        so.fail = true
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)), stageOut: so)
        try admit("a")
        await r.enqueue("a")
        await r.waitUntilIdle()
        let rec = try #require(try journal.task("a"))
        #expect(rec.state == .failed && rec.failureClass == .stageOutFailure)
    }

    @Test func outOfMemoryIsItsOwnClass() async throws {
        let r = runner(FakeLauncher(script: .oom))
        try admit("a")
        await r.enqueue("a")
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.failureClass == .outOfMemory)
    }

    @Test func concurrencyIsBounded() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(50)))
        let r = runner(launcher, max: 2)
        for i in 0..<6 { try admit("t\(i)") }
        for i in 0..<6 { await r.enqueue("t\(i)") }
        #expect(await r.activeCount <= 2)
        await r.waitUntilIdle()
        #expect(try journal.tasks(states: [.completed], limit: 10).count == 6)
    }

    @Test func recoveryFailsLostWorkWithNodeRestartAndResumesTheRest() async throws {
        try admit("running")
        try journal.transition("running", to: .stagingIn, detail: .none, at: Date())
        try journal.transition("running", to: .running, detail: .none, at: Date())
        try journal.setHandle("running", LaunchHandle(launcher: "process", state: FakeState(id: "running")))
        try admit("queued")
        let launcher = FakeLauncher(script: .exit(0, after: .zero), recovery: .lost("the process did not survive"))
        let r = runner(launcher)
        await r.recover()
        await r.waitUntilIdle()
        let lost = try #require(try journal.task("running"))
        #expect(lost.state == .failed && lost.failureClass == .nodeRestart)
        #expect(try states("running").suffix(2) == [.stagingOut, .failed])
        #expect(try journal.task("queued")?.state == .completed)
        #expect(launcher.started == ["queued"])
    }

    @Test func recoveryReattachesToWorkThatIsStillRunning() async throws {
        try admit("a")
        try journal.transition("a", to: .stagingIn, detail: .none, at: Date())
        try journal.transition("a", to: .running, detail: .none, at: Date())
        // As a daemon before typed launcher state journaled it: the upgraded daemon still follows the work.
        try journal.setHandle("a", LaunchHandle(launcher: "process", legacy: ["id": "a"]))
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(10)), recovery: .running)
        let r = runner(launcher)
        await r.recover()
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.state == .completed)
        #expect(launcher.started.isEmpty, "re-attached, not started again")
        #expect(launcher.destroyed == ["a"])
    }

    /// After a restart, work that was already running keeps the slot even when an older task had not started yet:
    /// the older one waits (`queued`) instead of taking the slot while the running work goes unwatched.
    @Test func recoveredRunningWorkGoesAheadOfAnOlderTaskThatHadNotStarted() async throws {
        try admit("older")
        try admit("running")
        try journal.transition("running", to: .stagingIn, detail: .none, at: Date())
        try journal.transition("running", to: .running, detail: .none, at: Date())
        try journal.setHandle("running", LaunchHandle(launcher: "process", state: FakeState(id: "running")))
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(10)), recovery: .running)
        let r = runner(launcher, max: 1)
        await r.recover()
        await r.waitUntilIdle()
        #expect(try journal.task("running")?.state == .completed)
        #expect(try journal.task("older")?.state == .completed)
        let older = try states("older")
        #expect(older.contains(.queued), "the older task waited for the slot: \(older)")
        #expect(launcher.started == ["older"], "the running work was re-attached, not started again")
    }

    @Test func aCancelRecordedBeforeARestartStopsReattachedWork() async throws {
        try admit("a")
        try journal.transition("a", to: .stagingIn, detail: .none, at: Date())
        try journal.transition("a", to: .running, detail: .none, at: Date())
        try journal.setHandle("a", LaunchHandle(launcher: "process", state: FakeState(id: "a")))
        try journal.setCancelRequested("a")
        let launcher = FakeLauncher(script: .hang, recovery: .running)
        let r = runner(launcher)
        await r.recover()
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.state == .cancelled)
        #expect(launcher.stops == 1, "the re-attached work was stopped")
    }

    @Test func aRunningTaskWhoseLauncherWasDisabledFailsInsteadOfHanging() async throws {
        try admit("a", launcher: "docker")
        try journal.transition("a", to: .stagingIn, detail: .none, at: Date())
        try journal.transition("a", to: .running, detail: .none, at: Date())
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)))
        await r.recover()
        await r.waitUntilIdle()
        let rec = try #require(try journal.task("a"))
        #expect(rec.state == .failed && rec.failureClass == .runnerSystemFailure)
        #expect(rec.message?.hasPrefix("cannot resume after a restart: launcher \"docker\" is not enabled") == true)
    }

    /// A burst of deliveries is handled in order: the valid tasks in one group commit, a bad message and a control
    /// message between them handled on their own; every delivery is acknowledged once, every new task runs once.
    @Test func receiverHandlesABurstInOrder() async throws {
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)))
        let receiver = Receiver(nodeID: "n1", maxMessageBytes: 2000, journal: journal, runner: r,
                                logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() }), eventsAdded: {})
        let acks = Counter()
        func task(_ id: String) -> InboundMessage {
            let body = #"{"schema_version":1,"task_id":"\#(id)","execution_id":"e","plan":{"schema_version":1,"id":"t","version":"1","launcher":"process","command":{"base":["/bin/true"]}}}"#
            return InboundMessage(channel: .task, body: Array(body.utf8), redelivered: false) { acks.add() }
        }
        let cancel = InboundMessage(channel: .control, body: Array(#"{"schema_version":1,"type":"cancel","task_id":"zz"}"#.utf8),
                                    redelivered: false) { acks.add() }
        await receiver.handle([task("b1"), task("b2"), InboundMessage(channel: .task, body: Array("nope".utf8),
                                                                      redelivered: false) { acks.add() },
                               task("b1"), cancel, task("b3"), task("b3")])
        await r.waitUntilIdle()
        #expect(acks.value == 7)
        for id in ["b1", "b2", "b3"] {
            let events = try journal.history(id)
            #expect(events.filter { $0.kind == .state && $0.state == .running }.count == 1, "\(id) ran once")
            #expect(events.first?.state == .received)
        }
        #expect(try journal.history("b1").contains { $0.kind == .duplicate })
        #expect(try journal.history("b3").contains { $0.kind == .duplicate })
        #expect(journal.unattributedEvents.contains { $0.detail.message?.contains("not JSON") == true })
    }

    @Test func receiverRejectsMalformedAndIgnoresDuplicates() async throws {
        let r = runner(FakeLauncher(script: .exit(0, after: .zero)))
        let receiver = Receiver(nodeID: "n1", maxMessageBytes: 2000, journal: journal, runner: r,
                                logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() }), eventsAdded: {})
        let acks = Counter()
        func send(_ body: [UInt8]) async {
            await receiver.handle(InboundMessage(channel: .task, body: body, redelivered: false) { acks.add() })
        }
        await send(Array("not json".utf8))
        await send([0xff, 0xfe, 0x7b])
        await send(Array(#"{"schema_version":1,"task_id":"m1"}"#.utf8))
        await send(Array(String(repeating: "x", count: 3000).utf8))
        let valid = #"{"schema_version":1,"task_id":"ok","execution_id":"e","plan":{"schema_version":1,"id":"t","version":"1","launcher":"process","command":{"base":["/bin/true"]}}}"#
        await send(Array(valid.utf8))
        await send(Array(valid.utf8))
        await r.waitUntilIdle()
        #expect(acks.value == 6)
        let rejected = journal.unattributedEvents.map { $0.detail.message ?? "" }
        #expect(rejected.contains { $0.contains("not JSON") })
        #expect(rejected.contains { $0.contains("not valid UTF-8") })
        #expect(rejected.contains { $0.contains("over the limit of 2000 bytes") })
        // A rejected message does not use up its task id.
        #expect(try journal.task("m1") == nil)
        #expect(try journal.history("m1").last?.state == .rejected)
        #expect(try journal.history("m1").last?.detail.message?.contains("execution_id: is required") == true)
        let okEvents = try journal.history("ok")
        #expect(okEvents.filter { $0.kind == .state && $0.state == .running }.count == 1)
        let duplicate = try #require(okEvents.first { $0.kind == .duplicate })
        #expect(duplicate.detail.data?["state"]?.stringValue == duplicate.state.rawValue)
        #expect(duplicate.detail.message?.contains("(now \(duplicate.state.rawValue))") == true)
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.withLock { n += 1 } }
    var value: Int { lock.withLock { n } }
}
