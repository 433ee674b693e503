import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The receiver spine against a real RabbitMQ with TLS and client certificates (started by test.sh) and real
/// `fem-client daemon` processes.
@Suite(.serialized)
struct ReceiverSpineTests {
    @Test func submittedTaskCompletesWithEveryEventInOrder() throws {
        let node = try TestNode("spine", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/sh", "-c", "echo hello from the task"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let events = op.events(of: Tasks.id(t)).filter { $0.kind == .state }
        #expect(events.map(\.state) == [.received, .stagingIn, .running, .stagingOut, .completed])
        #expect(events.map(\.seq) == [1, 2, 3, 4, 5])
        #expect(events.allSatisfy { $0.nodeID == node.id && $0.executionID == "exec-test" && $0.schemaVersion == 1 })
        #expect(events.last?.detail.exitCode == 0)
        let stdout = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/stdout.log", encoding: .utf8)
        #expect(stdout == "hello from the task\n")
        #expect(node.log.contains("task=\(Tasks.id(t)) completed"))
        // The journal answers `tasks` and `show`.
        let show = try node.run(["show", Tasks.id(t), "--json"])
        #expect(show.status == 0)
        let shown = try JSONValue.parse(Data(show.output.utf8))
        #expect(shown["state"] == .string("completed"))
        if case .array(let evs)? = shown["events"] { #expect(evs.count == 5) } else { Issue.record("no events in show") }
    }

    @Test func nonZeroExitFailsWithTheExitCode() throws {
        let node = try TestNode("exit", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/sh", "-c", "echo oops >&2; exit 3"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed)
        #expect(final.detail.failureClass == .taskFailure)
        #expect(final.detail.exitCode == 3)
        #expect(node.log.contains("failed: exited with code 3"))
    }

    @Test func timeoutStopsTheWholeProcessGroup() throws {
        let node = try TestNode("timeout", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let marker = "fem-timeout-\(UUID().uuidString.prefix(8))"
        // The shell starts a child and a grandchild; all of them must go.
        let t = Tasks.task(["/bin/sh", "-c", "sleep 60 & sleep 61; : \(marker)", marker], timeout: 1)
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 20)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .timeout)
        try eventually("the timed-out process group to be gone") { processes(withMarker: marker).isEmpty }
    }

    @Test func cancelStopsARunningTask() throws {
        let node = try TestNode("cancel", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let marker = "fem-cancel-\(UUID().uuidString.prefix(8))"
        let t = Tasks.task(["/bin/sh", "-c", "sleep 60; : \(marker)", marker])
        try op.submit(t)
        try op.waitFor("the task to run") { evs in evs.contains { $0.taskID == Tasks.id(t) && $0.state == .running } }
        try eventually("the process to start") { !processes(withMarker: marker).isEmpty }
        try op.cancel(Tasks.id(t))
        try op.waitForFinal([Tasks.id(t)])
        #expect(op.finalState(of: Tasks.id(t))?.state == .cancelled)
        try eventually("the cancelled process to be gone") { processes(withMarker: marker).isEmpty }
    }

    @Test func aDuplicateTaskIDIsNotRunTwice() throws {
        let node = try TestNode("dup", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let out = "\(node.dir)/runs.txt"
        try giveToTaskUser(out)
        let t = Tasks.task(["/bin/sh", "-c", "echo run >> \(out)"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        try op.submit(t)
        try op.waitFor("the duplicate notice") { evs in evs.contains { $0.taskID == Tasks.id(t) && $0.kind == .duplicate } }
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "run\n")
        #expect(op.events(of: Tasks.id(t)).filter { $0.kind == .state && $0.state == .running }.count == 1)
        let dup = try #require(op.events(of: Tasks.id(t)).first { $0.kind == .duplicate })
        #expect(dup.detail.message?.contains("was not run again") == true)
    }

    @Test func malformedMessagesAreRejectedAndDoNotBlockTheQueue() throws {
        let node = try TestNode("malformed", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        var missing = Tasks.task(["/bin/true"], id: "bad-missing")
        missing["execution_id"] = nil
        var mistyped = Tasks.task(["/bin/true"], id: "bad-typed")
        mistyped["timeout_seconds"] = .string("sixty")
        var unknownLauncher = Tasks.task(["/bin/true"], id: "bad-launcher")
        if case .object(var p)? = unknownLauncher["plan"] {
            p["launcher"] = .string("kubernetes")
            unknownLauncher["plan"] = .object(p)
        }
        try op.publish(Array("{this is not json".utf8))
        try op.publish([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])
        try op.submit(missing)
        try op.submit(mistyped)
        try op.submit(unknownLauncher)
        try op.publish(Array(repeating: UInt8(ascii: " "), count: 70_000))
        let good = Tasks.task(["/bin/true"])
        try op.submit(good)
        try op.waitForFinal([Tasks.id(good)])
        #expect(op.finalState(of: Tasks.id(good))?.state == .completed)
        let rejections = op.seen.filter { $0.state == .rejected }
        #expect(rejections.count == 6)
        let messages = rejections.compactMap(\.detail.message)
        #expect(messages.contains { $0.contains("not JSON") })
        #expect(messages.contains { $0.contains("not valid UTF-8") })
        #expect(messages.contains { $0.contains("execution_id: is required") })
        #expect(messages.contains { $0.contains("timeout_seconds: expected an integer, got string") })
        #expect(messages.contains { $0.contains(#"plan.launcher: "kubernetes" is not one of docker, process, flower, slurm"#) })
        #expect(messages.contains { $0.contains("over the limit of 65536 bytes") })
        #expect(rejections.first { $0.detail.message?.contains("execution_id") == true }?.taskID == "bad-missing")
        #expect(node.pid != nil && kill(node.pid!, 0) == 0, "the daemon is still running")
    }

    @Test func aClientCertificateFromAnotherCAIsRefusedClearly() throws {
        let node = try TestNode("rogue", cert: "rogue-client")
        let check = try node.run(["check"])
        #expect(check.status == 1)
        #expect(check.output.contains("FAIL  broker"))
        #expect(check.output.contains("client certificate"))
        #expect(check.output.contains("rogue-client.pem"))
        #expect(!check.output.contains(try BrokerAccounts.password("\(node.brokerDir)/nodes/\(node.id).password")))
        let good = try TestNode("goodcert")
        let ok = try good.run(["check"])
        #expect(ok.status == 0, "\(ok.output)")
    }

    @Test func afterSIGKILLEveryRunningTaskEndsAndIsReported() throws {
        let node = try TestNode("sigkill", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let marker = "fem-sigkill-\(UUID().uuidString.prefix(8))"
        let tasks = (0..<2).map { _ in Tasks.task(["/bin/sh", "-c", "sleep 60; : \(marker)", marker]) }
        for t in tasks { try op.submit(t) }
        try op.waitFor("both tasks to run") { evs in
            tasks.allSatisfy { t in evs.contains { $0.taskID == Tasks.id(t) && $0.state == .running } }
        }
        try eventually("both processes to start") { processes(withMarker: marker).count >= 2 }
        node.kill(SIGKILL)
        #expect(processes(withMarker: marker).count >= 2, "the work outlived the daemon")
        try node.start()
        try op.waitForFinal(tasks.map(Tasks.id))
        for t in tasks {
            let final = try #require(op.finalState(of: Tasks.id(t)))
            #expect(final.state == .failed && final.detail.failureClass == .nodeRestart)
            #expect(op.events(of: Tasks.id(t)).filter { $0.kind == .state }.map(\.seq)
                    == Array(1...op.events(of: Tasks.id(t)).filter { $0.kind == .state }.count))
        }
        try eventually("the orphaned processes to be stopped") { processes(withMarker: marker).isEmpty }
    }

    @Test func heartbeatsArrive() throws {
        let node = try TestNode("beat", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let conn = op.conn
        let q = try conn.declareQueue("", durable: false, exclusive: true, autoDelete: true)
        try conn.bindQueue(q, exchange: WireNames.eventsExchange, routingKey: "node.\(node.id).heartbeat")
        try conn.consume(queue: q, noAck: true)
        var beat: Heartbeat?
        let deadline = Date().addingTimeInterval(10)
        while beat == nil && Date() < deadline {
            if let d = try conn.nextDelivery(timeoutMilliseconds: 200), d.routingKey.hasSuffix(".heartbeat") {
                beat = try JSONDecoder.fem.decode(Heartbeat.self, from: Data(d.body))
            }
        }
        let b = try #require(beat, "no heartbeat within 10 s")
        #expect(b.nodeID == node.id && b.launchers == ["process"] && (b.freeDiskBytes ?? 0) > 0)
    }

    // MARK: - Least-privilege broker accounts (issue 12, item 6)

    /// Runs `attempt` on a fresh channel and returns the broker's refusal, which a later call on the same channel
    /// (a passive lookup) reports when the broker closed the channel asynchronously (a refused publish).
    func refusal(_ conn: AMQPConnection, channel: UInt16, _ attempt: (AMQPConnection) throws -> Void) -> String? {
        do {
            try conn.openChannel(channel)
            try attempt(conn)
            try conn.declareExchange(WireNames.eventsExchange, channel: channel, passive: true)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func aNodeAccountReachesOnlyItsOwnQueuesAndPublishesOnlyItsOwnEvents() throws {
        let a = try TestNode("acct-a")
        let b = try TestNode("acct-b")
        try a.start()
        try b.start()
        let check = try a.run(["check"])
        #expect(check.output.contains("ok    broker exchanges fem.tasks, fem.control and fem.events exist")
                && check.output.contains("accepted only from the broker account(s) fem-orchestrator"), "\(check.output)")
        let conn = try BrokerAccounts.connect(as: a.id, brokerDir: a.brokerDir, port: a.port, cert: "node")

        let consumeB = refusal(conn, channel: 1) { try $0.consume(queue: WireNames.taskQueue(node: b.id), channel: 1) }
        #expect(consumeB?.contains("403 ACCESS_REFUSED") == true, "\(consumeB ?? "consumed node B's queue")")
        let controlB = refusal(conn, channel: 2) {
            try $0.consume(queue: WireNames.controlQueue(node: b.id), channel: 2)
        }
        #expect(controlB?.contains("403 ACCESS_REFUSED") == true, "\(controlB ?? "consumed node B's control queue")")
        let forged = refusal(conn, channel: 3) {
            try $0.publish(exchange: WireNames.eventsExchange, routingKey: "node.\(b.id).task.forged", body: Array("{}".utf8),
                           channel: 3)
        }
        #expect(forged?.contains("403 ACCESS_REFUSED") == true, "\(forged ?? "published an event as node B")")
        let ownEvent = refusal(conn, channel: 4) {
            try $0.publish(exchange: WireNames.eventsExchange, routingKey: "node.\(a.id).task.probe",
                           body: Array("{}".utf8), channel: 4)
        }
        #expect(ownEvent == nil, "its own routing key is allowed: \(ownEvent ?? "")")
        let bindB = refusal(conn, channel: 5) {
            try $0.bindQueue(WireNames.taskQueue(node: a.id), exchange: WireNames.tasksExchange,
                             routingKey: WireNames.nodeKey(b.id), channel: 5)
        }
        #expect(bindB?.contains("403 ACCESS_REFUSED") == true, "\(bindB ?? "bound its queue to node B's tasks")")
        let task = refusal(conn, channel: 6) {
            try $0.publish(exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(b.id), body: Array("{}".utf8),
                           channel: 6)
        }
        #expect(task?.contains("403 ACCESS_REFUSED") == true, "\(task ?? "a node published a task")")
        let cancel = refusal(conn, channel: 7) {
            try $0.publish(exchange: WireNames.controlExchange, routingKey: WireNames.nodeKey(b.id),
                           body: Array("{}".utf8), channel: 7)
        }
        #expect(cancel?.contains("403 ACCESS_REFUSED") == true, "\(cancel ?? "a node published a cancel")")
        let configure = refusal(conn, channel: 8) { try $0.declareExchange(WireNames.tasksExchange, channel: 8) }
        #expect(configure?.contains("403 ACCESS_REFUSED") == true, "\(configure ?? "a node may (re)declare fem.tasks")")
    }

    @Test func tasksAndCancelsFromAnyAccountButAnOrchestratorAreRejectedWithTheReason() throws {
        let node = try TestNode("acct-orch", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let marker = "acct-orch-\(UUID().uuidString.prefix(8))"
        let running = Tasks.task(["/bin/sh", "-c", "sleep 60; : \(marker)", marker])
        try op.submit(running)
        try op.waitFor("the task to run") { evs in
            evs.contains { $0.taskID == Tasks.id(running) && $0.state == .running }
        }
        // `running` is journaled as the launcher starts the work: the process may appear a moment later.
        try eventually("the task's process to start") { !processes(withMarker: marker).isEmpty }
        // An account that may publish (the broker's administrator here) but is no orchestrator of this node. The
        // broker checks user_id against the login, so it cannot claim to be the orchestrator.
        let admin = try BrokerAccounts.connect(as: "fem", brokerDir: node.brokerDir, port: node.port)
        try admin.openChannel(1)
        try admin.enablePublisherConfirms()
        let cancel = try JSONEncoder.fem.encode(ControlMessage(taskID: Tasks.id(running), reason: "forged"))
        try admin.publish(exchange: WireNames.controlExchange, routingKey: WireNames.nodeKey(node.id), body: Array(cancel),
                          userID: "fem")
        let forgedTask = Tasks.task(["/bin/echo", "forged"])
        try admin.publish(exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(node.id),
                          body: Array(JSONValue.object(forgedTask).encoded()), userID: "fem")
        #expect(try admin.waitForConfirms().isEmpty)
        // Without a user_id at all (the orchestrator's own account, but the property left out).
        let bare = Tasks.task(["/bin/echo", "bare"])
        try op.pub.publish(exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(node.id),
                           body: Array(JSONValue.object(bare).encoded()))
        try op.confirmPublished()
        // A claimed user_id that is not the login is refused by the broker itself.
        let liar = try BrokerAccounts.connect(as: "fem", brokerDir: node.brokerDir, port: node.port)
        try liar.openChannel(1)
        try liar.enablePublisherConfirms()
        try liar.publish(exchange: WireNames.controlExchange, routingKey: WireNames.nodeKey(node.id), body: Array(cancel),
                         userID: BrokerAccounts.orchestrator)
        #expect(throws: (any Error).self, "the broker accepted a user_id that is not the login") {
            _ = try liar.waitForConfirms(timeoutSeconds: 10)
        }

        let rejected = try op.waitFor("three rejections") { evs in
            evs.filter { $0.taskID == nil && $0.state == .rejected }.count >= 3
        }.filter { $0.taskID == nil && $0.state == .rejected }.compactMap(\.detail.message)
        #expect(rejected.contains { $0.hasPrefix("control message refused: it was published by the broker account \"fem\", "
                                              + "which is not one of this node's orchestrator accounts (fem-orchestrator)") },
                "\(rejected)")
        #expect(rejected.contains { $0.hasPrefix("task refused: it was published by the broker account \"fem\"") },
                "\(rejected)")
        #expect(rejected.contains { $0.hasPrefix("task refused: it carries no user_id") }, "\(rejected)")
        #expect(op.events(of: Tasks.id(forgedTask)).isEmpty && op.events(of: Tasks.id(bare)).isEmpty,
                "nothing was journaled under the ids the refused messages claimed")
        #expect(op.events(of: Tasks.id(running)).allSatisfy { !$0.state.isTerminal }, "the forged cancel stopped nothing")
        #expect(!processes(withMarker: marker).isEmpty, "the forged cancel stopped the task's process")
        // The orchestrator's cancel still works.
        try op.cancel(Tasks.id(running))
        try op.waitForFinal([Tasks.id(running)])
        #expect(op.finalState(of: Tasks.id(running))?.state == .cancelled)
    }
}
