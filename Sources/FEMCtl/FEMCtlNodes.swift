import ArgumentParser
import FEMCore
import FEMSystem
import Foundation

/// What femctl learns about nodes from their heartbeats on `fem.events` (`node.<id>.heartbeat`): read as plain JSON,
/// so fields a newer node adds (attributes, free capacity) are shown without femctl knowing them all.
struct NodeSighting: Sendable {
    var nodeID: String
    /// The newest heartbeat.
    var beat: JSONValue
    /// When femctl received it.
    var seen: Date

    var running: Int { beat["running"]?.intValue.map(Int.init) ?? 0 }
    var queued: Int { beat["queued"]?.intValue.map(Int.init) ?? 0 }
    var draining: Bool { beat["draining"] == .bool(true) }
    var pressure: String? { beat["pressure"]?.stringValue }
    /// The heartbeat's `free` capacity object (nodes with resource admission), nil from older nodes.
    var free: [String: JSONValue]? { beat["free"]?.objectValue }
    var attributes: [String: JSONValue]? { beat["attributes"]?.objectValue }

    /// How busy the node is, for `--least-busy` (larger is freer): free CPUs, then free memory, then free GPUs when
    /// the heartbeat has `free`; else fewer running and waiting tasks.
    var freeness: [Double] {
        if let free {
            return ["cpus", "memory_mb", "gpus"].map { number(free[$0]) } + [Double(-(running + queued))]
        }
        return [Double(-(running + queued))]
    }

    var freeSummary: String {
        guard let free else { return "-" }
        return free.keys.sorted().map { "\($0)=\(Self.text(free[$0]))" }.joined(separator: " ")
    }

    static func text(_ v: JSONValue?) -> String {
        switch v {
        case .int(let i)?: "\(i)"
        case .double(let d)?: String(format: "%g", d)
        case .string(let s)?: TextEscaping.escaped(s)
        case .bool(let b)?: "\(b)"
        case .array(let a)?: a.map { text($0) }.joined(separator: ",")
        default: "-"
        }
    }

    private func number(_ v: JSONValue?) -> Double {
        switch v {
        case .int(let i)?: Double(i)
        case .double(let d)?: d
        default: 0
        }
    }
}

enum NodeDirectory {
    /// Listens to heartbeats for `seconds` and returns the newest one of each node.
    static func listen(broker: BrokerOptions, seconds: Double) throws -> [NodeSighting] {
        let conn = try broker.connect()
        try conn.openChannel(1)
        try conn.declareExchange(WireNames.eventsExchange)
        let q = try conn.declareQueue("", durable: false, exclusive: true, autoDelete: true)
        try conn.bindQueue(q, exchange: WireNames.eventsExchange, routingKey: "node.*.heartbeat")
        try conn.consume(queue: q, noAck: true)
        var nodes: [String: NodeSighting] = [:]
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let left = Int(max(1, deadline.timeIntervalSinceNow * 1000))
            guard let d = try conn.nextDelivery(timeoutMilliseconds: min(500, left)) else { continue }
            guard let beat = try? JSONValue.parse(Data(d.body)), let id = beat["node_id"]?.stringValue,
                  Patterns.matches(#"^[a-z0-9][a-z0-9-]{0,62}$"#, id) else { continue }
            nodes[id] = NodeSighting(nodeID: id, beat: beat, seen: Date())
        }
        return nodes.values.sorted { $0.nodeID < $1.nodeID }
    }

    /// The node to push a task to: among the nodes heard from that take tasks (not draining, no pressure) and whose
    /// heartbeat shows the task's constraints met, the one with the most free capacity.
    static func leastBusy(_ nodes: [NodeSighting], for spec: TaskSpec, document: JSONValue) throws
        -> (node: String, why: String) {
        guard !nodes.isEmpty else {
            throw CommandFailure("--least-busy: no node sent a heartbeat while femctl listened; listen longer "
                                 + "(--listen, at least one heartbeat interval) or check that nodes run")
        }
        var refused: [String] = []
        var candidates: [NodeSighting] = []
        for n in nodes {
            if n.draining { refused.append("\(n.nodeID): draining"); continue }
            if let p = n.pressure { refused.append("\(n.nodeID): \(p)"); continue }
            if let why = constraintsRefusal(spec, attributes: n.beat["attributes"]) ?? placementRefusal(spec, n) {
                refused.append("\(n.nodeID): \(why)")
                continue
            }
            candidates.append(n)
        }
        // A node whose `free` covers the task's resources now comes first (it starts the task at once); among
        // those, or among the rest, the freest.
        let rank = { (n: NodeSighting) -> [Double] in [fitsNow(spec, n) ? 1 : 0] + n.freeness }
        guard let best = candidates.max(by: { rank($0).lexicographicallyPrecedes(rank($1)) }) else {
            throw CommandFailure("--least-busy: no node can take the task: " + refused.joined(separator: "; "))
        }
        let load = "\(best.running) running, \(best.queued) waiting"
        let freeText = best.free == nil ? "" : ", free \(best.freeSummary)"
        let others = candidates.count - 1
        return (best.nodeID, "the least busy of \(candidates.count) node(s) that can take it (\(load)\(freeText))"
                + (others == 0 && refused.isEmpty ? "" : "; not chosen: \(others) busier"
                   + (refused.isEmpty ? "" : ", refused: " + refused.joined(separator: "; "))))
    }

