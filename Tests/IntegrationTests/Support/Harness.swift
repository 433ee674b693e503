import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What test.sh provides: a running RabbitMQ with TLS and client certificates, and the built binaries.
/// Missing pieces fail the test with a message that says what is missing (integration tests never skip).
enum TestEnv {
    static let env = ProcessInfo.processInfo.environment
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    static func brokerDir() throws -> String {
        guard let d = env["FEM_TEST_BROKER_DIR"], FileManager.default.fileExists(atPath: "\(d)/ca.pem") else {
            throw HarnessError("FEM_TEST_BROKER_DIR is not set or holds no certificates: run the tests with "
                               + "`bash test.sh`, which starts RabbitMQ with TLS on 127.0.0.1")
        }
        return d
    }

    static func brokerPort() throws -> Int {
        guard let p = env["FEM_TEST_BROKER_PORT"].flatMap(Int.init) else {
            throw HarnessError("FEM_TEST_BROKER_PORT is not set: run the tests with `bash test.sh`")
        }
        return p
    }

    static var binDir: String { env["FEM_TEST_BIN_DIR"] ?? "\(repoRoot)/.build/debug" }

    static func binary(_ name: String) throws -> String {
        let path = "\(binDir)/\(name)"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw HarnessError("\(path) is missing: build first (`swift build --build-tests`, as test.sh does)")
        }
        return path
    }

    /// scripts/dev-web.sh's folder: nginx (git over https, task files, WebDAV) and git daemon, with their CA.
    static func webDir() throws -> String {
        guard let d = env["FEM_TEST_WEB_DIR"], FileManager.default.fileExists(atPath: "\(d)/ca.pem") else {
            throw HarnessError("FEM_TEST_WEB_DIR is not set or has no ca.pem: run the tests with `bash test.sh`, which "
                               + "starts nginx and git daemon (scripts/dev-web.sh)")
        }
        return d
    }

    static func scratch(_ name: String) throws -> String {
        let base = env["FEM_TEST_SCRATCH"] ?? FileManager.default.temporaryDirectory.path
        let dir = "\(base)/\(name)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A broker of the test's own, for tests that stop and restart it.
final class OwnBroker {
    let dir: String
    let port: Int

    init(port: Int) throws {
        self.port = port
        dir = try TestEnv.scratch("broker-\(port)")
        try run("start")
    }

    func run(_ command: String) throws {
        let out = try Shell.run(["/bin/bash", "\(TestEnv.repoRoot)/scripts/dev-broker.sh", command, "--dir", dir,
                                 "--port", "\(port)", "--name", "fem-test-\(port)"])
        if out.status != 0 { throw HarnessError("dev-broker.sh \(command) failed: \(out.output)") }
    }

    deinit { try? run("stop") }
}

enum Shell {
    /// Runs a command to its exit. Output goes through a file, not a pipe: a daemon the command starts (a broker,
    /// epmd) may keep inherited descriptors open long after the command itself has exited.
    static func run(_ argv: [String], environment: [String: String]? = nil, cwd: String? = nil)
        throws -> (status: Int32, output: String) {
        let outPath = FileManager.default.temporaryDirectory.appendingPathComponent("fem-shell-\(UUID().uuidString)").path
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: outPath) }
        // Foundation.Process on Linux reports an exit only after every grandchild exits; waitpid does not.
        let child = try ChildProcess.spawn(executable: argv[0], arguments: Array(argv.dropFirst()),
                                           environment: environment ?? ProcessInfo.processInfo.environment,
                                           workingDirectory: cwd ?? FileManager.default.currentDirectoryPath,
                                           stdoutPath: outPath, stderrPath: outPath)
        let status: Int32
        switch ChildProcess.waitBlocking(pid: child.pid) {
        case .exited(let code): status = code
        case .signaled(let sig): status = 128 + sig
        case .unknown: status = -1
        }
        return (status, (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "")
    }
}

/// The broker accounts of the least-privilege set (scripts/dev-broker.sh): the orchestrator account the tests'
/// operator and femctl use, and one account per test node, made when the node is. The shared exchanges are declared
/// once per broker with `femctl setup`, as an operator would; nodes only look them up.
enum BrokerAccounts {
    static let orchestrator = "fem-orchestrator"
    nonisolated(unsafe) private static var ready = Set<String>()
    private static let lock = NSLock()

    static func script(_ args: [String], brokerDir: String) throws {
        let out = try Shell.run(["/bin/bash", "\(TestEnv.repoRoot)/scripts/dev-broker.sh"] + args + ["--dir", brokerDir])
        if out.status != 0 {
            throw HarnessError("dev-broker.sh \(args.joined(separator: " ")) failed: \(out.output)")
        }
    }

