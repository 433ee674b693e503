import Foundation
import Logging

/// Node settings the runner needs: identity, concurrency, timeouts and the datasets it may mount.
public struct RunnerSettings: Sendable {
    public var nodeID: String
    public var nodeName: String
    public var maxConcurrentTasks: Int
    public var defaultTimeoutSeconds: Int
    /// A task may ask for more time than its plan declares only when this is true.
    public var allowTimeoutAbovePlan: Bool
    /// Upper bound for any task, whatever it asks.
    public var maxTimeoutSeconds: Int
    public var stopGrace: Duration
    /// Dataset id → host path.
    public var datasets: [String: String]
    /// `launchers.env_allowed`: the only environment names a plan may set (exact, or `PREFIX*`); empty: any name
    /// the built-in deny list (EnvironmentPolicy) does not refuse.
    public var envAllowed: [String]
    /// What the reporter channel may carry (`[reporter]`, and the airlock's hold on tool text).
    public var reporter: ReporterLimits
    /// A state change the journal refuses is tried again after this, doubling up to `journalRetryMax`.
    public var journalRetryBase: Duration = .milliseconds(200)
    public var journalRetryMax: Duration = .seconds(5)
    /// After a cancel, a stage-in step or a start that has not stopped by then is left behind (the task ends
    /// `cancelled` at once, and whatever the step still brings is stopped or ignored).
    public var cancelDeadline: Duration = .milliseconds(1500)
    /// Why the node's disk was full at some time since the given date (nil when it was not): a task that fails while
    /// it is, fails `node_disk_full` with that cause (its writes, its logs included, fail too).
    public var diskPressure: @Sendable (Date) -> String? = { _ in nil }

    public init(nodeID: String, nodeName: String? = nil, maxConcurrentTasks: Int = 2, defaultTimeoutSeconds: Int = 3600,
                allowTimeoutAbovePlan: Bool = false, maxTimeoutSeconds: Int = 7 * 24 * 3600,
                stopGrace: Duration = .seconds(10), datasets: [String: String] = [:], envAllowed: [String] = [],
                reporter: ReporterLimits = ReporterLimits()) {
        self.reporter = reporter
        self.nodeID = nodeID
        self.nodeName = nodeName ?? nodeID
        self.maxConcurrentTasks = maxConcurrentTasks
        self.defaultTimeoutSeconds = defaultTimeoutSeconds
        self.allowTimeoutAbovePlan = allowTimeoutAbovePlan
        self.maxTimeoutSeconds = maxTimeoutSeconds
        self.stopGrace = stopGrace
        self.datasets = datasets
        self.envAllowed = envAllowed
    }
}

/// What the log readers of one running task have seen, shared with its supervision.
final class WatchState: @unchecked Sendable {
    private let lock = NSLock()
    private var error: String?
    private var lostSince: (ContinuousClock.Instant, String)?
    private var linked: Bool?
    private var received = 0
    private var sent = 0

    /// Messages the work took from its server and answers it delivered.
    var messages: (received: Int, sent: Int) { lock.withLock { (received, sent) } }
    func messageReceived() { lock.withLock { received += 1 } }
    func replySent() { lock.withLock { sent += 1 } }

    var reportedError: String? { lock.withLock { error } }
    func reportError(_ m: String) { lock.withLock { if error == nil { error = m } } }
    var disconnected: (ContinuousClock.Instant, String)? { lock.withLock { lostSince } }

    /// True when this changes the link's state (so that only changes become events).
    func connect() -> Bool {
        lock.withLock {
            lostSince = nil
            defer { linked = true }
            return linked != true
        }
    }

    func disconnect(_ why: String) -> Bool {
        lock.withLock {
            if lostSince == nil { lostSince = (ContinuousClock.now, why) }
            defer { linked = false }
            return linked != false
        }
    }
}

/// The tool-originated events of one task so far, against the node's caps, and the tool text the airlock holds.
final class EventBudget: @unchecked Sendable {
    enum Verdict { case send, sendCapNotice, logOnly }
    private let lock = NSLock()
    private let limits: ReporterLimits
    private var count = 0
    private var bytes = 0
    private var capped = false
    private var held = ""
    private var heldFull = false

    init(_ limits: ReporterLimits) { self.limits = limits }

    /// After a daemon restart: what the task's tool already caused (and held), from the journal, so re-attaching
    /// does not reset the caps or drop the held text.
    func seed(history: [TaskEvent], held text: String?) {
        lock.withLock {
            for e in history where e.kind == .progress || e.kind == .notice {
                guard let d = e.detail.data else { continue }
                if d["cap_reached"] != nil {
                    capped = true
                    continue
                }
                guard d["round"] != nil || d["finished"] != nil || d["trigger"] != nil || d["link"] != nil else { continue }
                count += 1
                bytes += (e.detail.message?.utf8.count ?? 0) + JSONValue.object(d).encoded().count
            }
            if let text { held = text }
        }
    }

    /// Whether an event of `size` bytes may go out; the first refusal comes with one notice saying so.
    func admit(size: Int) -> Verdict {
        lock.withLock {
            if capped { return .logOnly }
            if count + 1 > limits.maxEventsPerTask || bytes + size > limits.maxEventBytesPerTask {
                capped = true
                return .sendCapNotice
            }
            count += 1
            bytes += size
            return .send
        }
    }

