import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Work pools with three real daemons on one real broker: each node consumes the pool `fem.pool.<name>` besides its
/// own queue, takes what it can start now, and passes the rest on with its reason.
@Suite(.serialized)
struct PoolTests {
    /// Three nodes of one pool (a fresh pool name per test), each listing the others as pool peers, and an observer
    /// that reads all their events.
    final class Fleet {
        let pool: String
        let nodes: [TestNode]
        let conn: AMQPConnection
        let pub: AMQPConnection
        let queue = "test.pool.\(UUID().uuidString.prefix(8).lowercased())"
        var seen: [TaskEvent] = []
        private var seenKeys = Set<String>()

        /// `extras[i]`: node i's own config lines (after `[broker]`); `maxConcurrent[i]` its slots.
        init(_ name: String, extras: [String] = ["", "", ""], maxConcurrent: [Int] = [2, 2, 2], maxPasses: Int = 10)
            throws {
            let pool = "p-\(UUID().uuidString.prefix(8).lowercased())"
            self.pool = pool
            var nodes: [TestNode] = []
            for i in 0..<3 {
                nodes.append(try TestNode("\(name)\(i)", extra: extras[i], maxConcurrent: maxConcurrent[i]))
            }
            self.nodes = nodes
            for n in nodes {
                let peers = nodes.filter { $0.id != n.id }.map { "\"\($0.id)\"" }.joined(separator: ", ")
                try n.editConfig { text in
                    text.replacingOccurrences(of: "drain_seconds = 0\n",
                                              with: "drain_seconds = 0\npools = [\"\(pool)\"]\npool_max_passes = \(maxPasses)\n")
                        .replacingOccurrences(of: "max_message_bytes = 65536\n",
                                              with: "max_message_bytes = 65536\npool_peers = [\(peers)]\n")
                }
            }
            let first = nodes[0]
            conn = try Operator.connect(brokerDir: first.brokerDir, port: first.port, cert: "operator")
            pub = try Operator.connect(brokerDir: first.brokerDir, port: first.port, cert: "operator")
            try conn.openChannel(1)
            _ = try conn.declareQueue(queue, durable: false, exclusive: true, autoDelete: true)
            for n in nodes {
                try conn.bindQueue(queue, exchange: WireNames.eventsExchange, routingKey: "node.\(n.id).task.#")
            }
            try conn.consume(queue: queue, noAck: true)
            try pub.openChannel(1)
            try pub.enablePublisherConfirms()
            for n in nodes { try n.start() }
            // Every node declared the pool's queues once it said it is connected; wait for the pool queue to exist
            // by the nodes' own log line order: "connected" is logged after the topology is declared.
        }

        func node(_ id: String) -> Int? { nodes.firstIndex { $0.id == id } }

        /// Publishes a task into the pool as the orchestrator.
        func submit(_ task: [String: JSONValue]) throws {
            try pub.publish(exchange: WireNames.tasksExchange, routingKey: WireNames.poolKey(pool),
                            body: Array(JSONValue.object(task).encoded()), userID: BrokerAccounts.orchestrator)
            let nacked = try pub.waitForConfirms()
            if !nacked.isEmpty { throw HarnessError("the broker refused the pool task") }
        }

        @discardableResult
        func waitFor(_ what: String, timeout: Double = 60, _ done: ([TaskEvent]) -> Bool) throws -> [TaskEvent] {
            let deadline = Date().addingTimeInterval(timeout)
            while !done(seen) {
                if Date() > deadline {
                    throw HarnessError("timed out after \(Int(timeout)) s waiting for \(what); events seen:\n"
                                       + seen.suffix(30).map { "  \($0.nodeID) \($0.taskID ?? "-") #\($0.seq) \($0.kind) "
                                           + "\($0.state) \($0.detail.message ?? "")" }.joined(separator: "\n")
                                       + "\nlogs:\n" + nodes.map { "--- \($0.id)\n\($0.log)" }.joined(separator: "\n"))
                }
                guard let d = try conn.nextDelivery(timeoutMilliseconds: 200) else { continue }
                let e = try JSONDecoder.fem.decode(TaskEvent.self, from: Data(d.body))
                if seenKeys.insert("\(e.nodeID)#\(e.taskID ?? "-")#\(e.seq)#\(e.kind)").inserted { seen.append(e) }
            }
            return seen
        }

