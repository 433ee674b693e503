import FEMCore
@testable import FEMJournal
import Foundation
import Testing

/// `recordDecision`: an airlock decision is written whole or not at all, and only the first of two wins.
struct AirlockDecisionJournalTests {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-decide-\(UUID().uuidString)").path

    func waitingJournal() throws -> SQLiteJournal {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let doc: JSONValue = .object([
            "schema_version": .int(1), "task_id": .string("a"), "execution_id": .string("e"),
            "plan": .object(["schema_version": .int(1), "id": .string("t"), "version": .string("1"),
                             "launcher": .string("process"), "command": .object(["base": .array([.string("/bin/true")])])]),
        ])
        _ = try j.admit(try DocumentReader.readTask(doc, requireTaskID: true), document: doc, at: Date())
        for state in [TaskState.stagingIn, .running, .stagingOut, .awaitingApproval] {
            try j.transition("a", to: state, detail: .none, at: Date())
        }
        return j
    }

    @Test func aRejectionThenAnApprovalLeavesTheRejection() throws {
        let j = try waitingJournal()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rejected = try j.recordDecision("a", detail: EventDetail(message: "rejected by bob"), steps: [],
                                            decisionStep: "approval", decision: "rejected: no", at: Date())
        #expect(rejected?.kind == .approval)
        let approved = try j.recordDecision("a", detail: EventDetail(message: "approved by eve"),
                                            steps: [(step: "approved-manifest", info: "abc")],
                                            decisionStep: "approval", decision: "approved", at: Date())
        #expect(approved == nil, "the second decision writes nothing")
        #expect(try j.completedStep("approval", of: "a") == "rejected: no")
        #expect(try j.completedStep("approved-manifest", of: "a") == nil, "no approved manifest after a rejection")
        #expect(try j.history("a").filter { $0.kind == .approval }.count == 1, "one approval event")
    }

    @Test func concurrentDecisionsRecordExactlyOne() async throws {
        let j = try waitingJournal()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<8 {
                group.addTask {
                    try j.recordDecision("a", detail: EventDetail(message: "decision \(i)"), steps: [],
                                         decisionStep: "approval", decision: i % 2 == 0 ? "approved" : "rejected: r",
                                         at: Date()) != nil
                }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(wins == 1)
        #expect(try j.history("a").filter { $0.kind == .approval }.count == 1)
    }

    @Test func aTaskNotWaitingGetsNoDecision() throws {
        let j = try waitingJournal()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try j.transition("a", to: .cancelled, detail: .none, at: Date())
        #expect(try j.recordDecision("a", detail: EventDetail(message: "late"), steps: [], decisionStep: "approval",
                                     decision: "approved", at: Date()) == nil)
        #expect(try j.completedStep("approval", of: "a") == nil)
    }
}
