import Foundation
import Logging

/// Where a task picks up when a slot takes it, from its journaled state.
enum ResumePoint: Equatable {
    /// Not started yet (`received`, or `staging_in` before a restart): stage in, then launch.
    case stageIn
    /// Its work was started before a restart (`running`): re-attach to it, or collect how it ended.
    case reattach
    /// Its work ended (`staging_out`, `awaiting_approval`, or an outcome the journal refused before a restart):
    /// stage out with that outcome.
    case stageOut(TaskOutcome)
}

/// What one phase hands on to the next.
enum PhaseEnd {
    /// The next phase runs.
    case proceed
    /// The task ends with this outcome, after its stage-out.
    case ended(TaskOutcome)
    /// Nothing more to do here: the task was declined, or the journal cannot take its next state.
    case stopped
}

/// One task, phase by phase: stage-in, launch (or re-attach), supervision (Supervisor), stage-out. Each phase is a
/// function of its own; stage-in and the start are interrupted by a cancel, running work is stopped by one.
extension Runner {
    func execute(_ taskID: String, cancelSignal: AsyncStream<String>) async {
        guard let (rec, job, launcher) = await load(taskID) else { return }
        guard let resume = await resumePoint(rec) else { return }
        var outcome: TaskOutcome
        switch resume {
        case .stageIn:
            switch await stageInPhase(rec, job: job, launcher: launcher) {
            case .stopped: return
            case .ended(let o): outcome = o
            case .proceed:
                guard let o = await launchPhase(job, launcher: launcher, cancelSignal: cancelSignal) else { return }
                outcome = o
            }
        case .reattach:
            outcome = await reattachPhase(rec, job: job, launcher: launcher, cancelSignal: cancelSignal)
        case .stageOut(let o):
            outcome = o
        }
        if outcome.state == .failed, let cls = outcome.detail.failureClass,
           [.taskFailure, .stageInFailure, .stageOutFailure, .runnerSystemFailure].contains(cls),
           // (within the last 30 s: a full disk long before the failure did not cause it)
           let full = settings.diskPressure(max(rec.receivedAt, Date().addingTimeInterval(-30))) {
            outcome.detail.message = [outcome.detail.message, "while the node's disk was full (\(full))"]
                .compactMap { $0 }.joined(separator: "; ")
            outcome.detail.failureClass = .nodeDiskFull
        }
        let enteredStageOut: Bool
        if case .stageOut = resume, rec.state == .stagingOut { enteredStageOut = true } else { enteredStageOut = false }
        await stageOutPhase(job, outcome: outcome, entered: enteredStageOut)
    }

    /// The task's record, its job and launcher: nil when it ended here (unreadable, cancelled before it started,
    /// declined by the node's policy).
    private func load(_ taskID: String) async -> (TaskRecord, LaunchJob, any Launcher)? {
        guard let rec = try? journal.task(taskID) else {
            logger.error("task vanished from the journal", metadata: ["task": "\(taskID)"])
            return nil
        }
        let spec: TaskSpec
        do {
            spec = try DocumentReader.readTask(rec.document, requireTaskID: true)
        } catch {
            // The document was valid when it was admitted; a newer node may be stricter.
            await record(taskID, .failed, EventDetail(failureClass: .runnerSystemFailure,
                                                      message: "the journaled task can no longer be read: \(error)"))
            return nil
        }
        let notStarted = rec.state == .received || rec.state == .queued || rec.state == .stagingIn
        if rec.cancelRequested && notStarted {
            await record(taskID, .cancelled, EventDetail(message: "cancelled by the orchestrator"))
            return nil
        }
        // The receiver declines a task whose constraints this node does not meet right after journaling it; a task
        // recovered from before that check (the daemon stopped in between) is checked here, before it starts.
        if rec.state == .received || rec.state == .queued, let attributes {
            let verdict = spec.constraintVerdict(on: attributes())
            if !verdict.matched {
                await record(taskID, .declined, EventDetail(message: verdict.reason ?? "constraints not met by this node"))
                return nil
            }
        }
        let preparation = LaunchPreparation(settings: settings, registry: registry, sandboxes: sandboxes,
                                            stageIn: stageIn, stageOut: stageOut)
        switch preparation.prepare(spec) {
        case .success(let p):
            if rec.cancelRequested && rec.state == .running {
                // Cancelled while the daemon was down: stop the work once re-attached.
                active[taskID]?.yield("cancelled by the orchestrator")
            }
            return (rec, p.job, p.launcher)
        case .failure(let decline) where notStarted:
            await record(taskID, .declined, EventDetail(message: decline.reason))
            return nil
        case .failure(let decline):
            // Work already ran under a policy the node no longer has (its config changed across a restart).
            await record(taskID, .failed, EventDetail(failureClass: .runnerSystemFailure,
                                                      message: "cannot resume after a restart: \(decline.reason)"))
            return nil
        }
    }

