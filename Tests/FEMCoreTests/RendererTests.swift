@testable import FEMCore
import Foundation
import Testing

struct RendererTests {
    static let paths = ToolPaths.under("/w/sandboxes/t1")

    static func task(_ args: [JSONValue], params: [String: JSONValue], base: [String] = ["/bin/prog"],
                     inputs: [String] = [], env: [String: JSONValue] = [:]) throws -> TaskSpec {
        let plan: JSONValue = .object([
            "schema_version": .int(1), "id": "t", "version": "1", "launcher": "process",
            "command": .object(["base": .array(base.map(JSONValue.string)), "args": .array(args)]),
            "inputs": .array(inputs.map(JSONValue.string)), "env": .object(env),
        ])
        return try DocumentReader.readTask(.object(["schema_version": .int(1), "task_id": "t1", "execution_id": "e1",
                                                    "plan": plan, "params": .object(params)]))
    }

    static func render(_ t: TaskSpec, datasets: [String: String] = [:]) throws -> RenderedCommand {
        try Renderer.render(t, context: RenderContext(nodeID: "n1", nodeName: "Node One", paths: paths, datasets: datasets),
                            timeoutSeconds: 10)
    }

    static func arg(_ id: String, _ type: String, _ extra: [String: JSONValue] = [:]) -> JSONValue {
        .object(["id": .string(id), "type": .string(type)].merging(extra) { $1 })
    }

    /// Values that a shell would interpret reach the program as one literal argument each.
    @Test(arguments: [
        "a b c", "it's", "\"quoted\"", "x; rm -rf /", "`id`", "$(id)", "${HOME}", "a|b", "a && b", "> /etc/passwd",
        "*", "~", "line1\nline2", "--flag-looking", "%%sandbox%%", "' OR 1=1 --", "\\", "",
    ])
    func injectionValueIsOneLiteralArgument(value: String) throws {
        let t = try Self.task([Self.arg("v", "str", ["prefix": "--value"])], params: ["v": .string(value)])
        let r = try Self.render(t)
        #expect(r.argv == ["/bin/prog", "--value", value])
    }

    @Test func positionsPrefixesSeparateAndFlags() throws {
        let t = try Self.task([
            Self.arg("last", "str", ["position": 9]),
            Self.arg("n", "int", ["prefix": "-n"]),
            Self.arg("x", "float", ["prefix": "--x=", "separate": false]),
            Self.arg("on", "bool", ["prefix": "--on"]),
            Self.arg("off", "bool", ["prefix": "--off"]),
            Self.arg("first", "str", ["position": 0]),
            Self.arg("unset", "str"),
            Self.arg("d", "int", ["default_value": 7, "prefix": "-d"]),
        ], params: ["last": "L", "n": 3, "x": .double(0.25), "on": true, "off": false, "first": "F"])
        let r = try Self.render(t)
        #expect(r.argv == ["/bin/prog", "F", "L", "-n", "3", "--x=0.25", "--on", "-d", "7"])
    }

    @Test func placeholdersExpandInPlanStringsOnly() throws {
        let t = try Self.task([Self.arg("v", "str", ["default_value": "%%out%%/x"]), Self.arg("w", "str")],
                              params: ["w": "%%out%%"], base: ["%%src%%/run", "--node=%%node_name%%", "%%task_id%%"],
                              env: ["OUT": "%%out%%"])
        let r = try Self.render(t)
        #expect(r.argv == ["/w/sandboxes/t1/src/run", "--node=Node One", "t1", "/w/sandboxes/t1/out/x", "%%out%%"])
        #expect(r.environment["OUT"] == "/w/sandboxes/t1/out")
        #expect(r.environment["FEM_TASK_ID"] == "t1")
    }

    @Test func fileAndDatasetParameters() throws {
        let t = try Self.task([Self.arg("f", "file"), Self.arg("d", "dataset")], params: ["f": "a/b.csv", "d": "cohort"])
        let r = try Self.render(t, datasets: ["cohort": "/data/cohort"])
        #expect(r.argv == ["/bin/prog", "/w/sandboxes/t1/in/a/b.csv", "/data/cohort"])
        #expect(r.datasets == ["cohort"])
        #expect(r.environment["FEM_DATASET_COHORT"] == "/data/cohort")
    }

    @Test func aDatasetTheNodeDoesNotHaveIsNamed() throws {
        let t = try Self.task([], params: [:], base: ["/bin/cat", "%%dataset:gone%%"], inputs: ["gone"])
        #expect(throws: RenderError.unknownDataset("gone")) { try Self.render(t) }
    }

    @Test func fileParameterCannotLeaveTheSandbox() throws {
        #expect(throws: ValidationError.self) {
            _ = try Self.task([Self.arg("f", "file")], params: ["f": "../../etc/passwd"])
        }
        #expect(throws: ValidationError.self) { _ = try Self.task([Self.arg("f", "file")], params: ["f": "/etc/passwd"]) }
    }
}

struct SmallPartsTests {
    @Test(arguments: [
        ("*.csv", "a.csv", true), ("*.csv", "d/a.csv", false), ("**/*.csv", "d/e/a.csv", true),
        ("**/*.csv", "a.csv", true), ("a/b?.txt", "a/b1.txt", true), ("a/b?.txt", "a/b12.txt", false),
        ("[ab]*.log", "b1.log", true), ("[!ab]*.log", "b1.log", false), ("out/**", "out/x/y", true),
    ])
    func glob(pattern: String, path: String, matches: Bool) {
        #expect(Glob.matches(pattern, path) == matches)
    }

    @Test func sha256KnownVectors() {
        #expect(SHA256.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        var h = SHA256()
        for _ in 0..<1000 { h.update(Array(repeating: UInt8(ascii: "a"), count: 1000)) }
        #expect(h.finalizeHex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func stateMachineAllowsOnlyForwardMoves() {
        #expect(TaskState.received.canMove(to: .stagingIn))
        #expect(TaskState.running.canMove(to: .stagingOut))
        #expect(!TaskState.completed.canMove(to: .running))
        #expect(!TaskState.received.canMove(to: .completed))
        #expect(!TaskState.rejected.canMove(to: .received))
        for s in TaskState.allCases where s.isTerminal {
            #expect(TaskState.allCases.allSatisfy { !s.canMove(to: $0) }, "\(s) is final")
        }
    }

    @Test func eventsEncodeTheWireFields() throws {
        let e = TaskEvent(kind: .state, nodeID: "n1", taskID: "t1", executionID: "e1", state: .failed, seq: 4,
                          time: Date(timeIntervalSince1970: 0),
                          detail: EventDetail(exitCode: 3, failureClass: .taskFailure, message: "exited with code 3"))
        let o = try JSONValue.parse(e.encoded())
        #expect(o["schema_version"] == .int(1))
        #expect(o["node_id"] == "n1" && o["task_id"] == "t1" && o["execution_id"] == "e1")
        #expect(o["state"] == "failed" && o["seq"] == .int(4) && o["time"] == "1970-01-01T00:00:00.000Z")
        #expect(o["detail"]?["exit_code"] == .int(3) && o["detail"]?["failure_class"] == "task_failure")
        #expect(e.routingKey == "node.n1.task.failed")
    }
}
