import FEMCore
import Foundation
import Testing

/// Nothing lost, nothing run twice: the broker restarts while 100 tasks are in flight (in its queue, in the
/// node's journal, running). Uses a broker of its own, so other tests keep theirs.
@Suite(.serialized)
struct BrokerRestartTests {
    @Test func hundredTasksCompleteExactlyOnceAcrossABrokerRestart() throws {
        let broker = try OwnBroker(port: 5795)  // not 5698: a developer's shared broker may hold that one
        let node = try TestNode("restart", brokerDir: broker.dir, port: broker.port, extra: TestNode.hostProcesses,
                                maxConcurrent: 4)
        try node.start()
        let op = try Operator(node: node)
        let runs = "\(node.dir)/runs"
        try FileManager.default.createDirectory(atPath: runs, withIntermediateDirectories: true)
        try giveToTaskUser(runs)
        let tasks = (0..<100).map { i in
            Tasks.task(["/bin/sh", "-c", "sleep 0.05; echo \(i) >> \(runs)/$0", "t\(i)"], id: "restart-\(i)")
        }
        for t in tasks { try op.submit(t) }
        try op.confirmPublished()
        try op.waitFor("the first completions") { evs in evs.filter { $0.state == .completed }.count >= 5 }

        try broker.run("stop")
        Thread.sleep(forTimeInterval: 2)
        try broker.run("start")
        try op.reconnect()
        try op.waitForFinal(tasks.map(Tasks.id), timeout: 180)

        for t in tasks {
            let id = Tasks.id(t)
            let states = op.events(of: id).filter { $0.kind == .state }
            #expect(op.finalState(of: id)?.state == .completed, "\(id)")
            // Every event arrived: sequence numbers 1...n without a gap, in one piece. A task that waited for one of
            // the four slots has a `queued` event besides the five of a task that started at once.
            let expected: [TaskState] = [.received, .queued, .stagingIn, .running, .stagingOut, .completed]
            let seen = states.sorted { $0.seq < $1.seq }.map(\.state)
            #expect(seen == expected || seen == expected.filter { $0 != .queued }, "\(id): \(seen)")
            #expect(Set(states.map(\.seq)) == Set(1...max(1, states.count)), "\(id): \(states.map(\.seq))")
            #expect(states.filter { $0.state == .running }.count == 1, "\(id) ran once")
        }
        // Exactly once, counted by the work itself.
        let files = try FileManager.default.contentsOfDirectory(atPath: runs)
        #expect(files.count == 100)
        for f in files {
            #expect(try String(contentsOfFile: "\(runs)/\(f)", encoding: .utf8).split(separator: "\n").count == 1, "\(f)")
        }
        #expect(node.log.contains("reconnected to the broker"))
    }
}
