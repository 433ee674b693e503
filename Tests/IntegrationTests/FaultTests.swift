import FEMCore
import FEMJournal
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A slow TCP peer for cancel tests, started here and stopped by its PID: `serve SIZE RATE` answers any HTTP GET with
/// SIZE bytes at RATE bytes per 100 ms; `proxy PORT RATE` forwards to 127.0.0.1:PORT, the answers at RATE bytes per
/// 100 ms (0: held, nothing forwarded). It writes its port to DIR/port and one line per connection to DIR/connections.
final class SlowPeer {
    static let script = #"""
import socket, sys, threading, time, os
mode, arg, rate, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(64)
def log(line):
    with open(os.path.join(d, "connections"), "a") as f: f.write(line + "\n")
def trickle(src, dst):
    try:
        while True:
            if rate == 0:
                time.sleep(0.1); continue
            data = src.recv(rate)
            if not data: break
            dst.sendall(data); time.sleep(0.1)
    except OSError: pass
    finally:
        for s in (src, dst):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data: break
            dst.sendall(data)
    except OSError: pass
def handle(c):
    log("connect")
    if mode == "serve":
        try:
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % arg)
            sent = 0
            while sent < arg:
                n = min(rate, arg - sent); c.sendall(b"x" * n); sent += n; time.sleep(0.1)
        except OSError: log("closed by the client")
        c.close(); return
    t = socket.create_connection(("127.0.0.1", arg))
    threading.Thread(target=pump, args=(c, t), daemon=True).start()
    trickle(t, c)
    log("closed")
with open(os.path.join(d, "port.tmp"), "w") as f: f.write(str(srv.getsockname()[1]))
os.rename(os.path.join(d, "port.tmp"), os.path.join(d, "port"))
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""#

    let dir: String
    let port: Int
    private var pid: Int32?

    init(_ mode: String, _ arg: Int, rate: Int) throws {
        dir = try TestEnv.scratch("slow")
        try Self.script.write(toFile: "\(dir)/slow.py", atomically: true, encoding: .utf8)
        pid = try ChildProcess.spawn(executable: "/usr/bin/python3", arguments: ["\(dir)/slow.py", mode, "\(arg)", "\(rate)", dir],
                                     environment: ["PATH": "/usr/bin:/bin"], workingDirectory: dir,
                                     stdoutPath: "\(dir)/out.log", stderrPath: "\(dir)/out.log").pid
        var found: Int?
        let deadline = Date().addingTimeInterval(10)
        while found == nil && Date() < deadline {
            found = (try? String(contentsOfFile: "\(dir)/port", encoding: .utf8)).flatMap { Int($0) }
            if found == nil { Thread.sleep(forTimeInterval: 0.05) }
        }
        guard let found else {
            throw HarnessError("slow peer did not start: \((try? String(contentsOfFile: "\(dir)/out.log", encoding: .utf8)) ?? "")")
        }
        port = found
    }

    var connections: Int {
        ((try? String(contentsOfFile: "\(dir)/connections", encoding: .utf8)) ?? "").split(separator: "\n")
            .filter { $0 == "connect" }.count
    }

    func stop() {
        guard let pid else { return }
        Glibc.kill(pid, SIGKILL)
        _ = ChildProcess.waitBlocking(pid: pid)
        self.pid = nil
    }

    deinit { stop() }
}

/// Faults through the real daemon: a cancel during each stage-in step, a rejected message that leaves its id
/// free, a drain on SIGTERM, a full disk.
@Suite(.serialized)
struct FaultTests {
    /// A process task whose tool would leave a marker file if it ever started.
    /// Where a host task could write if it ran (a folder of the task user's), so "it never ran" is not an accident
    /// of permissions.
    func taskWritableMarker() throws -> String {
        let dir = try TestEnv.scratch("marker")
        try giveToTaskUser(dir)
        return dir + "/started"
    }

    func markerTask(source: JSONValue? = nil, marker: String, sleep: Int = 0) -> [String: JSONValue] {
        guard case .object(var plan) = Tasks.plan(["/bin/sh", "-c", "touch \(marker); sleep \(sleep)"]) else { return [:] }
        if let source { plan["source"] = source }
        return ["schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-faults",
                "plan": .object(plan), "params": [:]]
    }

