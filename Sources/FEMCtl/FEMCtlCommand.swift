import ArgumentParser
import FEMCore
import FEMSystem
import FEMTransport
import Foundation

/// `femctl`: the operator's side. Declares the shared exchanges, submits tasks, watches their events, cancels them.
public struct FEMCtlCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "femctl",
        abstract: "Submit, watch and cancel fem-client tasks through the broker.",
        version: FEMVersion.string,
        subcommands: [Setup.self, Submit.self, Watch.self, Cancel.self, Nodes.self])

    public init() {}
}

/// Broker settings for femctl: a flag, else its `FEMCTL_*` environment variable, else (from a checkout) the local
/// development broker's files. femctl reads no node configuration: an operator's machine has none.
struct BrokerOptions: ParsableArguments {
    static let devDir = "var/dev-broker"

    @Option(help: "amqps://user@host:port/vhost (or FEMCTL_BROKER_URL; default \(Defaults.url)). The user is an orchestrator account: nodes accept tasks and cancels only from the accounts in their broker.orchestrators.")
    var brokerURL: String?
    @Option(help: "CA certificate (or FEMCTL_CA_FILE; default \(devDir)/ca.pem).") var ca: String?
    @Option(help: "Client certificate (or FEMCTL_CERT_FILE; default \(devDir)/operator.pem).") var cert: String?
    @Option(help: "Client key (or FEMCTL_KEY_FILE; default \(devDir)/operator.key).") var key: String?
    @Option(help: "File holding the broker password (or FEMCTL_PASSWORD_FILE; default \(devDir)/orchestrator.password). FEMCTL_BROKER_PASSWORD, when set, is used instead.")
    var passwordFile: String?

    enum Defaults {
        static let url = "amqps://fem-orchestrator@localhost:5671/%2f"
    }

    /// The endpoint from the flags, then `environment`, then the defaults. The password comes from
    /// FEMCTL_BROKER_PASSWORD or the password file (an unreadable default file means no password).
    func endpoint(environment: [String: String]) throws -> AMQPEndpoint {
        let url = brokerURL ?? environment["FEMCTL_BROKER_URL"] ?? Defaults.url
        let ca = ca ?? environment["FEMCTL_CA_FILE"] ?? "\(Self.devDir)/ca.pem"
        let cert = cert ?? environment["FEMCTL_CERT_FILE"] ?? "\(Self.devDir)/operator.pem"
        let key = key ?? environment["FEMCTL_KEY_FILE"] ?? "\(Self.devDir)/operator.key"
        var password = environment["FEMCTL_BROKER_PASSWORD"]
        if password == nil {
            // A file the operator named must be readable; only the development default may be missing.
            if let named = passwordFile.map({ ("--password-file", $0) })
                ?? environment["FEMCTL_PASSWORD_FILE"].map({ ("FEMCTL_PASSWORD_FILE", $0) }) {
                do {
                    password = try String(contentsOfFile: named.1, encoding: .utf8)
                        .trimmingCharacters(in: .whitespacesAndNewlines)
                } catch {
                    throw CommandFailure("\(named.0): cannot read \(named.1): \(error.localizedDescription)")
                }
            } else if let text = try? String(contentsOfFile: "\(Self.devDir)/orchestrator.password", encoding: .utf8) {
                password = text.trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
        do {
            return try BrokerURL.parse(url, password: password, caFile: ca, certFile: cert, keyFile: key,
                                       key: "--broker-url", passwordHint: "use --password-file or FEMCTL_BROKER_PASSWORD")
        } catch {
            throw CommandFailure.invalid(error.description)
        }
    }

    /// Connects with the settings the process was started with.
    func connect() throws -> AMQPConnection {
        let endpoint = try endpoint(environment: ProcessInfo.processInfo.environment)
        do {
            return try AMQPConnection(endpoint: endpoint)
        } catch {
            throw CommandFailure("broker: \(error)")
        }
    }
}

/// The account a connection logged in as, for the `user_id` property of what it publishes: RabbitMQ checks that it
/// names the login, and nodes accept tasks and control messages only from their orchestrator accounts.
func publisherID(_ conn: AMQPConnection) -> String? {
    conn.endpoint.user.isEmpty ? nil : conn.endpoint.user
}

extension FEMCtlCommand {
    struct Setup: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Declare the shared exchanges (fem.tasks, fem.control, fem.events) once per broker.",
            discussion: "Nodes only look these exchanges up, so their broker accounts need no configure permission on "
                + "them. Run this with an account that may configure them (the orchestrator's, or an administrator's).")
        @OptionGroup var broker: BrokerOptions

        func run() async throws {
            let conn = try broker.connect()
            try conn.openChannel(1)
            for x in [WireNames.tasksExchange, WireNames.controlExchange, WireNames.eventsExchange] {
                try conn.declareExchange(x)
            }
            print("exchanges \(WireNames.tasksExchange), \(WireNames.controlExchange) and \(WireNames.eventsExchange) are "
                  + "declared (topic, durable)")
        }
    }

