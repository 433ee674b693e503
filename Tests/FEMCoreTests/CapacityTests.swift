@testable import FEMCore
import Foundation
import Logging
import Testing

struct ResourceLedgerTests {
    let node = Capacity(cpus: 8, memoryMB: 16000, gpus: 1, storageMB: 1000)

    @Test func aTaskBiggerThanTheNodeNeverFitsAndTheReasonNamesTheResourceAndBothAmounts() {
        let ledger = ResourceLedger(capacity: node)
        #expect(ledger.neverFits(Resources(cpus: nil, memoryMB: 64000, gpus: nil, storageMB: nil))
                == "resources.memory_mb: 64000 requested, the node has 16000")
        #expect(ledger.neverFits(Resources(cpus: 12, memoryMB: nil, gpus: 2, storageMB: 2000))
                == "resources.cpus: 12 requested, the node has 8; resources.gpus: 2 requested, the node has 1; "
                + "resources.storage_mb: 2000 requested, the node has 1000")
        #expect(ledger.admission(for: Resources(cpus: 8.5, memoryMB: nil, gpus: nil, storageMB: nil))
                == .never("resources.cpus: 8.5 requested, the node has 8"))
        #expect(ledger.neverFits(Resources(cpus: 8, memoryMB: 16000, gpus: 1, storageMB: 1000)) == nil)
    }

    @Test func reservationsAddUpAndAreReleased() {
        var ledger = ResourceLedger(capacity: node)
        let four = Resources(cpus: 4, memoryMB: 1000, gpus: nil, storageMB: nil)
        ledger.reserve("a", four)
        ledger.reserve("b", Resources(cpus: 2, memoryMB: nil, gpus: 1, storageMB: nil))
        #expect(ledger.free == Capacity(cpus: 2, memoryMB: 15000, gpus: 0, storageMB: 1000))
        #expect(ledger.admission(for: four) == .mustWait)
        #expect(ledger.shortfall(four) == "4 CPUs (2 free of 8)")
        #expect(ledger.shortfall(Resources(cpus: nil, memoryMB: nil, gpus: 1, storageMB: nil)) == "1 GPUs (0 free of 1)")
        let first = ledger.release("a")
        let second = ledger.release("a")
        #expect(first)
        #expect(!second, "a second release gives nothing back")
        #expect(ledger.admission(for: four) == .fitsNow)
        let third = ledger.release("b")
        #expect(third)
        #expect(ledger.free == node)
    }

    @Test func unsetFieldsCountAsZeroAndFractionsAddUp() {
        var ledger = ResourceLedger(capacity: Capacity(cpus: 0.3, memoryMB: 0, gpus: 0, storageMB: 0))
        #expect(ledger.admission(for: .none) == .fitsNow)
        ledger.reserve("a", Resources(cpus: 0.1, memoryMB: nil, gpus: nil, storageMB: nil))
        ledger.reserve("b", Resources(cpus: 0.1, memoryMB: nil, gpus: nil, storageMB: nil))
        #expect(ledger.admission(for: Resources(cpus: 0.1, memoryMB: nil, gpus: nil, storageMB: nil)) == .fitsNow)
    }

    @Test func aReattachedTaskMayHoldMoreThanIsFreeWithoutNegativeFreeCapacity() {
        var ledger = ResourceLedger(capacity: Capacity(cpus: 2, memoryMB: 100, gpus: 0, storageMB: 0))
        ledger.reserve("a", Resources(cpus: 4, memoryMB: 200, gpus: nil, storageMB: nil))
        #expect(ledger.free == .zero)
    }

    @Test func timingsComeFromTheJournaledStateChanges() throws {
        let journal = MemoryJournal(nodeID: "n1")
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        let doc: JSONValue = .object(["schema_version": 1, "task_id": "a", "execution_id": "e", "plan": .object([
            "schema_version": 1, "id": "t", "version": "1", "launcher": "process",
            "command": .object(["base": .array(["/bin/true"])])])])
        _ = try journal.admit(try DocumentReader.readTask(doc, requireTaskID: true), document: doc, at: t0)
        for (state, s) in [(TaskState.queued, 0.5), (.stagingIn, 2), (.running, 3), (.stagingOut, 10),
                           (.awaitingApproval, 10.25), (.stagingOut, 70.25)] {
            try journal.transition("a", to: state, detail: .none, at: t0.addingTimeInterval(s))
        }
        let t = TaskTimings(history: try journal.history("a"), end: t0.addingTimeInterval(71))
        #expect(t.queuedMS == 2000 && t.stageInMS == 1000 && t.runMS == 7000 && t.stageOutMS == 1000)
        #expect(t.approvalMS == 60000)
        #expect(TaskTimings(t.json) == t)
        #expect(t.compact == "q=2.0s in=1.0s run=7.0s out=1.0s appr=60s")
    }
}

