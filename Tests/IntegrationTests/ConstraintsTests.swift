import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Selection criteria through the real daemon and broker: a node with `[node.labels]` runs the tasks whose
/// constraints it meets, declines (naming the attribute and both values) those it does not, declines an expression
/// it cannot read (naming `constraints` and the column), and advertises its attributes in its heartbeat.
@Suite(.serialized)
struct ConstraintsTests {
    static let labelled = TestNode.hostProcesses + """

        [node.labels]
        site = "hospital-a"
        sensors = ["camera"]
        """

    static func task(constraints: String?, planConstraints: String? = nil) -> [String: JSONValue] {
        var t = Tasks.task(["/bin/echo", "ran"])
        if let constraints { t["constraints"] = .string(constraints) }
        if let planConstraints, case .object(var p)? = t["plan"] {
            p["constraints"] = .string(planConstraints)
            t["plan"] = .object(p)
        }
        return t
    }

    @Test func matchingTaskRunsOthersAreDeclinedWithWhy() throws {
        let node = try TestNode("constraints", extra: Self.labelled)
        try node.start()
        let op = try Operator(node: node)
        let matching = Self.task(constraints: #""camera" in labels.sensors and labels.site == "hospital-a""#,
                                 planConstraints: "cpus >= 0.01 and version(version) >= \"0.0.1\"")
        let otherSite = Self.task(constraints: #"labels.site == "hospital-b""#)
        let planMismatch = Self.task(constraints: nil, planConstraints: #""lidar" in labels.sensors"#)
        let malformed = Self.task(constraints: #"labels.site == "hospital-a" and and cpus > 1"#)
        let missing = Self.task(constraints: #"labels.room == "b12""#)
        // Hostile input ends at once: nesting past the limit is declined, an expression past 4096 bytes rejected.
        let deep = Self.task(constraints: String(repeating: "(", count: 2000) + "true" + String(repeating: ")", count: 2000))
        let huge = Self.task(constraints: "labels.site == \"" + String(repeating: "x", count: 5000) + "\"")
        let pathological = Self.task(constraints: #"labels.site =~ "^(a*)*(h|o|s|p|i|t|a|l|-)*b$""#)
        let all = [matching, otherSite, planMismatch, malformed, missing, deep, huge, pathological]
        for t in all { try op.submit(t) }
        try op.waitForFinal(all.map(Tasks.id))

        #expect(op.finalState(of: Tasks.id(matching))?.state == .completed)
        for t in [otherSite, planMismatch, malformed, missing, deep, pathological] {
            let states = op.events(of: Tasks.id(t)).filter { $0.kind == .state }.map(\.state)
            #expect(states == [.received, .declined], "\(Tasks.id(t)): \(states)")
            // Declined before any stage-in: no sandbox was made.
            #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/var/sandboxes/\(Tasks.id(t))"))
        }
        func reason(_ t: [String: JSONValue]) -> String { op.finalState(of: Tasks.id(t))?.detail.message ?? "" }
        #expect(reason(otherSite) == #"constraints not met by this node: labels.site == "hospital-b" is false: "#
                + #"labels.site is "hospital-a""#)
        #expect(reason(planMismatch) == #"plan.constraints not met by this node: "lidar" in labels.sensors is false: "#
                + #"labels.sensors is ["camera"]"#)
        #expect(reason(malformed) == #"constraints cannot be read: column 33: expected an operand (a value, an "#
                + #"attribute or "("), found "and""#)
        #expect(reason(missing).contains("labels.room is not set on this node"), "\(reason(missing))")
        #expect(reason(deep) == "constraints cannot be read: column 65: the expression is nested deeper than 64 levels")
        #expect(reason(pathological).hasPrefix(#"constraints not met by this node: labels.site =~ "^(a*)*"#))
        #expect(op.finalState(of: Tasks.id(huge))?.state == .rejected)
        #expect(reason(huge).contains("constraints: is 5017 bytes long; the limit is 4096"), "\(reason(huge))")
        #expect(node.log.contains("task=\(Tasks.id(otherSite)) declined: constraints not met"))

        // The heartbeat advertises the attributes, labels included.
        try op.waitFor("a heartbeat with attributes", timeout: 15) { _ in op.heartbeats.contains { $0.attributes != nil } }
        let attributes = try #require(op.heartbeats.last { $0.attributes != nil }?.attributes)
        #expect(attributes["labels.site"] == .string("hospital-a"))
        #expect(attributes["labels.sensors"] == .list([.string("camera")]))
        #expect(attributes["node_id"] == .string(node.id) && attributes["launchers"] == .list([.string("process")]))
        #expect(attributes["version"] == .string(FEMVersion.string))
        for key in ["cpus", "memory_mb", "gpus", "disk_free_mb", "arch", "kernel"] {
            #expect(attributes[key] != nil, "the heartbeat's attributes lack \(key): \(attributes)")
        }
    }

    @Test func labelsFollowAConfigReload() throws {
        let node = try TestNode("constraints-reload", extra: Self.labelled)
        try node.start()
        let op = try Operator(node: node)
        let before = Self.task(constraints: #"labels.site == "hospital-b""#)
        try op.submit(before)
        try op.waitForFinal([Tasks.id(before)])
        #expect(op.finalState(of: Tasks.id(before))?.state == .declined)
        try node.editConfig { $0.replacingOccurrences(of: #"site = "hospital-a""#, with: #"site = "hospital-b""#) }
        guard let pid = node.pid else { throw HarnessError("the daemon is not running") }
        Glibc.kill(pid, SIGHUP)
        try eventually("the reload's log line") { node.log.contains("node.labels") && node.log.contains("config reloaded") }
        let after = Self.task(constraints: #"labels.site == "hospital-b""#)
        try op.submit(after)
        try op.waitForFinal([Tasks.id(after)])
        #expect(op.finalState(of: Tasks.id(after))?.state == .completed, "\(op.events(of: Tasks.id(after)))")
        try op.waitFor("a heartbeat with the new label", timeout: 15) { _ in
            op.heartbeats.contains { $0.attributes?["labels.site"] == .string("hospital-b") }
        }
    }

    @Test func renderSaysWhetherThisNodeMatchesAndWhyNot() throws {
        let node = try TestNode("constraints-render", extra: Self.labelled)
        let file = "\(node.dir)/task.json"
        let t = Self.task(constraints: #"labels.site == "hospital-b""#, planConstraints: #""camera" in labels.sensors"#)
        try String(decoding: JSONValue.object(t).encoded(), as: UTF8.self).write(toFile: file, atomically: true, encoding: .utf8)
        let out = try node.run(["render", file])
        #expect(out.status == 0, "\(out.output)")
        #expect(out.output.contains(#"this node (\#(node.id)) does NOT match: constraints not met by this node: "#
                                    + #"labels.site == "hospital-b" is false: labels.site is "hospital-a""#), "\(out.output)")
        let json = try node.run(["render", file, "--json"])
        let value = try JSONValue.parse(Data(json.output.utf8))
        #expect(value["constraints"]?["matched"] == .bool(false) && value["argv"] != nil, "\(json.output)")
        #expect(value["constraints"]?["reason"]?.stringValue?.hasSuffix(#"labels.site is "hospital-a""#) == true)
        var ok = t
        ok["constraints"] = .string(#"labels.site == "hospital-a""#)
        try String(decoding: JSONValue.object(ok).encoded(), as: UTF8.self).write(toFile: file, atomically: true, encoding: .utf8)
        let matched = try node.run(["render", file])
        #expect(matched.output.contains("this node (\(node.id)) matches"), "\(matched.output)")
        // `validate` reads the expressions, so an author sees a syntax error before sending the task.
        var bad = t
        bad["constraints"] = .string(#"labels.site = "hospital-a""#)
        try String(decoding: JSONValue.object(bad).encoded(), as: UTF8.self).write(toFile: file, atomically: true, encoding: .utf8)
        let invalid = try Shell.run([try TestEnv.binary("fem-client"), "validate", file])
        #expect(invalid.status == 2 && invalid.output.contains(
            #"constraints: column 13: expected "==" (a single "=" is not an operator)"#), "\(invalid.output)")
    }
}
