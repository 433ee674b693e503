@testable import FEMCore
import Foundation
import Testing

/// The task and plan fields of work pools: `retry`, `attempt` and the nodes' `pool` record.
struct PoolDocumentTests {
    static func task(_ extra: [String: JSONValue], plan planExtra: [String: JSONValue] = [:]) -> JSONValue {
        var plan: [String: JSONValue] = [
            "schema_version": .int(1), "id": "t", "version": "1", "launcher": "process",
            "command": .object(["base": .array(["/bin/true"])]),
        ]
        plan.merge(planExtra) { $1 }
        var t: [String: JSONValue] = ["schema_version": .int(1), "task_id": "t1", "execution_id": "e1",
                                      "plan": .object(plan)]
        t.merge(extra) { $1 }
        return .object(t)
    }

    static func issues(_ doc: JSONValue) -> [String] {
        do {
            _ = try DocumentReader.readTask(doc)
            return []
        } catch let e as ValidationError {
            return e.issues.map { "\($0)" }
        } catch {
            return ["\(error)"]
        }
    }

    @Test func retryOnTheTaskWinsOverThePlans() throws {
        let spec = try DocumentReader.readTask(Self.task(
            ["retry": .object(["attempts": .int(3), "on": .array(["node_restart", "stage_in_failure"])]),
             "attempt": .int(2)],
            plan: ["retry": .object(["attempts": .int(2), "on": .array(["task_failure"])])]))
        #expect(spec.retry == RetrySpec(attempts: 3, on: [.nodeRestart, .stageInFailure]))
        #expect(spec.plan.retry == RetrySpec(attempts: 2, on: [.taskFailure]))
        #expect(spec.effectiveRetry == spec.retry)
        #expect(spec.attempt == 2)
        #expect(try DocumentReader.readTask(Self.task([:])).attempt == 1)
    }

    @Test func anUnknownFailureClassIsNamedWithItsPath() {
        let problems = Self.issues(Self.task(["retry": .object(["attempts": .int(2), "on": .array(["node_restrat"])])]))
        #expect(problems.contains { $0.contains("retry.on[0]") && $0.contains("\"node_restrat\" is not a failure class") })
        let planProblems = Self.issues(Self.task([:], plan: ["retry": .object(["attempts": .int(0), "on": .array(["timeout"])])]))
        #expect(planProblems.contains { $0.contains("plan.retry.attempts") })
        #expect(Self.issues(Self.task(["retry": .object(["attempts": .int(2)])])).contains { $0.contains("retry.on") })
        #expect(Self.issues(Self.task(["attempt": .int(0)])).contains { $0.contains("attempt") })
    }

    @Test func thePoolRecordReadsBackAsWritten() throws {
        let ticket = PoolTicket(name: "gpu", passes: 2, declined: [.init(node: "a", reason: "no GPU"),
                                                                   .init(node: "b", reason: "busy")], tried: ["c"])
        let spec = try DocumentReader.readTask(Self.task(["pool": ticket.json]))
        #expect(spec.pool == ticket)
        #expect(PoolTicket.of(Self.task(["pool": ticket.json])) == ticket)
        #expect(Self.issues(Self.task(["pool": .object(["name": "Not A Pool"])])).contains { $0.contains("pool.name") })
        // Reasons stay bounded however often a task is passed on.
        let long = PoolTicket(name: "p", declined: (0..<200).map { .init(node: "n\($0)", reason: String(repeating: "x", count: 1000)) })
        guard case .array(let kept)? = long.json["declined"] else { Issue.record("no declined"); return }
        #expect(kept.count == PoolTicket.maxDeclined)
        #expect(kept.allSatisfy { ($0["reason"]?.stringValue?.count ?? 0) <= PoolTicket.maxReason })
    }
}