    /// Where the task goes on from; nil when the journal cannot take the state it must first move to.
    private func resumePoint(_ rec: TaskRecord) async -> ResumePoint? {
        let taskID = rec.taskID
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
            if rec.state == .received || rec.state == .queued {
                guard await record(taskID, .stagingIn, .none) else { return nil }
            }
            return .stageOut(TaskOutcome(state: saved, detail: detail))
        } else if unrecordedStore.load(taskID) != nil {
            unrecordedStore.remove(taskID)  // a change that did not matter (the task had not run) or was written
        }
        switch rec.state {
        case .received, .queued, .stagingIn:
            return .stageIn
        case .running:
            return .reattach
        case .stagingOut, .awaitingApproval:
            // The staging_out event carries the outcome it was entered with.
            let entered = (try? journal.history(taskID))?.last { $0.kind == .state && $0.state == .stagingOut }
            let saved = entered?.detail.data?["outcome"]?.stringValue.flatMap(TaskState.init) ?? .failed
            var detail = entered?.detail ?? EventDetail(failureClass: .nodeRestart)
            detail.data?["outcome"] = nil
            return .stageOut(TaskOutcome(state: saved, detail: detail))
        case .completed, .failed, .cancelled, .rejected, .declined:
            return nil
        }
    }

    // MARK: - Phases

    /// Stage-in: the sandbox, the task's sources and files, and what the launcher prepares. A cancel interrupts it;
    /// a cancel that came as it ended still keeps the tool from starting.
    func stageInPhase(_ rec: TaskRecord, job: LaunchJob, launcher: any Launcher) async -> PhaseEnd {
        let taskID = rec.taskID
        if rec.state == .received || rec.state == .queued {
            guard await record(taskID, .stagingIn, .none) else { return .stopped }
        }
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
            return .ended(TaskOutcome(state: .cancelled, detail: EventDetail(
                message: why + " (during stage-in; the tool was not started)")))
        }
        switch staged {
        case .success?:
            break
        case .failure(let decline as PolicyDecline)?:
            await record(taskID, .declined, EventDetail(message: decline.reason))
            return .stopped
        case .failure(let error)?:
            return .ended(OutcomeClassifier.failed(error, otherwise: .stageInFailure, ""))
        case nil:
            return .ended(OutcomeClassifier.failed(TaskFailure(.runnerSystemFailure, "stage-in was left behind"),
                                                   otherwise: .runnerSystemFailure, ""))
        }
        if let why = cancelReason(taskID) {
            // Checked before `running` is recorded: a cancel that came as stage-in ended never starts the tool.
            return .ended(TaskOutcome(state: .cancelled, detail: EventDetail(message: why + " (the tool was not started)")))
        }
        return .proceed
    }

    /// Launch: `running` is journaled, the launcher starts the work (a cancel interrupts the start), and the
    /// supervisor waits for it. Nil when the journal cannot take `running`.
    func launchPhase(_ job: LaunchJob, launcher: any Launcher, cancelSignal: AsyncStream<String>) async
        -> TaskOutcome? {
        let taskID = job.task.taskID
        // With what the node's trust policy found (who signed the plan, its hash), for the orchestrator's records.
        let runData = job.trust.eventData.merging(["timeout_seconds": .int(Int64(job.command.timeoutSeconds ?? 0))]) { $1 }
        let runDetail = EventDetail(message: "launched with \(launcher.name)", data: runData)
        guard await record(taskID, .running, runDetail) else { return nil }
        let journal = self.journal
        let thread = journalThread
        let grace = settings.stopGrace
        let logger = self.logger
        // A start that a cancel left behind and that still brought up work: that work is stopped, not orphaned.
        let started = await interruptibly(taskID, late: { handle in
            logger.notice("a start left behind by a cancel brought up work; stopping it", metadata: ["task": "\(taskID)"])
            await launcher.stop(handle, grace: grace)
            await launcher.destroy(handle)
        }) {
            // The handle is journaled on the journal thread; the start waits for it without holding a thread.
            try await launcher.start(job) { handle in try await thread.run { try journal.setHandle(taskID, handle) } }
        }
        switch started {
        case .success(let handle)?:
            // A cancel during the start's last moments is in the cancel signal: supervise stops the work at once.
            return await supervisor.supervise(job, handle: handle, launcher: launcher, cancelSignal: cancelSignal)
        case .failure(let error)?:
            if let why = cancelReasons[taskID] {
                return TaskOutcome(state: .cancelled, detail: EventDetail(message: why + " (while starting; the tool was not started)"))
            }
            return OutcomeClassifier.failed(error, otherwise: .runnerSystemFailure, "cannot start: ")
        case nil:
            return TaskOutcome(state: .cancelled, detail: EventDetail(
                message: (cancelReasons[taskID] ?? "cancelled") + " (while starting; the tool was not started)"))
        }
    }

    /// After a restart, for work that was running: supervised again if it still runs, else how it ended.
    func reattachPhase(_ rec: TaskRecord, job: LaunchJob, launcher: any Launcher,
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
            return await supervisor.supervise(job, handle: handle, launcher: launcher, cancelSignal: cancelSignal)
        case .exited(let outcome):
            logger.info("work finished while the daemon was down; collected", metadata: ["task": "\(rec.taskID)"])
            return OutcomeClassifier.classify(outcome)
        case .lost(let why):
            return TaskOutcome(state: .failed, detail: EventDetail(failureClass: .nodeRestart, message: why))
        }
    }

    /// Stage-out: `staging_out` is journaled with the outcome (unless it already was), logs and outputs go to the
    /// task's target (or wait for approval), and the final state is journaled.
    func stageOutPhase(_ job: LaunchJob, outcome: TaskOutcome, entered: Bool) async {
        let taskID = job.task.taskID
        var outcome = outcome
        if !entered {
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
            if let decision = (try? journal.completedStep(Self.approvalStep, of: taskID)) ?? nil {
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

    // MARK: - Cancels

    /// Runs a stage-in step or a start as a task of its own that a cancel interrupts: the step's Swift task is
    /// cancelled at once (its blocking calls read that through their cancel flags); one that has not ended
    /// `cancelDeadline` later is left behind, and `late` gets whatever it still produces. Nil when left behind.
    private func interruptibly<T: Sendable>(_ taskID: String, late: (@Sendable (T) async -> Void)? = nil,
                                            _ body: @escaping @Sendable () async throws -> T) async
        -> Result<T, any Error>? {
        let work = Task { try await body() }
        let once = ResumeOnce<Result<T, any Error>?>()
        let deadline = settings.cancelDeadline
        let clock = self.clock
        Task {
            let r = await work.result
            if !once.resume(r), case .success(let value) = r { await late?(value) }
        }
        let interrupt: @Sendable () -> Void = {
            work.cancel()
            Task {
                try? await clock.sleep(for: deadline)
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
}
