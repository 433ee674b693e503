import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Disclosure checks on outputs (`[outputs.checks]`) through a real daemon: process tasks write tables and files,
/// the checks run at collection, the airlock holds them, and approvals go through `fem-client outputs` to nginx's
/// WebDAV (scripts/dev-web.sh, started with the shared services).
@Suite(.serialized)
struct OutputChecksTests {
    let web: String

    init() throws {
        web = try TestEnv.webDir()
    }

    func node(_ name: String, checks: String, airlock: Bool = true) throws -> TestNode {
        try TestNode(name, extra: """
            \(TestNode.hostProcesses)
            [outputs]
            allowed_urls = ["http://127.0.0.1:18080/dav/"]
            require_approval = \(airlock)
            retries = 4
            retry_delay_ms = 100
            [outputs.checks]
            \(checks)
            [credentials.upload-login]
            username = "fem-upload"
            password_file = "\(web)/password-fem-upload"
            urls = ["http://127.0.0.1:18080/dav/"]
            """)
    }

    /// A process task running `script`, collecting by `outputs` rules, delivered below `prefix` on WebDAV.
    func task(_ script: String, outputs: [JSONValue], prefix: String) -> [String: JSONValue] {
        var t = Tasks.task(["/bin/sh", "-c", script])
        guard case .object(var plan) = t["plan"] else { return t }
        plan["outputs"] = .array(outputs)
        t["plan"] = .object(plan)
        t["execution_id"] = .string("exec-\(UUID().uuidString.prefix(8).lowercased())")
        t["stage_out"] = ["url": .string("http://127.0.0.1:18080/dav/\(prefix)"), "credentials": "upload-login"]
        return t
    }

    /// Where a task's file lands on WebDAV, if it did.
    func delivered(_ prefix: String, _ t: [String: JSONValue], _ node: TestNode, _ path: String) -> String? {
        let base = "\(web)/dav/\(prefix)/\(t["execution_id"]!.stringValue!)/\(node.id)/\(Tasks.id(t))"
        return ["\(base)/\(Tasks.id(t))/\(path)", "\(base)/\(path)"].first { FileManager.default.fileExists(atPath: $0) }
    }

