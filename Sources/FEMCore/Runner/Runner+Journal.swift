import Foundation
import Logging

/// What the runner writes to the journal: state changes (retried until written), events and step markers.
extension Runner {
    /// Journals a state change. A refused write (a full disk, an I/O error) is tried again with backoff until it is
    /// written, the real change kept in memory (and in the unrecorded store) meanwhile; false only for a change the
    /// journal can never take (an illegal transition, an unknown task) or when the daemon stops first.
    @discardableResult
    func record(_ taskID: String, _ state: TaskState, _ detail: EventDetail) async -> Bool {
        var delay = settings.journalRetryBase
        var failures = 0
        var detail = detail
        if state.isTerminal, let history = try? journal.history(taskID) {
            // Every terminal event says how long each step took, from the journaled changes (restarts included).
            let timings = TaskTimings(history: history, end: Date())
            detail.data = (detail.data ?? [:]).merging(["timings": timings.json]) { $1 }
        }
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
                try? await clock.sleep(for: delay)
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
        if state.isTerminal { settings.taskEnded(taskID, state, detail) }
        return true
    }

    /// An event without a state change (progress, notice), with its line in the log: safe from any thread, and it
    /// never waits for the journal (the write is queued on the journal thread, in order).
    nonisolated func noter(for taskID: String) -> @Sendable (EventKind, String, [String: JSONValue]?) -> Void {
        Self.noter(for: taskID, journal: journal, thread: journalThread, logger: logger, eventsAdded: eventsAdded)
    }

    /// The same, for a part of the runner that is not the actor (the supervisor's log readers).
    static func noter(for taskID: String, journal: any Journal, thread: JournalThread, logger: Logger,
                      eventsAdded: @escaping @Sendable () -> Void)
        -> @Sendable (EventKind, String, [String: JSONValue]?) -> Void {
        return { kind, message, data in
            logger.info("\(message)", metadata: ["task": "\(taskID)"])
            let at = Date()
            thread.submit {
                _ = try? journal.note(taskID, kind: kind, detail: EventDetail(message: message, data: data), at: at)
                eventsAdded()
            }
        }
    }

    func reporter(for taskID: String) -> StageReporter {
        let journal = self.journal
        let thread = journalThread
        let note = noter(for: taskID)
        return StageReporter(
            progress: { message, data in note(.progress, message, data) },
            // A read: in WAL mode it does not wait for another process's write lock.
            isDone: { step in (try? journal.completedStep(step, of: taskID)) ?? nil },
            markDone: { step, info in thread.submit { try? journal.markStep(taskID, step, info: info) } },
            notice: { message, data in note(.notice, message, data) })
    }
}
