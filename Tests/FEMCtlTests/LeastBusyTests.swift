@testable import FEMCtl
import FEMCore
import Foundation
import Testing

/// `femctl submit --least-busy`: which node it picks from the heartbeats it heard, and why.
struct LeastBusyTests {
    static func beat(_ id: String, running: Int, queued: Int = 0, free: [String: JSONValue]? = nil,
                     draining: Bool = false, pressure: String? = nil) -> NodeSighting {
        var b: [String: JSONValue] = ["node_id": .string(id), "running": .int(Int64(running)),
                                      "queued": .int(Int64(queued))]
        if let free { b["free"] = .object(free) }
        if draining { b["draining"] = .bool(true) }
        if let pressure { b["pressure"] = .string(pressure) }
        return NodeSighting(nodeID: id, beat: .object(b), seen: Date())
    }

    static var spec: TaskSpec {
        get throws {
            try DocumentReader.readTask(.object([
                "schema_version": .int(1), "execution_id": "e",
                "plan": .object(["schema_version": .int(1), "id": "p", "version": "1", "launcher": "process",
                                 "command": .object(["base": .array(["/bin/true"])])]),
            ]))
        }
    }

    @Test func theNodeWithTheMostFreeCapacityWinsAndTheReasonSaysSo() throws {
        let nodes = [Self.beat("a", running: 0, free: ["cpus": .double(1), "memory_mb": .int(1000)]),
                     Self.beat("b", running: 1, free: ["cpus": .double(6), "memory_mb": .int(8000)]),
                     Self.beat("c", running: 0, free: ["cpus": .double(6), "memory_mb": .int(2000)])]
        let choice = try NodeDirectory.leastBusy(nodes, for: try Self.spec, document: .object([:]))
        #expect(choice.node == "b")
        #expect(choice.why.contains("1 running") && choice.why.contains("cpus=6"))
    }

    @Test func withoutFreeCapacityTheFewestTasksWin() throws {
        let nodes = [Self.beat("a", running: 2), Self.beat("b", running: 0, queued: 1), Self.beat("c", running: 0)]
        #expect(try NodeDirectory.leastBusy(nodes, for: try Self.spec, document: .object([:])).node == "c")
    }

    @Test func drainingAndPressedNodesAreLeftOutAndNamedWhenNoneIsLeft() {
        let nodes = [Self.beat("a", running: 0, draining: true), Self.beat("b", running: 0, pressure: "disk full")]
        #expect {
            try NodeDirectory.leastBusy(nodes, for: try Self.spec, document: .object([:]))
        } throws: { error in
            "\(error)".contains("a: draining") && "\(error)".contains("b: disk full")
        }
        #expect(throws: (any Error).self) { try NodeDirectory.leastBusy([], for: try Self.spec, document: .object([:])) }
    }
}

/// `--least-busy` against the task's needs: resources vs `capacity`/`free`, launcher and datasets.
struct LeastBusyNeedsTests {
    static func node(_ id: String, capacity: Int64, free: Int64, launchers: [String] = ["process"],
                     datasets: [String] = []) -> NodeSighting {
        let b: [String: JSONValue] = [
            "node_id": .string(id), "running": .int(0), "queued": .int(0),
            "launchers": .array(launchers.map(JSONValue.string)),
            "datasets": .array(datasets.map { .object(["id": .string($0), "labels": .object([:])]) }),
            "capacity": .object(["cpus": .int(capacity), "memory_mb": .int(64000), "gpus": .int(0), "storage_mb": .int(0)]),
            "free": .object(["cpus": .int(free), "memory_mb": .int(64000), "gpus": .int(0), "storage_mb": .int(0)]),
        ]
        return NodeSighting(nodeID: id, beat: .object(b), seen: Date())
    }

    static func spec(cpus: Int64, launcher: String = "process", inputs: [String] = []) throws -> TaskSpec {
        var plan: [String: JSONValue] = ["schema_version": .int(1), "id": "p", "version": "1", "launcher": .string(launcher),
                                         "command": .object(["base": .array(["/bin/true"])]),
                                         "resources": .object(["cpus": .int(cpus)])]
        if !inputs.isEmpty { plan["inputs"] = .array(inputs.map(JSONValue.string)) }
        return try DocumentReader.readTask(.object(["schema_version": .int(1), "execution_id": "e", "plan": .object(plan)]))
    }

    @Test func aNodeTooSmallForTheTaskIsLeftOutEvenWhenFreest() throws {
        // "a" has the most free CPUs but a capacity below the task's 8: never chosen, and named with why.
        let nodes = [Self.node("a", capacity: 4, free: 4), Self.node("b", capacity: 16, free: 2)]
        let choice = try NodeDirectory.leastBusy(nodes, for: try Self.spec(cpus: 8), document: .object([:]))
        #expect(choice.node == "b")
        #expect(choice.why.contains("a: the task asks more than its capacity (cpus 8 > 4)"), "\(choice.why)")
        #expect {
            try NodeDirectory.leastBusy([Self.node("a", capacity: 4, free: 4)], for: try Self.spec(cpus: 8),
                                        document: .object([:]))
        } throws: { "\($0)".contains("cpus 8 > 4") }
    }

    @Test func aNodeWhoseFreeCoversTheTaskIsPreferred() throws {
        // "a" is freer overall but cannot start 6 CPUs now; "b" can.
        let nodes = [Self.node("a", capacity: 32, free: 5), Self.node("b", capacity: 8, free: 6)]
        #expect(try NodeDirectory.leastBusy(nodes, for: try Self.spec(cpus: 6), document: .object([:])).node == "b")
        // When none can start it now, the freest that could ever run it.
        let busy = [Self.node("a", capacity: 32, free: 5), Self.node("b", capacity: 8, free: 1)]
        #expect(try NodeDirectory.leastBusy(busy, for: try Self.spec(cpus: 6), document: .object([:])).node == "a")
    }

    @Test func aNodeWithoutTheLauncherOrADatasetIsLeftOut() throws {
        let nodes = [Self.node("a", capacity: 32, free: 32, launchers: ["docker"], datasets: ["cohort"]),
                     Self.node("b", capacity: 32, free: 30, datasets: []),
                     Self.node("c", capacity: 32, free: 2, datasets: ["cohort", "other"])]
        let choice = try NodeDirectory.leastBusy(nodes, for: try Self.spec(cpus: 1, inputs: ["cohort"]),
                                                 document: .object([:]))
        #expect(choice.node == "c")
        #expect(choice.why.contains("a: launcher process is not enabled there"), "\(choice.why)")
        #expect(choice.why.contains("b: dataset cohort is not there"), "\(choice.why)")
    }
}