    struct Submit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send a task (or a plan) to nodes; prints the task id.",
            discussion: "A plan file is sent as a task of its own (a fresh execution id); --param sets its arguments. "
                + "With --node, a warning goes to stderr when no node consumes that node's queue (a typo, or the node "
                + "is down): the task waits there until a node with that id connects.")
        @OptionGroup var broker: BrokerOptions
        @Argument(help: "A task file or a plan file.") var file: String
        @Option(help: "A node id (repeatable); with --least-busy, the nodes to choose from.") var node: [String] = []
        @Flag(help: "Send to every node (routing key `all`).") var all = false
        @Option(name: .customLong("param"), help: "Set a parameter: name=value (repeatable).") var params: [String] = []
        @Option(help: "Send this many copies, each with a fresh task id (for load tests).") var count = 1
        @Flag(help: "Send nothing and exit 1 when no node consumes a --node queue (instead of a warning).")
        var requireConsumer = false
        @Option(help: "Put the task in this work pool (fem.pool.<name>): a node of the pool with a free slot whose constraints and resources fit takes it (pull).")
        var pool: String?
        @Flag(help: "Send the task to the least busy node: listen to heartbeats for --listen seconds, keep the nodes whose heartbeat shows the task's constraints met, pick the one with the most free capacity (push).")
        var leastBusy = false
        @Option(help: "With --least-busy: seconds to listen to heartbeats (at least one heartbeat interval).")
        var listen: Double = 31

        func validate() throws {
            // With --least-busy, --node names the candidates (default: every node heard from).
            let targets = [!node.isEmpty && !leastBusy, all, pool != nil, leastBusy].filter { $0 }.count
            if targets != 1 {
                throw ValidationError("give one of --node <id> (one or more), --all, --pool <name> or --least-busy "
                                      + "(with --node: the candidates)")
            }
            if count < 1 { throw ValidationError("--count must be at least 1") }
            if let pool, !Patterns.matches(#"^[a-z0-9-]{1,64}$"#, pool) {
                throw ValidationError("--pool: \"\(TextEscaping.escaped(pool))\" is not a pool name (lowercase letters, digits and '-', 1 to 64)")
            }
            if listen <= 0 || listen > 3600 { throw ValidationError("--listen: must be between 0 and 3600 seconds") }
        }

        func run() async throws {
            let data = try Self.read(file)
            var document: [String: JSONValue]
            do {
                document = try TaskDocument.task(from: JSONValue.parse(data), params: params).objectValue ?? [:]
            } catch let e as TaskDocument.ParamError {
                throw CommandFailure.invalid(e.description)
            } catch {
                throw CommandFailure.invalid("\(file): \(error)")
            }
            let givenID = document["task_id"]?.stringValue
            do {
                _ = try DocumentReader.readTask(.object(document))
            } catch let e as FEMCore.ValidationError {
                throw CommandFailure.invalid("\(file):\n" + e.issues.map { "  \($0)" }.joined(separator: "\n"))
            }
            var node = self.node
            if leastBusy {
                let spec = try DocumentReader.readTask(.object(document))
                let candidates = Set(node)
                let beats = try NodeDirectory.listen(broker: broker, seconds: listen)
                    .filter { candidates.isEmpty || candidates.contains($0.nodeID) }
                let choice = try NodeDirectory.leastBusy(beats, for: spec, document: .object(document))
                try? FileWriter.writeAll(2, Array("chose node \(choice.node): \(choice.why)\n".utf8))
                node = [choice.node]
            }
            let conn = try broker.connect()
            try conn.openChannel(1)
            try conn.declareExchange(WireNames.tasksExchange)
            for n in node {
                // Declare the node's queue too, so a task sent before the node's first start waits for it.
                let q = WireNames.taskQueue(node: n)
                _ = try conn.declareQueue(q)
                try conn.bindQueue(q, exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(n))
                try conn.bindQueue(q, exchange: WireNames.tasksExchange, routingKey: WireNames.broadcastKey)
                try Self.checkConsumer(conn, node: n, queue: q, require: requireConsumer)
            }
            try conn.enablePublisherConfirms()
            // A pool's queue is declared by its nodes (they consume it); a pool no node serves yet drops the task.
            let keys = all ? [WireNames.broadcastKey] : pool.map { [WireNames.poolKey($0)] } ?? node.map(WireNames.nodeKey)
            for i in 0..<count {
                let id = (count == 1 ? givenID : nil) ?? UUID().uuidString.lowercased()
                document["task_id"] = .string(id)
                let body = Array(JSONValue.object(document).encoded())
                for key in keys {
                    // Mandatory for a pool: a pool no node has declared yet would drop the task silently.
                    try conn.publish(exchange: WireNames.tasksExchange, routingKey: key, body: body,
                                     userID: publisherID(conn), mandatory: pool != nil)
                }
                print(id)
                flushOut()
                if (i + 1) % 200 == 0, !(try conn.waitForConfirms()).isEmpty {
                    throw CommandFailure("the broker refused some publishes")
                }
            }
            let nacked = try conn.waitForConfirms()
            if !nacked.isEmpty {
                throw CommandFailure("the broker refused \(nacked.count) publish(es)")
            }
            if let pool, conn.takeReturnedPublishes() > 0 {
                throw CommandFailure("--pool \(pool): no queue takes tasks for this pool (fem.pool.\(pool) is declared by "
                                     + "the pool's nodes when they start); the task was not sent")
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a task on a node.")
        @OptionGroup var broker: BrokerOptions
        @Argument(help: "The task id.") var taskID: String
        @Option(help: "The node running it.") var node: String
        @Option(help: "Why (appears in the cancelled event).") var reason: String?

        func run() async throws {
            let conn = try broker.connect()
            try conn.openChannel(1)
            try conn.declareExchange(WireNames.controlExchange)
            try conn.enablePublisherConfirms()
            let body = try JSONEncoder.fem.encode(ControlMessage(taskID: taskID, reason: reason))
            try conn.publish(exchange: WireNames.controlExchange, routingKey: WireNames.nodeKey(node), body: Array(body),
                             userID: publisherID(conn))
            _ = try conn.waitForConfirms()
            print("cancel sent for \(taskID) to node \(node)")
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show task states live from fem.events.")
        @OptionGroup var broker: BrokerOptions
        @Option(help: "Only this execution.") var execution: String?
        @Option(help: "Only these nodes (repeatable).") var node: [String] = []
        @Option(help: "Read from this durable queue instead of a private one (created if needed).") var queue: String?
        @Option(help: "Exit after this many tasks reached a final state.") var untilDone: Int?
        @Option(help: "Exit after this many seconds.") var timeout: Double?
        @Flag(help: "Print each event as a JSON line instead of a table.") var json = false
        @Flag(help: "Also show heartbeats.") var heartbeats = false

        func run() async throws {
            let conn = try broker.connect()
            try conn.openChannel(1)
            try conn.declareExchange(WireNames.eventsExchange)
            let q = try conn.declareQueue(queue ?? "", durable: queue != nil, exclusive: queue == nil,
                                          autoDelete: queue == nil)
            let nodes = node.isEmpty ? ["*"] : node
            for n in nodes {
                try conn.bindQueue(q, exchange: WireNames.eventsExchange, routingKey: "node.\(n).task.#")
                if heartbeats { try conn.bindQueue(q, exchange: WireNames.eventsExchange, routingKey: "node.\(n).heartbeat") }
                try conn.bindQueue(q, exchange: WireNames.eventsExchange, routingKey: "node.\(n).notice")
            }
            try conn.consume(queue: q, noAck: queue == nil)
            if !json { try? FileWriter.writeAll(2, Array("watching fem.events (queue \(q)); Ctrl-C to stop\n".utf8)) }
            flushOut()

            var table = WatchTable()
            var done = Set<String>()
            let deadline = timeout.map { Date().addingTimeInterval($0) }
            while deadline.map({ Date() < $0 }) ?? true {
                guard let d = try conn.nextDelivery(timeoutMilliseconds: 500) else { continue }
                if queue != nil { try conn.ack(deliveryTag: d.deliveryTag) }
                let text = String(decoding: d.body, as: UTF8.self)
                if d.routingKey.hasSuffix(".heartbeat") {
                    if heartbeats { print(json ? text : "heartbeat \(text)") }
                    flushOut()
                    continue
                }
                if d.routingKey.hasSuffix(".notice"), let n = try? JSONDecoder.fem.decode(NodeNotice.self, from: Data(d.body)) {
                    // News about the node itself (disk pressure, a drain, a delivery it could not journal).
                    print(json ? text : "node \(n.nodeID) \(n.reason): \(n.message)")
                    flushOut()
                    continue
                }
                guard let e = try? JSONDecoder.fem.decode(TaskEvent.self, from: Data(d.body)) else { continue }
                if let execution, e.executionID != execution { continue }
                if json {
                    print(text)
                } else {
                    table.apply(e)
                    table.render()
                }
                flushOut()
                if e.kind == .state && e.state.isTerminal, let id = e.taskID {
                    done.insert("\(e.nodeID)/\(id)")
                    if let untilDone, done.count >= untilDone { return }
                }
            }
        }
    }
}

/// The live table of `femctl watch`: one row per node and task. Redrawn in place on a terminal; on a pipe each
/// event is one line.
struct WatchTable {
    var rows: [String: (event: TaskEvent, order: Int)] = [:]
    let tty = Posix.isTerminal(STDOUT_FILENO)
    var headerPrinted = false
    /// STATE holds `awaiting_approval`; what kind of event it was (progress, notice, …) goes to DETAIL.
    static let header = pad("NODE", 14) + pad("TASK", 38) + pad("STATE", 19) + pad("SEQ", 5) + "DETAIL"

    mutating func apply(_ e: TaskEvent) {
        let key = "\(e.nodeID)/\(e.taskID ?? "-")"
        let order = rows[key]?.order ?? rows.count
        if let old = rows[key], old.event.seq > e.seq { return }
        rows[key] = (e, order)
        if !tty {
            if !headerPrinted { print(Self.header) }
            headerPrinted = true
            print(line(e))
        }
    }

    func render() {
        guard tty else { return }
        var out = "\u{1B}[H\u{1B}[2J"
        out += Self.header + "\n"
        for (_, row) in rows.sorted(by: { $0.value.order < $1.value.order }) { out += line(row.event) + "\n" }
        print(out, terminator: "")
    }

    func line(_ e: TaskEvent) -> String {
        var detail = e.kind == .state ? "" : "[\(e.kind.rawValue)] "
        detail += e.detail.failureClass.map { "\($0.rawValue) " } ?? ""
        if let x = e.detail.exitCode { detail += "exit=\(x) " }
        detail += e.detail.message ?? ""
        let state = e.state.rawValue
        // Event text comes from messages and tools: escaped before it reaches the terminal.
        return pad(TextEscaping.escaped(e.nodeID), 14) + pad(TextEscaping.escaped(e.taskID ?? "-"), 38)
            + pad(state, 19) + pad("\(e.seq)", 5) + TextEscaping.escaped(detail)
    }
}

/// `s` padded with spaces to `n` columns (at least one space after it).
func pad(_ s: String, _ n: Int) -> String {
    s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count)
}

/// Flushes standard output (so piped readers see lines at once).
func flushOut() {
    fflush(nil)
}