    /// Adds a line of held text; nil when nothing changed (the held text is full). Returns the whole text to journal.
    func hold(_ line: String) -> String? {
        lock.withLock {
            if heldFull { return nil }
            let entry = line + "\n"
            if held.utf8.count + entry.utf8.count > ToolText.maxHeldBytes {
                heldFull = true
                held += "[more tool text was cut; the task's logs/stdout.log holds all of it]\n"
            } else {
                held += entry
            }
            return held
        }
    }
}

/// Drives each task through `received → staging_in → running → staging_out → completed | failed | cancelled`
/// (or `declined`). It knows only the core's ports: journal, launchers, sandboxes, stage-in and stage-out.
public actor Runner {
    let settings: RunnerSettings
    let journal: any Journal
    let registry: LauncherRegistry
    let sandboxes: any SandboxProvider
    let stageIn: any StageIn
    let stageOut: any StageOut
    let logger: Logger
    /// Called after every journal write that adds an event, to wake the publisher.
    let eventsAdded: @Sendable () -> Void
    /// Reads the work's logs while it runs, for reporter-protocol lines and launcher signals.
    let follower: any LineFollower
    let hooks: any HookRunner
    let unrecordedStore: any UnrecordedChanges

    private var queue: [String] = []
    /// Why each active task was cancelled, once it was.
    private var cancelReasons: [String: String] = [:]
    /// Interrupts the stage-in step or start a task is in (set while one runs).
    private var interrupters: [String: @Sendable () -> Void] = [:]
    /// State changes the journal refused, with its error: retried until written, never forgotten meanwhile.
    private var unrecorded: [String: UnrecordedChange] = [:]
    /// The daemon is stopping: journal retries give up (the change stays in `unrecordedStore`).
    private var stopping = false
    /// The daemon drains for a stop: queued tasks are not started.
    private var draining = false
    private var active: [String: AsyncStream<String>.Continuation] = [:]
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []

    public init(settings: RunnerSettings, journal: any Journal, registry: LauncherRegistry,
                sandboxes: any SandboxProvider, stageIn: any StageIn, stageOut: any StageOut, logger: Logger,
                follower: any LineFollower = NoLineFollower(), hooks: any HookRunner = NoHooks(),
                unrecorded: any UnrecordedChanges = NoUnrecordedChanges(),
                eventsAdded: @escaping @Sendable () -> Void = {}) {
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
    }

    public var activeCount: Int { active.count }

    /// State changes not yet written to the journal (task id → the state it is really in), for the heartbeat.
    public var unrecordedStates: [String: TaskState] { unrecorded.mapValues(\.state) }

    /// The drain for a stop: no queued task starts any more (they stay `received` in the journal and run after the
    /// next start); waits until nothing runs, or `limit` passed. Returns how many tasks are still active.
    public func drain(limit: Duration) async -> Int {
        draining = true
        let deadline = ContinuousClock.now + limit
        while !active.isEmpty && ContinuousClock.now < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
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
        for rec in waiting where ((try? journal.step(rec.taskID, Self.approvalStep)) ?? nil) != nil {
            enqueue(rec.taskID)
        }
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

    // MARK: - One task

    /// Journals a state change. A refused write (a full disk, an I/O error) is tried again with backoff until it is
    /// written, the real change kept in memory (and in the unrecorded store) meanwhile; false only for a change the
    /// journal can never take (an illegal transition, an unknown task) or when the daemon stops first.
    @discardableResult
    private func record(_ taskID: String, _ state: TaskState, _ detail: EventDetail) async -> Bool {
        var delay = settings.journalRetryBase
        var failures = 0
        attempts: while true {
            do {
                try journal.transition(taskID, to: state, detail: detail, at: Date())
            } catch {
                // Written after all (the error came after the commit): done.
                if failures > 0, let rec = try? journal.task(taskID), rec.state == state { break attempts }
                // Not worth another try when the journal holds the task in a state that cannot move there.
                if let rec = try? journal.task(taskID), !rec.state.canMove(to: state) {
                    logger.error("journal refused \(state.rawValue): \(error)", metadata: ["task": "\(taskID)"])
                    return false
                }
                failures += 1
                if failures == 1 {
                    let change = UnrecordedChange(state: state, detail: detail, error: "\(error)", time: Date())
                    unrecorded[taskID] = change
                    unrecordedStore.save(taskID, change)
                    logger.error("journal refused \(state.rawValue), trying again until it is written: \(error)",
                                 metadata: ["task": "\(taskID)"])
                }
                if stopping { return false }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, settings.journalRetryMax)
                continue
            }
            break attempts
        }
        if failures > 0 {
            unrecorded[taskID] = nil
            unrecordedStore.remove(taskID)
            logger.notice("journaled \(state.rawValue) after \(failures) refused attempt(s)", metadata: ["task": "\(taskID)"])
        }
        var meta: Logger.Metadata = ["task": "\(taskID)"]
        if let c = detail.failureClass { meta["class"] = "\(c.rawValue)" }
        if let e = detail.exitCode { meta["exit"] = "\(e)" }
        let text = detail.message.map { "\(state.rawValue): \($0)" } ?? state.rawValue
        if state == .failed || state == .declined {
            logger.warning("\(text)", metadata: meta)
        } else {
            logger.info("\(text)", metadata: meta)
        }
        // After the log line, so receiver.log never lags behind what the orchestrator sees.
        eventsAdded()
        return true
    }

    /// Runs a stage-in step or a start as a task of its own that a cancel interrupts: the step's Swift task is
    /// cancelled at once (its blocking calls read that through their cancel flags); one that has not ended
    /// `cancelDeadline` later is left behind, and `late` gets whatever it still produces. Nil when left behind.
    private func interruptibly<T: Sendable>(_ taskID: String, late: (@Sendable (T) async -> Void)? = nil,
                                            _ body: @escaping @Sendable () async throws -> T) async
        -> Result<T, any Error>? {
        let work = Task { try await body() }
        let once = ResumeOnce<Result<T, any Error>?>()
        let deadline = settings.cancelDeadline
        Task {
            let r = await work.result
            if !once.resume(r), case .success(let value) = r { await late?(value) }
        }
        let interrupt: @Sendable () -> Void = {
            work.cancel()
            Task {
                try? await Task.sleep(for: deadline)
                once.resume(nil)
            }
        }
        interrupters[taskID] = interrupt
        if cancelReasons[taskID] != nil { interrupt() }
        let result = await withCheckedContinuation { once.set($0) }
        interrupters[taskID] = nil
        return result
    }

    /// The cancel of a task that is active, if one came (in this run, or journaled before a restart).
    private func cancelReason(_ taskID: String) -> String? {
        if let why = cancelReasons[taskID] { return why }
        if (try? journal.task(taskID))?.cancelRequested == true { return "cancelled by the orchestrator" }
        return nil
    }

    /// An event without a state change (progress, notice), with its line in the log: safe from any thread.
    private nonisolated func noter(for taskID: String) -> @Sendable (EventKind, String, [String: JSONValue]?) -> Void {
        let journal = self.journal
        let logger = self.logger
        let eventsAdded = self.eventsAdded
        return { kind, message, data in
            logger.info("\(message)", metadata: ["task": "\(taskID)"])
            _ = try? journal.note(taskID, kind: kind, detail: EventDetail(message: message, data: data), at: Date())
            eventsAdded()
        }
    }

    private func reporter(for taskID: String) -> StageReporter {
        let journal = self.journal
        let note = noter(for: taskID)
        return StageReporter(
            progress: { message, data in note(.progress, message, data) },
            isDone: { step in (try? journal.step(taskID, step)) ?? nil },
            markDone: { step, info in try? journal.markStep(taskID, step, info: info) },
            notice: { message, data in note(.notice, message, data) })
    }

    private func execute(_ taskID: String, cancelSignal: AsyncStream<String>) async {
        guard let rec = try? journal.task(taskID) else {
            logger.error("task vanished from the journal", metadata: ["task": "\(taskID)"])
            return
        }
        let spec: TaskSpec
        do {
            spec = try DocumentReader.readTask(rec.document, requireTaskID: true)
        } catch {
            // The document was valid when it was admitted; a newer node may be stricter.
            await record(taskID, .failed, EventDetail(failureClass: .runnerSystemFailure,
                                                      message: "the journaled task can no longer be read: \(error)"))
            return
        }
        let notStarted = rec.state == .received || rec.state == .stagingIn
        if rec.cancelRequested && notStarted {
            await record(taskID, .cancelled, EventDetail(message: "cancelled by the orchestrator"))
            return
        }

        let prepared: (job: LaunchJob, launcher: any Launcher)
        switch prepare(spec) {
        case .success(let p): prepared = p
        case .failure(let decline) where notStarted:
            await record(taskID, .declined, EventDetail(message: decline.reason))
            return
        case .failure(let decline):
            // Work already ran under a policy the node no longer has (its config changed across a restart).
            await record(taskID, .failed, EventDetail(failureClass: .runnerSystemFailure,
                                                      message: "cannot resume after a restart: \(decline.reason)"))
            return
        }
        if rec.cancelRequested && rec.state == .running {
            // Cancelled while the daemon was down: stop the work once re-attached.
            active[taskID]?.yield("cancelled by the orchestrator")
        }
        let job = prepared.job
        let launcher = prepared.launcher

        var state = rec.state
        var outcome: TaskOutcome?

        // A change the journal refused before a restart: its kept copy says what really happened.
        if let kept = unrecordedStore.load(taskID), rec.state != kept.state, !rec.state.isTerminal,
           kept.state == .stagingOut || kept.state.isTerminal {
            logger.notice("recovering the outcome the journal refused before the restart", metadata: ["task": "\(taskID)"])
            var detail = kept.detail
            let saved = kept.state == .stagingOut
                ? (detail.data?["outcome"]?.stringValue.flatMap(TaskState.init) ?? .failed) : kept.state
            detail.data?["outcome"] = nil
            detail.message = [detail.message, "outcome not recorded because the journal failed: \(kept.error)"]
                .compactMap { $0 }.joined(separator: "; ")
            unrecordedStore.remove(taskID)
            if rec.state == .received {
                guard await record(taskID, .stagingIn, .none) else { return }
            }
            state = rec.state == .received ? .stagingIn : rec.state
            outcome = TaskOutcome(state: saved, detail: detail)
        } else if unrecordedStore.load(taskID) != nil {
            unrecordedStore.remove(taskID)  // a change that did not matter (the task had not run) or was written
        }

        if outcome == nil && (state == .received || state == .stagingIn) {
            if state == .received {
                guard await record(taskID, .stagingIn, .none) else { return }
            }
            state = .stagingIn
            let sandboxes = self.sandboxes
            let stageIn = self.stageIn
            let reporter = reporter(for: taskID)
            let staged = await interruptibly(taskID) {
                do {
                    _ = try sandboxes.prepare(taskID: taskID)
                } catch {
                    throw TaskFailure(DiskFull.matches("\(error)") ? .nodeDiskFull : .runnerSystemFailure,
                                      "cannot create the sandbox: \(error)")
                }
                try await stageIn.stageIn(job, reporter: reporter)
                try await launcher.prepare(job)
            }
            if let why = cancelReasons[taskID] {
                outcome = TaskOutcome(state: .cancelled, detail: EventDetail(
                    message: why + " (during stage-in; the tool was not started)"))
            } else {
                switch staged {
                case .success?:
                    break
                case .failure(let decline as PolicyDecline)?:
                    await record(taskID, .declined, EventDetail(message: decline.reason))
                    return
                case .failure(let error)?:
                    outcome = Self.failed(error, otherwise: .stageInFailure, "")
                case nil:
                    outcome = Self.failed(TaskFailure(.runnerSystemFailure, "stage-in was left behind"),
                                          otherwise: .runnerSystemFailure, "")
                }
            }
            if outcome == nil, let why = cancelReason(taskID) {
                // Checked before `running` is recorded: a cancel that came as stage-in ended never starts the tool.
                outcome = TaskOutcome(state: .cancelled, detail: EventDetail(message: why + " (the tool was not started)"))
            }
            if outcome == nil {
                let runDetail = EventDetail(message: "launched with \(launcher.name)",
                                            data: ["timeout_seconds": .int(Int64(job.command.timeoutSeconds ?? 0))])
                guard await record(taskID, .running, runDetail) else { return }
                state = .running
                outcome = await launch(job, launcher: launcher, cancelSignal: cancelSignal)
            }
        } else if outcome == nil && state == .running {
            outcome = await reattach(rec, job: job, launcher: launcher, cancelSignal: cancelSignal)
        } else if outcome == nil && (state == .stagingOut || state == .awaitingApproval) {
            // The staging_out event carries the outcome it was entered with.
            let entered = (try? journal.history(taskID))?.last { $0.kind == .state && $0.state == .stagingOut }
            let saved = entered?.detail.data?["outcome"]?.stringValue.flatMap(TaskState.init) ?? .failed
            var detail = entered?.detail ?? EventDetail(failureClass: .nodeRestart)
            detail.data?["outcome"] = nil
            outcome = TaskOutcome(state: saved, detail: detail)
        }
        guard var outcome else { return }
        if outcome.state == .failed, let cls = outcome.detail.failureClass,
           [.taskFailure, .stageInFailure, .stageOutFailure, .runnerSystemFailure].contains(cls),
           // (within the last 30 s: a full disk long before the failure did not cause it)
           let full = settings.diskPressure(max(rec.receivedAt, Date().addingTimeInterval(-30))) {
            outcome.detail.message = [outcome.detail.message, "while the node's disk was full (\(full))"]
                .compactMap { $0 }.joined(separator: "; ")
            outcome.detail.failureClass = .nodeDiskFull
        }

        if state != .stagingOut {
            var entering = outcome.detail
            entering.data = (entering.data ?? [:]).merging(["outcome": .string(outcome.state.rawValue)]) { $1 }
            guard await record(taskID, .stagingOut, entering) else { return }
        }
        guard let current = try? journal.task(taskID) else { return }
        do {
            let summary = try await stageOut.stageOut(job, record: current, outcome: outcome,
                                                      reporter: reporter(for: taskID))
            var outputs: [String: JSONValue] = ["files": .int(Int64(summary.files)), "bytes": .int(summary.bytes),
                                                "location": summary.location.map(JSONValue.string) ?? .null]
            if summary.awaitingApproval {
                await record(taskID, .awaitingApproval, EventDetail(
                    message: "outputs wait for approval (fem-client outputs show|approve|reject \(taskID))",
                    data: ["outputs": .object(outputs)]))
                return
            }
            if let decision = (try? journal.step(taskID, Self.approvalStep)) ?? nil {
                outputs["approval"] = .string(decision)
                if decision.hasPrefix("rejected") {
                    outcome.detail.message = [outcome.detail.message, "outputs \(decision); nothing was uploaded"]
                        .compactMap { $0 }.joined(separator: "; ")
                }
            }
            var data = outcome.detail.data ?? [:]
            data["outputs"] = .object(outputs)
            outcome.detail.data = data
        } catch {
            let message = (error as? TaskFailure)?.message ?? "\(error)"
            if outcome.state == .completed {
                outcome = TaskOutcome(state: .failed, detail: EventDetail(exitCode: outcome.detail.exitCode,
                                                                          failureClass: .stageOutFailure,
                                                                          message: message))
            } else {
                outcome.detail.message = (outcome.detail.message ?? "") + "; stage-out also failed: \(message)"
            }
        }
        guard await record(taskID, outcome.state, outcome.detail) else { return }
        sandboxes.finished(taskID: taskID, state: outcome.state)
    }

    /// Picks the launcher, checks node policy and renders the command. A failure here is a decline.
    private func prepare(_ spec: TaskSpec) -> Result<(job: LaunchJob, launcher: any Launcher), PolicyDecline> {
        guard let launcher = registry.launcher(named: spec.plan.launcher) else {
            return .failure(PolicyDecline("launcher \"\(spec.plan.launcher)\" is not enabled on this node "
                                          + "(launchers.enabled: "
                                          + (registry.names.isEmpty ? "none" : registry.names.joined(separator: ", "))
                                          + ")"))
        }
        let timeout: Int
        switch effectiveTimeout(spec) {
        case .success(let t): timeout = t
        case .failure(let d): return .failure(d)
        }
        let hostPaths = sandboxes.paths(taskID: spec.taskID)
        var datasets: [String: String] = [:]
        for (id, path) in settings.datasets { datasets[id] = launcher.datasetPath(id: id, hostPath: path) }
        let context = RenderContext(nodeID: settings.nodeID, nodeName: settings.nodeName,
                                    paths: launcher.toolPaths(forHost: hostPaths), datasets: datasets)
        let command: RenderedCommand
        do {
            command = try Renderer.render(spec, context: context, timeoutSeconds: timeout)
        } catch {
            return .failure(PolicyDecline("\(error)"))
        }
        let job = LaunchJob(task: spec, command: command, sandbox: hostPaths)
        // Every launcher: no plan variable that makes a program load or run other code (EnvironmentPolicy).
        if let reason = EnvironmentPolicy.problem(in: spec.plan.env, allowed: settings.envAllowed) {
            return .failure(PolicyDecline(reason))
        }
        if let reason = stageIn.check(spec.plan) { return .failure(PolicyDecline(reason)) }
        if let reason = stageOut.check(spec.stageOut) { return .failure(PolicyDecline(reason)) }
        if let reason = launcher.policyCheck(job) { return .failure(PolicyDecline(reason)) }
        return .success((job, launcher))
    }

    func effectiveTimeout(_ spec: TaskSpec) -> Result<Int, PolicyDecline> {
        let planTimeout = spec.plan.timeoutSeconds
        if let asked = spec.timeoutSeconds, let planTimeout, asked > planTimeout, !settings.allowTimeoutAbovePlan {
            return .failure(PolicyDecline("timeout_seconds \(asked) is above the plan's \(planTimeout), and this node "
                                          + "does not allow tasks to extend a plan's timeout"))
        }
        let t = spec.timeoutSeconds ?? planTimeout ?? settings.defaultTimeoutSeconds
        if t > settings.maxTimeoutSeconds {
            return .failure(PolicyDecline("timeout \(t) s is above this node's limit of \(settings.maxTimeoutSeconds) s"))
        }
        return .success(t)
    }

    private func launch(_ job: LaunchJob, launcher: any Launcher, cancelSignal: AsyncStream<String>) async
        -> TaskOutcome {
        let taskID = job.task.taskID
        let journal = self.journal
        let grace = settings.stopGrace
        let logger = self.logger
        // A start that a cancel left behind and that still brought up work: that work is stopped, not orphaned.
        let started = await interruptibly(taskID, late: { handle in
            logger.notice("a start left behind by a cancel brought up work; stopping it", metadata: ["task": "\(taskID)"])
            await launcher.stop(handle, grace: grace)
        }) {
            try await launcher.start(job) { handle in try journal.setHandle(taskID, handle) }
        }
        switch started {
        case .success(let handle)?:
            // A cancel during the start's last moments is in the cancel signal: supervise stops the work at once.
            return await supervise(job, handle: handle, launcher: launcher, cancelSignal: cancelSignal)
        case .failure(let error)?:
            if let why = cancelReasons[taskID] {
                return TaskOutcome(state: .cancelled, detail: EventDetail(message: why + " (while starting; the tool was not started)"))
            }
            return Self.failed(error, otherwise: .runnerSystemFailure, "cannot start: ")
        case nil:
            return TaskOutcome(state: .cancelled, detail: EventDetail(
                message: (cancelReasons[taskID] ?? "cancelled") + " (while starting; the tool was not started)"))
        }
    }

    /// A failure outcome: a `TaskFailure` keeps its class and message; any other error gets `otherwise`.
    /// A write that failed on a full filesystem is the node's fault: `node_disk_full`, with the real cause.
    static func failed(_ error: Error, otherwise: FailureClass, _ prefix: String) -> TaskOutcome {
        if let f = error as? TaskFailure {
            let cls = f.failureClass != .taskFailure && DiskFull.matches(f.message) ? .nodeDiskFull : f.failureClass
            return TaskOutcome(state: .failed, detail: EventDetail(failureClass: cls, message: f.message))
        }
        let cls = DiskFull.matches("\(error)") ? .nodeDiskFull : otherwise
        return TaskOutcome(state: .failed, detail: EventDetail(failureClass: cls, message: "\(prefix)\(error)"))
    }

    private func reattach(_ rec: TaskRecord, job: LaunchJob, launcher: any Launcher,
                          cancelSignal: AsyncStream<String>) async -> TaskOutcome {
        switch await launcher.recover(job, handle: rec.handle) {
        case .running:
            guard let handle = rec.handle else {
                return TaskOutcome(state: .failed, detail: EventDetail(
                    failureClass: .nodeRestart, message: "work without a journaled handle cannot be followed"))
            }
            logger.info("re-attached to running work", metadata: ["task": "\(rec.taskID)"])
            _ = try? journal.note(rec.taskID, kind: .notice, detail: EventDetail(message: "re-attached after a daemon restart"),
                                  at: Date())
            eventsAdded()
            return await supervise(job, handle: handle, launcher: launcher, cancelSignal: cancelSignal)
        case .exited(let outcome):
            logger.info("work finished while the daemon was down; collected", metadata: ["task": "\(rec.taskID)"])
            return classify(outcome)
        case .lost(let why):
            return TaskOutcome(state: .failed, detail: EventDetail(failureClass: .nodeRestart, message: why))
        }
    }

    private enum Race: Sendable {
        case exited(LaunchOutcome)
        case waitFailed(String)
        case timedOut
        case cancelled(String)
        /// The tool reported an error (reporter protocol).
        case reportedError(String)
        /// The tool reported `Finished`.
        case finished
        /// The work stayed away from its server past the launcher's limit.
        case unreachable(String)
        case ignore
    }

    /// Waits for the work, racing its end against the timeout and a cancel request.
    private func supervise(_ job: LaunchJob, handle: LaunchHandle, launcher: any Launcher,
                           cancelSignal: AsyncStream<String>) async -> TaskOutcome {
        let timeout = job.command.timeoutSeconds ?? settings.defaultTimeoutSeconds
        let elapsed = Date().timeIntervalSince((try? journal.history(job.task.taskID))?
            .last(where: { $0.state == .running && $0.kind == .state })?.time ?? Date())
        let remaining = max(0, Double(timeout) - elapsed)
        let grace = settings.stopGrace

        // The work's logs, read while it runs: reporter lines on stdout, launcher signals on both.
        let watch = WatchState()
        let budget = EventBudget(settings.reporter)
        budget.seed(history: (try? journal.history(job.task.taskID)) ?? [],
                    held: (try? journal.step(job.task.taskID, Self.heldTextStep)) ?? nil)
        let (verdicts, verdict) = AsyncStream<Race>.makeStream()
        let followed = [(job.stdoutPath, true), (job.stderrPath, false)].map { path, isStdout in
            let (lines, finish) = follower.follow(path)
            let handle = lineHandler(job.task.taskID, launcher: launcher, watch: watch, budget: budget,
                                     verdict: verdict)
            return (reader: Task { for await line in lines { handle(line, isStdout) } }, finish: finish)
        }
        let limit = launcher.unreachableLimit

        let result: (Race, LaunchOutcome?) = await withTaskGroup(of: Race.self) { group in
            group.addTask {
                do { return .exited(try await launcher.wait(handle)) } catch { return .waitFailed("\(error)") }
            }
            group.addTask {
                do { try await Task.sleep(for: .milliseconds(Int(remaining * 1000))) } catch { return .ignore }
                return .timedOut
            }
            group.addTask {
                for await why in cancelSignal { return .cancelled(why) }
                return .ignore
            }
            group.addTask {
                for await v in verdicts { return v }
                return .ignore
            }
            if let limit {
                group.addTask {
                    while !Task.isCancelled {
                        if let (since, why) = watch.disconnected, ContinuousClock.now - since > limit {
                            return .unreachable("\(why), for longer than \(limit.components.seconds) s")
                        }
                        try? await Task.sleep(for: .milliseconds(250))
                    }
                    return .ignore
                }
            }
            var first: Race = .ignore
            while let r = await group.next() {
                if case .ignore = r { continue }
                first = r
                break
            }
            switch first {
            case .exited, .waitFailed, .ignore:
                group.cancelAll()
                if case .exited(let o) = first { return (first, o) }
                return (first, nil)
            case .timedOut, .cancelled, .reportedError, .finished, .unreachable:
                if case .finished = first, let limit = launcher.finishDeliveryLimit {
                    await Self.awaitDelivery(watch, limit: limit, linger: launcher.finishLinger)
                }
                await launcher.stop(handle, grace: grace)
                var ended: LaunchOutcome?
                while let r = await group.next() {
                    if case .exited(let o) = r { ended = o; break }
                    if case .waitFailed = r { break }
                }
                group.cancelAll()
                return (first, ended)
            }
        }
        // Read what the work wrote last (an error report just before it exited), then stop reading.
        for f in followed {
            f.finish()
            await f.reader.value
        }
        verdict.finish()

        let exit = result.1?.exitCode
        func decide() -> TaskOutcome {
            switch result.0 {
            case .exited(let outcome):
                if let error = watch.reportedError {
                    return TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .taskFailure,
                                                                           message: error))
                }
                return classify(outcome)
            case .reportedError(let message):
                return TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .taskFailure,
                                                                       message: message))
            case .finished:
                return TaskOutcome(state: .completed, detail: EventDetail(
                    exitCode: exit, message: "the tool reported Finished; its processes were stopped"))
            case .unreachable(let why):
                return TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .serverUnreachable,
                                                                       message: why))
            case .waitFailed(let why):
                return TaskOutcome(state: .failed, detail: EventDetail(failureClass: .runnerSystemFailure,
                                                                       message: "lost track of the work: \(why)"))
            case .timedOut:
                return TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .timeout,
                                                                       message: "stopped after the timeout of \(timeout) s"))
            case .cancelled(let why):
                return TaskOutcome(state: .cancelled, detail: EventDetail(exitCode: exit, message: why))
            case .ignore:
                return TaskOutcome(state: .failed, detail: EventDetail(failureClass: .runnerSystemFailure,
                                                                       message: "supervision ended without a result"))
            }
        }
        return Self.addingUsage(of: result.1, to: decide())
    }

    /// After `Finished`: waits until the work has delivered a reply sent after it (the answer to the round in which
    /// the tool said it), or, when nothing it took is left unanswered, a few seconds for a late log line (the
    /// tool's stdout and the work's stderr are read separately, so "received" may trail "Finished"), at most `limit`;
    /// then `linger` for the server to collect the reply.
    static func awaitDelivery(_ watch: WatchState, limit: Duration, linger: Duration) async {
        let start = ContinuousClock.now
        let sentAtFinish = watch.messages.sent
        while ContinuousClock.now - start < limit {
            let m = watch.messages
            if m.sent > sentAtFinish {
                try? await Task.sleep(for: linger)
                return
            }
            if m.received <= m.sent && ContinuousClock.now - start >= .seconds(3) { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// What each line of the work's logs means: reporter messages (stdout only) and launcher signals. Everything a
    /// tool chooses is screened (short plain names, numbers, text cut and without control characters) and counted
    /// against the node's caps; with the airlock on, its text stays on the node (held for the steward).
    private nonisolated func lineHandler(_ taskID: String, launcher: any Launcher, watch: WatchState,
                                         budget: EventBudget, verdict: AsyncStream<Race>.Continuation)
        -> @Sendable (String, Bool) -> Void {
        let logger = self.logger
        let hooks = self.hooks
        let journal = self.journal
        let limits = settings.reporter
        let hold = limits.holdToolText
        let meta: Logger.Metadata = ["task": "\(taskID)"]
        let note = noter(for: taskID)
        /// A tool-originated event, within the task's caps; past them, a log line only.
        let toolNote: @Sendable (EventKind, String, [String: JSONValue]?) -> Void = { kind, message, data in
            let size = message.utf8.count + (data.map { JSONValue.object($0).encoded().count } ?? 0)
            switch budget.admit(size: size) {
            case .send:
                note(kind, message, data)
            case .sendCapNotice:
                note(.notice, "this task reached the node's cap on tool events (\(limits.maxEventsPerTask) events, "
                     + "\(limits.maxEventBytesPerTask) bytes); further reports go only to the node's log",
                     ["cap_reached": true, "max_events": .int(Int64(limits.maxEventsPerTask)),
                      "max_bytes": .int(Int64(limits.maxEventBytesPerTask))])
                logger.info("over the event cap, not sent: \(message)", metadata: meta)
            case .logOnly:
                logger.info("over the event cap, not sent: \(message)", metadata: meta)
            }
        }
        /// Keeps tool text for the steward (`fem-client outputs show`), in the journal.
        let keep: @Sendable (String) -> Void = { text in
            if let all = budget.hold(text) { try? journal.markStep(taskID, Runner.heldTextStep, info: all) }
        }
        /// A launcher's reading of a log line: its words, but what it quotes of the line (in parentheses) is the
        /// tool's text, held with the outputs while the airlock is on.
        let signalText: @Sendable (String) -> String = { m in
            let text = ToolText.clean(m, maxBytes: 256)
            guard hold, let open = text.range(of: " (") else { return text }
            keep("signal: " + text)
            return text[..<open.lowerBound] + " (details held for approval)"
        }
        return { line, isStdout in
            if let signal = launcher.signal(in: line) {
                switch signal {
                case .notice(let m): toolNote(.notice, signalText(m), nil)
                case .connected(let m):
                    if watch.connect() { toolNote(.notice, signalText(m), ["link": "connected"]) }
                case .disconnected(let m):
                    if watch.disconnect(m) {
                        toolNote(.notice, signalText(m), ["link": "disconnected"])
                    }
                case .messageReceived: watch.messageReceived()
                case .replySent: watch.replySent()
                }
            }
            guard isStdout else { return }
            guard line.utf8.count <= ReportMessage.maxLineBytes else {
                if line.contains("\"type\"") {
                    logger.info("a stdout line of \(line.utf8.count) bytes is over the reporter's \(ReportMessage.maxLineBytes) bytes: a log line only, not a report",
                                metadata: meta)
                }
                return
            }
            guard let report = ReportMessage.parse(line) else { return }
            switch report {
            case .model(let round, let metrics):
                let (kept, dropped) = ToolText.screen(metrics, maxCount: limits.maxMetricsPerLine, numbersOnly: hold)
                if !dropped.isEmpty {
                    let what = dropped.prefix(10).joined(separator: ", ")
                        + (dropped.count > 10 ? " and \(dropped.count - 10) more" : "")
                    logger.info("metrics dropped from round \(round.map(String.init) ?? "?"): \(what)", metadata: meta)
                }
                let shown = kept.keys.sorted().map { k in
                    "\(k) \(kept[k].map { $0.stringValue ?? String(decoding: $0.encoded(), as: UTF8.self) } ?? "")"
                }
                var data: [String: JSONValue] = ["round": round.map { .int(Int64($0)) } ?? .null,
                                                 "metrics": .object(kept)]
                if !dropped.isEmpty { data["dropped_metrics"] = .int(Int64(dropped.count)) }
                toolNote(.progress, "round \(round.map(String.init) ?? "?")"
                         + (shown.isEmpty ? "" : ": " + shown.joined(separator: ", ")), data)
            case .print(let text):
                logger.info("tool: \(ToolText.clean(text, maxBytes: ReportMessage.maxLineBytes))", metadata: meta)
                if hold { keep("print: " + ToolText.clean(text, maxBytes: ReportMessage.maxLineBytes)) }
            case .info(let text):
                logger.info("tool info: \(ToolText.clean(text, maxBytes: ReportMessage.maxLineBytes))", metadata: meta)
                if hold && !report.isFinished { keep("info: " + ToolText.clean(text, maxBytes: ReportMessage.maxLineBytes)) }
                if report.isFinished {
                    toolNote(.progress, "the tool reported Finished", ["finished": true])
                    verdict.yield(.finished)
                }
            case .error(let raw):
                let text = ToolText.clean(raw, maxBytes: ToolText.maxErrorBytes)
                logger.warning("tool error: \(text)", metadata: meta)
                let message: String
                if hold {
                    keep("error: " + text)
                    message = "the tool reported an error: its text is held for approval (fem-client outputs show "
                        + "\(taskID))"
                } else {
                    message = text
                }
                watch.reportError(message)
                verdict.yield(.reportedError(message))
            case .trigger(let rawName, let rawArguments):
                let arguments = ToolText.clean(rawArguments, maxBytes: ToolText.maxErrorBytes)
                guard ToolText.isPlainName(rawName) else {
                    logger.info("trigger ignored: its name is not a short plain name (\"\(ToolText.clean(rawName, maxBytes: 64))\")",
                                metadata: meta)
                    if hold { keep("trigger: " + ToolText.clean(rawName, maxBytes: 256) + " " + arguments) }
                    toolNote(.notice, "a trigger was ignored: its name is not a short plain name ([A-Za-z0-9_.-], "
                             + "at most \(ToolText.maxNameLength))", nil)
                    return
                }
                if hold { keep("trigger \(rawName): \(arguments)") }
                if let ran = hooks.run(rawName, arguments: arguments, taskID: taskID) {
                    toolNote(.notice, "trigger \"\(rawName)\": \(ran)", ["trigger": .string(rawName)])
                } else if hold {
                    toolNote(.notice, "a trigger naming no hook of this node was ignored; its name is held for approval",
                             nil)
                } else {
                    toolNote(.notice, "trigger \"\(rawName)\" ignored: this node defines no hook of that name",
                             ["trigger": .string(rawName)])
                }
            }
        }
    }

    /// The work's CPU time and peak memory, when its launcher counted them, as the event's `data.usage`.
    static func addingUsage(of ended: LaunchOutcome?, to outcome: TaskOutcome) -> TaskOutcome {
        guard let ended, ended.cpuSeconds != nil || ended.peakMemoryBytes != nil else { return outcome }
        var usage: [String: JSONValue] = [:]
        if let cpu = ended.cpuSeconds { usage["cpu_seconds"] = .double((cpu * 1000).rounded() / 1000) }
        if let peak = ended.peakMemoryBytes { usage["peak_memory_bytes"] = .int(Int64(clamping: peak)) }
        var result = outcome
        result.detail.data = (result.detail.data ?? [:]).merging(["usage": .object(usage)]) { $1 }
        return result
    }

    func classify(_ outcome: LaunchOutcome) -> TaskOutcome {
        if outcome.outOfMemory {
            return TaskOutcome(state: .failed, detail: EventDetail(exitCode: outcome.exitCode, failureClass: .outOfMemory,
                                                                   message: outcome.message ?? "killed for exceeding its memory limit"))
        }
        if let sig = outcome.signal {
            return TaskOutcome(state: .failed, detail: EventDetail(exitCode: outcome.exitCode, failureClass: .taskFailure,
                                                                   message: outcome.message ?? "killed by signal \(sig)"))
        }
        if outcome.exitCode == 0 {
            return TaskOutcome(state: .completed, detail: EventDetail(exitCode: 0, message: outcome.message))
        }
        return TaskOutcome(state: .failed, detail: EventDetail(
            exitCode: outcome.exitCode, failureClass: .taskFailure,
            message: outcome.message ?? "exited with code \(outcome.exitCode.map(String.init) ?? "?")"))
    }
}
