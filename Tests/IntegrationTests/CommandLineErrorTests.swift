import FEMCore
import Foundation
import Testing

/// How the command-line tools fail (issue 17, the newcomer's path): a runtime failure is one line
/// `<tool> <command>: <what failed>` with exit 1 (failure) or 2 (invalid input), never the usage banner and 64,
/// which stay for command lines the parser refuses.
extension CommandLineTests {
    static let usageBanner = "Usage:"

    @Test func aMissingConfigNamesThePathItTriedAndIsNotAUsageError() throws {
        let dir = try TestEnv.scratch("noconfig")
        let r = try Shell.run([try TestEnv.binary("fem-client"), "tasks"], environment: ["PATH": "/usr/bin:/bin"], cwd: dir)
        #expect(r.status == 1, "\(r.output)")
        #expect(r.output.hasPrefix("fem-client tasks: no configuration file config/fem-client.toml (\(dir)/config/fem-client.toml)"),
                "\(r.output)")
        #expect(r.output.contains("give --config <file> or set FEM_CONFIG"), "\(r.output)")
        #expect(!r.output.contains(Self.usageBanner) && !r.output.contains("install.sh"), "\(r.output)")
        // A bad command line is still a usage error.
        let usage = try Shell.run([try TestEnv.binary("fem-client"), "tasks", "--no-such-flag"], cwd: dir)
        #expect(usage.status == 64 && usage.output.contains(Self.usageBanner), "\(usage.output)")
    }

    @Test func aRelativeConfigPathIsReadFromTheCurrentFolder() throws {
        let node = try TestNode("relconfig")
        let parent = URL(fileURLWithPath: node.dir).deletingLastPathComponent().path
        let relative = URL(fileURLWithPath: node.dir).lastPathComponent + "/fem-client.toml"
        let r = try Shell.run([try TestEnv.binary("fem-client"), "outputs", "list", "--config", relative], cwd: parent)
        // Read: it names the work dir the file sets (the daemon never ran there).
        #expect(r.status == 1, "\(r.output)")
        #expect(r.output.contains("fem-client outputs list: no journal \(node.dir)/var/journal.sqlite: the daemon has not run"),
                "\(r.output)")
        // The same path from another folder: says where it looked.
        let elsewhere = try TestEnv.scratch("elsewhere")
        let miss = try Shell.run([try TestEnv.binary("fem-client"), "outputs", "list", "--config", relative], cwd: elsewhere)
        #expect(miss.status == 1, "\(miss.output)")
        #expect(miss.output.contains("fem-client outputs list: no configuration file \(relative) (\(elsewhere)/\(relative))"),
                "\(miss.output)")
    }

    @Test func anInvalidConfigListsItsProblemsWithExit2() throws {
        let dir = try TestEnv.scratch("badconfig")
        try "[node]\nid = \"n\"\ncolour = \"red\"\n".write(toFile: "\(dir)/c.toml", atomically: true, encoding: .utf8)
        let r = try Shell.run([try TestEnv.binary("fem-client"), "status", "--config", "\(dir)/c.toml"])
        #expect(r.status == 2, "\(r.output)")
        #expect(r.output.contains("fem-client status: \(dir)/c.toml: configuration is not valid"), "\(r.output)")
        #expect(r.output.contains("node.colour: is not a known key"), "\(r.output)")
        #expect(!r.output.contains(Self.usageBanner), "\(r.output)")
    }

    @Test func paramErrorsSpeakOfThePlansArgumentTypes() throws {
        let dir = try TestEnv.scratch("params")
        let plan: JSONValue = .object([
            "schema_version": 1, "id": "typed", "version": "1", "launcher": "process",
            "command": .object(["base": .array(["/bin/sh", "-c", "echo $1", "x"]),
                                "args": .array([.object(["id": "count", "type": "int", "position": 1, "required": true])])]),
        ])
        try String(decoding: plan.encoded(), as: UTF8.self).write(toFile: "\(dir)/p.plan.json", atomically: true, encoding: .utf8)
        for tool in ["render", "run"] {
            let r = try Shell.run([try TestEnv.binary("fem-client"), tool, "\(dir)/p.plan.json", "--param", "count=abc",
                                   "--config", "\(dir)/none.toml"] + (tool == "run" ? ["--work-dir", "\(dir)/work"] : []),
                                  cwd: dir)
            #expect(r.status == 2, "\(tool): \(r.output)")
            #expect(r.output.contains("fem-client \(tool): --param count=abc: count is an int"), "\(tool): \(r.output)")
            #expect(!r.output.contains("expected an integer") && !r.output.contains(Self.usageBanner), "\(r.output)")
        }
        let unknown = try Shell.run([try TestEnv.binary("fem-client"), "render", "\(dir)/p.plan.json", "--param", "cuont=3",
                                     "--config", "\(dir)/none.toml"], cwd: dir)
        #expect(unknown.status == 2, "\(unknown.output)")
        #expect(unknown.output.contains("--param cuont=3: the plan typed has no argument cuont (its arguments: count)"),
                "\(unknown.output)")
        let missing = try Shell.run([try TestEnv.binary("fem-client"), "validate", "\(dir)/nope.plan.json"], cwd: dir)
        #expect(missing.status == 1 && missing.output.contains("fem-client validate: cannot read \(dir)/nope.plan.json: no such file"),
                "\(missing.output)")
    }

    @Test func aDatasetTheNodeLacksIsNamedWithTheFix() throws {
        let dir = try TestEnv.scratch("dataset")
        let example = "\(TestEnv.repoRoot)/docs/templates/examples/hello-docker.task.json"
        for tool in ["render", "run"] {
            let r = try Shell.run([try TestEnv.binary("fem-client"), tool, example, "--config", "\(dir)/none.toml"]
                                  + (tool == "run" ? ["--work-dir", "\(dir)/work"] : []), cwd: dir)
            #expect(r.status == 2, "\(tool): \(r.output)")
            #expect(r.output.contains("fem-client \(tool): the task uses dataset \"demo\", which this node does not have"),
                    "\(tool): \(r.output)")
            #expect(r.output.contains("[datasets.demo]") && r.output.contains("--dataset demo="), "\(tool): \(r.output)")
        }
        // --dataset gives it for one local run.
        try FileManager.default.createDirectory(atPath: "\(dir)/data", withIntermediateDirectories: true)
        try "a\nb\nc\n".write(toFile: "\(dir)/data/rows.txt", atomically: true, encoding: .utf8)
        let plan: JSONValue = .object([
            "schema_version": 1, "id": "count-rows", "version": "1", "launcher": "process",
            "command": .object(["base": .array(["/bin/sh", "-c", "cat \"$1\"/* | wc -l > \"$FEM_OUTPUT_DIR\"/count.txt", "count"]),
                                "args": .array([.object(["id": "data", "type": "dataset", "position": 1, "default_value": "demo"])])]),
            "inputs": .array(["demo"]), "outputs": .array([.object(["pattern": "count.txt"])]),
        ])
        try String(decoding: plan.encoded(), as: UTF8.self).write(toFile: "\(dir)/c.plan.json", atomically: true, encoding: .utf8)
        let r = try Shell.run([try TestEnv.binary("fem-client"), "run", "\(dir)/c.plan.json", "--dataset", "demo=\(dir)/data",
                               "--config", "\(dir)/none.toml", "--work-dir", "\(dir)/work2"], cwd: dir)
        #expect(r.status == 0, "\(r.output)")
        let out = try Self.delivered(try Self.delivered("\(dir)/work2/outputs"))
        let count = try Self.delivered(out)
        #expect(try String(contentsOfFile: "\(count)/out/count.txt", encoding: .utf8).trimmingCharacters(in: .whitespaces) == "3\n")
    }

    @Test func submitToANodeNobodyConsumesWarnsOrRefuses() throws {
        let node = try TestNode("femctl-typo")
        let typo = "\(node.id)-typo"
        let example = "\(TestEnv.repoRoot)/docs/templates/examples/hello-process.task.json"
        let warned = try femctl(node, ["submit", example, "--node", typo])
        #expect(warned.status == 0, "\(warned.output)")
        #expect(warned.output.contains("femctl submit: warning: no node consumes queue fem.node.\(typo)"), "\(warned.output)")
        let refused = try femctl(node, ["submit", example, "--node", typo, "--require-consumer"])
        #expect(refused.status == 1, "\(refused.output)")
        #expect(refused.output.contains("nothing sent (--require-consumer)"), "\(refused.output)")
        #expect(!refused.output.contains(Self.usageBanner))
        // A running node consumes its queue: no warning, and the plan itself is accepted as a task.
        try node.editConfig { $0 + "\n" + TestNode.hostProcesses }
        try node.start()
        let plan = "\(TestEnv.repoRoot)/docs/templates/examples/hello-process.plan.json"
        let sent = try femctl(node, ["submit", plan, "--node", node.id, "--require-consumer", "--param", "name=plan"])
        #expect(sent.status == 0, "\(sent.output)")
        #expect(!sent.output.contains("warning"), "\(sent.output)")
        #expect(Patterns.matches(Patterns.taskID, sent.output.trimmingCharacters(in: .whitespacesAndNewlines)), "\(sent.output)")
        let badParam = try femctl(node, ["submit", plan, "--node", node.id, "--param", "nmae=x"])
        #expect(badParam.status == 2 && badParam.output.contains("femctl submit: --param nmae=x: the plan hello-process has no argument nmae"),
                "\(badParam.output)")
        let unreachable = try Shell.run([try TestEnv.binary("femctl"), "submit", example, "--node", node.id,
                                         "--broker-url", "amqps://fem-orchestrator@127.0.0.1:1/%2f"],
                                        environment: femctlEnvironment(node))
        #expect(unreachable.status == 1, "\(unreachable.output)")
        #expect(unreachable.output.hasPrefix("femctl submit: broker: "), "\(unreachable.output)")
        #expect(!unreachable.output.contains(Self.usageBanner))
    }
}
