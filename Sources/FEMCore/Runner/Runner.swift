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

    /// Tasks waiting for a slot and their resources, in start order (see `QueueEntry.precedes`).
    var queue: [QueueEntry] = []
    /// The node's capacity and what active tasks reserve of it.
    var ledger: ResourceLedger
    /// Gives queue entries their arrival order.
    var arrivals = 0
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
        self.ledger = ResourceLedger(capacity: settings.capacity)
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

    /// The node's attributes (`NodeFingerprint`), for the constraints check before a task starts; nil: no check
    /// here (unit tests, `fem-client run`).
    var attributes: (@Sendable () -> NodeAttributes)?

    /// The daemon hands over its fingerprint before `recover()`: a task journaled as received but not yet checked
    /// against its constraints when the daemon stopped is checked before it starts, never run unchecked.
    public func checkConstraints(against attributes: @escaping @Sendable () -> NodeAttributes) {
        self.attributes = attributes
    }

    /// A config reload (SIGHUP): launchers, staging and the policy settings below (trust included) from the new config, for what
    /// starts from now on. Every other setting (identity, slots, grace) stays as the runner was built.
    public func reload(settings new: RunnerSettings, registry: LauncherRegistry, stageIn: any StageIn,
                       stageOut: any StageOut) {
        settings.datasets = new.datasets
        settings.envAllowed = new.envAllowed
        settings.defaultTimeoutSeconds = new.defaultTimeoutSeconds
        settings.maxTimeoutSeconds = new.maxTimeoutSeconds
        settings.allowTimeoutAbovePlan = new.allowTimeoutAbovePlan
        settings.trust = new.trust
        self.registry = registry
        self.stageIn = stageIn
        self.stageOut = stageOut
    }

    /// State changes not yet written to the journal (task id → the state it is really in), for the heartbeat.
    public var unrecordedStates: [String: TaskState] { unrecorded.mapValues(\.state) }

    /// The drain for a stop: no waiting task starts any more (they stay `received` or `queued` in the journal and run
    /// after the next start); waits until nothing runs, or `limit` passed. Returns how many tasks are still active.
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

    /// Queues a journaled task; it starts when a slot is free and its resources fit (see `pump`).
    public func enqueue(_ taskID: String) {
        add(taskID)
        pump()
    }

    /// Puts a task in its place in the queue without starting anything.
    private func add(_ taskID: String) {
        guard active[taskID] == nil, !queue.contains(where: { $0.id == taskID }) else { return }
        let entry = QueueEntry(taskID, record: try? journal.task(taskID), arrival: arrivals,
                               usesNodeResources: { usesNodeResources(launcher: $0) })
        arrivals += 1
        let at = queue.firstIndex { entry.precedes($0) } ?? queue.endIndex
        queue.insert(entry, at: at)
    }

    /// Waits until nothing is queued or running.
    public func waitUntilIdle() async {
        if queue.isEmpty && active.isEmpty { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }

    /// Whether a task with these resources would start now: `.never` when they exceed the node's capacity (the
    /// reason names the resource and both amounts), `.mustWait` when they do not fit what is free now, no slot is
    /// free (`max_concurrent_tasks`), or tasks wait in the queue already (it would queue behind them), else `.fitsNow`.
    public func admission(for resources: Resources) -> Admission {
        switch ledger.admission(for: resources) {
        case .never(let why): return .never(why)
        case .mustWait: return .mustWait
        case .fitsNow:
            let waiting = queue.contains { $0.needsAdmission }
            return active.count < settings.maxConcurrentTasks && !waiting ? .fitsNow : .mustWait
        }
    }

    /// `admission(for:)` for a whole task: the resources of work a cluster scheduler places (Slurm) are the
    /// cluster's, not this node's, so such a task needs only a slot.
    public func admission(for task: TaskSpec) -> Admission {
        admission(for: usesNodeResources(launcher: task.plan.launcher) ? task.plan.resources : .none)
    }

    /// False for a launcher whose work a cluster scheduler places (`QueuedLauncher`: Slurm): its `resources` are asked
    /// of the cluster, which queues the work itself, and reserve nothing here.
    func usesNodeResources(launcher name: String) -> Bool {
        !(registry.launcher(named: name) is any QueuedLauncher)
    }

    /// The node's capacity minus what active tasks reserve.
    public var freeCapacity: Capacity { ledger.free }

    /// The node's whole capacity (`[node.capacity]`).
    public var capacity: Capacity { ledger.capacity }

    /// Tasks waiting to start (for resources, a slot, or an earlier task).
    public var queuedCount: Int { queue.count }

    /// Cancels a task wherever it is: queued tasks end at once, a stage-in step or a start is interrupted (the
    /// tool never starts), running work is stopped.
    public func cancel(_ taskID: String, reason: String?) async {
        let why = reason.map { "cancelled: \($0)" } ?? "cancelled by the orchestrator"
        if let i = queue.firstIndex(where: { $0.id == taskID }) {
            queue.remove(at: i)
            await record(taskID, .cancelled, EventDetail(message: why))
            logger.info("cancelled before it started", metadata: ["task": "\(taskID)"])
            pump()  // the tasks behind it may start now
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
            open = try journal.tasks(states: [.received, .queued, .stagingIn, .running, .stagingOut], limit: 1_000_000)
        } catch {
            logger.error("cannot read the journal to recover tasks: \(error)")
            return
        }
        // Every recovered task takes its place first and only then does anything start: resumed work (running,
        // staging out, approved outputs) goes ahead of tasks not yet started whatever their age, and keeps its slot
        // and its reservation instead of losing them to an older task that had not started.
        for rec in open.sorted(by: { $0.receivedAt < $1.receivedAt }) {
            logger.info("recovering task in state \(rec.state.rawValue)", metadata: ["task": "\(rec.taskID)"])
            add(rec.taskID)
        }
        for id in decidedApprovals() { add(id) }
        pump()
    }

    /// Tasks whose outputs waited for approval and now have a decision (`fem-client outputs approve|reject`
    /// journals it) go on with their stage-out. Waiting tasks hold no slot; the daemon calls this every second.
    public func resumeDecided() {
        for id in decidedApprovals() { enqueue(id) }
    }

    /// Tasks awaiting approval whose decision is journaled.
    private func decidedApprovals() -> [String] {
        guard let waiting = try? journal.tasks(states: [.awaitingApproval], limit: 100_000) else { return [] }
        return waiting.filter { ((try? journal.completedStep(Self.approvalStep, of: $0.taskID)) ?? nil) != nil }
            .map(\.taskID)
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

    /// Starts what may start, in queue order. Policy: strict order, no backfill. A task that must wait (its
    /// resources do not fit what is free, or no slot is free) blocks every task behind it, even smaller ones that
    /// would fit: a big task is never starved by a stream of small ones, at the cost of idle capacity meanwhile
    /// (Slurm's backfill lets small jobs pass only when it knows they end before the big one could start; tasks here
    /// have timeouts, not run-time estimates, so that guarantee is not available). Tasks that can never fit are
    /// declined wherever they are in the queue; work resumed past its start (re-attached, stage-out) needs a slot
    /// only, and goes first.
    func pump() {
        guard !draining else { return }
        var blockedBy: String?
        var i = 0
        while i < queue.count {
            let entry = queue[i]
            if !entry.needsAdmission {
                if active.count < settings.maxConcurrentTasks {
                    queue.remove(at: i)
                    start(entry)
                } else {
                    i += 1
                }
                continue
            }
            // Behind a blocked task, one already checked and announced has nothing to do: a pump stays cheap per
            // waiting task however long the queue (the capacity does not change, so a task that fit it still does).
            if blockedBy != nil && entry.vetted && entry.announced {
                i += 1
                continue
            }
            if let never = ledger.neverFits(entry.resources) {
                queue.remove(at: i)
                decline(entry.id, never)
                continue
            }
            queue[i].vetted = true
            if blockedBy == nil {
                if active.count < settings.maxConcurrentTasks, ledger.shortfall(entry.resources) == nil {
                    queue.remove(at: i)
                    start(entry)
                    continue
                }
                blockedBy = entry.id
                if !entry.announced {
                    markQueued(i, ledger.shortfall(entry.resources).map { "waiting for \($0)" }
                                  ?? "waiting for a free slot (\(active.count) of \(settings.maxConcurrentTasks) tasks running)")
                }
            } else if entry.announced {
                // (checked just now; nothing to announce)
            } else if let short = ledger.shortfall(entry.resources) {
                markQueued(i, "waiting for \(short)")
            } else {
                markQueued(i, "waiting behind task \(blockedBy ?? "") (tasks start in order of priority, then arrival)")
            }
            i += 1
        }
    }

    private func start(_ entry: QueueEntry) {
        let id = entry.id
        if entry.reserves { ledger.reserve(id, entry.resources) }
        let (stream, continuation) = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(1))
        active[id] = continuation
        Task { [weak self] in
            await self?.execute(id, cancelSignal: stream)
            await self?.finished(id)
        }
    }

    /// A task whose resources exceed the node's capacity: declined (it is active meanwhile, so that `waitUntilIdle`
    /// waits for the decline to be journaled).
    private func decline(_ id: String, _ reason: String) {
        let (_, continuation) = AsyncStream<String>.makeStream(bufferingPolicy: .bufferingNewest(1))
        active[id] = continuation
        Task { [weak self] in
            await self?.record(id, .declined, EventDetail(message: reason + "; it can never run here"))
            await self?.finished(id)
        }
    }

    /// Journals and events `queued` once for a task that must wait, with what it waits for. A refused write leaves
    /// the task `received` (it waits all the same; its start journals `staging_in` from there).
    private func markQueued(_ index: Int, _ why: String) {
        guard !queue[index].announced else { return }
        queue[index].announced = true
        let id = queue[index].id
        do {
            try journal.transition(id, to: .queued, detail: EventDetail(message: why), at: Date())
            logger.info("queued: \(why)", metadata: ["task": "\(id)"])
            eventsAdded()
        } catch {
            logger.warning("cannot journal queued (\(why)): \(error)", metadata: ["task": "\(id)"])
        }
    }

    private func finished(_ id: String) {
        active[id]?.finish()
        active[id] = nil
        ledger.release(id)
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

extension Runner {
    public typealias Admission = ResourceAdmission

    /// A task waiting in the runner's queue.
    struct QueueEntry {
        let id: String
        let priority: Int
        let resources: Resources
        let arrival: Int
        /// Not started yet: it starts when its resources fit. False for work resumed past its start (running,
        /// staging out, approved outputs): it needs a slot only.
        let needsAdmission: Bool
        /// It holds its resources while active (everything but a stage-out after approval: awaiting approval holds
        /// no reservation, and neither does sending its outputs afterwards).
        let reserves: Bool
        /// `queued` was journaled (or the task was `queued` already when it was read).
        var announced: Bool
        /// A pump found that it can fit the node's capacity.
        var vetted = false

        init(_ id: String, record: TaskRecord?, arrival: Int, usesNodeResources: (String) -> Bool) {
            self.id = id
            self.arrival = arrival
            let spec = record.flatMap { try? DocumentReader.readTask($0.document, requireTaskID: true) }
            // An unreadable record needs no admission: `execute` fails it at once.
            resources = spec.map { usesNodeResources($0.plan.launcher) ? $0.plan.resources : .none } ?? .none
            priority = spec?.effectivePriority ?? 0
            let state = record?.state ?? .received
            needsAdmission = spec != nil && [.received, .queued, .stagingIn].contains(state)
            reserves = state != .awaitingApproval
            // Only a `received` task can be announced `queued` (a restarted `staging_in` waits silently).
            announced = state != .received
        }

        /// Resumed work first, then higher priority, then earlier arrival.
        func precedes(_ other: QueueEntry) -> Bool {
            if needsAdmission != other.needsAdmission { return !needsAdmission }
            if priority != other.priority { return priority > other.priority }
            return arrival < other.arrival
        }
    }
}
