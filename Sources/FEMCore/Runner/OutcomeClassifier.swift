import Foundation

/// Why the supervision of running work ended: the first of its racing watchers that had something to say.
enum SupervisionEnd: Sendable, Equatable {
    /// The work ended by itself.
    case exited(LaunchOutcome)
    /// The launcher lost track of the work.
    case waitFailed(String)
    case timedOut
    case cancelled(String)
    /// The tool reported an error (reporter protocol).
    case reportedError(String)
    /// The tool reported `Finished`.
    case finished
    /// The work stayed away from its server past the launcher's limit.
    case unreachable(String)
}

/// How work that ran ends as a task: pure functions of what the launcher and the supervision saw, so that every
/// case can be tested from a table (OutcomeClassifierTests).
enum OutcomeClassifier {
    /// How the work's own end reads as a task outcome.
    static func classify(_ outcome: LaunchOutcome) -> TaskOutcome {
        if let failureClass = outcome.failureClass {
            return TaskOutcome(state: .failed, detail: EventDetail(exitCode: outcome.exitCode, failureClass: failureClass,
                                                                   message: outcome.message ?? failureClass.rawValue))
        }
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

    /// How a supervision ends as a task outcome: why it ended (nil when every watcher ended without a word), how the
    /// work ended if it did (after a stop too), the first error the tool reported, and the timeout it had.
    static func classify(_ end: SupervisionEnd?, ended: LaunchOutcome?, reportedError: String?,
                         timeoutSeconds timeout: Int) -> TaskOutcome {
        let exit = ended?.exitCode
        let outcome: TaskOutcome
        switch end {
        case .exited(let launched)?:
            if let error = reportedError {
                outcome = TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .taskFailure,
                                                                          message: error))
            } else {
                outcome = classify(launched)
            }
        case .reportedError(let message)?:
            outcome = TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .taskFailure,
                                                                      message: message))
        case .finished?:
            outcome = TaskOutcome(state: .completed, detail: EventDetail(
                exitCode: exit, message: "the tool reported Finished; its processes were stopped"))
        case .unreachable(let why)?:
            outcome = TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .serverUnreachable,
                                                                      message: why))
        case .waitFailed(let why)?:
            outcome = TaskOutcome(state: .failed, detail: EventDetail(failureClass: .runnerSystemFailure,
                                                                      message: "lost track of the work: \(why)"))
        case .timedOut?:
            outcome = TaskOutcome(state: .failed, detail: EventDetail(exitCode: exit, failureClass: .timeout,
                                                                      message: "stopped after the timeout of \(timeout) s"))
        case .cancelled(let why)?:
            outcome = TaskOutcome(state: .cancelled, detail: EventDetail(exitCode: exit, message: why))
        case nil:
            outcome = TaskOutcome(state: .failed, detail: EventDetail(failureClass: .runnerSystemFailure,
                                                                      message: "supervision ended without a result"))
        }
        return addingUsage(of: ended, to: outcome)
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
}
