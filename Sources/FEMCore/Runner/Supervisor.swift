import Foundation
import Logging
import Synchronization

/// The link between running work and its server (a Flower SuperNode and its SuperLink) as its log lines tell it,
/// the messages it took and answered, and the first error the tool reported: shared by the log readers of one task
/// and its supervision.
final class LinkState: Sendable {
    private struct State {
        var error: String?
        var lostSince: (Duration, String)?
        var linked: Bool?
        var received = 0
        var sent = 0
    }
    private let state = Mutex(State())
    private let clock: RunnerClock

    init(clock: RunnerClock) { self.clock = clock }

    /// Messages the work took from its server and answers it delivered.
    var messages: (received: Int, sent: Int) { state.withLock { ($0.received, $0.sent) } }
    func messageReceived() { state.withLock { $0.received += 1 } }
    func replySent() { state.withLock { $0.sent += 1 } }

    var reportedError: String? { state.withLock { $0.error } }
    func reportError(_ m: String) { state.withLock { if $0.error == nil { $0.error = m } } }
    /// Since when (on the runner's clock) and why the work is away from its server.
    var disconnected: (Duration, String)? { state.withLock { $0.lostSince } }

    /// True when this changes the link's state (so that only changes become events).
    func connect() -> Bool {
        state.withLock { s in
            s.lostSince = nil
            defer { s.linked = true }
            return s.linked != true
        }
    }

    func disconnect(_ why: String) -> Bool {
        let now = clock.now
        return state.withLock { s in
            if s.lostSince == nil { s.lostSince = (now, why) }
            defer { s.linked = false }
            return s.linked != false
        }
    }
}

/// Waits for running work: races its end against the timeout, a cancel, what the tool reports and the launcher's
/// link limits, stops it when one of those comes first, and reads its logs meanwhile (reporter lines, launcher
/// signals). Not the runner's actor: it holds no state of its own between tasks.
struct Supervisor: Sendable {
    let settings: RunnerSettings
    let journal: any Journal
    let logger: Logger
    /// Reads the work's logs while it runs, for reporter-protocol lines and link events.
    let follower: any LineFollower
    let hooks: any HookRunner
    let clock: RunnerClock
    /// Where its journal calls run (never on the cooperative pool), in order with the runner's.
    let journalThread: JournalThread
    /// Called after every journal write that adds an event, to wake the publisher.
    let eventsAdded: @Sendable () -> Void

