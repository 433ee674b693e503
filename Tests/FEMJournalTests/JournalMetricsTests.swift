import FEMCore
@testable import FEMJournal
import Foundation
import Synchronization
import Testing

/// The journal tells its `TaskMetrics` about every committed change, with the state left and the journaled time it
/// was entered: the one observation point of the node's metrics.
struct JournalMetricsTests {
    final class Recorder: TaskMetrics {
        let seen = Mutex<[(TaskEvent, TaskState?, Date?)]>([])
        let notes = Mutex<[TaskEvent]>([])
        func stateChanged(_ event: TaskEvent, from: TaskState?, since: Date?) { seen.withLock { $0.append((event, from, since)) } }
        func noted(_ event: TaskEvent) { notes.withLock { $0.append(event) } }
    }

    @Test func committedChangesReachTheMetricsWithTheJournaledStartOfTheStateLeft() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-jm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let recorder = Recorder()
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1", metrics: recorder)
        let (s, d) = try SQLiteJournalTests().spec("a")
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        #expect(try j.admit(s, document: d, at: t0) == .admitted)
        try j.transition("a", to: .stagingIn, detail: .none, at: t0.addingTimeInterval(1))
        try j.note("a", kind: .progress, detail: EventDetail(message: "x", data: ["bytes": 5]), at: t0.addingTimeInterval(1.5))
        // A second journal on the same file (a restarted daemon) still measures from the journaled start.
        let again = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1", metrics: recorder)
        try again.transition("a", to: .running, detail: .none, at: t0.addingTimeInterval(4))
        #expect(throws: (any Error).self) { try again.transition("a", to: .completed, detail: .none, at: t0) }
        try again.recordRejection(taskID: "b", executionID: nil, message: "bad", at: t0)

        let seen = recorder.seen.withLock { $0 }
        #expect(seen.map(\.0.state) == [.stagingIn, .running, .rejected], "a refused transition is not reported")
        #expect(seen[0].1 == .received && seen[0].2 == t0)
        #expect(seen[1].1 == .stagingIn && seen[1].2 == t0.addingTimeInterval(1))
        #expect(seen[1].0.time == t0.addingTimeInterval(4))
        #expect(seen[2].1 == nil && seen[2].2 == nil)
        let notes = recorder.notes.withLock { $0 }
        #expect(notes.count == 1 && notes[0].state == .stagingIn && notes[0].kind == .progress)
    }
}
