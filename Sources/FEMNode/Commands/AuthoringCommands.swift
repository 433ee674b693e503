import ArgumentParser
import FEMCore
import FEMJournal
import FEMLaunchers
import FEMSystem
import Foundation
import Logging
import Synchronization

/// Reading documents for the authoring commands: a plan or a task file, with `--param k=v` overrides typed by
/// the plan's argument types.
enum DocumentFile {
    static func load(_ path: String) throws -> JSONValue {
        let data = try LocalNode.read(path)
        do {
            return try JSONValue.parse(data)
        } catch {
            throw CommandFailure.invalid("\(path): \(error)")
        }
    }

    /// A plan document read and validated: `why` says what an invalid plan is not (e.g. "not a valid tool plan").
    static func plan(_ document: JSONValue, file: String, why: String) throws -> ToolPlan {
        do {
            return try DocumentReader.readPlan(document)
        } catch let e as FEMCore.ValidationError {
            throw CommandFailure.invalid("\(file): \(why): " + e.issues.map(\.description).joined(separator: "; "))
        }
    }

    /// A task document from a task file, or a plan file wrapped into a local task (`TaskDocument`).
    static func task(from path: String, params: [String]) throws -> JSONValue {
        do {
            return try TaskDocument.task(from: load(path), params: params)
        } catch let e as TaskDocument.ParamError {
            throw CommandFailure.invalid(e.description)
        }
    }

    static func shortID() -> String { TaskDocument.shortID() }
}

extension FEMClientCommand {
    struct Validate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a tool plan or a task file and list every problem with its JSON path.")
        @Argument(help: "A plan (*.plan.json) or task (*.task.json) file.") var file: String
        @Flag(help: "Print the result as JSON.") var json = false

        func run() async throws {
            let value = try DocumentFile.load(file)
            do {
                let doc = try DocumentReader.readAny(value)
                let what: String
                var constraints: [(String, String?)] = []
                switch doc {
                case .plan(let p):
                    what = "plan \(p.id) \(p.version) (\(p.launcher))"
                        + (p.signature.map { ", signed with key id \($0.keyID) (`fem-client verify` checks it)" } ?? "")
                    constraints = [("plan.constraints", p.constraints)]
                case .task(let t):
                    what = "task for plan \(t.plan.id) \(t.plan.version), execution \(t.executionID)"
                    constraints = [("plan.constraints", t.plan.constraints), ("constraints", t.constraints)]
                }
                // A node declines a task whose expression it cannot read: say so here, before it is sent.
                var unreadable: [ValidationIssue] = []
                for case let (path, text?) in constraints {
                    do { _ = try ConstraintExpression.parse(text) } catch { unreadable.append(ValidationIssue(path, "\(error)")) }
                }
                if !unreadable.isEmpty { throw FEMCore.ValidationError(unreadable) }
                if json {
                    print(#"{"errors":[],"valid":true}"#)
                } else {
                    print("\(file): ok, \(what)")
                }
            } catch let e as FEMCore.ValidationError {
                if json {
                    let errors = e.issues.map { JSONValue.object(["path": .string($0.path), "message": .string($0.message)]) }
                    print(String(decoding: JSONValue.object(["valid": .bool(false), "errors": .array(errors)]).encoded(),
                                 as: UTF8.self))
                } else {
                    print("\(file): \(e.issues.count) problem\(e.issues.count == 1 ? "" : "s")")
                    for issue in e.issues { print("  \(issue)") }
                }
                throw ExitCode(CommandFailure.invalid)
            }
        }
    }

