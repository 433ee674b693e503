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