    func waitForHold(_ op: Operator, _ t: [String: JSONValue]) throws -> TaskEvent {
        _ = try op.waitFor("the outputs to wait for approval") { events in
            events.contains { $0.taskID == Tasks.id(t) && ($0.state == .awaitingApproval || $0.state.isTerminal) }
        }
        return try #require(op.events(of: Tasks.id(t)).first { $0.state == .awaitingApproval },
                            "\(op.events(of: Tasks.id(t)).map(\.detail))")
    }

    struct Held: Decodable {
        struct Finding: Decodable {
            var check: String
            var file: String
            var row: Int?
            var column: Int?
            var column_name: String?
            var value: String?
            var message: String
        }
        var findings: [Finding]?
    }

    /// A table with a count of 3 and a `.csv` that is a PNG.
    static let script = """
        cd "$FEM_OUTPUT_DIR" && printf 'region,n_patients,mean_age\\nnorth,3,51\\nsouth,42,48\\n' > counts.csv \
        && printf '\\211PNG\\r\\n\\032\\n0000' > chart.csv && echo ok
        """

    @Test func aSmallCountAndAFakeCSVAreFoundAndBlockApprovalUntilOverridden() throws {
        let node = try node("oc-block", checks: "block_on_findings = true")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "checks-\(UUID().uuidString.prefix(6).lowercased())"
        let t = task(Self.script, outputs: [["pattern": "*.csv", "kind": "table"]], prefix: prefix)
        try op.submit(t)
        let waiting = try waitForHold(op, t)

        // The manifest holds every detail, for the steward.
        let json = try node.run(["outputs", "show", Tasks.id(t), "--json"])
        #expect(json.status == 0, "\(json.output)")
        let held = try JSONDecoder().decode(Held.self, from: Data(json.output.utf8))
        let findings = try #require(held.findings, "\(json.output)")
        let count = try #require(findings.first { $0.check == "min_cell_count" }, "\(json.output)")
        #expect(count.file == "out/counts.csv" && count.row == 2 && count.column == 2, "\(json.output)")
        #expect(count.column_name == "n_patients" && count.value == "3", "\(json.output)")
        #expect(count.message == "count 3 is below this node's minimum cell count 10")
        let fake = try #require(findings.first { $0.check == "file_type" }, "\(json.output)")
        #expect(fake.file == "out/chart.csv")
        #expect(fake.message.contains("is not a table (its content is a PNG image)"), "\(fake.message)")
        #expect(findings.count == 2, "\(json.output)")

        // The event carries check, row, column and a message, but not the cell, the column name or the tool's file
        // names (which wait for the approval): the file's place in the manifest instead.
        let outputs = try #require(waiting.detail.data?["outputs"], "\(waiting.detail)")
        #expect(outputs["findings_count"] == 2, "\(outputs)")
        guard case .array(let sent)? = outputs["findings"] else {
            Issue.record("no findings in the awaiting_approval event: \(outputs)")
            return
        }
        let sentCount = try #require(sent.first { $0["check"] == "min_cell_count" }, "\(sent)")
        #expect(sentCount["row"] == 2 && sentCount["column"] == 2 && sentCount["file_index"] != nil, "\(sentCount)")
        let eventText = String(decoding: try JSONEncoder().encode(outputs), as: UTF8.self)
        for secret in ["n_patients", "counts.csv", "chart.csv", "count 3 "] {
            #expect(!eventText.contains(secret), "the event leaks \(secret): \(eventText)")
        }
        #expect(sent.contains { $0["check"] == "file_type" }, "\(sent)")

        let list = try node.run(["outputs", "list"])
        #expect(list.output.contains("FINDINGS"), "\(list.output)")
        let row = list.output.split(separator: "\n").first { $0.contains(Tasks.id(t)) }.map(String.init) ?? ""
        #expect(row.split(separator: " ").contains("2"), "\(list.output)")
        let show = try node.run(["outputs", "show", Tasks.id(t)])
        #expect(show.output.contains("min_cell_count  out/counts.csv  row 2, column 2 \"n_patients\", value \"3\": "
                                     + "count 3 is below this node's minimum cell count 10"), "\(show.output)")
        #expect(show.output.contains("file_type  out/chart.csv: is declared a table (kind \"table\") but is not a table"),
                "\(show.output)")

        // Blocked without an override: the task keeps waiting and nothing leaves.
        let refused = try node.run(["outputs", "approve", Tasks.id(t)])
        #expect(refused.status != 0, "\(refused.output)")
        #expect(refused.output.contains("2 finding(s) of the output checks")
                && refused.output.contains("outputs.checks.block_on_findings"), "\(refused.output)")
        let blank = try node.run(["outputs", "approve", Tasks.id(t), "--override", "  "])
        #expect(blank.status != 0 && blank.output.contains("block_on_findings"), "\(blank.output)")
        let still = try node.run(["outputs", "list"])
        #expect(still.output.contains(Tasks.id(t)), "still waiting: \(still.output)")
        #expect(!op.events(of: Tasks.id(t)).contains { $0.kind == .approval })
        #expect(delivered(prefix, t, node, "out/counts.csv") == nil)

        // With a reason: approved, the reason journaled and sent, the files delivered.
        let yes = try node.run(["outputs", "approve", Tasks.id(t), "--override", "regional totals, reviewed"])
        #expect(yes.status == 0 && yes.output.contains("overriding 2 finding(s)"), "\(yes.output)")
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed, "\(final.detail)")
        #expect(final.detail.data?["outputs"]?["findings_count"] == 2, "\(final.detail)")
        let approval = try #require(op.events(of: Tasks.id(t)).first { $0.kind == .approval })
        #expect(approval.detail.data?["override"] == "regional totals, reviewed", "\(approval.detail)")
        #expect(approval.detail.data?["findings"] == 2, "\(approval.detail)")
        let table = try #require(delivered(prefix, t, node, "out/counts.csv"), "counts.csv was not delivered")
        #expect(try String(contentsOfFile: table, encoding: .utf8).contains("north,3,51"))
        let manifest = try #require(delivered(prefix, t, node, "manifest.json"))
        let sentManifest = try JSONDecoder().decode(Held.self, from: Data(contentsOf: URL(fileURLWithPath: manifest)))
        #expect(sentManifest.findings?.count == 2, "the delivered manifest carries the findings it was approved with")
    }

    @Test func heldFindingsSurviveADaemonRestartAndStillBlock() throws {
        let node = try node("oc-restart", checks: "block_on_findings = true")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "checks-\(UUID().uuidString.prefix(6).lowercased())"
        let t = task("cd \"$FEM_OUTPUT_DIR\" && printf 'n\\n4\\n' > t.csv", outputs: [["pattern": "*.csv"]],
                     prefix: prefix)
        try op.submit(t)
        let held = try waitForHold(op, t)
        #expect(held.detail.message?.hasSuffix("; 1 finding(s) of the output checks") == true, "\(held.detail)")
        node.stop()
        // The table changes while the daemon is down: what was checked and held is the staged copy.
        try "n\n400\n".write(toFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/out/t.csv", atomically: false,
                              encoding: .utf8)
        try node.start()
        let refused = try node.run(["outputs", "approve", Tasks.id(t)])
        #expect(refused.status != 0 && refused.output.contains("1 finding(s) of the output checks"), "\(refused.output)")
        let yes = try node.run(["outputs", "approve", Tasks.id(t), "--override", "a single site total"])
        #expect(yes.status == 0, "\(yes.output)")
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed && final.detail.data?["outputs"]?["findings_count"] == 1, "\(final.detail)")
        let sent = try #require(delivered(prefix, t, node, "out/t.csv"))
        #expect(try String(contentsOfFile: sent, encoding: .utf8) == "n\n4\n")
    }

    @Test func withoutBlockingFindingsAreReportedAndACleanTableHasNone() throws {
        let node = try node("oc-report", checks: "min_cell_count = 5\ncount_columns = [\"cases\"]")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "checks-\(UUID().uuidString.prefix(6).lowercased())"
        // `cases` is the node's pattern; `n_total` is declared by the plan only; 7 >= 5 is fine, 4 is not.
        let flagged = task("cd \"$FEM_OUTPUT_DIR\" && printf 'cases,n_total\\n7,4\\n' > t.csv",
                           outputs: [["pattern": "t.csv", "kind": "table", "count_columns": ["n_total"]]], prefix: prefix)
        let clean = task("cd \"$FEM_OUTPUT_DIR\" && printf 'cases,n\\n7,2\\n' > clean.csv",
                         outputs: [["pattern": "clean.csv"]], prefix: prefix)
        try op.submit(flagged)
        try op.submit(clean)
        let held = try waitForHold(op, flagged)
        guard case .array(let sent)? = held.detail.data?["outputs"]?["findings"] else {
            Issue.record("no findings: \(held.detail)")
            return
        }
        // The plan names the file exactly (pattern without wildcards): its path is the plan's, so the event has it.
        #expect(sent.count == 1 && sent.first?["file"] == "out/t.csv" && sent.first?["column"] == 2, "\(sent)")
        let quiet = try waitForHold(op, clean)
        #expect(quiet.detail.data?["outputs"]?["findings"] == nil, "\(quiet.detail)")
        let show = try node.run(["outputs", "show", Tasks.id(clean)])
        #expect(show.output.contains("findings    none (outputs.checks)"), "\(show.output)")
        // Not blocking: approved without an override.
        let yes = try node.run(["outputs", "approve", Tasks.id(flagged)])
        #expect(yes.status == 0, "\(yes.output)")
        try op.waitForFinal([Tasks.id(flagged)])
        #expect(op.finalState(of: Tasks.id(flagged))?.state == .completed)
    }

    @Test func withoutTheAirlockFindingsAreInTheManifestAndTheFinalEvent() throws {
        let node = try node("oc-open", checks: "", airlock: false)
        try node.start()
        let op = try Operator(node: node)
        let prefix = "checks-\(UUID().uuidString.prefix(6).lowercased())"
        let script = "cd \"$FEM_OUTPUT_DIR\" && printf 'site,count\\nA,3\\n' > t.csv"
        let sent = task(script, outputs: [["pattern": "*.csv"]], prefix: prefix)
        var kept = task(script, outputs: [["pattern": "*.csv"]], prefix: prefix)
        kept["stage_out"] = nil
        try op.submit(sent)
        try op.submit(kept)
        try op.waitForFinal([Tasks.id(sent), Tasks.id(kept)])
        let a = try #require(op.finalState(of: Tasks.id(sent)))
        #expect(a.state == .completed, "\(a.detail)")
        guard case .array(let found)? = a.detail.data?["outputs"]?["findings"] else {
            Issue.record("no findings in the final event: \(a.detail)")
            return
        }
        // The files leave with their names: the path is sent, the cell value and column name still are not.
        #expect(found.count == 1 && found.first?["file"] == "out/t.csv" && found.first?["row"] == 2
                && found.first?["column"] == 2, "\(found)")
        #expect(!String(decoding: try JSONEncoder().encode(found), as: UTF8.self).contains("count 3"), "\(found)")
        let manifest = try #require(delivered(prefix, sent, node, "manifest.json"), "no manifest delivered")
        let m = try JSONDecoder().decode(Held.self, from: Data(contentsOf: URL(fileURLWithPath: manifest)))
        #expect(m.findings?.first?.value == "3" && m.findings?.first?.column_name == "count", "\(String(describing: m.findings))")

        // Without a target the outputs stay in the sandbox, with their manifest; the event names no tool path.
        let b = try #require(op.finalState(of: Tasks.id(kept)))
        #expect(b.state == .completed, "\(b.detail)")
        #expect(b.detail.data?["outputs"]?["findings_count"] == 1, "\(b.detail)")
        guard case .array(let keptFound)? = b.detail.data?["outputs"]?["findings"] else {
            Issue.record("no findings in the final event: \(b.detail)")
            return
        }
        #expect(keptFound.first?["file"] == nil && keptFound.first?["file_index"] != nil, "\(keptFound)")
        let local = "\(node.dir)/var/sandboxes/\(Tasks.id(kept))/manifest.json"
        let n = try JSONDecoder().decode(Held.self, from: Data(contentsOf: URL(fileURLWithPath: local)))
        #expect(n.findings?.first?.row == 2, "\(String(describing: n.findings))")
    }

    @Test func aPlanWithABadKindIsDeclinedAndBlockingWithoutTheAirlockIsAConfigError() throws {
        let node = try node("oc-refuse", checks: "")
        try node.start()
        let op = try Operator(node: node)
        let bad = task("true", outputs: [["pattern": "*.csv", "kind": "spreadsheet"],
                                         ["pattern": "*.png", "kind": "image", "count_columns": ["n"]]], prefix: "x")
        try op.submit(bad)
        let rejected = try op.waitFor("the task to be declined") { events in
            events.contains { $0.taskID == Tasks.id(bad) && $0.state == .rejected }
        }.first { $0.taskID == Tasks.id(bad) && $0.state == .rejected }
        let message = rejected?.detail.message ?? ""
        #expect(message.contains("plan.outputs[0].kind: \"spreadsheet\" is not one of table, image, text, archive, file"),
                "\(message)")
        #expect(message.contains("plan.outputs[1].count_columns: only for a table"), "\(message)")

        let misconfigured = try TestNode("oc-noairlock", extra: """
            [outputs.checks]
            block_on_findings = true
            min_cell_count = -1
            """)
        let check = try misconfigured.run(["check"])
        #expect(check.status != 0, "\(check.output)")
        #expect(check.output.contains("outputs.checks.block_on_findings = true needs outputs.require_approval = true"),
                "\(check.output)")
        #expect(check.output.contains("outputs.checks.min_cell_count"), "\(check.output)")
    }
}
