import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The sandbox of host processes (launcher `process`) with a real daemon and a real broker: the task user, the
/// cgroup per task (limits, OOM, usage, killing everything), the network namespace, and what the task can reach.
@Suite(.serialized)
struct HostSandboxTests {
    static let processConfig = """
        [launchers]
        enabled = ["process"]
        [launchers.process]
        allowed_executables = ["/bin/sh", "/usr/bin/python3"]
        """

    func node(_ name: String, extra: String = "") throws -> TestNode {
        try TestNode(name, extra: Self.processConfig + "\n" + extra)
    }

    /// A task running `script` with /bin/sh, with `plan` fields added (resources, network, timeout).
    func task(_ script: String, args: [String] = [], plan extra: [String: JSONValue] = [:], timeout: Int? = nil)
        -> [String: JSONValue] {
        var t = Tasks.task(["/bin/sh", "-c", script, "sh"] + args, timeout: timeout)
        if case .object(var plan)? = t["plan"] {
            for (k, v) in extra { plan[k] = v }
            t["plan"] = .object(plan)
        }
        return t
    }

    func stdout(_ node: TestNode, _ t: [String: JSONValue]) -> String {
        (try? String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/stdout.log", encoding: .utf8)) ?? ""
    }

    /// The pid a task wrote into a file in its out/ folder (read as the daemon's user, root).
    func pid(in path: String) -> Int32? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Gone: no /proc entry, or only a zombie waiting for init.
    func gone(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
        return stat.contains(") Z ")
    }

    func usage(_ event: TaskEvent) -> (cpu: Double?, peak: Int64?) {
        guard case .object(let u)? = event.detail.data?["usage"] else { return (nil, nil) }
        var cpu: Double?
        switch u["cpu_seconds"] {
        case .double(let d)?: cpu = d
        case .int(let i)?: cpu = Double(i)
        default: cpu = nil
        }
        if case .int(let p)? = u["peak_memory_bytes"] { return (cpu, p) }
        return (cpu, nil)
    }

    @Test func insideAHostTaskNothingOfTheNodeIsReachable() throws {
        let scratch = try TestEnv.scratch("cred-\(UUID().uuidString.prefix(6))")
        let token = "\(scratch)/store.token"
        try "s3cret-token".write(toFile: token, atomically: true, encoding: .utf8)
        chmod(token, 0o600)
        let node = try node("inside", extra: """
            [credentials."store"]
            token_file = "\(token)"
            urls = ["https://store.example.org/"]
            """)
        try node.start()
        let op = try Operator(node: node)

        // A finished task whose sandbox (kept 24 h by default) holds a file.
        let first = task("echo private > \"$FEM_OUTPUT_DIR/result.txt\"")
        try op.submit(first)
        try op.waitForFinal([Tasks.id(first)])
        #expect(op.finalState(of: Tasks.id(first))?.state == .completed)
        let other = "\(node.dir)/var/sandboxes/\(Tasks.id(first))"
        #expect(FileManager.default.fileExists(atPath: "\(other)/out/result.txt"))

        let probe = """
            id -u
            grep -E '^(CapEff|NoNewPrivs):' /proc/self/status
            echo "interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
            try() { name=$1; shift; if ( "$@" ) >/dev/null 2>&1; then echo "$name: ALLOWED"; else echo "$name: denied"; fi; }
            try write-etc sh -c 'echo x > /etc/fem-sandbox-probe'
            try read-journal cat "$1"
            try write-journal sh -c 'echo x >> "$1"' sh "$1"
            try read-log cat "$2"
            try write-log sh -c 'echo x >> "$2"' sh "$2"
            try list-other ls "$3"
            try read-other cat "$3/out/result.txt"
            try write-other sh -c 'echo x > "$3/out/planted"' sh "$3"
            try read-credential cat "$4"
            try write-credential sh -c 'echo x >> "$4"' sh "$4"
            try list-workdir ls "$5"
            try list-cache ls "$5/cache"
            try list-outputs ls "$5/outputs"
            try write-own-out sh -c 'echo mine > "$FEM_OUTPUT_DIR/mine.txt"'
            try write-home sh -c 'echo x > "$HOME/.cache-probe"'
            try write-tmpdir sh -c 'echo x > "$TMPDIR/probe"'
            echo "home: $HOME tmpdir: $TMPDIR"
            echo "fds:" $(ls /proc/$$/fd | sort -n)
            """
        let t = task(probe, args: ["\(node.dir)/var/journal.sqlite", "\(node.dir)/receiver.log", other, token,
                                   "\(node.dir)/var"])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed, "\(final.detail.message ?? "")")
        let out = stdout(node, t)
        let lines = out.split(separator: "\n").map(String.init)
        let uid = try #require(lines.first.flatMap { UInt32($0) }, "the task printed its uid: \(out)")
        #expect(uid != 0, "a host task does not run as root")
        #expect(uid == getpwnam("fem-task")?.pointee.pw_uid, "it runs as the node's task user fem-task")
        #expect(out.contains("CapEff:\t0000000000000000"), "\(out)")
        #expect(out.contains("NoNewPrivs:\t1"), "\(out)")
        #expect(out.contains("interfaces: lo \n"), "only the loopback interface: \(out)")
        for denied in ["write-etc", "read-journal", "write-journal", "read-log", "write-log", "list-other",
                       "read-other", "write-other", "read-credential", "write-credential", "list-workdir", "list-cache",
                       "list-outputs"] {
            #expect(out.contains("\(denied): denied\n"), "\(denied) must fail: \(out)")
        }
        for allowed in ["write-own-out", "write-home", "write-tmpdir"] {
            #expect(out.contains("\(allowed): ALLOWED\n"), "\(allowed) must work: \(out)")
        }
        #expect(out.contains("home: \(node.dir)/var/sandboxes/\(Tasks.id(t))/home tmpdir: \(node.dir)/var/sandboxes/\(Tasks.id(t))/tmp"),
                "a home and temporary folder of the task's own: \(out)")
        // 3 is the shell's own (the read end of the `$(...)` pipe): nothing of the daemon's is open in the task.
        #expect(out.contains("fds: 0 1 2 3\n"), "\(out)")
        #expect(!FileManager.default.fileExists(atPath: "/etc/fem-sandbox-probe"))
        #expect(try String(contentsOfFile: token, encoding: .utf8) == "s3cret-token")
        // Afterwards the sandbox is the daemon's again (0700), so a later task of the same user cannot read it.
        let sandbox = "\(node.dir)/var/sandboxes/\(Tasks.id(t))"
        let attrs = try FileManager.default.attributesOfItem(atPath: "\(sandbox)/out/mine.txt")
        #expect((attrs[.ownerAccountID] as? NSNumber)?.uint32Value == getuid())
        let outMode = try FileManager.default.attributesOfItem(atPath: "\(sandbox)/out")[.posixPermissions] as? Int
        #expect(outMode == 0o700)
        let rootMode = try FileManager.default.attributesOfItem(atPath: sandbox)[.posixPermissions] as? Int
        #expect(rootMode == 0o700)
        let logMode = try FileManager.default.attributesOfItem(atPath: "\(node.dir)/receiver.log")[.posixPermissions] as? Int
        #expect(logMode == 0o600)
    }

    @Test func aHostTaskOverItsMemoryCapEndsOutOfMemory() throws {
        let node = try node("oom")
        try node.start()
        let op = try Operator(node: node)
        let t = task("head -c 300000000 /dev/zero | tail > /dev/null",
                     plan: ["resources": .object(["memory_mb": .int(64)])])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed)
        #expect(final.detail.failureClass == .outOfMemory, "\(final.detail.message ?? "")")
        #expect(final.detail.message == "killed for exceeding its memory limit")
        let (cpu, peak) = usage(final)
        #expect(cpu != nil, "the terminal event carries CPU seconds")
        let peakBytes = try #require(peak, "the terminal event carries the peak memory")
        #expect(peakBytes > 32 << 20 && peakBytes <= 64 << 20, "peak \(peakBytes) is near the 64 MiB cap")
    }

    @Test func theTerminalEventCarriesCPUSecondsAndPeakMemory() throws {
        let node = try node("usage")
        try node.start()
        let op = try Operator(node: node)
        // A fixed amount of work (a million shell additions, about 0.8 CPU seconds here), not a wall-clock
        // interval, whose CPU share would depend on how busy the machine is; and about 20 MiB held by tail.
        let t = task("head -c 20000000 /dev/zero | tail > /dev/null; "
                     + "i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done")
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .completed, "\(final.detail.message ?? "")")
        let (cpu, peak) = usage(final)
        #expect((cpu ?? 0) >= 0.2, "CPU seconds \(cpu ?? -1)")
        #expect((peak ?? 0) >= 15_000_000, "peak memory \(peak ?? -1)")
    }

    /// A `setsid` grandchild and a double-forked daemon each write their pid; both must be gone after the task ends.
    static let escapees = """
        setsid sh -c 'echo $$ > "$FEM_OUTPUT_DIR/setsid.pid"; exec sleep 300' &
        sh -c 'sh -c '"'"'echo $$ > "$FEM_OUTPUT_DIR/daemon.pid"; exec sleep 300'"'"' & exit 0'
        sleep 300
        """

    func waitForEscapees(_ node: TestNode, _ t: [String: JSONValue]) throws -> [Int32] {
        let out = "\(node.dir)/var/sandboxes/\(Tasks.id(t))/out"
        var pids: [Int32] = []
        try eventually("both escapees to write their pids") {
            pids = ["setsid.pid", "daemon.pid"].compactMap { pid(in: "\(out)/\($0)") }
            return pids.count == 2
        }
        for p in pids { #expect(!gone(p), "process \(p) runs before the task ends") }
        return pids
    }

    @Test func cancelEndsEverythingTheTaskStarted() throws {
        let node = try node("cgcancel")
        try node.start()
        let op = try Operator(node: node)
        let t = task(Self.escapees)
        try op.submit(t)
        let pids = try waitForEscapees(node, t)
        try op.cancel(Tasks.id(t))
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .cancelled)
        #expect(usage(final).cpu != nil, "the cancelled task's usage is reported")
        for p in pids { try eventually("process \(p) to be gone after cancel", timeout: 5) { gone(p) } }
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/pids/fem-client/\(node.id)/\(Tasks.id(t))"),
                "the task's cgroup is removed")
    }

    @Test func timeoutEndsEverythingTheTaskStarted() throws {
        let node = try node("cgtimeout")
        try node.start()
        let op = try Operator(node: node)
        let t = task(Self.escapees, timeout: 3)
        try op.submit(t)
        let pids = try waitForEscapees(node, t)
        try op.waitForFinal([Tasks.id(t)], timeout: 30)
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .timeout)
        for p in pids { try eventually("process \(p) to be gone after the timeout", timeout: 5) { gone(p) } }
    }

    @Test func theMainProcessEndingEndsTheRest() throws {
        let node = try node("cgexit")
        try node.start()
        let op = try Operator(node: node)
        let t = task("""
            setsid sh -c 'echo $$ > "$FEM_OUTPUT_DIR/setsid.pid"; exec sleep 300' &
            sh -c 'sh -c '"'"'echo $$ > "$FEM_OUTPUT_DIR/daemon.pid"; exec sleep 300'"'"' & exit 0'
            while [ ! -s "$FEM_OUTPUT_DIR/setsid.pid" ] || [ ! -s "$FEM_OUTPUT_DIR/daemon.pid" ]; do sleep 0.05; done
            exit 0
            """)
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        #expect(op.finalState(of: Tasks.id(t))?.state == .completed)
        let out = "\(node.dir)/var/sandboxes/\(Tasks.id(t))/out"
        let pids = ["setsid.pid", "daemon.pid"].compactMap { pid(in: "\(out)/\($0)") }
        #expect(pids.count == 2)
        for p in pids { try eventually("process \(p) to be gone after the main process ended", timeout: 5) { gone(p) } }
    }

    @Test func afterADaemonRestartEverythingInTheTaskCgroupIsStopped() throws {
        let node = try node("cgrecover")
        try node.start()
        let op = try Operator(node: node)
        let t = task(Self.escapees)
        try op.submit(t)
        let pids = try waitForEscapees(node, t)
        node.kill(SIGKILL)
        for p in pids { #expect(!gone(p), "the work outlived the daemon") }
        try node.start()
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .failed && final.detail.failureClass == .nodeRestart)
        for p in pids { try eventually("process \(p) to be stopped after the restart", timeout: 10) { gone(p) } }
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/pids/fem-client/\(node.id)/\(Tasks.id(t))"),
                "the task's cgroup is removed")
    }

    @Test func theHostNetworkIsDeclinedUnlessTheNodeAllowsIt() throws {
        let node = try node("hostnet")
        try node.start()
        let op = try Operator(node: node)
        let t = task("cat /proc/net/dev", plan: ["network": .string("host")])
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)])
        let final = try #require(op.finalState(of: Tasks.id(t)))
        #expect(final.state == .declined)
        #expect(final.detail.message?.contains("asks for the host network") == true, "\(final.detail.message ?? "")")
        #expect(final.detail.message?.contains("launchers.process.allow_host_network") == true)

        let allowed = try self.node("hostnetok", extra: "")
        try allowed.editConfig { $0.replacingOccurrences(of: "allowed_executables = [", with:
                                                            "allow_host_network = true\nallowed_executables = [") }
        try allowed.start()
        let op2 = try Operator(node: allowed)
        let t2 = task("tail -n +3 /proc/net/dev | wc -l", plan: ["network": .string("host")])
        try op2.submit(t2)
        try op2.waitForFinal([Tasks.id(t2)])
        #expect(op2.finalState(of: Tasks.id(t2))?.state == .completed)
        #expect((Int(stdout(allowed, t2).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 1,
                "with the host network the task sees more than lo")
    }

    @Test func checkSaysHowHostTasksAreConfined() throws {
        let node = try node("cgcheck")
        let r = try node.run(["check"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("ok    process: host tasks run as fem-task (uid "), "\(r.output)")
        #expect(r.output.contains("each in a cgroup of its own (cgroup v"), "\(r.output)")
    }

    @Test func aWorkDirTheTaskUserCannotReachIsRefused() throws {
        let node = try node("closed")
        chmod(node.dir, 0o700)
        defer { chmod(node.dir, 0o755) }
        let r = try node.run(["check"])
        #expect(r.status != 0)
        #expect(r.output.contains("launchers.process.user: the task user fem-task cannot reach \(node.dir)/var: "
                                  + "\(node.dir) is mode 700"), "\(r.output)")
        // The daemon refuses to start: it exits at once, saying why.
        let elsewhere = try TestEnv.scratch("closed-daemon")
        let daemon = try ChildProcess.spawn(executable: try TestEnv.binary("fem-client"),
                                            arguments: ["daemon", "--config", node.configPath],
                                            environment: ["PATH": "/usr/bin:/bin"], workingDirectory: elsewhere,
                                            stdoutPath: "\(elsewhere)/daemon.out", stderrPath: "\(elsewhere)/daemon.out")
        var status: Int32 = 0
        var exited = false
        let deadline = Date().addingTimeInterval(20)
        while !exited, Date() < deadline {
            exited = waitpid(daemon.pid, &status, WNOHANG) == daemon.pid
            if !exited { Thread.sleep(forTimeInterval: 0.05) }
        }
        if !exited {
            kill(daemon.pid, SIGKILL)
            _ = ChildProcess.waitBlocking(pid: daemon.pid)
        }
        #expect(exited && status != 0, "the daemon refused to start")
        let said = (try? String(contentsOfFile: "\(elsewhere)/daemon.out", encoding: .utf8)) ?? ""
        #expect(said.contains("cannot reach \(node.dir)/var/sandboxes"), "\(said)")
    }

    @Test func rootOrAMissingTaskUserIsAConfigurationError() throws {
        let root = try node("rootuser")
        try root.editConfig { $0.replacingOccurrences(of: "allowed_executables = [", with:
                                                        "user = \"root\"\nallowed_executables = [") }
        let r = try root.run(["check"])
        #expect(r.status != 0)
        #expect(r.output.contains("launchers.process.user: \"root\" is root"), "\(r.output)")

        let missing = try node("nouser")
        try missing.editConfig { $0.replacingOccurrences(of: "allowed_executables = [", with:
                                                           "user = \"no-such-fem-user\"\nallowed_executables = [") }
        let m = try missing.run(["check"])
        #expect(m.status != 0)
        #expect(m.output.contains("launchers.process.user: there is no user \"no-such-fem-user\""), "\(m.output)")
        #expect(m.output.contains("useradd --system"), "\(m.output)")
    }
}
