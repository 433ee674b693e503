import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A host task's cgroup (TaskCgroup as host tasks use it) and the confined spawn against this host's real cgroups
/// (v1 here, v2 on modern hosts).
@Suite(.serialized)
struct HostCgroupTests {
    let node = "unit-\(getpid())"
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("fem-cg-\(UUID().uuidString)").path

    func host() throws -> CgroupHost {
        let probe = TaskCgroup.probe(host: CgroupHost.detect(), node: node)
        #expect(probe == nil, "this host must offer cgroups for host tasks: \(probe ?? "")")
        return try #require(CgroupHost.detect())
    }

    func create(_ task: String, _ limits: CgroupLimits) throws -> TaskCgroup {
        try TaskCgroup.create(host: try host(), path: try TaskCgroup.hostTaskPath(node: node, task: task), limits: limits)
    }

    func spawn(_ script: String, cgroup: TaskCgroup?, uid: UInt32? = nil, newNetwork: Bool = false) throws
        -> ChildProcess.Spawned {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        return try ChildProcess.spawn(executable: "/bin/sh", arguments: ["-c", script], environment: ["PATH": "/usr/bin:/bin"],
                                      workingDirectory: scratch, stdoutPath: "\(scratch)/out.log",
                                      stderrPath: "\(scratch)/err.log",
                                      confinement: ChildProcess.Confinement(uid: uid, gid: uid, cgroupProcs: cgroup?.procsFiles ?? [],
                                                                            newNetwork: newNetwork))
    }

