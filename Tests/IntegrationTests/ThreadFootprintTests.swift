import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A running task holds no thread of the daemon: host processes are reaped by one event reactor (pidfds), containers
/// are followed on one HTTP streams thread, blocking calls share one bounded pool. Measured on a real daemon with
/// host tasks and containers running side by side.
@Suite(.serialized)
struct ThreadFootprintTests {
    func threads(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").count) ?? -1
    }

    @Test func moreRunningTasksAddNoThreads() throws {
        let up = (try? DockerEngine().ping()) ?? false
        try #require(up, "dockerd is not answering on /var/run/docker.sock")
        let data = try TestEnv.scratch("dataset")
        chmod(data, 0o755)
        let node = try TestNode("threads", extra: """
            [launchers]
            enabled = ["docker", "process"]
            [launchers.process]
            allowed_executables = \(TestNode.hostPrograms)
            [launchers.docker]
            allowed_images = ["fem-test/*"]
            [datasets.demo]
            path = "\(data)"
            """, maxConcurrent: 8)
        try node.start()
        defer { node.stop() }
        let pid = try #require(node.pid)
        let op = try Operator(node: node)
        func host() -> [String: JSONValue] { Tasks.task(["/bin/sleep", "300"], timeout: 600) }
        func container() -> [String: JSONValue] { DockerLauncherTests.task("sleep 300", timeout: 600) }
        var submitted: [String] = []
        func runAll(_ tasks: [[String: JSONValue]]) throws {
            for t in tasks { try op.submit(t) }
            submitted += tasks.map(Tasks.id)
            try op.waitFor("\(submitted.count) tasks to run", timeout: 90) { evs in
                let running = Set(evs.filter { $0.kind == .state && $0.state == .running }.compactMap(\.taskID))
                return submitted.allSatisfy(running.contains)
            }
            // Running is journaled just before the launcher's wait begins: wait for every container to run too.
            try eventually("the containers to run", timeout: 30) {
                ((try? DockerEngine().containers(labels: ["org.fem-client.node": node.id])) ?? []).allSatisfy {
                    (try? DockerEngine().inspectContainer($0))??.running == true
                }
            }
        }
        try runAll([host(), host(), container()])
        let fewer = threads(pid)
        try runAll([host(), host(), container()])
        let more = threads(pid)
        print("daemon threads: \(fewer) with 2 host tasks and 1 container running, \(more) with 4 and 2")
        #expect(more - fewer <= 1, "3 more running tasks added \(more - fewer) threads (\(fewer) -> \(more))")
        for id in submitted { try op.cancel(id) }
        try op.waitForFinal(submitted, timeout: 60)
        #expect(submitted.allSatisfy { op.finalState(of: $0)?.state == .cancelled })
    }
}