    /// The task's resources as heartbeat capacity keys (only those it asks for).
    static func asked(_ spec: TaskSpec) -> [(key: String, value: Double)] {
        let r = spec.plan.resources
        return [("cpus", r.cpus), ("memory_mb", r.memoryMB.map(Double.init)), ("gpus", r.gpus.map(Double.init)),
                ("storage_mb", r.storageMB.map(Double.init))].compactMap { k, v in v.map { (k, $0) } }
    }

    static func number(_ v: JSONValue?) -> Double? {
        switch v {
        case .int(let i)?: Double(i)
        case .double(let d)?: d
        default: nil
        }
    }

    /// Why the node's heartbeat says it can never run the task: its launcher is not enabled there, a dataset the
    /// plan reads is not there, or the task asks more than the node's whole `capacity`. Nil when none holds, or the
    /// heartbeat does not say (an older node).
    static func placementRefusal(_ spec: TaskSpec, _ n: NodeSighting) -> String? {
        if case .array(let launchers)? = n.beat["launchers"],
           !launchers.contains(.string(spec.plan.launcher)) {
            return "launcher \(spec.plan.launcher) is not enabled there"
        }
        if case .array(let datasets)? = n.beat["datasets"] {
            let there = Set(datasets.compactMap { $0["id"]?.stringValue })
            let missing = spec.plan.inputs.filter { !there.contains($0) }
            if !missing.isEmpty { return "dataset \(missing.joined(separator: ", ")) is not there" }
        }
        if let capacity = n.beat["capacity"]?.objectValue {
            let over = asked(spec).filter { a in number(capacity[a.key]).map { a.value > $0 } ?? false }
            if !over.isEmpty {
                return "the task asks more than its capacity ("
                    + over.map { "\($0.key) \(String(format: "%g", $0.value)) > "
                        + "\(NodeSighting.text(capacity[$0.key]))" }.joined(separator: ", ") + ")"
            }
        }
        return nil
    }

    /// Whether the node's heartbeat `free` covers the task's resources now (false when it has no `free`).
    static func fitsNow(_ spec: TaskSpec, _ n: NodeSighting) -> Bool {
        guard let free = n.free else { return false }
        return asked(spec).allSatisfy { a in number(free[a.key]).map { a.value <= $0 } ?? false }
    }

    /// Why the task's constraints (its own and-ed with its plan's) are not met by what the node's heartbeat says
    /// (`attributes`); nil when they are, or when neither has constraints. A node whose heartbeat has no attributes
    /// (an older node) cannot be judged, and is left out when there are constraints.
    static func constraintsRefusal(_ spec: TaskSpec, attributes: JSONValue?) -> String? {
        guard spec.constraints != nil || spec.plan.constraints != nil else { return nil }
        guard let attributes,
              let decoded = try? JSONDecoder.fem.decode(NodeAttributes.self, from: attributes.encoded()) else {
            return "its heartbeat carries no attributes to check the task's constraints against"
        }
        let verdict = spec.constraintVerdict(on: decoded)
        return verdict.matched ? nil : verdict.reason ?? "constraints not met"
    }
}

extension FEMCtlCommand {
    struct Nodes: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the nodes heard from: attributes, free capacity, load and the age of their last heartbeat.",
            discussion: "femctl listens to heartbeats (node.<id>.heartbeat on fem.events) for --listen seconds; a "
                + "node that sent none meanwhile is not listed.")
        @OptionGroup var broker: BrokerOptions
        @Option(help: "Seconds to listen (at least one heartbeat interval).") var listen: Double = 31
        @Flag(help: "Print each node's last heartbeat as a JSON line.") var json = false

        func validate() throws {
            if listen <= 0 || listen > 3600 { throw ValidationError("--listen: must be between 0 and 3600 seconds") }
        }

        func run() async throws {
            let nodes = try NodeDirectory.listen(broker: broker, seconds: listen)
            if json {
                for n in nodes { print(String(decoding: n.beat.encoded(), as: UTF8.self)) }
                return
            }
            print(pad("NODE", 24) + pad("AGE", 6) + pad("RUNNING", 8) + pad("WAITING", 8) + pad("STATUS", 10)
                  + pad("FREE", 30) + "ATTRIBUTES")
            for n in nodes {
                let status = n.draining ? "draining" : n.pressure != nil ? "pressure" : "ok"
                let age = "\(Int(Date().timeIntervalSince(n.seen)))s"
                print(pad(TextEscaping.escaped(n.nodeID), 24) + pad(age, 6) + pad("\(n.running)", 8)
                      + pad("\(n.queued)", 8) + pad(status, 10) + pad(n.freeSummary, 30) + attributeSummary(n))
            }
            if nodes.isEmpty { print("(no heartbeat in \(Int(listen)) s)") }
            flushOut()
        }

        /// The attributes object when the node sends one, else what every heartbeat says (launchers, datasets).
        func attributeSummary(_ n: NodeSighting) -> String {
            if let a = n.attributes {
                return a.keys.sorted().map { "\($0)=\(NodeSighting.text(a[$0]))" }.joined(separator: " ")
            }
            let launchers = NodeSighting.text(n.beat["launchers"])
            let datasets = (n.beat["datasets"].flatMap { v -> [JSONValue]? in
                if case .array(let a) = v { a } else { nil }
            } ?? []).compactMap { $0["id"]?.stringValue }.map(TextEscaping.escaped).joined(separator: ",")
            return "launchers=\(launchers) datasets=\(datasets.isEmpty ? "-" : datasets)"
        }
    }
}
