import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Operations against real daemons: systemd's notify protocol, the log's reopen and rotation, `fem-client status`,
/// and config reload on SIGHUP.
@Suite(.serialized)
struct OperationsTests {
    // MARK: systemd

    @Test func theUnitPassesSystemdAnalyzeVerify() throws {
        let dir = try TestEnv.scratch("unit")
        let config = "\(dir)/fem-client.toml"
        try "[node]\ndrain_seconds = 100\nstop_grace = 5\n".write(toFile: config, atomically: true, encoding: .utf8)
        let rendered = try Shell.run(["/bin/bash", "\(TestEnv.repoRoot)/scripts/service-unit.sh",
                                      "--bin", try TestEnv.binary("fem-client"), "--config", config, "--dir", dir])
        #expect(rendered.status == 0, "\(rendered.output)")
        let unit = "\(dir)/fem-client.service"
        try rendered.output.write(toFile: unit, atomically: true, encoding: .utf8)
        // The stop timeout follows the drain: 100 + 5 + 20.
        #expect(rendered.output.contains("\nTimeoutStopSec=125\n"))
        #expect(rendered.output.contains("\nType=notify\n"))
        #expect(rendered.output.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"))
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            Issue.record("systemd-analyze is missing: apt-get install systemd")
            return
        }
        let verify = try Shell.run(["/usr/bin/systemd-analyze", "verify", unit])
        #expect(verify.status == 0, "systemd-analyze verify: \(verify.output)")
        #expect(!verify.output.contains("Unknown key"), "\(verify.output)")
        // The unit as shipped (a package's paths), with only the binary put where verify can find it.
        let shipped = try String(contentsOfFile: "\(TestEnv.repoRoot)/config/fem-client.service", encoding: .utf8)
        try FileManager.default.createDirectory(atPath: "\(dir)/shipped", withIntermediateDirectories: true)
        try shipped.replacingOccurrences(of: "ExecStart=/usr/local/bin/fem-client",
                                         with: "ExecStart=\(try TestEnv.binary("fem-client"))")
            .write(toFile: "\(dir)/shipped/fem-client.service", atomically: true, encoding: .utf8)
        let verifyShipped = try Shell.run(["/usr/bin/systemd-analyze", "verify", "\(dir)/shipped/fem-client.service"])
        #expect(verifyShipped.status == 0, "systemd-analyze verify (shipped): \(verifyShipped.output)")
    }

    @Test func readyOnlyAfterTheBrokerThenStoppingAndWatchdogPings() throws {
        let listener = try NotifyListener()
        defer { listener.close() }
        let environment = ["NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"]

        // 1. A broker that does not answer: watchdog pings arrive, READY=1 never does.
        let lost = try TestNode("notify-nobroker", extra: TestNode.hostProcesses)
        try lost.editConfig { $0.replacingOccurrences(of: "@localhost:\(lost.port)/", with: "@localhost:1/") }
        let spawned = try ChildProcess.spawn(executable: try TestEnv.binary("fem-client"),
                                             arguments: ["daemon", "--config", lost.configPath],
                                             environment: ["PATH": "/usr/bin:/bin"].merging(environment) { $1 },
                                             workingDirectory: lost.dir, stdoutPath: "\(lost.dir)/daemon.out",
                                             stderrPath: "\(lost.dir)/daemon.out")
        lost.pid = spawned.pid
        // Every 200 ms (WATCHDOG_USEC/2): ten pings are two seconds without a broker.
        try listener.wait("10 watchdog pings", timeout: 20) { $0.filter { $0.text == "WATCHDOG=1" }.count >= 10 }
        #expect(!listener.messages.contains { $0.text.contains("READY=1") },
                "READY=1 without a broker connection: \(listener.messages.map(\.text))")
        lost.kill(SIGKILL)
        listener.reset()

        // 2. With the broker: READY=1 once connected (the log says so before), STOPPING=1 on SIGTERM.
        let node = try TestNode("notify", extra: TestNode.hostProcesses)
        listener.logPath = "\(node.dir)/receiver.log"
        try node.start(environment: environment)
        try listener.wait("READY=1", timeout: 30) { $0.contains { $0.text.hasPrefix("READY=1") } }
        let ready = try #require(listener.messages.first { $0.text.hasPrefix("READY=1") })
        #expect(ready.logSaidConnected, "READY=1 came before the daemon had connected to the broker")
        // Ready means it takes tasks.
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/true"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        #expect(op.finalState(of: Tasks.id(t))?.state == .completed)
        try listener.wait("watchdog pings while running", timeout: 10) {
            $0.filter { $0.text == "WATCHDOG=1" }.count >= 3
        }
        if let pid = node.pid { Glibc.kill(pid, SIGTERM) }
        try listener.wait("STOPPING=1", timeout: 30) { $0.contains { $0.text.hasPrefix("STOPPING=1") } }
        node.kill(SIGTERM)  // waits for the exit
        let texts = listener.messages.map(\.text)
        let readyAt = try #require(texts.firstIndex { $0.hasPrefix("READY=1") })
        let stoppingAt = try #require(texts.firstIndex { $0.hasPrefix("STOPPING=1") })
        #expect(readyAt < stoppingAt)
        #expect(node.log.contains("stopping: no longer taking tasks"))
    }

    // MARK: logs

    @Test func aLogMovedAwayAndHUPGoesOnInTheNewFileWithNoLineLost() throws {
        let node = try TestNode("logrotate", extra: TestNode.hostProcesses, maxConcurrent: 4)
        try node.start()
        let op = try Operator(node: node)
        let log = "\(node.dir)/receiver.log"
        let tasks = (0..<24).map { _ in Tasks.task(["/bin/sh", "-c", "echo x"]) }
        for t in tasks.prefix(12) { try op.submit(t) }
        // Moved (as logrotate does) while tasks run and log; the daemon still writes to the moved file until HUP.
        try op.waitFor("some tasks to end") { evs in evs.filter { $0.kind == .state && $0.state == .completed }.count >= 3 }
        #expect(rename(log, "\(log).1") == 0)
        for t in tasks.suffix(12) { try op.submit(t) }
        if let pid = node.pid { Glibc.kill(pid, SIGHUP) }
        try eventually("the daemon to reopen its log") {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("SIGHUP: log reopened")
        }
        try op.waitForFinal(tasks.map(Tasks.id), timeout: 60)
        node.stop()
        let old = try String(contentsOfFile: "\(log).1", encoding: .utf8)
        let new = try String(contentsOfFile: log, encoding: .utf8)
        #expect(!old.contains("SIGHUP: log reopened"), "the reopen line belongs to the new file")
        #expect(new.contains("stopped"), "lines after the reopen go to the new file")
        // Every task's end is logged exactly once, in one file or the other.
        for t in tasks {
            let line = "task=\(Tasks.id(t)) completed"
            let count = old.components(separatedBy: line).count - 1 + new.components(separatedBy: line).count - 1
            #expect(count == 1, "\(line): \(count) times across receiver.log.1 and receiver.log")
        }
        // No partial line at the cut: every line of both files is whole.
        for text in [old, new] {
            #expect(text.hasSuffix("\n"))
            for line in text.split(separator: "\n") { #expect(line.hasPrefix("20"), "a broken line: \(line)") }
        }
    }

    @Test func sizeRotationKeepsLogKeepFiles() throws {
        let node = try TestNode("logsize", extra: TestNode.hostProcesses)
        try node.editConfig {
            $0.replacingOccurrences(of: "drain_seconds = 0", with: "drain_seconds = 0\nlog_max_mb = 1\nlog_keep = 2")
        }
        let log = "\(node.dir)/receiver.log"
        // A log already at its limit, and two older ones: the daemon's first line rotates; the oldest goes.
        let filler = String(repeating: "2026-01-01T00:00:00.000Z INFO  filler line of an older run\n", count: 20_000)
        try filler.write(toFile: log, atomically: false, encoding: .utf8)
        try "older one\n".write(toFile: "\(log).1", atomically: false, encoding: .utf8)
        try "oldest\n".write(toFile: "\(log).2", atomically: false, encoding: .utf8)
        try node.start()
        node.stop()
        #expect(try String(contentsOfFile: "\(log).1", encoding: .utf8) == filler)
        #expect(try String(contentsOfFile: "\(log).2", encoding: .utf8) == "older one\n")
        #expect(!FileManager.default.fileExists(atPath: "\(log).3"), "log_keep = 2 keeps two rotated files")
        let fresh = try String(contentsOfFile: log, encoding: .utf8)
        #expect(fresh.contains("starting: node \(node.id)") && !fresh.contains("filler"))
    }

    @Test func jsonLogLinesParse() throws {
        let node = try TestNode("logjson", extra: TestNode.hostProcesses)
        try node.editConfig { $0.replacingOccurrences(of: "drain_seconds = 0", with: "drain_seconds = 0\nlog_format = \"json\"") }
        // start() waits for "connected to the broker", which is in the JSON message too.
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/sh", "-c", "echo hi"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        node.stop()
        let lines = node.log.split(separator: "\n")
        #expect(lines.count > 5)
        var sawTask = false
        for line in lines {
            let value = try JSONValue.parse(Data(line.utf8))
            guard case .object(let o) = value else {
                Issue.record("not a JSON object: \(line)")
                continue
            }
            #expect(o["time"]?.stringValue.flatMap(FEMTime.parse) != nil, "\(line)")
            #expect(o["level"]?.stringValue != nil && o["message"]?.stringValue != nil, "\(line)")
            if o["task"] == .string(Tasks.id(t)), o["message"]?.stringValue?.hasPrefix("completed") == true { sawTask = true }
        }
        #expect(sawTask, "a line with task=\(Tasks.id(t)) and message \"completed\"")
    }

    // MARK: status

    @Test func statusShowsTheRunningDaemonAndSaysWhenItIsNot() throws {
        let node = try TestNode("status", extra: TestNode.hostProcesses)
        let never = try node.run(["status"])
        #expect(never.status == 3)
        #expect(never.output.contains("fem-client is not running: no status file"), "\(never.output)")
        try node.start()
        let op = try Operator(node: node)
        let t = Tasks.task(["/bin/true"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        // A heartbeat after the task (every 2 s) carries the counts.
        try eventually("a status written after a heartbeat", timeout: 15) {
            ((try? node.run(["status", "--json"]).output) ?? "").contains("\"last_heartbeat\"")
        }
        let screen = try node.run(["status"])
        #expect(screen.status == 0, "\(screen.output)")
        #expect(screen.output.contains("fem-client is running: pid \(node.pid ?? 0), node \(node.id)"), "\(screen.output)")
        #expect(screen.output.contains("broker      connected since"), "\(screen.output)")
        #expect(screen.output.contains("0 running, 0 queued, 0 awaiting approval"), "\(screen.output)")
        #expect(screen.output.contains("fem-client \(FEMVersion.string)") && screen.output.contains("protocol \(WireNames.protocolVersion)"))
        let json = try node.run(["status", "--json"])
        #expect(json.status == 0)
        let o = try JSONValue.parse(Data(json.output.utf8))
        #expect(o["running"] == .bool(true) && o["broker_connected"] == .bool(true))
        #expect(o["node_id"] == .string(node.id))
        #expect(o["free_disk_bytes"]?.intValue.map { $0 > 0 } == true)
        node.stop()
        let gone = try node.run(["status"])
        #expect(gone.status == 3)
        #expect(gone.output.contains("fem-client is NOT running"), "\(gone.output)")
        let goneJSON = try JSONValue.parse(Data(try node.run(["status", "--json"]).output.utf8))
        #expect(goneJSON["running"] == .bool(false))
    }

    // MARK: config reload

    @Test func hupReloadsAnAllowlistAndRefusesABrokenEdit() throws {
        let node = try TestNode("reload", extra: """
            [launchers]
            enabled = ["process"]
            [launchers.process]
            allowed_executables = ["/bin/sh"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let first = Tasks.task(["/bin/echo", "hi"])
        try op.submit(first)
        try op.waitForFinal([Tasks.id(first)])
        let declined = try #require(op.finalState(of: Tasks.id(first)))
        #expect(declined.state == .declined)
        #expect(declined.detail.message?.contains("launchers.process.allowed_executables") == true)

        // The admin allows /bin/echo and slows the heartbeat (which needs a restart): `check` sees the file is newer.
        try node.editConfig {
            $0.replacingOccurrences(of: #"allowed_executables = ["/bin/sh"]"#, with: #"allowed_executables = ["/bin/sh", "/bin/echo"]"#)
                .replacingOccurrences(of: "heartbeat_interval = 2", with: "heartbeat_interval = 3")
                + "\n[node.capacity]\ncpus = 1\n"
        }
        let check = try node.run(["check"])
        #expect(check.output.contains("warn  the configuration file"), "\(check.output)")
        #expect(check.output.contains("after the running daemon (pid \(node.pid ?? 0)) loaded it"), "\(check.output)")
        guard let pid = node.pid else { throw HarnessError("the daemon is not running") }
        Glibc.kill(pid, SIGHUP)
        try eventually("the reload's log line") { node.log.contains("launchers.process changed") }
        #expect(node.log.contains("config reload: node.heartbeat_interval changed; restart to apply"), "\(node.log)")
        #expect(node.log.contains("config reload: node.capacity changed; restart to apply"), "\(node.log)")
        let second = Tasks.task(["/bin/echo", "hi"])
        try op.submit(second)
        try op.waitForFinal([Tasks.id(second)])
        #expect(op.finalState(of: Tasks.id(second))?.state == .completed)
        let checkAgain = try node.run(["check"])
        #expect(!checkAgain.output.contains("warn  the configuration file"), "\(checkAgain.output)")

        // A broken edit is refused with the reason, and the running config (with /bin/echo) still works.
        try node.editConfig { $0.replacingOccurrences(of: "max_concurrent_tasks = 2", with: "max_concurrent_tasks = 0") }
        Glibc.kill(pid, SIGHUP)
        try eventually("the refusal") { node.log.contains("config reload refused") }
        #expect(node.log.contains("node.max_concurrent_tasks: 0 is out of range"), "\(node.log)")
        #expect(node.log.contains("the running configuration is kept"))
        let third = Tasks.task(["/bin/echo", "still"])
        try op.submit(third)
        try op.waitForFinal([Tasks.id(third)])
        #expect(op.finalState(of: Tasks.id(third))?.state == .completed)

        // Taking it away again applies too: /bin/echo is declined once more.
        try node.editConfig {
            $0.replacingOccurrences(of: "max_concurrent_tasks = 0", with: "max_concurrent_tasks = 2")
                .replacingOccurrences(of: #"["/bin/sh", "/bin/echo"]"#, with: #"["/bin/sh"]"#)
        }
        let reloadsBefore = node.log.components(separatedBy: "launchers.process changed").count
        Glibc.kill(pid, SIGHUP)
        try eventually("the second reload") { node.log.components(separatedBy: "launchers.process changed").count > reloadsBefore }
        let fourth = Tasks.task(["/bin/echo", "no"])
        try op.submit(fourth)
        try op.waitForFinal([Tasks.id(fourth)])
        #expect(op.finalState(of: Tasks.id(fourth))?.state == .declined)
        node.stop()
    }

    @Test func hupReloadsTheTaskFileAllowlist() throws {
        let web = try TestEnv.webDir()
        let dir = "reload-\(UUID().uuidString.prefix(6))"
        let file = "\(web)/files/\(dir)/a.txt"
        try FileManager.default.createDirectory(atPath: "\(web)/files/\(dir)", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        try "alpha\n".write(toFile: file, atomically: true, encoding: .utf8)
        chmod(file, 0o644)
        defer { try? FileManager.default.removeItem(atPath: "\(web)/files/\(dir)") }
        var h = SHA256()
        h.update(Array("alpha\n".utf8))
        let sha = h.finalizeHex()
        let node = try TestNode("reload-files", extra: """
            \(TestNode.hostProcesses)
            [stage_in]
            file_allowed_urls = ["https://localhost:18443/files/"]
            ca_file = "\(web)/ca.pem"
            [credentials.files-login]
            username = "fem-files"
            password_file = "\(web)/password-fem-files"
            urls = ["http://127.0.0.1:18080/files/", "https://localhost:18443/files/"]
            """)
        try node.start()
        let op = try Operator(node: node)
        func task() -> [String: JSONValue] {
            var t = Tasks.task(["/bin/sh", "-c", "cat \"$FEM_SRC_DIR\"/a.txt"])
            if case .object(var plan)? = t["plan"] {
                plan["source"] = .object(["files": .array([.object([
                    "url": .string("http://127.0.0.1:18080/files/\(dir)/a.txt"), "path": "a.txt",
                    "sha256": .string(sha), "credentials": "files-login"])])])
                t["plan"] = .object(plan)
            }
            return t
        }
        let before = task()
        try op.submit(before)
        try op.waitForFinal([Tasks.id(before)])
        let declined = try #require(op.finalState(of: Tasks.id(before)))
        #expect(declined.state == .declined)
        #expect(declined.detail.message?.contains("is not allowed on this node") == true, "\(declined.detail)")

        try node.editConfig {
            $0.replacingOccurrences(of: #"file_allowed_urls = ["https://localhost:18443/files/"]"#,
                                    with: #"file_allowed_urls = ["https://localhost:18443/files/", "http://127.0.0.1:18080/files/"]"#)
        }
        guard let pid = node.pid else { throw HarnessError("the daemon is not running") }
        Glibc.kill(pid, SIGHUP)
        try eventually("the reload's log line") { node.log.contains("stage_in.file_allowed_urls") }
        let after = task()
        try op.submit(after)
        try op.waitForFinal([Tasks.id(after)])
        #expect(op.finalState(of: Tasks.id(after))?.state == .completed, "\(op.events(of: Tasks.id(after)).map(\.detail))")
        let stdout = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(after))/logs/stdout.log", encoding: .utf8)
        #expect(stdout == "alpha\n")
        node.stop()
    }
}

/// The systemd side of `NOTIFY_SOCKET`: an abstract unix datagram socket read by a thread, which notes for each
/// message whether the daemon's log already said it had connected to the broker.
final class NotifyListener: @unchecked Sendable {
    struct Message { let text: String; let logSaidConnected: Bool }
    let address: String
    private let fd: Int32
    private let lock = NSLock()
    private var received: [Message] = []
    private var _logPath: String?
    private var closed = false
    private var thread: Thread?

    var logPath: String? {
        get { lock.withLock { _logPath } }
        set { lock.withLock { _logPath = newValue } }
    }
    var messages: [Message] { lock.withLock { received } }
    func reset() { lock.withLock { received = [] } }

    init() throws {
        let name = "fem-test-notify-\(UUID().uuidString.prefix(8))"
        address = "@\(name)"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = [UInt8(0)] + Array(name.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw HarnessError("bind \(address): errno \(errno)") }
        let t = Thread { [self] in loop() }
        thread = t
        t.start()
    }

    private func loop() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !lock.withLock({ closed }) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { continue }
            let text = String(decoding: buffer.prefix(n), as: UTF8.self)
            let log = logPath.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
            lock.withLock { received.append(Message(text: text, logSaidConnected: log.contains("connected to the broker"))) }
        }
    }

    func wait(_ what: String, timeout: Double, _ done: ([Message]) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !done(messages) {
            if Date() > deadline {
                throw HarnessError("timed out after \(Int(timeout)) s waiting for \(what); got: \(messages.map(\.text))")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    func close() {
        lock.withLock { closed = true }
        Thread.sleep(forTimeInterval: 0.15)
        Glibc.close(fd)
    }
}