        func final(_ taskID: String) -> TaskEvent? {
            seen.last { $0.taskID == taskID && $0.kind == .state && $0.state.isTerminal }
        }

        func waitForFinal(_ ids: [String], timeout: Double = 60) throws {
            try waitFor("\(ids.count) pool task(s) to end", timeout: timeout) { events in
                ids.allSatisfy { id in events.contains { $0.taskID == id && $0.kind == .state && $0.state.isTerminal } }
            }
        }

        /// How often `nodes[i]` passed a task of this pool on (its log says so each time).
        func passes(_ i: Int) -> Int { nodes[i].log.components(separatedBy: "pool \(pool): passed on").count - 1 }
    }

    static let hostNode = TestNode.hostProcesses

    /// A dataset folder for a node's `[datasets.<id>]`.
    static func dataset(_ id: String) throws -> String {
        let dir = try TestEnv.scratch("ds-\(id)")
        chmod(dir, 0o755)
        return "\n[datasets.\(id)]\npath = \"\(dir)\"\n"
    }

    @Test func aPoolTaskRunsOnlyOnANodeThatHasWhatItNeeds() throws {
        // Only node 1 has the dataset the task reads; nodes 0 and 2 pass it on, saying why.
        let fleet = try Fleet("pl-ds", extras: [Self.hostNode, Self.hostNode + (try Self.dataset("cohort-b")),
                                                Self.hostNode + "\n[node.labels]\nsite = \"hospital-c\"\n"])
        var t = Tasks.task(["/bin/true"])
        var plan = t["plan"]?.objectValue ?? [:]
        plan["inputs"] = .array([.string("cohort-b")])
        t["plan"] = .object(plan)
        // Through femctl, as an operator would.
        let file = try TestEnv.scratch("pool-task") + "/task.json"
        try JSONValue.object(t).encoded().write(to: URL(fileURLWithPath: file))
        let out = try Shell.run([try TestEnv.binary("femctl"), "submit", file, "--pool", fleet.pool],
                                environment: BrokerAccounts.femctlEnvironment(brokerDir: fleet.nodes[0].brokerDir,
                                                                              port: fleet.nodes[0].port))
        #expect(out.status == 0, "\(out.output)")
        // A pool no node serves: femctl says the task was not sent instead of letting the broker drop it.
        let nowhere = try Shell.run([try TestEnv.binary("femctl"), "submit", file, "--pool", "no-such-pool-\(fleet.pool)"],
                                    environment: BrokerAccounts.femctlEnvironment(brokerDir: fleet.nodes[0].brokerDir,
                                                                                  port: fleet.nodes[0].port))
        #expect(nowhere.status != 0)
        #expect(nowhere.output.contains("no queue takes tasks for this pool"), "\(nowhere.output)")
        try fleet.waitForFinal([Tasks.id(t)])
        let final = try #require(fleet.final(Tasks.id(t)))
        #expect(final.state == .completed)
        #expect(final.nodeID == fleet.nodes[1].id)
        #expect(final.attempt == 1)
        // No event of the task from the nodes without the dataset: they never took it.
        #expect(fleet.seen.filter { $0.taskID == Tasks.id(t) }.allSatisfy { $0.nodeID == fleet.nodes[1].id })
        for i in [0, 2] where fleet.passes(i) > 0 {
            #expect(fleet.nodes[i].log.contains("dataset cohort-b is not on this node"))
        }

        // Constraints: only node 2 is at hospital-c; the others pass the task on, never run it.
        var c = Tasks.task(["/bin/true"])
        c["constraints"] = .string(#"labels.site == "hospital-c""#)
        try fleet.submit(c)
        try fleet.waitForFinal([Tasks.id(c)])
        #expect(fleet.final(Tasks.id(c))?.state == .completed)
        #expect(fleet.seen.filter { $0.taskID == Tasks.id(c) }.allSatisfy { $0.nodeID == fleet.nodes[2].id })
        for i in [0, 1] where fleet.nodes[i].log.contains("task=\(Tasks.id(c))") {
            #expect(fleet.nodes[i].log.contains("passed on (constraints not met by this node"))
        }
    }

    @Test func aTaskBiggerThanANodeIsPassedThereAndRunsWhereItFits() throws {
        let small = Self.hostNode + "\n[node.capacity]\ncpus = 1\n"
        let fleet = try Fleet("pl-big", extras: [small, small, Self.hostNode + "\n[node.capacity]\ncpus = 4\n"],
                              maxPasses: 20)
        var tasks: [[String: JSONValue]] = []
        for _ in 0..<3 {
            // Each holds node 2's CPUs for a second: the others wait in the pool, where the small nodes see them.
            var t = Tasks.task(["/bin/sleep", "1"])
            var plan = t["plan"]?.objectValue ?? [:]
            plan["resources"] = .object(["cpus": .int(3)])
            t["plan"] = .object(plan)
            try fleet.submit(t)
            tasks.append(t)
        }
        try fleet.waitForFinal(tasks.map(Tasks.id), timeout: 90)
        for t in tasks {
            let final = try #require(fleet.final(Tasks.id(t)))
            #expect(final.state == .completed)
            #expect(final.nodeID == fleet.nodes[2].id)
            // Never declined anywhere: a small node passes it on, naming the resource.
            #expect(!fleet.seen.contains { $0.taskID == Tasks.id(t) && $0.state == .declined })
        }
        #expect(fleet.passes(0) + fleet.passes(1) > 0, "the small nodes never saw a task")
        for i in [0, 1] where fleet.passes(i) > 0 {
            #expect(fleet.nodes[i].log.contains("cpus"), "\(fleet.nodes[i].log)")
        }
    }

    @Test func aTaskWaitingForBusyResourcesIsNotDeadLetteredForIt() throws {
        // Every node fits one task at a time (2 CPUs, each task asks 2); six tasks of 2 s each keep the pool busy,
        // so nodes refuse them for now ("no room now") many times. Those temporary refusals must not count toward
        // pool_max_passes (2): every task runs, none is given up as unplaceable.
        let two = Self.hostNode + "\n[node.capacity]\ncpus = 2\n"
        let fleet = try Fleet("pl-wait", extras: [two, two, two], maxPasses: 2)
        var tasks: [[String: JSONValue]] = []
        for _ in 0..<6 {
            var t = Tasks.task(["/bin/sleep", "2"])
            var plan = t["plan"]?.objectValue ?? [:]
            plan["resources"] = .object(["cpus": .int(2)])
            t["plan"] = .object(plan)
            try fleet.submit(t)
            tasks.append(t)
        }
        try fleet.waitForFinal(tasks.map(Tasks.id), timeout: 120)
        for t in tasks {
            let final = try #require(fleet.final(Tasks.id(t)))
            #expect(final.state == .completed, "\(final)")
        }
        #expect(!fleet.seen.contains { $0.kind == .unplaceable }, "a waiting task was dead-lettered")
        // The nodes did refuse tasks for now (the case under test happened), more often than pool_max_passes.
        let passes = (0..<3).map(fleet.passes).reduce(0, +)
        #expect(passes > 2, "passes: \(passes)")
        #expect(fleet.nodes.contains { $0.log.contains("no room now") })
    }

    @Test func aNodeAtCapacityTakesNoPoolDeliveriesWhileAnotherHasRoom() throws {
        // Node 0 has one slot, taken by a long task sent to its own queue; nodes 1 and 2 have room.
        let fleet = try Fleet("pl-busy", extras: [Self.hostNode, Self.hostNode, Self.hostNode], maxConcurrent: [1, 1, 1])
        let busy = try Operator(node: fleet.nodes[0])
        let long = Tasks.task(["/bin/sleep", "30"])
        try busy.submit(long)
        try busy.waitFor("the long task to run on node 0") { evs in
            evs.contains { $0.taskID == Tasks.id(long) && $0.state == .running }
        }
        let tasks = (0..<4).map { _ in Tasks.task(["/bin/sh", "-c", "sleep 0.3"]) }
        for t in tasks { try fleet.submit(t) }
        try fleet.waitForFinal(tasks.map(Tasks.id), timeout: 60)
        for t in tasks {
            let final = try #require(fleet.final(Tasks.id(t)))
            #expect(final.state == .completed)
            #expect(final.nodeID != fleet.nodes[0].id)
        }
        // Node 0 never held a pool delivery: it neither ran nor passed any.
        #expect(fleet.seen.filter { $0.nodeID == fleet.nodes[0].id && $0.taskID != Tasks.id(long) }.isEmpty)
        #expect(fleet.passes(0) == 0)
        try busy.cancel(Tasks.id(long))
        try busy.waitForFinal([Tasks.id(long)])
    }

    @Test func aTaskFailingWithAListedClassIsRetriedOnAnotherNode() throws {
        // The first run, wherever it is, makes the marker and fails; the retry (on another node) finds it and
        // succeeds.
        let dir = try TestEnv.scratch("pool-retry")
        try giveToTaskUser(dir)
        let fleet = try Fleet("pl-retry", extras: [Self.hostNode, Self.hostNode, Self.hostNode])
        var t = Tasks.task(["/bin/sh", "-c", "mkdir \(dir)/first 2>/dev/null && exit 3; exit 0"])
        t["retry"] = .object(["attempts": .int(2), "on": .array([.string("task_failure")])])
        try fleet.submit(t)
        let id = Tasks.id(t)
        try fleet.waitFor("the retry to complete") { evs in
            evs.contains { $0.taskID == id && $0.state == .completed && $0.kind == .state }
        }
        let failed = try #require(fleet.seen.first { $0.taskID == id && $0.state == .failed && $0.kind == .state })
        let completed = try #require(fleet.final(id))
        #expect(failed.detail.failureClass == .taskFailure)
        #expect(failed.attempt == 1)
        #expect(completed.attempt == 2)
        #expect(completed.nodeID != failed.nodeID)
        // Every event of each run carries its attempt; the failing node said it returned the task.
        #expect(fleet.seen.filter { $0.taskID == id && $0.nodeID == failed.nodeID }.allSatisfy { $0.attempt == 1 })
        #expect(fleet.seen.filter { $0.taskID == id && $0.nodeID == completed.nodeID }.allSatisfy { $0.attempt == 2 })
        #expect(fleet.seen.contains { $0.taskID == id && $0.kind == .notice && $0.nodeID == failed.nodeID
            && ($0.detail.message ?? "").contains("returned to pool \(fleet.pool) for attempt 2") })
    }

    @Test func anUnplaceableTaskIsDeadLetteredWithEveryNodesReasonWithoutLooping() throws {
        let fleet = try Fleet("pl-dead", extras: [Self.hostNode, Self.hostNode, Self.hostNode], maxPasses: 3)
        var t = Tasks.task(["/bin/true"])
        var plan = t["plan"]?.objectValue ?? [:]
        plan["inputs"] = .array([.string("nowhere")])
        t["plan"] = .object(plan)
        try fleet.submit(t)
        let id = Tasks.id(t)
        try fleet.waitFor("the unplaceable event") { evs in evs.contains { $0.taskID == id && $0.kind == .unplaceable } }
        let event = try #require(fleet.seen.first { $0.taskID == id && $0.kind == .unplaceable })
        #expect(event.detail.data?["passes"] == .int(3))
        #expect(event.detail.data?["dead_letter_queue"] == .string(WireNames.deadPoolQueue(fleet.pool)))
        guard case .array(let declined)? = event.detail.data?["declined"] else {
            Issue.record("no declined list in \(event)")
            return
        }
        #expect(declined.count == 3)
        #expect(declined.allSatisfy { ($0["reason"]?.stringValue ?? "").contains("dataset nowhere is not on this node") })
        #expect((event.detail.message ?? "").contains("dataset nowhere is not on this node"))
        // No more passes after it was given up (bounded, no loop), and no node ran it.
        Thread.sleep(forTimeInterval: 3)
        #expect((0..<3).map(fleet.passes).reduce(0, +) == 3)
        #expect(!fleet.seen.contains { $0.taskID == id && $0.kind == .state })
        // The task is in the dead-letter queue, with its pool record.
        let reader = try BrokerAccounts.connect(as: fleet.nodes[0].id, brokerDir: fleet.nodes[0].brokerDir,
                                                port: fleet.nodes[0].port)
        try reader.openChannel(1)
        #expect(try reader.basicGet(queue: WireNames.deadPoolQueue(fleet.pool), channel: 1))
        let dead = try #require(try reader.nextDelivery(timeoutMilliseconds: 5000, maxBodyBytes: 1 << 20))
        let doc = try JSONValue.parse(Data(dead.body))
        #expect(doc["task_id"] == .string(id))
        #expect(doc["pool"]?["passes"] == .int(3))
        try reader.ack(deliveryTag: dead.deliveryTag, channel: 1)
    }

    @Test func aPoolTaskFromAnAccountThatIsNeitherOrchestratorNorPeerIsRejected() throws {
        let fleet = try Fleet("pl-auth", extras: [Self.hostNode, Self.hostNode, Self.hostNode])
        // An account of a node outside this pool's peers publishes into the pool.
        let outsider = try TestNode("pl-outsider")
        let conn = try BrokerAccounts.connect(as: outsider.id, brokerDir: outsider.brokerDir, port: outsider.port)
        try conn.openChannel(1)
        try conn.enablePublisherConfirms()
        let t = Tasks.task(["/bin/true"])
        try conn.publish(exchange: WireNames.tasksExchange, routingKey: WireNames.poolKey(fleet.pool),
                         body: Array(JSONValue.object(t).encoded()), userID: outsider.id)
        #expect(try conn.waitForConfirms().isEmpty)
        try fleet.waitFor("the rejection") { evs in evs.contains { $0.state == .rejected } }
        let rejected = try #require(fleet.seen.first { $0.state == .rejected })
        #expect((rejected.detail.message ?? "").contains("published by the broker account \"\(outsider.id)\""))
        #expect((rejected.detail.message ?? "").contains("pool peers"))
        #expect(!fleet.seen.contains { $0.taskID == Tasks.id(t) && $0.state == .completed })
    }

    @Test func femctlListsTheNodesAndPushesToTheLeastBusy() throws {
        let fleet = try Fleet("pl-ctl", extras: [Self.hostNode, Self.hostNode, Self.hostNode], maxConcurrent: [1, 1, 1])
        let env = BrokerAccounts.femctlEnvironment(brokerDir: fleet.nodes[0].brokerDir, port: fleet.nodes[0].port)
        let listed = try Shell.run([try TestEnv.binary("femctl"), "nodes", "--listen", "5"], environment: env)
        #expect(listed.status == 0, "\(listed.output)")
        for n in fleet.nodes { #expect(listed.output.contains(n.id), "\(listed.output)") }
        #expect(listed.output.contains("launchers=process"))
        // Nodes 0 and 1 are busy; the least busy is node 2.
        var ops: [Operator] = []
        var longs: [[String: JSONValue]] = []
        for i in 0..<2 {
            let op = try Operator(node: fleet.nodes[i])
            let long = Tasks.task(["/bin/sleep", "30"])
            try op.submit(long)
            try op.waitFor("a long task to run on node \(i)") { evs in
                evs.contains { $0.taskID == Tasks.id(long) && $0.state == .running }
            }
            ops.append(op)
            longs.append(long)
        }
        // The heartbeats after the long tasks started say so (interval 2 s).
        Thread.sleep(forTimeInterval: 2.5)
        let t = Tasks.task(["/bin/true"])
        let file = try TestEnv.scratch("least-busy") + "/task.json"
        try JSONValue.object(t).encoded().write(to: URL(fileURLWithPath: file))
        let out = try Shell.run([try TestEnv.binary("femctl"), "submit", file, "--least-busy", "--listen", "5"]
                                + fleet.nodes.flatMap { ["--node", $0.id] },
                                environment: env)
        #expect(out.status == 0, "\(out.output)")
        #expect(out.output.contains("chose node \(fleet.nodes[2].id)"), "\(out.output)")
        try fleet.waitForFinal([Tasks.id(t)])
        #expect(fleet.final(Tasks.id(t))?.nodeID == fleet.nodes[2].id)
        for (op, long) in zip(ops, longs) { try op.cancel(Tasks.id(long)) }
    }

    @Test func aRetryWithAnUnknownFailureClassIsRejectedNamingTheField() throws {
        let node = try TestNode("pl-badretry", extra: Self.hostNode)
        try node.start()
        let op = try Operator(node: node)
        var t = Tasks.task(["/bin/true"])
        t["retry"] = .object(["attempts": .int(2), "on": .array([.string("node_restrat")])])
        try op.submit(t)
        try op.waitFor("the rejection") { evs in evs.contains { $0.taskID == Tasks.id(t) && $0.state == .rejected } }
        let rejected = try #require(op.events(of: Tasks.id(t)).first { $0.state == .rejected })
        #expect((rejected.detail.message ?? "").contains("retry.on[0]"))
        #expect((rejected.detail.message ?? "").contains("\"node_restrat\" is not a failure class"))
    }

    @Test func aBadPoolNameOrPeerIsRefusedAtStartNamingTheKey() throws {
        let node = try TestNode("pl-badcfg")
        try node.editConfig { text in
            text.replacingOccurrences(of: "drain_seconds = 0\n", with: "drain_seconds = 0\npools = [\"GPU pool\"]\npool_max_passes = 0\n")
                .replacingOccurrences(of: "max_message_bytes = 65536\n", with: "max_message_bytes = 65536\npool_peers = [\"a b\"]\n")
        }
        let check = try node.run(["check"])
        #expect(check.status != 0)
        #expect(check.output.contains("node.pools: \"GPU pool\" is not a pool name"), "\(check.output)")
        #expect(check.output.contains("node.pool_max_passes: 0 is out of range"), "\(check.output)")
        #expect(check.output.contains("broker.pool_peers: \"a b\" is not a broker account name"), "\(check.output)")
    }

    @Test func aFailedTaskSwitchesToItsNextAlternativeOnAnotherNode() throws {
        let fleet = try Fleet("pl-alt", extras: [Self.hostNode, Self.hostNode, Self.hostNode])
        var t = Tasks.task(["/bin/false"])
        var second = Tasks.plan(["/bin/true"]).objectValue ?? [:]
        second["id"] = .string("fallback-tool")
        t["alternatives"] = .array([.object(second)])
        try fleet.submit(t)
        let id = Tasks.id(t)
        try fleet.waitFor("the alternative to complete") { evs in
            evs.contains { $0.taskID == id && $0.state == .completed && $0.kind == .state }
        }
        let failed = try #require(fleet.seen.first { $0.taskID == id && $0.state == .failed && $0.kind == .state })
        let completed = try #require(fleet.final(id))
        #expect(failed.attempt == 1 && completed.attempt == 2)
        #expect(completed.nodeID != failed.nodeID)
        #expect(fleet.seen.contains { $0.taskID == id && $0.kind == .notice && $0.nodeID == failed.nodeID
            && ($0.detail.message ?? "").contains("next alternative, plan fallback-tool") })
        let ran = try #require(fleet.nodes.first { $0.id == completed.nodeID })
        #expect(ran.log.contains("task=\(id) received fallback-tool"))
    }

    @Test func aTaskOnTheNodesOwnQueueNamingAPoolIsNotSentIntoIt() throws {
        // The `pool` field is the nodes' record; on a task sent to one node it names no pool of that node's, so a
        // failure is not "retried" into it, and the node goes on as usual.
        let node = try TestNode("pl-own", extra: Self.hostNode)
        try node.start()
        let op = try Operator(node: node)
        var t = Tasks.task(["/bin/false"])
        t["retry"] = .object(["attempts": .int(3), "on": .array([.string("task_failure")])])
        t["pool"] = .object(["name": .string("not-this-nodes-\(UUID().uuidString.prefix(6).lowercased())")])
        try op.submit(t)
        let next = Tasks.task(["/bin/true"])
        try op.submit(next)
        try op.waitForFinal([Tasks.id(t), Tasks.id(next)])
        #expect(op.finalState(of: Tasks.id(t))?.state == .failed)
        #expect(op.finalState(of: Tasks.id(next))?.state == .completed)
        #expect(!op.events(of: Tasks.id(t)).contains { ($0.detail.message ?? "").contains("returned to pool") })
        #expect(op.events(of: Tasks.id(t)).allSatisfy { $0.attempt == 1 })
    }
}