/// The runner's queue: tasks wait in `queued` until their resources fit, start in order of priority then arrival,
/// and give their resources back on every outcome.
struct RunnerQueueTests {
    let journal = MemoryJournal(nodeID: "n1")
    static let node = Capacity(cpus: 2, memoryMB: 1000, gpus: 0, storageMB: 1000)

    func runner(_ launcher: FakeLauncher, max: Int = 4, capacity: Capacity = node) -> Runner {
        var s = RunnerSettings(nodeID: "n1", maxConcurrentTasks: max, stopGrace: .milliseconds(100))
        s.capacity = capacity
        return Runner(settings: s, journal: journal, registry: LauncherRegistry([launcher]),
                      sandboxes: FakeSandboxes(), stageIn: NoStageIn(), stageOut: FakeStageOut(),
                      logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), clock: FastClock())
    }

    func admit(_ id: String, cpus: Double? = nil, memoryMB: Int? = nil, priority: Int? = nil,
               planPriority: Int? = nil, timeout: Int? = nil) throws {
        var resources: [String: JSONValue] = [:]
        if let cpus { resources["cpus"] = .double(cpus) }
        if let memoryMB { resources["memory_mb"] = .int(Int64(memoryMB)) }
        var plan: [String: JSONValue] = ["schema_version": 1, "id": "t", "version": "1", "launcher": "process",
                                         "command": .object(["base": .array(["/bin/true"])]),
                                         "resources": .object(resources)]
        if let planPriority { plan["priority"] = .int(Int64(planPriority)) }
        var doc: [String: JSONValue] = ["schema_version": 1, "task_id": .string(id), "execution_id": "e",
                                        "plan": .object(plan)]
        if let priority { doc["priority"] = .int(Int64(priority)) }
        if let timeout { doc["timeout_seconds"] = .int(Int64(timeout)) }
        let spec = try DocumentReader.readTask(.object(doc), requireTaskID: true)
        #expect(try journal.admit(spec, document: .object(doc), at: Date()) == .admitted)
    }

    func states(_ id: String) throws -> [TaskState] {
        try journal.history(id).filter { $0.kind == .state }.map(\.state)
    }

    func event(_ id: String, _ state: TaskState) throws -> TaskEvent? {
        try journal.history(id).first { $0.kind == .state && $0.state == state }
    }

    func waitFor(_ what: String, _ condition: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while try !condition() {
            try #require(ContinuousClock.now < deadline, "\(what) never happened")
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    @Test func aTaskWaitsWhileAnotherHoldsTheCPUsAndStartsWhenItEnds() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(100)))
        let r = runner(launcher)
        try admit("a", cpus: 2)
        try admit("b", cpus: 2)
        await r.enqueue("a")
        await r.enqueue("b")
        #expect(await r.queuedCount == 1)
        #expect(await r.freeCapacity.cpus == 0)
        let queued = try #require(try event("b", .queued))
        #expect(queued.detail.message == "waiting for 2 CPUs (0 free of 2)")
        await r.waitUntilIdle()
        #expect(try states("b") == [.received, .queued, .stagingIn, .running, .stagingOut, .completed])
        #expect(try states("a") == [.received, .stagingIn, .running, .stagingOut, .completed], "a never waited")
        let aEnded = try #require(try event("a", .completed)).time
        let bStarted = try #require(try event("b", .stagingIn)).time
        #expect(bStarted >= aEnded, "b started only when a gave its CPUs back")
        #expect(launcher.started == ["a", "b"])
        #expect(await r.freeCapacity == Self.node)
        #expect(try journal.history("b").filter { $0.kind == .state && $0.state == .queued }.count == 1,
                "queued is evented once")
    }

    @Test func tasksStartByPriorityThenArrival() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(20)))
        let r = runner(launcher, capacity: Capacity(cpus: 1, memoryMB: 0, gpus: 0, storageMB: 0))
        try admit("first", cpus: 1)
        try admit("low", cpus: 1)
        try admit("high", cpus: 1, priority: 5)
        try admit("mid1", cpus: 1, planPriority: 1)
        try admit("mid2", cpus: 1, priority: 1, planPriority: -3)
        try admit("mid3", cpus: 1, priority: 1)
        for id in ["first", "low", "high", "mid1", "mid2", "mid3"] { await r.enqueue(id) }
        await r.waitUntilIdle()
        #expect(launcher.started == ["first", "high", "mid1", "mid2", "mid3", "low"])
    }

    /// Strict order: a small task that would fit does not pass a bigger one waiting before it.
    @Test func aSmallTaskDoesNotPassAnEarlierBigOne() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(50)))
        let r = runner(launcher)
        try admit("a", cpus: 1)
        try admit("big", cpus: 2)
        try admit("small", cpus: 1)
        for id in ["a", "big", "small"] { await r.enqueue(id) }
        #expect(try event("small", .queued)?.detail.message
                == "waiting behind task big (tasks start in order of priority, then arrival)")
        #expect(await r.admission(for: Resources(cpus: 1, memoryMB: nil, gpus: nil, storageMB: nil)) == .mustWait,
                "it fits what is free, but would queue behind big")
        await r.waitUntilIdle()
        #expect(launcher.started == ["a", "big", "small"])
    }

    @Test func aSlotCapWaitsToo() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(50)))
        let r = runner(launcher, max: 1)
        try admit("a")
        try admit("b")
        await r.enqueue("a")
        await r.enqueue("b")
        #expect(try event("b", .queued)?.detail.message == "waiting for a free slot (1 of 1 tasks running)")
        await r.waitUntilIdle()
        #expect(try journal.task("b")?.state == .completed)
    }

    @Test func aTaskThatCanNeverFitIsDeclinedNamingTheResourceAndBothAmounts() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        let r = runner(launcher)
        #expect(await r.admission(for: Resources(cpus: 4, memoryMB: nil, gpus: nil, storageMB: nil))
                == .never("resources.cpus: 4 requested, the node has 2"))
        try admit("huge", cpus: 4)
        await r.enqueue("huge")
        await r.waitUntilIdle()
        let rec = try #require(try journal.task("huge"))
        #expect(rec.state == .declined)
        #expect(rec.message?.contains("resources.cpus: 4 requested, the node has 2") == true, "\(rec.message ?? "")")
        #expect(launcher.started.isEmpty)
        let timings = try #require(try event("huge", .declined)?.detail.data?["timings"])
        #expect(TaskTimings(timings)?.runMS == 0)
    }

    @Test func admissionAndFreeCapacityForThePools() async throws {
        let launcher = FakeLauncher(script: .hang)
        let r = runner(launcher)
        let one = Resources(cpus: 1, memoryMB: 500, gpus: nil, storageMB: nil)
        #expect(await r.admission(for: one) == .fitsNow)
        try admit("a", cpus: 1, memoryMB: 600)
        await r.enqueue("a")
        #expect(await r.freeCapacity == Capacity(cpus: 1, memoryMB: 400, gpus: 0, storageMB: 1000))
        #expect(await r.admission(for: one) == .mustWait)
        #expect(await r.admission(for: Resources(cpus: nil, memoryMB: nil, gpus: 1, storageMB: nil))
                == .never("resources.gpus: 1 requested, the node has 0"))
        await r.cancel("a", reason: nil)
        await r.waitUntilIdle()
        #expect(await r.admission(for: one) == .fitsNow)
    }

    /// Whatever way the first task ends, its CPUs come back and the waiting task runs.
    @Test(arguments: ["completed", "failed", "timeout", "cancelledRunning", "failedToStart"])
    func resourcesAreReleasedOnEveryOutcome(_ outcome: String) async throws {
        let script: FakeLauncher.Script = switch outcome {
        case "completed": .exit(0, after: .milliseconds(30))
        case "failed": .exit(3, after: .milliseconds(30))
        case "failedToStart": .failToStart
        default: .hang
        }
        let launcher = FakeLauncher(script: script)
        let r = runner(launcher)
        try admit("a", cpus: 2, timeout: outcome == "timeout" ? 1 : nil)
        try admit("b", cpus: 2, timeout: 1)
        await r.enqueue("a")
        await r.enqueue("b")
        #expect(try journal.task("b")?.state == .queued)
        if outcome == "cancelledRunning" {
            try await waitFor("a's start") { try journal.task("a")?.handle != nil }
            await r.cancel("a", reason: "operator")
        }
        await r.waitUntilIdle()
        let a = try #require(try journal.task("a"))
        #expect(a.state.isTerminal, "\(a.state)")
        #expect(try states("b").contains(.stagingIn), "b ran after a ended \(outcome)")
        #expect(try journal.task("b")?.state.isTerminal == true)
        #expect(await r.freeCapacity == Self.node)
        for id in ["a", "b"] {
            let end = try #require(try journal.history(id).last)
            #expect(TaskTimings(end.detail.data?["timings"]) != nil, "\(id)'s terminal event has timings")
        }
    }

    @Test func aTaskDeclinedAtItsStartGivesItsResourcesBack() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        launcher.declineReason = "not on this node"
        let r = runner(launcher)
        try admit("a", cpus: 2)
        try admit("b", cpus: 2)
        await r.enqueue("a")
        await r.enqueue("b")
        await r.waitUntilIdle()
        #expect(try states("a") == [.received, .declined])
        #expect(try states("b") == [.received, .queued, .declined], "b waited for a's CPUs, then was declined too")
        #expect(await r.freeCapacity == Self.node)
    }

    /// Outputs waiting for approval hold no reservation: the next task runs meanwhile.
    @Test func awaitingApprovalHoldsNoResources() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .zero))
        var s = RunnerSettings(nodeID: "n1", maxConcurrentTasks: 4, stopGrace: .milliseconds(100))
        s.capacity = Self.node
        let r = Runner(settings: s, journal: journal, registry: LauncherRegistry([launcher]),
                       sandboxes: FakeSandboxes(), stageIn: NoStageIn(), stageOut: HoldingStageOut(),
                       logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), clock: FastClock())
        try admit("a", cpus: 2)
        try admit("b", cpus: 2)
        await r.enqueue("a")
        await r.enqueue("b")
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.state == .awaitingApproval)
        #expect(try journal.task("b")?.state == .awaitingApproval)
        #expect(await r.freeCapacity == Self.node)
        try journal.markStep("a", Runner.approvalStep, info: "approved")
        await r.resumeDecided()
        await r.waitUntilIdle()
        #expect(try journal.task("a")?.state == .completed)
        let timings = try #require(TaskTimings(try journal.history("a").last?.detail.data?["timings"]))
        #expect(timings.approvalMS != nil, "the wait for approval is timed on its own")
        #expect(await r.freeCapacity == Self.node)
    }

    /// Work a cluster scheduler places (Slurm) uses the cluster's resources: it reserves nothing here, and a request
    /// bigger than this node goes to the cluster, which judges it.
    @Test func aClusterLaunchersTasksNeedOnlyASlot() async throws {
        let fake = FakeLauncher(name: "slurm", script: .exit(0, after: .milliseconds(20)))
        var s = RunnerSettings(nodeID: "n1", maxConcurrentTasks: 4, stopGrace: .milliseconds(100))
        s.capacity = Self.node
        let r = Runner(settings: s, journal: journal, registry: LauncherRegistry([ClusterFakeLauncher(inner: fake)]),
                       sandboxes: FakeSandboxes(), stageIn: NoStageIn(), stageOut: FakeStageOut(),
                       logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), clock: FastClock())
        for id in ["a", "b"] {
            var plan: [String: JSONValue] = ["schema_version": 1, "id": "t", "version": "1", "launcher": "slurm",
                                             "command": .object(["base": .array(["/bin/true"])])]
            plan["resources"] = .object(["cpus": 48])
            let doc: JSONValue = .object(["schema_version": 1, "task_id": .string(id), "execution_id": "e",
                                          "plan": .object(plan)])
            let spec = try DocumentReader.readTask(doc, requireTaskID: true)
            _ = try journal.admit(spec, document: doc, at: Date())
            #expect(await r.admission(for: spec) == .fitsNow)
        }
        await r.enqueue("a")
        await r.enqueue("b")
        #expect(await r.freeCapacity == Self.node)
        await r.waitUntilIdle()
        #expect(try states("a") == [.received, .stagingIn, .running, .stagingOut, .completed])
        #expect(try states("b") == [.received, .stagingIn, .running, .stagingOut, .completed])
    }

    @Test func cancelledWhileQueuedLetsTheNextStart() async throws {
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(100)))
        let r = runner(launcher)
        try admit("a", cpus: 2)
        try admit("b", cpus: 2)
        try admit("c", cpus: 1)
        for id in ["a", "b", "c"] { await r.enqueue(id) }
        await r.cancel("b", reason: "operator")
        #expect(try states("b") == [.received, .queued, .cancelled])
        #expect(try TaskTimings(journal.history("b").last?.detail.data?["timings"]) != nil)
        await r.waitUntilIdle()
        #expect(launcher.started == ["a", "c"])
        #expect(await r.freeCapacity == Self.node)
    }

    @Test func afterARestartQueuedTasksStayQueuedInOrderAndRunningWorkReReserves() async throws {
        try admit("running", cpus: 2)
        try journal.transition("running", to: .stagingIn, detail: .none, at: Date())
        try journal.transition("running", to: .running, detail: .none, at: Date())
        try journal.setHandle("running", LaunchHandle(launcher: "process", state: FakeState(id: "running")))
        for id in ["q1", "q2", "q3"] {
            try admit(id, cpus: 1)
            try journal.transition(id, to: .queued, detail: EventDetail(message: "waiting"), at: Date())
        }
        let launcher = FakeLauncher(script: .exit(0, after: .milliseconds(20)), recovery: .running)
        let r = runner(launcher, max: 1)
        await r.recover()
        #expect(await r.freeCapacity.cpus == 0, "the re-attached task holds its CPUs again")
        #expect(await r.queuedCount == 3)
        await r.waitUntilIdle()
        #expect(launcher.started == ["q1", "q2", "q3"])
        for id in ["q1", "q2", "q3"] {
            #expect(try states(id) == [.received, .queued, .stagingIn, .running, .stagingOut, .completed],
                    "queued is not evented again after the restart")
        }
        #expect(await r.freeCapacity == Self.node)
    }
}

/// A stage-out that holds outputs for approval until the journal has a decision.
struct HoldingStageOut: StageOut {
    func check(_ target: StageOutTarget?) -> String? { nil }
    func stageOut(_ job: LaunchJob, record: TaskRecord, outcome: TaskOutcome, reporter: StageReporter) async throws
        -> StageOutSummary {
        let decided = reporter.isDone(Runner.approvalStep) != nil
        var summary = StageOutSummary(files: 1, bytes: 1, location: decided ? "file:///x" : nil)
        summary.awaitingApproval = !decided
        return summary
    }
}

/// A fake whose work waits in a cluster scheduler's queue (as Slurm's).
struct ClusterFakeLauncher: QueuedLauncher, ForwardingFake {
    let inner: FakeLauncher
    var queuePollInterval: Duration { .seconds(1) }
    func queueState(_ handle: LaunchHandle) async -> QueueState { .started }
}