    struct Render: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the exact argv, image, mounts, environment and limits the node would use.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "A task file (or a plan file).") var file: String
        @Option(name: .customLong("param"), help: "Set a parameter: name=value (repeatable).") var params: [String] = []
        @Option(name: .customLong("dataset"), help: "Use this folder as a dataset for this run: id=path (repeatable; a dataset the node's config lacks).")
        var datasetPaths: [String] = []
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            var config = try LocalNode.config(options.config, workDir: nil)
            try LocalNode.addDatasets(datasetPaths, to: &config)
            let task = try LocalNode.readTask(file, params: params)
            let registry = NodeAssembly.launchers(config)
            let host = ToolPaths.under("\(config.workDir)/sandboxes/\(task.taskID)")
            let launcher = registry.launcher(named: task.plan.launcher)
            var datasets: [String: String] = [:]
            for (id, d) in config.datasets { datasets[id] = launcher?.datasetPath(id: id, hostPath: d.path) ?? d.path }
            let context = RenderContext(nodeID: config.nodeID, nodeName: config.nodeName,
                                        paths: launcher?.toolPaths(forHost: host) ?? host, datasets: datasets)
            let timeout = task.timeoutSeconds ?? task.plan.timeoutSeconds ?? config.defaultTimeoutSeconds
            let rendered: RenderedCommand
            do {
                rendered = try Renderer.render(task, context: context, timeoutSeconds: timeout)
            } catch RenderError.unknownDataset(let id) {
                throw LocalNode.missingDataset(id, config: config, configPath: options.config)
            } catch {
                throw CommandFailure.invalid("cannot render: \(error)")
            }
            // This node's attributes, computed here as the daemon computes them, when there are constraints to check.
            var verdict: ConstraintVerdict?
            if task.plan.constraints != nil || task.constraints != nil {
                let attributes = await NodeFingerprint(config: config, launchers: registry.names).refresh()
                verdict = task.constraintVerdict(on: attributes)
            }
            if json {
                let e = JSONEncoder.fem
                e.outputFormatting.insert(.prettyPrinted)
                var data = try e.encode(rendered)
                if let verdict, case .object(var object) = try JSONValue.parse(data) {
                    // Added beside the rendered command: `constraints` {plan, task, matched, reason}.
                    var c: [String: JSONValue] = ["matched": .bool(verdict.matched)]
                    c["plan"] = task.plan.constraints.map(JSONValue.string)
                    c["task"] = task.constraints.map(JSONValue.string)
                    c["reason"] = verdict.reason.map(JSONValue.string)
                    object["constraints"] = .object(c)
                    e.outputFormatting.insert(.sortedKeys)
                    data = try e.encode(JSONValue.object(object))
                }
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print("launcher     \(rendered.launcher)\(launcher == nil ? "  (not enabled on this node)" : "")")
            if let image = rendered.image { print("image        \(image)") }
            print("argv")
            for (i, a) in rendered.argv.enumerated() { print("  [\(i)] \(quote(a))") }
            print("working dir  \(rendered.workingDirectory)")
            print("environment")
            for (k, v) in rendered.environment.sorted(by: { $0.key < $1.key }) { print("  \(k)=\(quote(v))") }
            print("mounts")
            print("  sandbox  \(rendered.paths.sandbox)  (src, in read-only for docker; out writable; logs)")
            for id in rendered.datasets { print("  dataset \(id)  \(datasets[id] ?? "?")  read-only") }
            var limits = ["timeout \(timeout) s", "network \(rendered.network)"]
            if let c = rendered.cpus { limits.append("cpus \(c)") }
            if let m = rendered.memoryMB { limits.append("memory \(m) MB") }
            if let g = rendered.gpus { limits.append("gpus \(g)") }
            if let s = rendered.storageMB { limits.append("storage \(s) MB") }
            print("limits       \(limits.joined(separator: ", "))")
            if let verdict {
                print("constraints  " + [task.plan.constraints.map { "plan: \($0)" }, task.constraints.map { "task: \($0)" }]
                        .compactMap { $0 }.joined(separator: "; "))
                print(verdict.matched ? "             this node (\(config.nodeID)) matches"
                        : "             this node (\(config.nodeID)) does NOT match: \(verdict.reason ?? "")")
            }
        }

        func quote(_ s: String) -> String {
            let needs = s.isEmpty || s.contains { " \"'$`;\\|&<>()*?!\t\n".contains($0) }
            return needs ? "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" : s
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a task or plan locally through the daemon's runner, without a broker (a dry run).")
        @OptionGroup var options: ConfigOption
        @Argument(help: "A task file or a plan file.") var file: String
        @Option(name: .customLong("param"), help: "Set a parameter: name=value (repeatable).") var params: [String] = []
        @Option(name: .customLong("dataset"), help: "Use this folder as a dataset for this run: id=path (repeatable; a dataset the node's config lacks).")
        var datasetPaths: [String] = []
        @Option(help: "Work dir for local runs (journal and sandboxes).") var workDir = "var/local-runs"
        @Option(help: "Where outputs and logs are staged out.") var output: String?

        func run() async throws {
            var config = try LocalNode.config(options.config, workDir: workDir)
            try LocalNode.addDatasets(datasetPaths, to: &config)
            var task = try LocalNode.readTask(file, params: params, freshID: true)
            // A dataset this node lacks would only decline the task: say which and how to give it, before running.
            try LocalNode.checkDatasets(task, config: config, configPath: options.config)
            let outDir = URL(fileURLWithPath: output ?? "\(config.workDir)/outputs").standardizedFileURL.path
            // The person running this chose the output folder, and is the one who would approve: a local run
            // delivers there, without the airlock.
            let outURL = "file://" + (outDir.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? outDir)
            try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
            config.outputAllowedURLs = [outURL]
            config.requireApproval = false
            task.stageOut = StageOutTarget(url: outURL, credentials: nil, token: nil)
            var document = try DocumentFile.task(from: file, params: params).objectValue ?? [:]
            document["task_id"] = .string(task.taskID)
            document["stage_out"] = .object(["url": .string(outURL)])

            let logPath = "\(config.workDir)/run.log"
            try FileManager.default.createDirectory(atPath: config.workDir, withIntermediateDirectories: true)
            let logger = Logger(label: "fem-client-run", factory: try LineLogHandler.factory(path: logPath))
            let printer = EventPrinter()
            try NodeAssembly.prepareWorkDir(config)
            let journal = try SQLiteJournal(path: config.journalPath, nodeID: config.nodeID)
            let node = try NodeAssembly(config: config, journal: journal, logger: logger) { printer.drain(journal) }

            print("task \(task.taskID): \(task.plan.id) \(task.plan.version) with launcher \(task.plan.launcher)")
            guard case .admitted = try node.journal.admit(task, document: .object(document), at: Date()) else {
                throw CommandFailure("task \(task.taskID) already exists in \(config.journalPath)")
            }
            printer.drain(node.journal)
            await node.runner.enqueue(task.taskID)
            await node.runner.waitUntilIdle()
            printer.drain(node.journal)
            guard let rec = try node.journal.task(task.taskID) else { throw ExitCode(2) }
            let sandbox = node.sandboxes.paths(taskID: task.taskID)
            print("")
            print("state    \(rec.state.rawValue)\(rec.failureClass.map { " (\($0.rawValue))" } ?? "")")
            print("logs     \(sandbox.logs)/stdout.log, \(sandbox.logs)/stderr.log")
            print("outputs  \(outDir)/\(task.executionID)/\(config.nodeID)/\(task.taskID)  (manifest.json lists them)")
            print("journal  \(config.journalPath); node log \(logPath)")
            if rec.state == .declined || rec.state == .rejected { throw ExitCode(CommandFailure.invalid) }
            if rec.state != .completed { throw ExitCode(CommandFailure.failure) }
        }
    }
}