    /// Sends the cancel once `started` holds, and checks the task ends `cancelled` within 2 s of it, never `running`,
    /// and its tool never ran.
    func cancelWhile(_ what: String, node: TestNode, task: [String: JSONValue], marker: String,
                     started: (Operator) throws -> Bool) throws {
        let op = try Operator(node: node)
        try op.submit(task)
        let id = Tasks.id(task)
        let deadline = Date().addingTimeInterval(30)
        while try !started(op) {
            if Date() > deadline { throw HarnessError("\(what) did not start within 30 s; log:\n\(node.log)") }
            _ = try? op.waitFor("anything", timeout: 0.2) { _ in false }
        }
        Thread.sleep(forTimeInterval: 0.5)  // well inside the step
        let sent = Date()
        try op.cancel(id)
        try op.waitForFinal([id], timeout: 10)
        let final = try #require(op.finalState(of: id))
        #expect(final.state == .cancelled, "\(final.detail)")
        #expect(final.time.timeIntervalSince(sent) < 2.0, "ended \(final.time.timeIntervalSince(sent)) s after the cancel")
        #expect(!op.events(of: id).contains { $0.kind == .state && $0.state == .running }, "never running")
        #expect(final.detail.message?.contains("the tool was not started") == true, "\(final.detail)")
        Thread.sleep(forTimeInterval: 1)
        #expect(!FileManager.default.fileExists(atPath: marker), "the tool never ran")
    }

    @Test func aCancelDuringASlowDownloadStopsItAndTheToolNeverStarts() throws {
        let slow = try SlowPeer("serve", 50_000_000, rate: 10_000)  // 100 KB/s: 500 s
        let node = try TestNode("fault-dl", extra: """
            \(TestNode.hostProcesses)
            [stage_in]
            file_allowed_urls = ["http://127.0.0.1:\(slow.port)/"]
            require_sha256 = false
            """)
        try node.start()
        let marker = try taskWritableMarker()
        let t = markerTask(source: ["files": [["url": .string("http://127.0.0.1:\(slow.port)/big.bin"),
                                                 "path": "big.bin"]]], marker: marker)
        try cancelWhile("the download", node: node, task: t, marker: marker) { _ in slow.connections > 0 }
        try eventually("the node to hang up on the slow server", timeout: 5) {
            ((try? String(contentsOfFile: "\(slow.dir)/connections", encoding: .utf8)) ?? "").contains("closed by the client")
        }
        node.stop()
    }

