@testable import FEMCore
import Testing

/// How work that ran ends as a task, case by case: OutcomeClassifier is a pure function, so the table is the spec.
struct OutcomeClassifierTests {
    struct Row: Sendable, CustomTestStringConvertible {
        var launched: LaunchOutcome
        var state: TaskState
        var failureClass: FailureClass?
        var message: String?
        var testDescription: String { "\(launched) → \(state.rawValue)" }
    }

    static let launched: [Row] = [
        Row(launched: LaunchOutcome(exitCode: 0), state: .completed, failureClass: nil, message: nil),
        Row(launched: LaunchOutcome(exitCode: 0, message: "done"), state: .completed, failureClass: nil, message: "done"),
        Row(launched: LaunchOutcome(exitCode: 3), state: .failed, failureClass: .taskFailure,
            message: "exited with code 3"),
        Row(launched: LaunchOutcome(exitCode: nil), state: .failed, failureClass: .taskFailure,
            message: "exited with code ?"),
        Row(launched: LaunchOutcome(exitCode: 143, signal: 15), state: .failed, failureClass: .taskFailure,
            message: "killed by signal 15"),
        Row(launched: LaunchOutcome(exitCode: 137, signal: 9, outOfMemory: true), state: .failed,
            failureClass: .outOfMemory, message: "killed for exceeding its memory limit"),
        // Out of memory wins over an exit code of 0 (a container whose init survived the kill).
        Row(launched: LaunchOutcome(exitCode: 0, outOfMemory: true, message: "oom (memory.events)"), state: .failed,
            failureClass: .outOfMemory, message: "oom (memory.events)"),
        Row(launched: LaunchOutcome(exitCode: 1, message: "the container was removed"), state: .failed,
            failureClass: .taskFailure, message: "the container was removed"),
        // A scheduler's verdict (Slurm's TIMEOUT, NODE_FAIL, PREEMPTED) is the class, whatever the exit code says.
        Row(launched: LaunchOutcome(exitCode: 0, message: "Slurm preempted the job (PREEMPTED)", failureClass: .preempted),
            state: .failed, failureClass: .preempted, message: "Slurm preempted the job (PREEMPTED)"),
        Row(launched: LaunchOutcome(exitCode: 0, failureClass: .nodeFailure), state: .failed,
            failureClass: .nodeFailure, message: "node_failure"),
        Row(launched: LaunchOutcome(exitCode: 143, signal: 15, message: "TIMEOUT", failureClass: .timeout),
            state: .failed, failureClass: .timeout, message: "TIMEOUT"),
    ]

    @Test(arguments: launched)
    func aLaunchOutcomeReadsAsATaskOutcome(_ row: Row) {
        let outcome = OutcomeClassifier.classify(row.launched)
        #expect(outcome.state == row.state)
        #expect(outcome.detail.failureClass == row.failureClass)
        #expect(outcome.detail.message == row.message)
        #expect(outcome.detail.exitCode == row.launched.exitCode ?? (row.state == .completed ? 0 : nil))
    }

    struct EndRow: Sendable, CustomTestStringConvertible {
        var end: SupervisionEnd?
        var ended: LaunchOutcome?
        var reportedError: String?
        var state: TaskState
        var failureClass: FailureClass?
        var message: String?
        var testDescription: String { "\(end.map { "\($0)" } ?? "nil") → \(state.rawValue)" }
    }

    static let stopped = LaunchOutcome(exitCode: 143, signal: 15)
    static let ends: [EndRow] = [
        EndRow(end: .exited(LaunchOutcome(exitCode: 0)), ended: LaunchOutcome(exitCode: 0), state: .completed),
        // The tool said it failed, then exited 0: the report wins.
        EndRow(end: .exited(LaunchOutcome(exitCode: 0)), ended: LaunchOutcome(exitCode: 0), reportedError: "bad input",
               state: .failed, failureClass: .taskFailure, message: "bad input"),
        EndRow(end: .reportedError("diverged"), ended: stopped, state: .failed, failureClass: .taskFailure,
               message: "diverged"),
        EndRow(end: .finished, ended: stopped, state: .completed,
               message: "the tool reported Finished; its processes were stopped"),
        EndRow(end: .unreachable("no SuperLink, for longer than 30 s"), ended: stopped, state: .failed,
               failureClass: .serverUnreachable, message: "no SuperLink, for longer than 30 s"),
        EndRow(end: .waitFailed("no such container"), ended: nil, state: .failed, failureClass: .runnerSystemFailure,
               message: "lost track of the work: no such container"),
        EndRow(end: .timedOut, ended: stopped, state: .failed, failureClass: .timeout,
               message: "stopped after the timeout of 60 s"),
        EndRow(end: .cancelled("cancelled: operator"), ended: stopped, state: .cancelled, message: "cancelled: operator"),
        EndRow(end: .cancelled("cancelled: operator"), ended: nil, state: .cancelled, message: "cancelled: operator"),
        EndRow(end: nil, ended: nil, state: .failed, failureClass: .runnerSystemFailure,
               message: "supervision ended without a result"),
    ]

    @Test(arguments: ends)
    func aSupervisionEndReadsAsATaskOutcome(_ row: EndRow) {
        let outcome = OutcomeClassifier.classify(row.end, ended: row.ended, reportedError: row.reportedError,
                                                 timeoutSeconds: 60)
        #expect(outcome.state == row.state)
        #expect(outcome.detail.failureClass == row.failureClass)
        #expect(outcome.detail.message == row.message)
        if case .waitFailed? = row.end {
            #expect(outcome.detail.exitCode == nil)
        } else if row.end != nil {
            #expect(outcome.detail.exitCode == row.ended?.exitCode)
        }
    }

    @Test func usageGoesIntoTheEventWhenTheLauncherCountedIt() {
        let ended = LaunchOutcome(exitCode: 0, cpuSeconds: 1.23456, peakMemoryBytes: 4096)
        let outcome = OutcomeClassifier.classify(.exited(ended), ended: ended, reportedError: nil, timeoutSeconds: 1)
        #expect(outcome.detail.data?["usage"] == .object(["cpu_seconds": .double(1.235), "peak_memory_bytes": .int(4096)]))
        let uncounted = OutcomeClassifier.classify(.exited(LaunchOutcome(exitCode: 0)), ended: LaunchOutcome(exitCode: 0),
                                                   reportedError: nil, timeoutSeconds: 1)
        #expect(uncounted.detail.data == nil)
    }

    @Test func aFailureKeepsItsClassAndAFullDiskIsTheNodes() {
        let own = OutcomeClassifier.failed(TaskFailure(.stageInFailure, "404 from the file server"),
                                           otherwise: .runnerSystemFailure, "")
        #expect(own.detail.failureClass == .stageInFailure && own.detail.message == "404 from the file server")
        let disk = OutcomeClassifier.failed(TaskFailure(.stageInFailure, "write: No space left on device"),
                                            otherwise: .runnerSystemFailure, "")
        #expect(disk.detail.failureClass == .nodeDiskFull)
        struct Other: Error, CustomStringConvertible { var description: String { "engine unreachable" } }
        let other = OutcomeClassifier.failed(Other(), otherwise: .runnerSystemFailure, "cannot start: ")
        #expect(other.detail.failureClass == .runnerSystemFailure && other.detail.message == "cannot start: engine unreachable")
    }
}