/// Prints events from the outbox as they are written (the local stand-in for the broker).
final class EventPrinter: Sendable {
    /// One drain at a time, so lines are printed once and in order.
    private let draining = Mutex(())

    func drain(_ journal: SQLiteJournal) {
        draining.withLock { _ in
            guard let entries = try? journal.pendingEvents(limit: 1000), !entries.isEmpty else { return }
            for entry in entries {
                if let e = try? JSONDecoder.fem.decode(TaskEvent.self, from: entry.body) {
                    print(TaskView.eventLine(e))
                }
            }
            try? journal.confirmEvents(entries.map(\.id))
            flushOut()
        }
    }
}

/// Settings for local commands: the node config when it exists, else a local node with the process launcher for a
/// few shells and interpreters.
enum LocalNode {
    static func config(_ path: String, workDir: String?) throws -> NodeConfig {
        var config: NodeConfig
        if FileManager.default.fileExists(atPath: path) {
            do {
                config = try NodeConfig.load(path: path, environment: ProcessInfo.processInfo.environment,
                                             brokerFiles: false)
            } catch let e as ConfigError {
                throw CommandFailure.invalid("\(path): " + e.description)
            }
        } else {
            config = try NodeConfig.local()
            // Said once, on stderr: a --config with a typo would otherwise run with other settings than meant.
            let full = NodeConfig.absolutePath(path)
            let note = "note: no configuration file \(path)\(full == path ? "" : " (\(full))"): using the built-in local "
                + "defaults (process launcher for /bin/sh, /bin/bash, /usr/bin/python3, /usr/bin/Rscript; no datasets)\n"
            try? FileWriter.writeAll(2, Array(note.utf8))
        }
        if let workDir { config.workDir = NodeConfig.absolutePath(workDir) }
        config.workDir = NodeConfig.absolutePath(config.workDir)
        return config
    }

    static func readTask(_ file: String, params: [String], freshID: Bool = false) throws -> TaskSpec {
        let value = try DocumentFile.task(from: file, params: params)
        do {
            var task = try DocumentReader.readTask(value)
            if freshID { task.taskID = "local-\(DocumentFile.shortID())" }
            return task
        } catch let e as FEMCore.ValidationError {
            throw CommandFailure.invalid("\(file):\n" + e.issues.map { "  \($0)" }.joined(separator: "\n"))
        }
    }
}

extension NodeConfig {
    /// A node for local authoring runs when no config file exists: the documented defaults, with local
    /// sources (file:// git remotes and plain paths) allowed, and no broker.
    static func local() throws -> NodeConfig {
        let text = """
            [node]
            id = "local"
            work_dir = "var/local-runs"
            log_file = "var/local-runs/run.log"
            max_concurrent_tasks = 1
            allow_timeout_above_plan = true
            stop_grace = 5
            [broker]
            url = "amqps://local@localhost/"
            ca_file = ""
            cert_file = ""
            key_file = ""
            [launchers]
            # A local dry run is the tool author's own: host processes for the usual shells and interpreters.
            enabled = ["process"]
            [launchers.process]
            allowed_executables = ["/bin/sh", "/bin/bash", "/usr/bin/python3", "/usr/bin/Rscript"]
            [stage_in]
            git_allowed_urls = ["file:///"]
            """
        // The text above is fixed and valid; a failure here is a programming error caught by the tests.
        return try parse(text, source: "(built-in local defaults)", environment: [:], brokerFiles: false)
    }
}