    @Test func aCancelDuringASlowGitCloneStopsItAndTheToolNeverStarts() throws {
        let web = try TestEnv.webDir()
        // A repository with 2 MB that does not compress, behind a proxy to git daemon at 20 KB/s.
        let name = "slowclone-\(UUID().uuidString.prefix(6).lowercased())"
        let work = try TestEnv.scratch("repo-\(name)")
        let gitArgs = ["/usr/bin/git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]
        #expect(try Shell.run(gitArgs + ["init", "-q"], cwd: work).status == 0)
        let random = try Shell.run(["/bin/sh", "-c", "head -c 2000000 /dev/urandom > big.bin"], cwd: work)
        #expect(random.status == 0)
        #expect(try Shell.run(gitArgs + ["add", "-A"], cwd: work).status == 0)
        #expect(try Shell.run(gitArgs + ["commit", "-qm", "big"], cwd: work).status == 0)
        #expect(try Shell.run(gitArgs + ["clone", "-q", "--bare", work, "\(web)/repos/\(name).git"], cwd: work).status == 0)
        let slow = try SlowPeer("proxy", 19418, rate: 2000)
        let node = try TestNode("fault-git", extra: """
            \(TestNode.hostProcesses)
            [stage_in]
            git_allowed_urls = ["git://127.0.0.1:\(slow.port)/"]
            """)
        try node.start()
        let marker = try taskWritableMarker()
        let t = markerTask(source: ["git": ["url": .string("git://127.0.0.1:\(slow.port)/\(name).git"), "ref": "main"]],
                           marker: marker)
        try cancelWhile("the clone", node: node, task: t, marker: marker) { _ in slow.connections > 0 }
        try eventually("the clone's connection to end", timeout: 5) {
            ((try? String(contentsOfFile: "\(slow.dir)/connections", encoding: .utf8)) ?? "").contains("closed")
        }
        node.stop()
    }

    @Test func aCancelDuringAnImagePullStopsItAndTheToolNeverStarts() throws {
        let up = (try? DockerEngine().ping()) ?? false
        try #require(up, "dockerd is not answering on /var/run/docker.sock: run the tests with `bash test.sh`")
        // A registry that never answers: dockerd's pull waits; the node's side must still stop at once.
        let slow = try SlowPeer("proxy", 5000, rate: 0)
        let node = try TestNode("fault-pull", extra: """
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            allowed_images = ["127.0.0.1:\(slow.port)/fem/*"]
            """)
        try node.start()
        let image = "127.0.0.1:\(slow.port)/fem/busybox:1.36"
        let t: [String: JSONValue] = [
            "schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-faults",
            "plan": ["schema_version": 1, "id": "pull-cancel", "version": "1", "launcher": "docker",
                     "image": .string(image), "command": ["base": ["/bin/sh", "-c", "echo ran"]]]]
        let marker = try TestEnv.scratch("marker") + "/never"  // a container cannot write here; the event says it
        try cancelWhile("the pull", node: node, task: t, marker: marker) { op in
            op.events(of: Tasks.id(t)).contains { $0.kind == .progress && ($0.detail.message ?? "").hasPrefix("pulling") }
        }
        node.stop()
    }

    /// A message rejected for a missing field does not use up its task id: the corrected task with the same id runs.
    @Test func aRejectedMessageLeavesItsTaskIDFreeForAValidTask() throws {
        let node = try TestNode("fault-reject", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        var t = Tasks.task(["/bin/sh", "-c", "echo second-try"])
        let id = Tasks.id(t)
        var bad = t
        bad["execution_id"] = nil
        try op.submit(bad)
        try op.waitFor("the rejection") { $0.contains { $0.taskID == id && $0.state == .rejected } }
        t["execution_id"] = "exec-corrected"
        try op.submit(t)
        try op.waitFor("the corrected task to end") { events in
            events.contains { $0.taskID == id && $0.kind == .state && ($0.state == .completed || $0.state == .failed) }
        }
        let events = op.events(of: id)
        #expect(events.last?.state == .completed, "\(events.map { "\($0.kind) \($0.state) \($0.detail.message ?? "")" })")
        #expect(!events.contains { $0.kind == .duplicate }, "not answered as a duplicate")
        let seqs = events.map(\.seq)
        #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count, "one sequence for the id: \(seqs)")
        node.stop()
    }

    /// SIGTERM: the node takes no new task, lets the running one finish within drain_seconds (its completed
    /// event arrives), then stops by itself.
    @Test func sigtermDrainsRunningTasksAndTakesNoNewOnes() throws {
        let node = try TestNode("fault-drain", extra: TestNode.hostProcesses)
        try node.editConfig { $0.replacingOccurrences(of: "drain_seconds = 0", with: "drain_seconds = 20") }
        try node.start()
        let op = try Operator(node: node)
        let running = Tasks.task(["/bin/sh", "-c", "sleep 3; echo done"])
        try op.submit(running)
        try op.waitFor("the task to run") { $0.contains { $0.taskID == Tasks.id(running) && $0.state == .running } }
        guard let pid = node.pid else { throw HarnessError("no daemon") }
        Glibc.kill(pid, SIGTERM)
        try eventually("the node to say it drains", timeout: 5) { node.log.contains("no longer taking tasks") }
        let late = Tasks.task(["/bin/echo", "late"])
        try op.submit(late)
        try op.waitForFinal([Tasks.id(running)], timeout: 15)
        #expect(op.finalState(of: Tasks.id(running))?.state == .completed)
        let exited = Date().addingTimeInterval(15)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) != pid {
            if Date() > exited { throw HarnessError("the daemon did not stop after draining; log:\n\(node.log)") }
            Thread.sleep(forTimeInterval: 0.1)
        }
        node.pid = nil
        #expect(node.log.contains("drained: no task is running"))
        _ = try? op.waitFor("more events", timeout: 1) { _ in false }
        #expect(op.events(of: Tasks.id(late)).isEmpty, "the late task was not taken: \(op.events(of: Tasks.id(late)))")
        #expect(op.notices.contains { $0.reason == "draining" })
        // It waits in the queue for the next start.
        try node.start()
        try op.waitForFinal([Tasks.id(late)])
        #expect(op.finalState(of: Tasks.id(late))?.state == .completed)
        node.stop()
    }

    /// A second SIGTERM during a drain stops the daemon at once, well before drain_seconds; the task it left
    /// running is followed again by the next start and its end is reported.
    @Test func aSecondSigtermStopsAtOnceAndTheNextStartFollowsTheTask() throws {
        let node = try TestNode("fault-drain2", extra: TestNode.hostProcesses)
        try node.editConfig { $0.replacingOccurrences(of: "drain_seconds = 0", with: "drain_seconds = 120") }
        try node.start()
        let op = try Operator(node: node)
        let running = Tasks.task(["/bin/sh", "-c", "sleep 6; echo done"])
        try op.submit(running)
        try op.waitFor("the task to run") { $0.contains { $0.taskID == Tasks.id(running) && $0.state == .running } }
        guard let pid = node.pid else { throw HarnessError("no daemon") }
        Glibc.kill(pid, SIGTERM)
        try eventually("the node to say it drains", timeout: 5) { node.log.contains("no longer taking tasks") }
        Glibc.kill(pid, SIGTERM)
        let exited = Date().addingTimeInterval(15)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) != pid {
            if Date() > exited { throw HarnessError("the daemon did not stop on a second SIGTERM; log:\n\(node.log)") }
            Thread.sleep(forTimeInterval: 0.1)
        }
        node.pid = nil
        #expect(node.log.contains("again: stopping now"), "\(node.log)")
        #expect(!node.log.contains("drained: no task is running"), "the second signal waited for the drain")
        #expect(op.events(of: Tasks.id(running)).allSatisfy { !$0.state.isTerminal },
                "the task ended with the daemon: \(op.events(of: Tasks.id(running)))")
        try node.start()
        try op.waitForFinal([Tasks.id(running)], timeout: 30)
        #expect(op.finalState(of: Tasks.id(running)) != nil)
        node.stop()
    }

    /// A full disk (work dir, journal and log on one small filesystem): the node flags pressure, returns new
    /// deliveries to the broker instead of holding them, keeps the outcome of a task that ended meanwhile until the
    /// journal takes it, and resumes by itself when space returns, without a restart. Every task ends with a true
    /// terminal event.
    @Test func aFullDiskIsAStateTheNodeLeavesByItselfWhenSpaceReturns() throws {
        let node = try TestNode("fault-disk", extra: TestNode.hostProcesses)
        let config = try String(contentsOfFile: node.configPath, encoding: .utf8)
            .replacingOccurrences(of: "drain_seconds = 0", with: "drain_seconds = 0\nmin_free_mb = 6")
        let mount = try Shell.run(["/bin/mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", node.dir])
        try #require(mount.status == 0, "mount a 20 MB tmpfs on \(node.dir): \(mount.output)")
        defer {
            node.kill(SIGKILL)
            _ = try? Shell.run(["/bin/umount", "-l", node.dir])
        }
        try config.write(toFile: node.configPath, atomically: true, encoding: .utf8)
        try node.start()
        let pid = node.pid
        let op = try Operator(node: node)

        let before = Tasks.task(["/bin/echo", "before"])
        try op.submit(before)
        try op.waitForFinal([Tasks.id(before)])
        #expect(op.finalState(of: Tasks.id(before))?.state == .completed)

        // A task that ends while the disk is full.
        let during = Tasks.task(["/bin/sh", "-c", "sleep 4; echo during"])
        try op.submit(during)
        try op.waitFor("the task to run") { $0.contains { $0.taskID == Tasks.id(during) && $0.state == .running } }
        // `running` is journaled as the launcher starts the work; its handle a moment later. Fill the disk only once
        // the handle is journaled: a handle that cannot be recorded stops the work (another test's subject).
        let journal = try SQLiteJournal(path: "\(node.dir)/var/journal.sqlite", nodeID: node.id)
        try eventually("the task's handle to be journaled") { ((try? journal.task(Tasks.id(during)))??.handle) != nil }

        // Fill the filesystem to the last byte.
        // (then the slack of the log's last page, so that the next log line fails too)
        _ = try Shell.run(["/bin/sh", "-c", "dd if=/dev/zero of=\(node.dir)/fill bs=1M 2>/dev/null; "
                           + "yes '' | head -c 65536 >> \(node.dir)/receiver.log 2>/dev/null; sync"])
        try op.waitFor("a disk_pressure notice", timeout: 10) { _ in op.notices.contains { $0.reason == "disk_pressure" } }
        try op.waitFor("a heartbeat with pressure", timeout: 10) { _ in op.heartbeats.contains { $0.pressure != nil } }
        #expect(op.heartbeats.last { $0.pressure != nil }?.pressure?.hasPrefix("disk:") == true)

        // A new task is returned to the broker, not held: another consumer of the node's queue gets it.
        let refused = Tasks.task(["/bin/echo", "after"])
        try op.submit(refused)
        func returnedToTheBroker() throws -> Bool {
            // A consumer of our own for a moment (with the node's account: only it may read the node's queue); its
            // connection closes when this returns.
            let other = try BrokerAccounts.connect(as: node.id, brokerDir: node.brokerDir, port: node.port, cert: "node")
            try other.openChannel(1)
            try other.setPrefetch(1)
            try other.consume(queue: WireNames.taskQueue(node: node.id))
            let deadline = Date().addingTimeInterval(15)
            while Date() < deadline {
                guard let d = try other.nextDelivery(timeoutMilliseconds: 200) else { continue }
                let id = (try? JSONValue.parse(Data(d.body)))?["task_id"]?.stringValue
                try other.nack(deliveryTag: d.deliveryTag, requeue: true, channel: d.channel)
                if id == Tasks.id(refused) { return true }
            }
            return false
        }
        let seenByOther = try returnedToTheBroker()
        #expect(seenByOther, "the delivery went back to the broker while the node was under pressure")
        _ = try? op.waitFor("more events", timeout: 2) { _ in false }
        #expect(op.events(of: Tasks.id(refused)).isEmpty, "not taken under pressure")
        #expect(op.finalState(of: Tasks.id(during)) == nil, "its end could not be journaled yet")

        // Space returns: no restart, and everything ends with its true terminal event.
        try FileManager.default.removeItem(atPath: "\(node.dir)/fill")
        try op.waitForFinal([Tasks.id(during), Tasks.id(refused)], timeout: 60)
        // Its echo failed on the full disk: it failed, and says the disk was full.
        let duringEnd = try #require(op.finalState(of: Tasks.id(during)))
        #expect(duringEnd.state == .failed && duringEnd.detail.failureClass == .nodeDiskFull, "\(duringEnd.detail)")
        #expect(duringEnd.detail.message?.contains("while the node's disk was full") == true, "\(duringEnd.detail)")
        #expect(op.finalState(of: Tasks.id(refused))?.state == .completed)
        try op.waitFor("the pressure to end", timeout: 10) { _ in op.notices.contains { $0.reason == "disk_pressure_ended" } }
        #expect(node.pid == pid && node.pid.map { Glibc.kill($0, 0) == 0 } == true, "the same daemon, still running")
        #expect(node.log.contains("line(s) were dropped while they failed"), "the log says what it dropped")
        #expect(op.notices.contains { $0.reason == "log_dropping" })
        try op.waitFor("the log to recover", timeout: 10) { _ in op.notices.contains { $0.reason == "log_recovered" } }
        let ran = op.events(of: Tasks.id(during)).filter { $0.kind == .state && $0.state == .running }
        #expect(ran.count == 1, "nothing ran twice")
    }

    /// dockerd away when a docker task arrives (its socket missing): the task waits with a notice, and runs once
    /// dockerd is back (here: its socket appears, forwarded to the real one), instead of failing at once.
    @Test func aDockerTaskWaitsForDockerdToComeBack() throws {
        let up = (try? DockerEngine().ping()) ?? false
        try #require(up, "dockerd is not answering on /var/run/docker.sock: run the tests with `bash test.sh`")
        let dir = try TestEnv.scratch("dockerd-away")
        let socket = "\(dir)/docker.sock"
        let node = try TestNode("fault-dockerd", extra: """
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            socket = "\(socket)"
            allowed_images = ["fem-test/*"]
            wait_for_daemon_seconds = 30
            """)
        try node.start()
        let op = try Operator(node: node)
        let t: [String: JSONValue] = [
            "schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-faults",
            "plan": ["schema_version": 1, "id": "dockerd-back", "version": "1", "launcher": "docker",
                     "image": "fem-test/busybox:2", "pull_policy": "if-not-present",
                     "command": ["base": ["/bin/sh", "-c", "echo ran"]]]]
        try op.submit(t)
        try op.waitFor("the notice that it waits for dockerd") { events in
            events.contains { $0.taskID == Tasks.id(t) && $0.kind == .notice
                && $0.detail.message?.contains("waiting up to 30 s for it to come back") == true }
        }
        // dockerd comes back.
        let forward = try ChildProcess.spawn(executable: "/usr/bin/socat",
                                             arguments: ["UNIX-LISTEN:\(socket),fork", "UNIX-CONNECT:/var/run/docker.sock"],
                                             environment: ["PATH": "/usr/bin:/bin"], workingDirectory: dir,
                                             stdoutPath: "\(dir)/socat.log", stderrPath: "\(dir)/socat.log")
        defer {
            Glibc.kill(forward.pid, SIGTERM)
            _ = ChildProcess.waitBlocking(pid: forward.pid)
        }
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed, "\(final.detail)")
        #expect(op.events(of: Tasks.id(t)).contains { $0.detail.message?.contains("dockerd answers again") == true })
        node.stop()
    }

    /// After a SIGKILL of the daemon, restart reasons tell the truth: a process that ended while the daemon was down
    /// is said to have ended (not to have been stopped), one still running is stopped at restart.
    @Test func afterASIGKILLRestartReasonsTellTheTruth() throws {
        let node = try TestNode("fault-kill", extra: TestNode.hostProcesses)
        try node.start()
        let op = try Operator(node: node)
        let marker = "short-\(UUID().uuidString.prefix(8))"
        let short = Tasks.task(["/bin/sh", "-c", "sleep 1; : \(marker)"])
        let long = Tasks.task(["/bin/sh", "-c", "sleep 60"])
        try op.submit(short)
        try op.submit(long)
        try op.waitFor("both to run") { events in
            [short, long].allSatisfy { t in events.contains { $0.taskID == Tasks.id(t) && $0.state == .running } }
        }
        // Its shell is visible as itself once exec'd (the spawn reports `running` a moment before).
        try eventually("the short task's shell to show its command line", timeout: 10) {
            !processes(withMarker: marker).isEmpty
        }
        node.kill(SIGKILL)
        // The short one ends while the daemon is down.
        try eventually("the short task's process to end", timeout: 10) {
            processes(withMarker: marker).isEmpty
        }
        Thread.sleep(forTimeInterval: 0.5)
        try node.start()
        try op.waitForFinal([Tasks.id(short), Tasks.id(long)], timeout: 30)
        let s = try #require(op.finalState(of: Tasks.id(short)))
        let l = try #require(op.finalState(of: Tasks.id(long)))
        #expect(s.state == .failed && s.detail.failureClass == .nodeRestart)
        #expect(s.detail.message?.contains("ended while the daemon was down") == true, "\(s.detail)")
        #expect(l.state == .failed && l.detail.failureClass == .nodeRestart)
        #expect(l.detail.message?.contains("stopped at restart") == true, "\(l.detail)")
        node.stop()
    }
}
