import FEMCore
import Foundation
import Testing

/// `--param name=value` for the command-line tools: typed by the plan's arguments, refused in the plan's terms.
struct TaskDocumentTests {
    let plan: JSONValue = .object([
        "schema_version": 1, "id": "typed", "version": "1", "launcher": "process",
        "command": .object(["base": .array(["/bin/echo"]), "args": .array([
            .object(["id": "count", "type": "int", "position": 1]),
            .object(["id": "ratio", "type": "float", "position": 2]),
            .object(["id": "flag", "type": "bool", "position": 3]),
            .object(["id": "name", "type": "str", "position": 4]),
        ])]),
    ])

    func refusal(_ params: [String]) -> String? {
        do {
            _ = try TaskDocument.task(from: plan, params: params)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func valuesAreTypedByThePlan() throws {
        let task = try TaskDocument.task(from: plan, params: ["count=3", "ratio=0.5", "flag=true", "name=two words"])
        #expect(task["params"]?["count"] == .int(3) && task["params"]?["ratio"] == .double(0.5))
        #expect(task["params"]?["flag"] == .bool(true) && task["params"]?["name"] == .string("two words"))
        #expect(task["plan"]?["id"]?.stringValue == "typed" && task["execution_id"]?.stringValue?.hasPrefix("local-") == true)
    }

    @Test func wrongValuesAreRefusedInThePlansTerms() {
        #expect(refusal(["count=abc"]) == "--param count=abc: count is an int (a whole number such as 3), not \"abc\"")
        #expect(refusal(["ratio=high"])?.hasPrefix("--param ratio=high: ratio is a float") == true)
        #expect(refusal(["flag=yes"])?.hasPrefix("--param flag=yes: flag is a bool (true or false)") == true)
        #expect(refusal(["cuont=1"]) == "--param cuont=1: the plan typed has no argument cuont (its arguments: count, ratio, flag, name)")
        #expect(refusal(["count"]) == "--param count: expected name=value")
        for message in [refusal(["count=abc"]), refusal(["ratio=x"])].compactMap({ $0 }) {
            #expect(!message.contains("integer") && !message.contains("string"), "JSON words: \(message)")
        }
    }
}
