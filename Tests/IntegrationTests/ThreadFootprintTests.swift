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
    /// The daemon's threads by name (/proc/PID/task/TID/comm).
    func threads(_ pid: Int32) -> [String: Int] {
        let tids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var names: [String: Int] = [:]
        for tid in tids {
            let name = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            names[name, default: 0] += 1
        }
        return names
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
        func host() -> [String: JSONValue] { Tasks.task(["/bin/sh", "-c", "echo ready; exec sleep 300"], timeout: 600) }
        func container() -> [String: JSONValue] { DockerLauncherTests.task("echo ready; exec sleep 300", timeout: 600) }
        var submitted: [String] = []
        func runAll(_ tasks: [[String: JSONValue]]) throws {
            for t in tasks { try op.submit(t) }
            submitted += tasks.map(Tasks.id)
            try op.waitFor("\(submitted.count) tasks to run", timeout: 90) { evs in
                let running = Set(evs.filter { $0.kind == .state && $0.state == .running }.compactMap(\.taskID))
                return submitted.allSatisfy(running.contains)
            }
            // Each task said "ready" into its log: a container's log only arrives through the daemon's follow, so
            // its start has returned and the daemon waits for its end.
            try eventually("every task's log to say ready", timeout: 60) {
                submitted.allSatisfy { id in
                    ((try? String(contentsOfFile: "\(node.dir)/var/sandboxes/\(id)/logs/stdout.log", encoding: .utf8)) ?? "")
                        .contains("ready")
                }
            }
        }
        try runAll([host(), host(), container()])
        let fewer = threads(pid)
        try runAll([host(), host(), container()])
        let more = threads(pid)
        if let dump = ProcessInfo.processInfo.environment["FEM_TEST_FOOTPRINT_DUMP"] {
            try Shell.run(["/usr/bin/gdb", "-p", "\(pid)", "-batch", "-ex", "thread apply all bt 20", "-ex", "detach"])
                .output.write(toFile: dump, atomically: true, encoding: .utf8)
        }
        let total = { (t: [String: Int]) in t.values.reduce(0, +) }
        print("daemon threads: \(total(fewer)) with 2 host tasks and 1 container running, \(total(more)) with 4 and 2; "
              + "by name: \(fewer.sorted { $0.key < $1.key }) -> \(more.sorted { $0.key < $1.key })")
        // The blocking pool starts threads lazily as calls overlap (at most its size, 16), and libdispatch runs Swift's
        // cooperative pool and the signal queue on threads it starts and retires by itself ("…qos…" names): both are
        // bounded, neither is a thread per task. Nothing else may grow.
        func dispatchThreads(_ t: [String: Int]) -> Int { t.filter { $0.key.contains("qos") }.values.reduce(0, +) }
        func ours(_ t: [String: Int]) -> [String: Int] {
            t.filter { $0.key != "fem-blocking" && !$0.key.contains("qos") }
        }
        #expect(ours(more) == ours(fewer), "3 more running tasks added threads: \(fewer) -> \(more)")
        #expect((more["fem-blocking"] ?? 0) <= 16)
        #expect(dispatchThreads(more) <= 8, "libdispatch threads: \(more)")
        for id in submitted { try op.cancel(id) }
        try op.waitForFinal(submitted, timeout: 60)
        #expect(submitted.allSatisfy { op.finalState(of: $0)?.state == .cancelled })
    }
}