    /// Waits for the work, racing its end against the timeout and a cancel request.
    func supervise(_ job: LaunchJob, handle: LaunchHandle, launcher: any Launcher,
                   cancelSignal: AsyncStream<String>) async -> TaskOutcome {
        let timeout = job.command.timeoutSeconds ?? settings.defaultTimeoutSeconds
        let journal = self.journal
        let taskID = job.task.taskID
        let history = (try? await journalThread.run { try journal.history(taskID) }) ?? []
        let held = (try? await journalThread.run { try journal.completedStep(Runner.heldTextStep, of: taskID) }) ?? nil
        let elapsed = Date().timeIntervalSince(history
            .last(where: { $0.state == .running && $0.kind == .state })?.time ?? Date())
        let remaining = max(0, Double(timeout) - elapsed)
        let grace = settings.stopGrace

        // The work's logs, read while it runs: reporter lines on stdout, link events on both.
        let watch = LinkState(clock: clock)
        let budget = EventBudget(settings.reporter)
        budget.seed(history: history, held: held)
        let (verdicts, verdict) = AsyncStream<SupervisionEnd?>.makeStream()
        let followed = [(job.stdoutPath, true), (job.stderrPath, false)].map { path, isStdout in
            let (lines, finish) = follower.follow(path)
            let handle = lineHandler(job.task.taskID, launcher: launcher, watch: watch, budget: budget,
                                     verdict: verdict)
            return (reader: Task { for await line in lines { handle(line, isStdout) } }, finish: finish)
        }
        let linked = launcher as? any ServerLinkedLauncher
        let limit = linked?.unreachableLimit

        let result: (SupervisionEnd?, LaunchOutcome?) = await withTaskGroup(of: SupervisionEnd?.self) { group in
            group.addTask {
                do { return .exited(try await launcher.wait(handle)) } catch { return .waitFailed("\(error)") }
            }
            group.addTask {
                do { try await clock.sleep(for: .seconds(remaining)) } catch { return nil }
                return .timedOut
            }
            group.addTask {
                for await why in cancelSignal { return .cancelled(why) }
                return nil
            }
            group.addTask {
                for await v in verdicts { return v }
                return nil
            }
            if let queued = launcher as? any QueuedLauncher {
                // While the work waits in a scheduler's queue: a notice for each new reason.
                let note = Runner.noter(for: taskID, journal: journal, thread: journalThread, logger: logger,
                                        eventsAdded: eventsAdded)
                group.addTask {
                    var last: String?
                    while !Task.isCancelled {
                        guard case .waiting(let reason) = await queued.queueState(handle) else { return nil }
                        if let reason, reason != last {
                            last = reason
                            note(.notice, "the work waits in the \(launcher.name) queue: \(reason)",
                                 ["queued": true, "reason": .string(reason)])
                        }
                        try? await clock.sleep(for: queued.queuePollInterval)
                    }
                    return nil
                }
            }
            if let limit {
                group.addTask {
                    while !Task.isCancelled {
                        if let (since, why) = watch.disconnected, clock.now - since > limit {
                            return .unreachable("\(why), for longer than \(limit.components.seconds) s")
                        }
                        try? await clock.sleep(for: .milliseconds(250))
                    }
                    return nil
                }
            }
            var first: SupervisionEnd?
            while let r = await group.next() {
                guard let r else { continue }
                first = r
                break
            }
            switch first {
            case .exited?, .waitFailed?, nil:
                group.cancelAll()
                if case .exited(let o)? = first { return (first, o) }
                return (first, nil)
            case .timedOut?, .cancelled?, .reportedError?, .finished?, .unreachable?:
                if case .finished? = first, let linked, let limit = linked.finishDeliveryLimit {
                    await Self.awaitDelivery(watch, limit: limit, linger: linked.finishLinger, clock: clock)
                }
                await launcher.stop(handle, grace: grace)
                var ended: LaunchOutcome?
                while let r = await group.next() {
                    if case .exited(let o)? = r { ended = o; break }
                    if case .waitFailed? = r { break }
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
        // Whatever is left of the work (a container, a cgroup) goes, whatever `wait` returned or threw.
        await launcher.destroy(handle)

        return OutcomeClassifier.classify(result.0, ended: result.1, reportedError: watch.reportedError,
                                          timeoutSeconds: timeout)
    }

    /// After `Finished`: waits until the work has delivered a reply sent after it (the answer to the round in which
    /// the tool said it), or, when nothing it took is left unanswered, a few seconds for a late log line (the
    /// tool's stdout and the work's stderr are read separately, so "received" may trail "Finished"), at most `limit`;
    /// then `linger` for the server to collect the reply.
    static func awaitDelivery(_ watch: LinkState, limit: Duration, linger: Duration, clock: RunnerClock) async {
        let start = clock.now
        let sentAtFinish = watch.messages.sent
        while clock.now - start < limit {
            let m = watch.messages
            if m.sent > sentAtFinish {
                try? await clock.sleep(for: linger)
                return
            }
            if m.received <= m.sent && clock.now - start >= .seconds(3) { return }
            try? await clock.sleep(for: .milliseconds(50))
        }
    }

    /// What each line of the work's logs means: reporter messages (stdout only) and link events. Everything a
    /// tool chooses is screened (short plain names, numbers, text cut and without control characters) and counted
    /// against the node's caps; with the airlock on, its text stays on the node (held for the steward).
    private func lineHandler(_ taskID: String, launcher: any Launcher, watch: LinkState,
                             budget: EventBudget, verdict: AsyncStream<SupervisionEnd?>.Continuation)
        -> @Sendable (String, Bool) -> Void {
        let logger = self.logger
        let hooks = self.hooks
        let journal = self.journal
        let limits = settings.reporter
        let hold = limits.holdToolText
        let meta: Logger.Metadata = ["task": "\(taskID)"]
        let note = Runner.noter(for: taskID, journal: journal, thread: journalThread, logger: logger,
                                eventsAdded: eventsAdded)
        let thread = journalThread
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
            if let all = budget.hold(text) { thread.submit { try? journal.markStep(taskID, Runner.heldTextStep, info: all) } }
        }
        /// A launcher's reading of a log line: its words, but what it quotes of the line (in parentheses) is the
        /// tool's text, held with the outputs while the airlock is on.
        let linked = launcher as? any ServerLinkedLauncher
        let signalText: @Sendable (String) -> String = { m in
            let text = ToolText.clean(m, maxBytes: 256)
            guard hold, let open = text.range(of: " (") else { return text }
            keep("signal: " + text)
            return text[..<open.lowerBound] + " (details held for approval)"
        }
        return { line, isStdout in
            if let event = linked?.linkEvent(inLogLine: line) {
                switch event {
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
}