    /// The orchestrator account and the exchanges, once per broker (a broker started by an older script has neither).
    static func prepare(brokerDir: String, port: Int) throws {
        try lock.withLock {
            guard !ready.contains(brokerDir) else { return }
            try script(["accounts"], brokerDir: brokerDir)
            let setup = try Shell.run([try TestEnv.binary("femctl"), "setup"], environment: femctlEnvironment(
                brokerDir: brokerDir, port: port))
            if setup.status != 0 { throw HarnessError("femctl setup failed: \(setup.output)") }
            ready.insert(brokerDir)
        }
    }

    /// femctl's settings for the orchestrator account.
    static func femctlEnvironment(brokerDir: String, port: Int) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["FEMCTL_BROKER_URL"] = "amqps://\(orchestrator)@localhost:\(port)/%2f"
        env["FEMCTL_CA_FILE"] = "\(brokerDir)/ca.pem"
        env["FEMCTL_CERT_FILE"] = "\(brokerDir)/operator.pem"
        env["FEMCTL_KEY_FILE"] = "\(brokerDir)/operator.key"
        env["FEMCTL_PASSWORD_FILE"] = "\(brokerDir)/orchestrator.password"
        return env
    }

    /// A node's own account (its id), with the permissions dev-broker.sh gives nodes.
    static func addNode(_ id: String, brokerDir: String, port: Int) throws {
        try prepare(brokerDir: brokerDir, port: port)
        try script(["add-node", id], brokerDir: brokerDir)
    }

    static func password(_ file: String) throws -> String {
        try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A connection as `user` (the orchestrator, or a node's account).
    static func connect(as user: String, brokerDir: String, port: Int, cert: String = "operator") throws
        -> AMQPConnection {
        let file = user == orchestrator ? "\(brokerDir)/orchestrator.password"
            : user == "fem" ? "\(brokerDir)/password" : "\(brokerDir)/nodes/\(user).password"
        return try AMQPConnection(endpoint: AMQPEndpoint(
            host: "localhost", port: port, vhost: "/", user: user, password: try password(file),
            caFile: "\(brokerDir)/ca.pem", certFile: "\(brokerDir)/\(cert).pem", keyFile: "\(brokerDir)/\(cert).key"))
    }
}

/// A real `fem-client daemon` process with its own config, work dir and node id, logging in to the broker with
/// its own least-privilege account.
final class TestNode {
    let id: String
    let dir: String
    let brokerDir: String
    let port: Int
    var pid: Int32?

    init(_ name: String, brokerDir: String? = nil, port: Int? = nil, extra: String = "", maxConcurrent: Int = 2,
         cert: String = "node") throws {
        id = "\(name)-\(UUID().uuidString.prefix(6).lowercased())"
        dir = try TestEnv.scratch(id)
        self.brokerDir = try brokerDir ?? TestEnv.brokerDir()
        self.port = try port ?? TestEnv.brokerPort()
        try BrokerAccounts.addNode(id, brokerDir: self.brokerDir, port: self.port)
        let config = """
            [node]
            id = "\(id)"
            work_dir = "\(dir)/var"
            log_file = "\(dir)/receiver.log"
            max_concurrent_tasks = \(maxConcurrent)
            heartbeat_interval = 2
            stop_grace = 1
            drain_seconds = 0
            [broker]
            url = "amqps://\(id)@localhost:\(self.port)/%2f"
            password_file = "\(self.brokerDir)/nodes/\(id).password"
            ca_file = "\(self.brokerDir)/ca.pem"
            cert_file = "\(self.brokerDir)/\(cert).pem"
            key_file = "\(self.brokerDir)/\(cert).key"
            prefetch = 8
            max_message_bytes = 65536
            \(extra)
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    var configPath: String { "\(dir)/fem-client.toml" }

    /// The `[launchers]` section of a node that runs host-process tasks: nothing runs by default, so a suite that
    /// sends `process` tasks says so, with the few programs its tasks use.
    static let hostProcesses = """
        [launchers]
        enabled = ["process"]
        [launchers.process]
        allowed_executables = \(hostPrograms)
        """

    /// The programs the suites' process tasks run (TOML array).
    static let hostPrograms = #"["/bin/sh", "/bin/echo", "/bin/true", "/bin/false", "/bin/sleep", "/usr/bin/python3"]"#

    /// Changes the config file before `start()` (a test's own tweak on top of its suite's node).
    func editConfig(_ change: (String) -> String) throws {
        let text = try String(contentsOfFile: configPath, encoding: .utf8)
        try change(text).write(toFile: configPath, atomically: true, encoding: .utf8)
    }
    var log: String { (try? String(contentsOfFile: "\(dir)/receiver.log", encoding: .utf8)) ?? "" }

    /// Starts the daemon and waits until it is consuming. `environment` is added to the daemon's (PATH only).
    func start(environment: [String: String] = [:]) throws {
        let connectedBefore = log.components(separatedBy: "connected to the broker").count
        let spawned = try ChildProcess.spawn(executable: try TestEnv.binary("fem-client"),
                                             arguments: ["daemon", "--config", configPath],
                                             environment: ["PATH": "/usr/bin:/bin"].merging(environment) { $1 },
                                             workingDirectory: dir,
                                             stdoutPath: "\(dir)/daemon.out", stderrPath: "\(dir)/daemon.out")
        pid = spawned.pid
        let deadline = Date().addingTimeInterval(30)
        while log.components(separatedBy: "connected to the broker").count <= connectedBefore {
            if Date() > deadline {
                throw HarnessError("the daemon did not connect within 30 s; log:\n\(log)\n"
                                   + ((try? String(contentsOfFile: "\(dir)/daemon.out", encoding: .utf8)) ?? ""))
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    func kill(_ signal: Int32) {
        guard let pid else { return }
        Glibc.kill(pid, signal)
        _ = ChildProcess.waitBlocking(pid: pid)
        self.pid = nil
    }

    func stop() { kill(SIGTERM) }

    /// A test that ends early leaves the daemon's host processes behind (a daemon that dies leaves them for its next
    /// start to stop): stop every process group started with one of this node's sandboxes.
    deinit {
        kill(SIGKILL)
        let sandboxes = (try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/var/sandboxes")) ?? []
        for name in sandboxes {
            for pgid in ChildProcess.processGroups(withEnvironmentEntry: "FEM_SANDBOX=\(dir)/var/sandboxes/\(name)") {
                ChildProcess.signalGroup(pgid, SIGKILL)
            }
        }
        // The node's task cgroups too: a daemon killed by a test leaves them (its next start would clean up).
        if let host = CgroupHost.detect(), let memory = host.roots["memory"] ?? host.roots[""] {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "\(memory)/fem-client/\(id)")) ?? []
            for task in tasks {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: "\(memory)/fem-client/\(id)/\(task)", isDirectory: &isDirectory),
                      isDirectory.boolValue, let path = try? TaskCgroup.relativePath(root: "fem-client", node: id, task: task),
                      let cgroup = TaskCgroup.existing(host: host, path: path) else { continue }
                cgroup.killAll()
                cgroup.remove()
            }
            for mount in Set(host.allMounts + host.roots.values) { rmdir("\(mount)/fem-client/\(id)") }
        }
        // The node's broker account goes with it (a broker of the test's own may already be gone).
        try? BrokerAccounts.script(["remove-node", id], brokerDir: brokerDir)
    }

    func run(_ args: [String]) throws -> (status: Int32, output: String) {
        try Shell.run([try TestEnv.binary("fem-client")] + args + ["--config", configPath])
    }
}

/// The orchestrator's side for tests: publishes tasks and control messages, and reads events from a durable
/// queue bound before anything is sent.
final class Operator {
    let brokerDir: String
    let port: Int
    let nodeID: String
    /// Consumes events.
    var conn: AMQPConnection
    /// Publishes tasks and control messages, in confirm mode (waiting for confirms on a consuming connection would
    /// swallow deliveries).
    var pub: AMQPConnection
    var seen: [TaskEvent] = []
    private var seenKeys = Set<String>()
    /// Node notices (`node.<id>.notice`) and heartbeats seen while waiting for events.
    var notices: [NodeNotice] = []
    var heartbeats: [Heartbeat] = []

    init(node: TestNode, cert: String = "operator") throws {
        brokerDir = node.brokerDir
        port = node.port
        nodeID = node.id
        conn = try Self.connect(brokerDir: brokerDir, port: port, cert: cert)
        pub = try Self.connect(brokerDir: brokerDir, port: port, cert: cert)
        try setUp()
    }

    /// The orchestrator account: what nodes accept tasks and control messages from.
    static func connect(brokerDir: String, port: Int, cert: String) throws -> AMQPConnection {
        try BrokerAccounts.connect(as: BrokerAccounts.orchestrator, brokerDir: brokerDir, port: port, cert: cert)
    }

    var eventsQueue: String { "test.events.\(nodeID)" }

    private func setUp() throws {
        try conn.openChannel(1)
        for x in [WireNames.tasksExchange, WireNames.controlExchange, WireNames.eventsExchange] {
            try conn.declareExchange(x)
        }
        _ = try conn.declareQueue(eventsQueue)
        try conn.bindQueue(eventsQueue, exchange: WireNames.eventsExchange, routingKey: "node.\(nodeID).#")
        // As femctl does: the node's task queue exists before the first task is sent.
        let q = WireNames.taskQueue(node: nodeID)
        _ = try conn.declareQueue(q)
        try conn.bindQueue(q, exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(nodeID))
        try conn.bindQueue(q, exchange: WireNames.tasksExchange, routingKey: WireNames.broadcastKey)
        // Manual acks: an event the broker sent but we had not read when it stopped is sent again.
        try conn.consume(queue: eventsQueue, noAck: false)
        try pub.openChannel(1)
        try pub.enablePublisherConfirms()
    }

    /// Waits until the broker confirmed everything published so far.
    func confirmPublished() throws {
        let nacked = try pub.waitForConfirms()
        if !nacked.isEmpty { throw HarnessError("the broker refused \(nacked.count) publish(es)") }
    }

    /// After a broker restart.
    func reconnect(timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            do {
                conn = try Self.connect(brokerDir: brokerDir, port: port, cert: "operator")
                pub = try Self.connect(brokerDir: brokerDir, port: port, cert: "operator")
                try setUp()
                return
            } catch {
                if Date() > deadline { throw error }
                Thread.sleep(forTimeInterval: 0.5)
            }
        }
    }

    func publish(_ body: [UInt8]) throws {
        try pub.publish(exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(nodeID), body: body,
                        userID: BrokerAccounts.orchestrator)
    }

    func submit(_ task: [String: JSONValue]) throws {
        try publish(Array(JSONValue.object(task).encoded()))
    }

    func cancel(_ taskID: String) throws {
        let body = try JSONEncoder.fem.encode(ControlMessage(taskID: taskID, reason: "test"))
        try pub.publish(exchange: WireNames.controlExchange, routingKey: WireNames.nodeKey(nodeID), body: Array(body),
                        userID: BrokerAccounts.orchestrator)
    }

    /// Reads events until `done` holds for what has been seen, or fails after `timeout` seconds.
    /// Duplicated deliveries of one event (at-least-once) are kept once.
    @discardableResult
    func waitFor(_ what: String, timeout: Double = 30, _ done: ([TaskEvent]) -> Bool) throws -> [TaskEvent] {
        let deadline = Date().addingTimeInterval(timeout)
        while !done(seen) {
            if Date() > deadline {
                throw HarnessError("timed out after \(Int(timeout)) s waiting for \(what); events seen:\n"
                                   + seen.suffix(30).map { "  \($0.taskID ?? "-") #\($0.seq) \($0.kind) \($0.state) "
                                       + "\($0.detail.message ?? "")" }.joined(separator: "\n"))
            }
            guard let d = try conn.nextDelivery(timeoutMilliseconds: 200) else { continue }
            try conn.ack(deliveryTag: d.deliveryTag, channel: d.channel)
            if d.routingKey.hasSuffix(".heartbeat") {
                if let beat = try? JSONDecoder.fem.decode(Heartbeat.self, from: Data(d.body)) { heartbeats.append(beat) }
                continue
            }
            if d.routingKey == "node.\(nodeID).notice" {
                notices.append(try JSONDecoder.fem.decode(NodeNotice.self, from: Data(d.body)))
                continue
            }
            let e = try JSONDecoder.fem.decode(TaskEvent.self, from: Data(d.body))
            let key = "\(e.taskID ?? "-")#\(e.seq)#\(e.detail.message ?? "")"
            if e.taskID == nil || seenKeys.insert(key).inserted { seen.append(e) }
        }
        return seen
    }

    func events(of taskID: String) -> [TaskEvent] { seen.filter { $0.taskID == taskID } }

    func finalState(of taskID: String) -> TaskEvent? {
        events(of: taskID).last { $0.kind == .state && $0.state.isTerminal }
    }

    func waitForFinal(_ ids: [String], timeout: Double = 30) throws {
        try waitFor("\(ids.count) task(s) to end", timeout: timeout) { events in
            let done = Set(events.filter { $0.kind == .state && $0.state.isTerminal }.compactMap(\.taskID))
            return ids.allSatisfy(done.contains)
        }
    }
}

enum Tasks {
    static func plan(_ base: [String], timeout: Int? = nil, outputs: [String] = [],
                     args: [JSONValue] = []) -> JSONValue {
        var p: [String: JSONValue] = [
            "schema_version": .int(1), "id": .string("test-tool"), "version": .string("1.0"),
            "launcher": .string("process"),
            "command": .object(["base": .array(base.map(JSONValue.string)), "args": .array(args)]),
            "outputs": .array(outputs.map { .object(["pattern": .string($0)]) }),
        ]
        if let timeout { p["timeout_seconds"] = .int(Int64(timeout)) }
        return .object(p)
    }

    static func task(_ base: [String], id: String = UUID().uuidString.lowercased(), timeout: Int? = nil,
                     params: [String: JSONValue] = [:], args: [JSONValue] = []) -> [String: JSONValue] {
        var t: [String: JSONValue] = ["schema_version": .int(1), "task_id": .string(id),
                                      "execution_id": .string("exec-test"), "plan": plan(base, args: args),
                                      "params": .object(params)]
        if let timeout { t["timeout_seconds"] = .int(Int64(timeout)) }
        return t
    }

    static func id(_ t: [String: JSONValue]) -> String { t["task_id"]!.stringValue! }
}

/// Gives `path` (a file or folder outside any sandbox, that a test's host task writes to) to the task user: host
/// tasks run as `fem-task` (launchers.process.user) and can write nothing else of the node's.
func giveToTaskUser(_ path: String) throws {
    guard let user = getpwnam("fem-task") else {
        throw HarnessError("no user fem-task on this machine (test.sh creates it: scripts/create-task-user.sh)")
    }
    if !FileManager.default.fileExists(atPath: path) {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
    }
    guard chown(path, user.pointee.pw_uid, user.pointee.pw_gid) == 0 else {
        throw HarnessError("cannot give \(path) to fem-task: \(String(cString: strerror(errno)))")
    }
}

/// Host processes whose command line contains `marker` (to prove a process group is gone).
func processes(withMarker marker: String) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { name -> Int32? in
        guard let pid = Int32(name),
              let data = FileManager.default.contents(atPath: "/proc/\(name)/cmdline") else { return nil }
        let cmd = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        // Zombies have an empty cmdline.
        return cmd.contains(marker) ? pid : nil
    }
}

func eventually(_ what: String, timeout: Double = 10, _ check: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !check() {
        if Date() > deadline { throw HarnessError("timed out waiting for \(what)") }
        Thread.sleep(forTimeInterval: 0.05)
    }
}

/// A real HTTP server that answers the first `failures` requests with 503 (Support/flaky_server.py), for retry
/// tests. Started here, stopped by its PID.
final class FlakyServer {
    let dir: String
    let root: String
    let url: String
    private var pid: Int32?

    /// `downAfter`: after that many stored PUTs, answer 503 to everything until `comeBack()`. `redirectTo`: answer
    /// every request with a 307 to that URL plus the request's path.
    init(failures: Int, downAfter: Int? = nil, redirectTo: String? = nil) throws {
        dir = try TestEnv.scratch("flaky")
        root = "\(dir)/root"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let script = "\(TestEnv.repoRoot)/Tests/IntegrationTests/Support/flaky_server.py"
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let python else { throw HarnessError("python3 is missing (apt-get install python3)") }
        pid = try ChildProcess.spawn(executable: python, arguments: [script, root, "\(failures)"] + (downAfter.map { ["\($0)"] } ?? []),
                                     environment: ["PATH": "/usr/bin:/bin"].merging(redirectTo.map { ["REDIRECT_TO": $0] } ?? [:]) { $1 },
                                     workingDirectory: dir,
                                     stdoutPath: "\(dir)/server.log", stderrPath: "\(dir)/server.log").pid
        var port: String?
        let deadline = Date().addingTimeInterval(10)
        while port == nil && Date() < deadline {
            port = try? String(contentsOfFile: "\(dir)/port", encoding: .utf8)
            if port == nil { Thread.sleep(forTimeInterval: 0.05) }
        }
        guard let port else {
            throw HarnessError("flaky_server.py did not start: \((try? String(contentsOfFile: "\(dir)/server.log", encoding: .utf8)) ?? "")")
        }
        url = "http://127.0.0.1:\(port)"
    }

    /// "METHOD PATH AUTHORIZATION" (or "-") for every request so far.
    func authorizations() -> [String] {
        ((try? String(contentsOfFile: "\(dir)/auth.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    func comeBack() {
        _ = FileManager.default.createFile(atPath: "\(dir)/up", contents: Data())
    }

    /// "METHOD PATH STATUS" for every request so far.
    func requests() -> [String] {
        ((try? String(contentsOfFile: "\(dir)/requests.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    func stop() {
        guard let pid else { return }
        Glibc.kill(pid, SIGTERM)
        _ = ChildProcess.waitBlocking(pid: pid)
        self.pid = nil
    }

    deinit { stop() }
}