    @Test func createLimitsKillAndRemove() throws {
        let cg = try create("t1", CgroupLimits(memoryBytes: 64 << 20, pids: 32, cpus: 0.5))
        let dirs = cg.host.directories(cg.path)
        for dir in dirs { #expect(FileManager.default.fileExists(atPath: dir), "\(dir) exists") }
        let v2 = cg.host.version == .v2
        let memory = try #require(v2 ? dirs.first : cg.host.roots["memory"].map { $0 + cg.path })
        let pids = try #require(v2 ? dirs.first : cg.host.roots["pids"].map { $0 + cg.path })
        #expect(try String(contentsOfFile: "\(memory)/\(v2 ? "memory.max" : "memory.limit_in_bytes")", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines) == "\(64 << 20)")
        #expect(try String(contentsOfFile: "\(pids)/pids.max", encoding: .utf8).hasPrefix("32"))

        // A main process whose child leaves the process group and session: both are members, both are killed.
        let main = try spawn("setsid sh -c 'echo $$ > escaped.pid; exec sleep 300' & sleep 300", cgroup: cg)
        var escaped: Int32?
        let deadline = Date().addingTimeInterval(5)
        while escaped == nil, Date() < deadline {
            escaped = (try? String(contentsOfFile: "\(scratch)/escaped.pid", encoding: .utf8))
                .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let other = try #require(escaped, "the setsid child wrote its pid")
        #expect(cg.processes().contains(main.pid))
        #expect(cg.processes().contains(other), "the setsid child is in the cgroup")
        #expect(cg.killAll(timeout: .seconds(5)))
        #expect(ChildProcess.waitBlocking(pid: main.pid) == .signaled(SIGKILL))
        #expect(cg.processes().isEmpty)
        #expect(kill(other, 0) != 0 || (try? String(contentsOfFile: "/proc/\(other)/stat", encoding: .utf8))?
            .contains(") Z ") == true, "the escaped process is gone")
        cg.remove()
        for dir in dirs { #expect(!FileManager.default.fileExists(atPath: dir), "\(dir) is removed") }
        #expect(TaskCgroup.existing(host: cg.host, path: cg.path) == nil)
    }

    /// What podman puts below a container's cgroup parent for itself (conmon) is moved out of the task's limits to
    /// a sibling holder, and that holder goes once empty, so the node's level can go too.
    @Test func anEnginesHelperCgroupIsEvictedToASibling() throws {
        let cg = try create("t-evict", CgroupLimits(memoryBytes: 64 << 20))
        defer { cg.removeSibling("holder+"); cg.remove() }
        let children = cg.host.directories(cg.path).map { "\($0)/conmon" }
        for dir in children { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let helper = try ChildProcess.spawn(executable: "/bin/sleep", arguments: ["300"], environment: [:],
                                            workingDirectory: "/", stdoutPath: "/dev/null", stderrPath: "/dev/null",
                                            confinement: ChildProcess.Confinement(uid: nil, gid: nil, cgroupProcs: children.map { "\($0)/cgroup.procs" }))
        func members(_ dir: String) -> [String] {
            ((try? String(contentsOfFile: "\(dir)/cgroup.procs", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
        #expect(children.allSatisfy { members($0) == ["\(helper.pid)"] })
        #expect(cg.evict(child: "conmon", to: "holder+") == children.count, "moved in every hierarchy")
        let holders = cg.host.directories(cg.path).map { ($0 as NSString).deletingLastPathComponent + "/holder+" }
        #expect(holders.allSatisfy { members($0) == ["\(helper.pid)"] }, "in the holder, out of the task's limits")
        #expect(children.allSatisfy { members($0).isEmpty })
        cg.removeSibling("holder+")
        #expect(holders.allSatisfy { FileManager.default.fileExists(atPath: $0) }, "a holder with processes stays")
        kill(helper.pid, SIGKILL)
        _ = ChildProcess.waitBlocking(pid: helper.pid)
        cg.removeSibling("holder+")
        #expect(holders.allSatisfy { !FileManager.default.fileExists(atPath: $0) }, "an empty holder goes")
    }

    @Test func outOfMemoryAndUsageAreCounted() throws {
        let cg = try create("oom", CgroupLimits(memoryBytes: 32 << 20, pids: 64))
        defer { cg.remove() }
        let main = try spawn("head -c 200000000 /dev/zero | tail > /dev/null", cgroup: cg)
        let status = ChildProcess.waitBlocking(pid: main.pid)
        #expect(status == .exited(137), "tail was killed by the OOM killer, so the pipeline failed")
        let usage = cg.usage()
        #expect(usage.oomKills >= 1)
        #expect((usage.peakMemoryBytes ?? 0) > 16 << 20, "peak memory near the limit: \(usage.peakMemoryBytes ?? 0)")
        #expect((usage.cpuSeconds ?? 0) > 0, "CPU time counted: \(usage.cpuSeconds ?? -1)")
    }

    @Test func confinedSpawnDropsPrivilegesAndNetwork() throws {
        // A descriptor of the parent without close-on-exec (as a C library might leave one).
        let leaky = open("/dev/null", O_RDONLY)
        defer { close(leaky) }
        let main = try spawn("grep -E '^(Uid|Gid|Groups|CapEff|NoNewPrivs):' /proc/self/status; umask; "
                             + "cd /proc/$$/fd && echo fds: *; cd /; "
                             + "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '", cgroup: nil, uid: 65534,
                             newNetwork: true)
        #expect(ChildProcess.waitBlocking(pid: main.pid) == .exited(0))
        let out = try String(contentsOfFile: "\(scratch)/out.log", encoding: .utf8)
        #expect(out.contains("Uid:\t65534\t65534\t65534\t65534"), "\(out)")
        #expect(out.contains("Gid:\t65534\t65534\t65534\t65534"), "\(out)")
        #expect(out.split(separator: "\n").contains { $0.trimmingCharacters(in: .whitespaces) == "Groups:" },
                "no supplementary groups: \(out)")
        #expect(out.contains("CapEff:\t0000000000000000"), "\(out)")
        #expect(out.contains("NoNewPrivs:\t1"), "\(out)")
        #expect(out.contains("0077"), "\(out)")
        #expect(out.hasSuffix("\nlo\n"), "only lo: \(out)")
        // The shell lists its own descriptors (no subshell, whose pipe would race the listing); 3 is the directory
        // the glob is reading.
        #expect(out.contains("fds: 0 1 2 3\n"), "no descriptor of the parent reaches the task: \(out)")
        let mode = try FileManager.default.attributesOfItem(atPath: "\(scratch)/out.log")[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    /// An executable still open for writing somewhere (ETXTBSY) is tried again for a moment; one that stays busy
    /// fails naming execve and the reason.
    @Test func aBusyExecutableIsTriedAgainForAMoment() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let script = "\(scratch)/busy.sh"
        try "#!/bin/sh\nexit 0\n".write(toFile: script, atomically: false, encoding: .utf8)
        chmod(script, 0o755)
        let writer = open(script, O_WRONLY)
        try #require(writer >= 0)
        // Closed by a thread of its own: the shared dispatch queues may all be busy with other suites' blocking waits.
        let closer = Thread {
            usleep(50_000)
            close(writer)
        }
        closer.start()
        let child = try ChildProcess.spawn(executable: script, arguments: [], environment: [:],
                                           workingDirectory: scratch, stdoutPath: "\(scratch)/o", stderrPath: "\(scratch)/e",
                                           confinement: .init(uid: 65534, gid: 65534, newNetwork: false))
        #expect(ChildProcess.waitBlocking(pid: child.pid) == .exited(0))

        let holder = open(script, O_WRONLY)
        try #require(holder >= 0)
        defer { close(holder) }
        #expect {
            _ = try ChildProcess.spawn(executable: script, arguments: [], environment: [:], workingDirectory: scratch,
                                       stdoutPath: "\(scratch)/o", stderrPath: "\(scratch)/e",
                                       confinement: .init(uid: 65534, gid: 65534, newNetwork: false))
        } throws: { "\($0)".contains("execve") && "\($0)".contains("Text file busy") }
    }

    @Test func aFailingStepIsNamed() throws {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        #expect {
            _ = try ChildProcess.spawn(executable: "/bin/true", arguments: [], environment: [:],
                                       workingDirectory: "\(scratch)/missing", stdoutPath: "\(scratch)/o",
                                       stderrPath: "\(scratch)/e", confinement: .init(uid: 65534, gid: 65534))
        } throws: { "\($0)".contains("chdir to the working directory") && "\($0)".contains("No such file") }
        #expect {
            _ = try ChildProcess.spawn(executable: "/no/such/program", arguments: [], environment: [:],
                                       workingDirectory: scratch, stdoutPath: "\(scratch)/o",
                                       stderrPath: "\(scratch)/e", confinement: .init(uid: 65534, gid: 65534))
        } throws: { "\($0)".contains("execve") }
    }
}
