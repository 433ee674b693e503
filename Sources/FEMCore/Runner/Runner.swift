import Foundation
import Logging

/// Drives each task through `received → staging_in → running → staging_out → completed | failed | cancelled`
/// (or `declined`). It knows only the core's ports: journal, launchers, sandboxes, stage-in and stage-out.
public actor Runner {
    /// `settings`, `registry`, `stageIn` and `stageOut` change on a config reload (`reload`): a task takes them
    /// when its step starts; the supervisor keeps the grace and reporter limits it was built with.
    var settings: RunnerSettings
    let journal: any Journal
    var registry: LauncherRegistry
    let sandboxes: any SandboxProvider
    var stageIn: any StageIn
    var stageOut: any StageOut
    let logger: Logger
    /// Called after every journal write that adds an event, to wake the publisher.
    let eventsAdded: @Sendable () -> Void
    /// Reads the work's logs while it runs, for reporter-protocol lines and launcher signals.
    let follower: any LineFollower
    let hooks: any HookRunner
    let unrecordedStore: any UnrecordedChanges
    /// Waits for running work (TaskExecution hands it over once started or re-attached).
    let supervisor: Supervisor
    /// Timeouts, grace periods, deadlines and retry delays run on this clock.
    let clock: RunnerClock
    /// The actor runs here, and so does every journal write it makes: never on the cooperative pool.
    let journalThread: JournalThread

    public nonisolated var unownedExecutor: UnownedSerialExecutor { journalThread.asUnownedSerialExecutor() }

    var queue: [String] = []
    /// Why each active task was cancelled, once it was.
    var cancelReasons: [String: String] = [:]
    /// Interrupts the stage-in step or start a task is in (set while one runs).
    var interrupters: [String: @Sendable () -> Void] = [:]
    /// State changes the journal refused, with its error: retried until written, never forgotten meanwhile.
    var unrecorded: [String: UnrecordedChange] = [:]
    /// The daemon is stopping: journal retries give up (the change stays in `unrecordedStore`).
    var stopping = false
    /// The daemon drains for a stop: queued tasks are not started.
    var draining = false
    var active: [String: AsyncStream<String>.Continuation] = [:]
    var idleWaiters: [CheckedContinuation<Void, Never>] = []

    public init(settings: RunnerSettings, journal: any Journal, registry: LauncherRegistry,
                sandboxes: any SandboxProvider, stageIn: any StageIn, stageOut: any StageOut, logger: Logger,
                follower: any LineFollower = NoLineFollower(), hooks: any HookRunner = NoHooks(),
                unrecorded: any UnrecordedChanges = NoUnrecordedChanges(),
                clock: any Clock<Duration> = ContinuousClock(), journalThread: JournalThread = .shared,
                eventsAdded: @escaping @Sendable () -> Void = {}) {
        self.journalThread = journalThread
        let clock = RunnerClock(clock)
        self.clock = clock
        self.unrecordedStore = unrecorded
        self.follower = follower
        self.hooks = hooks
        self.settings = settings
        self.journal = journal
        self.registry = registry
        self.sandboxes = sandboxes
        self.stageIn = stageIn
        self.stageOut = stageOut
        self.logger = logger
        self.eventsAdded = eventsAdded
        self.supervisor = Supervisor(settings: settings, journal: journal, logger: logger, follower: follower,
                                     hooks: hooks, clock: clock, journalThread: journalThread,
                                     eventsAdded: eventsAdded)
    }

    public var activeCount: Int { active.count }

    /// A config reload (SIGHUP): launchers, staging and the policy settings below from the new config, for what
    /// starts from now on. Every other setting (identity, slots, grace) stays as the runner was built.
    public func reload(settings new: RunnerSettings, registry: LauncherRegistry, stageIn: any StageIn,
                       stageOut: any StageOut) {
        settings.datasets = new.datasets
        settings.envAllowed = new.envAllowed
        settings.defaultTimeoutSeconds = new.defaultTimeoutSeconds
        settings.maxTimeoutSeconds = new.maxTimeoutSeconds
        settings.allowTimeoutAbovePlan = new.allowTimeoutAbovePlan
        self.registry = registry
        self.stageIn = stageIn
        self.stageOut = stageOut
    }

    /// State changes not yet written to the journal (task id → the state it is really in), for the heartbeat.
    public var unrecordedStates: [String: TaskState] { unrecorded.mapValues(\.state) }

    /// The drain for a stop: no queued task starts any more (they stay `received` in the journal and run after the
    /// next start); waits until nothing runs, or `limit` passed. Returns how many tasks are still active.
    public func drain(limit: Duration) async -> Int {
        draining = true
        let deadline = clock.now + limit
        while !active.isEmpty && clock.now < deadline && !Task.isCancelled {
            try? await clock.sleep(for: .milliseconds(100))
        }
        return active.count
    }

    /// The daemon stops: journal retries end (what is still unrecorded stays in the unrecorded store).
    public func shutdown() {
        stopping = true
    }

    /// Queues a journaled task; it starts when a slot is free.
    public func enqueue(_ taskID: String) {
        guard active[taskID] == nil, !queue.contains(taskID) else { return }
        queue.append(taskID)
        pump()
    }

    /// Waits until nothing is queued or running.
    public func waitUntilIdle() async {
        if queue.isEmpty && active.isEmpty { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }

    /// Cancels a task wherever it is: queued tasks end at once, a stage-in step or a start is interrupted (the
    /// tool never starts), running work is stopped.
    public func cancel(_ taskID: String, reason: String?) async {
        let why = reason.map { "cancelled: \($0)" } ?? "cancelled by the orchestrator"
        if let i = queue.firstIndex(of: taskID) {
            queue.remove(at: i)
            await record(taskID, .cancelled, EventDetail(message: why))
            logger.info("cancelled before it started", metadata: ["task": "\(taskID)"])
            signalIdleIfNeeded()
            return
        }
        if let signal = active[taskID] {
            try? journal.setCancelRequested(taskID)
            if cancelReasons[taskID] == nil { cancelReasons[taskID] = why }
            interrupters[taskID]?()
            signal.yield(why)
            logger.info("cancel requested; stopping", metadata: ["task": "\(taskID)"])
            return
        }
        guard let rec = try? journal.task(taskID) else {
            logger.warning("cancel for a task this node does not know; ignored", metadata: ["task": "\(taskID)"])
            return
        }
        if rec.state == .awaitingApproval {
            await record(taskID, .cancelled, EventDetail(message: why + "; its outputs were not sent"))
        } else if rec.state.isTerminal {
            logger.info("cancel for a task that already ended (\(rec.state.rawValue)); ignored",
                        metadata: ["task": "\(taskID)"])
        } else {
            try? journal.setCancelRequested(taskID)
            logger.info("cancel recorded; the task stops when it is resumed", metadata: ["task": "\(taskID)"])
        }
    }

    /// After a restart: every task the journal holds in a non-final state is resumed, re-attached or failed.
    public func recover() {
        let open: [TaskRecord]
        do {
            open = try journal.tasks(states: [.received, .stagingIn, .running, .stagingOut], limit: 1_000_000)
        } catch {
            logger.error("cannot read the journal to recover tasks: \(error)")
            return
        }
        for rec in open.sorted(by: { $0.receivedAt < $1.receivedAt }) {
            logger.info("recovering task in state \(rec.state.rawValue)", metadata: ["task": "\(rec.taskID)"])
            enqueue(rec.taskID)
        }
        resumeDecided()
    }

    /// Tasks whose outputs waited for approval and now have a decision (`fem-client outputs approve|reject`
    /// journals it) go on with their stage-out. Waiting tasks hold no slot; the daemon calls this every second.
    public func resumeDecided() {
        guard let waiting = try? journal.tasks(states: [.awaitingApproval], limit: 100_000) else { return }
        for rec in waiting where ((try? journal.completedStep(Self.approvalStep, of: rec.taskID)) ?? nil) != nil {
            enqueue(rec.taskID)
        }
    }

    /// What the launcher can tell about a task's work now (running, exited or gone; CPU and memory used), from the
    /// journaled handle: nil when the task has no handle or its launcher is not enabled.
    public func inspect(_ taskID: String) async -> LaunchInspection? {
        guard let handle = (try? journal.task(taskID))?.handle,
              let launcher = registry.launcher(named: handle.launcher) else { return nil }
        return await launcher.inspect(handle)
    }

    /// The journal step holding an airlock decision: `approved` or `rejected: <reason>`.
    public static let approvalStep = "approval"
    /// The journal step holding tool text the airlock keeps from events (error text, print/info lines, triggers),
    /// for the steward to review with the outputs.
    public static let heldTextStep = "held_text"

    private func pump() {
        guard !draining else { return }
        while active.count < settings.maxConcurrentTasks, !queue.isEmpty {
            let id = queue.removeFirst()
            let (stream, continuation) = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(1))
            active[id] = continuation
            Task { [weak self] in
                await self?.execute(id, cancelSignal: stream)
                await self?.finished(id)
            }
        }
    }

    private func finished(_ id: String) {
        active[id]?.finish()
        active[id] = nil
        cancelReasons[id] = nil
        interrupters[id] = nil
        pump()
        signalIdleIfNeeded()
    }

    private func signalIdleIfNeeded() {
        guard queue.isEmpty && active.isEmpty else { return }
        let waiters = idleWaiters
        idleWaiters = []
        waiters.forEach { $0.resume() }
    }
}
