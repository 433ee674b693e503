import FEMCore
import Foundation
import Testing

/// The commands people type: femctl submit/watch/cancel, fem-client validate/render/run.
@Suite(.serialized)
struct CommandLineTests {
    func femctlEnvironment(_ node: TestNode) -> [String: String] {
        BrokerAccounts.femctlEnvironment(brokerDir: node.brokerDir, port: node.port)
    }

    func femctl(_ node: TestNode, _ args: [String]) throws -> (status: Int32, output: String) {
        try Shell.run([try TestEnv.binary("femctl")] + args, environment: femctlEnvironment(node))
    }

    @Test func femctlSubmitsTheExampleAndWatchesItComplete() throws {
        let node = try TestNode("femctl", extra: TestNode.hostProcesses)
        try node.start()
        let watcher = Process()
        watcher.executableURL = URL(fileURLWithPath: try TestEnv.binary("femctl"))
        watcher.arguments = ["watch", "--node", node.id, "--until-done", "1", "--timeout", "30"]
        watcher.environment = femctlEnvironment(node)
        let watchOut = "\(node.dir)/watch.out"
        _ = FileManager.default.createFile(atPath: watchOut, contents: nil)
        watcher.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: watchOut))
        watcher.standardError = FileHandle.nullDevice
        try watcher.run()
        Thread.sleep(forTimeInterval: 1.0)
        let submit = try femctl(node, ["submit", "\(TestEnv.repoRoot)/docs/templates/examples/hello-process.task.json",
                                       "--node", node.id, "--param", "name=operator"])
        #expect(submit.status == 0, "\(submit.output)")
        #expect(!submit.output.contains("warning"), "a node consumes its queue: \(submit.output)")
        let taskID = submit.output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Patterns.matches(Patterns.taskID, taskID))
        watcher.waitUntilExit()
        let watched = (status: watcher.terminationStatus, output: try String(contentsOfFile: watchOut, encoding: .utf8))
        #expect(watched.status == 0)
        // A header, and a STATE column wide enough for every state.
        #expect(watched.output.hasPrefix("NODE"), "\(watched.output)")
        #expect(watched.output.contains(" STATE "))
        for state in ["received", "staging_in", "running", "staging_out", "completed"] {
            #expect(watched.output.contains(state), "watch shows \(state)")
        }
        #expect(watched.output.contains(taskID))
        let greeting = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(taskID)/out/greeting.txt", encoding: .utf8)
        #expect(greeting.hasPrefix("hello, operator"))
        // The node's journal lists it with its tool and execution.
        let tasks = try node.run(["tasks"])
        let row = tasks.output.split(separator: "\n").first { $0.hasPrefix(taskID) } ?? ""
        #expect(tasks.output.hasPrefix("TASK") && tasks.output.contains(" EXECUTION "), "\(tasks.output)")
        #expect(row.contains("completed") && row.contains("hello-process@1.0.0") && row.contains("exec-hello-1"),
                "\(tasks.output)")
    }

    @Test func femctlCancel() throws {
        let node = try TestNode("femctl-cancel", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/sleep", "60"])
        try op.submit(t)
        try op.waitFor("running") { $0.contains { $0.state == .running } }
        let c = try femctl(node, ["cancel", Tasks.id(t), "--node", node.id, "--reason", "wrong input"])
        #expect(c.status == 0, "\(c.output)")
        try op.waitForFinal([Tasks.id(t)])
        #expect(op.finalState(of: Tasks.id(t))?.state == .cancelled)
        #expect(op.finalState(of: Tasks.id(t))?.detail.message == "cancelled: wrong input")
    }

    @Test func femctlRefusesAnInvalidTaskFileBeforeSending() throws {
        let node = try TestNode("femctl-invalid")
        let bad = "\(node.dir)/bad.task.json"
        try #"{"schema_version":1,"plan":{"schema_version":1,"id":"x","version":"1","launcher":"process","command":{"base":["a"]}}}"#
            .write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try femctl(node, ["submit", bad, "--node", node.id])
        #expect(r.status != 0)
        #expect(r.output.contains("execution_id: is required"))
    }

    @Test func validateListsEveryProblemWithItsPath() throws {
        let dir = try TestEnv.scratch("validate")
        let file = "\(dir)/bad.plan.json"
        try #"{"schema_version":1,"id":"Bad Id","version":"1","launcher":"process","command":{"base":["x"],"args":[{"id":"a","type":"integr"}]},"colour":"red"}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let r = try Shell.run([try TestEnv.binary("fem-client"), "validate", file])
        #expect(r.status == 2, "invalid input: \(r.output)")
        #expect(r.output.contains("3 problems"))
        #expect(r.output.contains("plan.id: \"Bad Id\" does not match"))
        #expect(r.output.contains("plan.command.args[0].type: \"integr\" is not one of str, int, float, bool, file, dataset"))
        #expect(r.output.contains("plan.colour: is not a known field"))
        let examples = "\(TestEnv.repoRoot)/docs/templates/examples"
        for f in try FileManager.default.contentsOfDirectory(atPath: examples) where f.hasSuffix(".json") {
            let ok = try Shell.run([try TestEnv.binary("fem-client"), "validate", "\(examples)/\(f)"])
            #expect(ok.status == 0, "\(f): \(ok.output)")
        }
    }

    /// The one task folder `fem-client run` delivered into below `<output>/<execution_id>/<node_id>`.
    static func delivered(_ parent: String) throws -> String {
        let tasks = try FileManager.default.contentsOfDirectory(atPath: parent)
        try #require(tasks.count == 1, "\(parent): \(tasks)")
        return "\(parent)/\(tasks[0])"
    }

    @Test func runTheHelloExampleLocally() throws {
        let dir = try TestEnv.scratch("run")
        let r = try Shell.run([try TestEnv.binary("fem-client"), "run",
                               "\(TestEnv.repoRoot)/docs/templates/examples/hello-process.task.json",
                               "--work-dir", "\(dir)/work", "--config", "\(dir)/none.toml"], cwd: dir)
        #expect(r.status == 0, "\(r.output)")
        for state in ["received", "staging_in", "running", "staging_out", "completed"] { #expect(r.output.contains(state)) }
        #expect(r.output.contains("state    completed"))
        // <output>/<execution_id>/<node_id>/<task_id>, the task id being the one `run` made up.
        let line = try #require(r.output.split(separator: "\n").first { $0.hasPrefix("outputs  ") }, "\(r.output)")
        let outputs = String(line.dropFirst("outputs  ".count).prefix { $0 != " " })
        #expect(outputs.hasPrefix("\(dir)/work/outputs/exec-hello-1/local/") && outputs.count > "\(dir)/work/outputs/exec-hello-1/local/".count,
                "\(r.output)")
        let manifest = try JSONValue.parse(Data(contentsOf: URL(fileURLWithPath: "\(outputs)/manifest.json")))
        guard case .array(let files)? = manifest["files"] else { Issue.record("manifest has no files"); return }
        #expect(files.compactMap { $0["path"]?.stringValue }.sorted() == ["logs/stderr.log", "logs/stdout.log", "out/greeting.txt"])
        #expect(try String(contentsOfFile: "\(outputs)/out/greeting.txt", encoding: .utf8)
            == "hello, federated world (node local)\n")
    }

    /// Injection attempts in parameter values reach the program as single literal arguments: the program
    /// records the argv it received.
    @Test func injectionCorpusNeverReachesAShell() throws {
        let dir = try TestEnv.scratch("inject")
        let corpus = [
            "plain", "two words", "semi; colon", "$(touch \(dir)/pwned1)", "`touch \(dir)/pwned2`", "a && touch \(dir)/pwned3",
            "| cat /etc/passwd", "'single' \"double\"", "${PATH}", "*", "../../etc/passwd", "-rf", "%%sandbox%%", "\\n\\t",
            "ünïcödé ✓",
        ]
        let plan: JSONValue = .object([
            "schema_version": 1, "id": "argv-dump", "version": "1", "launcher": "process",
            "command": .object(["base": .array(["/usr/bin/python3", "-c",
                                                "import json,os,sys; json.dump(sys.argv[1:], open(os.environ['FEM_OUTPUT_DIR']+'/argv.json','w'))"]),
                                "args": .array(corpus.indices.map { .object(["id": .string("v\($0)"), "type": "str", "position": .int(Int64($0))]) })]),
            "outputs": .array([.object(["pattern": "argv.json"])]),
        ])
        var params: [String: JSONValue] = [:]
        for (i, v) in corpus.enumerated() { params["v\(i)"] = .string(v) }
        let task: JSONValue = .object(["schema_version": 1, "execution_id": "inject", "plan": plan, "params": .object(params)])
        try String(decoding: task.encoded(), as: UTF8.self).write(toFile: "\(dir)/t.json", atomically: true, encoding: .utf8)
        let r = try Shell.run([try TestEnv.binary("fem-client"), "run", "\(dir)/t.json", "--work-dir", "\(dir)/work",
                               "--config", "\(dir)/none.toml"], cwd: dir)
        #expect(r.status == 0, "\(r.output)")
        let argv = try JSONDecoder().decode([String].self, from: Data(contentsOf: URL(
            fileURLWithPath: try Self.delivered("\(dir)/work/outputs/inject/local") + "/out/argv.json")))
        #expect(argv == corpus)
        for i in 1...3 { #expect(!FileManager.default.fileExists(atPath: "\(dir)/pwned\(i)")) }
    }
}
