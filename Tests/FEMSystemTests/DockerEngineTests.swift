import FEMSystem
import Foundation
import Testing

/// The Engine API client against a real dockerd (test.sh starts one with scripts/dev-docker.sh, and imports the
/// image fem-test/busybox:2). Missing pieces fail with a message that says what is missing.
@Suite(.serialized)
struct DockerEngineTests {
    let engine = DockerEngine()
    static let image = "fem-test/busybox:2"

    func requireEngine() throws {
        let up = (try? engine.ping()) ?? false
        try #require(up, "dockerd is not answering on /var/run/docker.sock: run the tests with `bash test.sh`, which starts it")
        try #require(try engine.inspectImage(Self.image) != nil,
                     "image \(Self.image) is missing: scripts/dev-docker.sh start imports it")
    }

    func run(_ cmd: [String], host: [String: Any] = [:], label: String) throws -> String {
        try engine.createContainer(name: nil, body: [
            "Image": Self.image, "Cmd": cmd, "Labels": ["fem.test": label],
            "HostConfig": ["NetworkMode": "none"].merging(host) { $1 },
        ])
    }

    @Test func versionIsAtLeastTheAPIWePin() throws {
        try requireEngine()
        let v = try engine.version()
        let parts = v.ApiVersion.split(separator: ".").compactMap { Int($0) }
        #expect(parts.count == 2 && (parts[0] > 1 || parts[1] >= 41), "dockerd API \(v.ApiVersion)")
    }

    @Test func imageInspectAnswersNilForAMissingImage() throws {
        try requireEngine()
        #expect(try engine.inspectImage(Self.image)?.Id.hasPrefix("sha256:") == true)
        #expect(try engine.inspectImage("fem-test/no-such-image:0") == nil)
    }

    @Test func containerLifecycleWithDemultiplexedLogs() throws {
        try requireEngine()
        let label = UUID().uuidString
        let id = try run(["sh", "-c", "echo out; echo err >&2; echo more; exit 3"], label: label)
        defer { try? engine.remove(id) }
        #expect(try engine.containers(labels: ["fem.test": label]) == [id])
        try engine.start(id)
        #expect(try engine.wait(id) == 3)
        var out = "", err = ""
        try engine.logs(id, follow: false) { stream, bytes in
            let text = String(decoding: bytes, as: UTF8.self)
            if stream == .stdout { out += text } else { err += text }
        }
        #expect(out == "out\nmore\n")
        #expect(err == "err\n")
        let state = try #require(try engine.inspectContainer(id))
        #expect(!state.running && state.exitCode == 3 && !state.oomKilled && state.labels["fem.test"] == label)
        #expect(abs(state.created.timeIntervalSinceNow) < 60, "creation time parsed: \(state.created)")
        #expect(try !engine.wasOOMKilled(id, state: state, since: state.created))
        // wait on a container that already exited returns at once.
        #expect(try engine.wait(id) == 3)
        try engine.remove(id)
        #expect(try engine.inspectContainer(id) == nil)
        #expect(try engine.containers(labels: ["fem.test": label]).isEmpty)
    }

    /// Many containers followed at once hold one thread between them (HTTPStreams), and their logs arrive whole.
    @Test func followedContainersShareOneStreamsThread() async throws {
        try requireEngine()
        let ids = try (0..<4).map { i in
            // Each waits for the test's USR1 before it writes and exits, so all four follows are in flight at once
            // however slowly a loaded machine starts them.
            try run(["sh", "-c", "trap 'go=1' USR1; while [ -z \"$go\" ]; do sleep 0.1; done; "
                     + "for n in 1 2 3; do echo out\(i).$n; echo err\(i).$n >&2; done; exit \(i)"],
                    label: UUID().uuidString)
        }
        defer { for id in ids { try? engine.remove(id) } }
        let engine = self.engine
        let results = try await withThrowingTaskGroup(of: (Int, String, String, Int).self) { group in
            for (i, id) in ids.enumerated() {
                group.addTask {
                    let text = Shared((out: "", err: ""))
                    try engine.start(id)
                    try await engine.followLogs(id, follow: true) { stream, bytes in
                        let s = String(decoding: bytes, as: UTF8.self)
                        text.withLock { if stream == .stdout { $0.out += s } else { $0.err += s } }
                    }
                    let code = try await engine.waitForExit(id)
                    return text.withLock { (i, $0.out, $0.err, code) }
                }
            }
            #expect(await eventually(60) { HTTPStreams.shared.activeCount == 4 }, "4 follows in flight")
            #expect(threads(named: "fem-http-streams") == 1, "4 followed containers share one streams thread")
            // Now let them write and end (a container not yet started gets its signal from a retry).
            for id in ids {
                var sent = false
                for _ in 0..<100 where !sent {
                    if (try? engine.kill(id, signal: "USR1")) != nil { sent = true } else {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        for (i, out, err, code) in results {
            #expect(out == "out\(i).1\nout\(i).2\nout\(i).3\n")
            #expect(err == "err\(i).1\nerr\(i).2\nerr\(i).3\n")
            #expect(code == i)
        }
        // A stop's grace: a wait that times out says so; one for a stopped container answers at once.
        let sleeper = try run(["sleep", "60"], label: UUID().uuidString)
        defer { try? engine.remove(sleeper) }
        try engine.start(sleeper)
        #expect(try await engine.waitStopped(sleeper, upTo: .milliseconds(300)) == false)
        try engine.kill(sleeper, signal: "KILL")
        #expect(try await engine.waitStopped(sleeper, upTo: .seconds(10)) == true)
    }

    @Test func killStopsARunningContainer() throws {
        try requireEngine()
        let id = try run(["sleep", "60"], label: UUID().uuidString)
        defer { try? engine.remove(id) }
        try engine.start(id)
        #expect(try engine.inspectContainer(id)?.running == true)
        try engine.kill(id, signal: "KILL")
        #expect(try engine.wait(id) == 137)
        let killed = try #require(try engine.inspectContainer(id))
        #expect(try !engine.wasOOMKilled(id, state: killed, since: killed.created), "a plain SIGKILL is not an OOM")
        try engine.kill(id)  // already stopped: not an error
    }

    /// A task cgroup of the node's own (the container's `CgroupParent`) holds the limit and counts the OOM kill
    /// after the container's own cgroup is gone: no race with the exit, whatever the load.
    @Test func aMemoryLimitKillIsCountedByTheTaskCgroupThatOutlivesTheContainer() throws {
        try requireEngine()
        let host = try #require(CgroupHost.detect(), "this host has no memory cgroup (v1 or v2)")
        let path = try TaskCgroup.relativePath(root: "fem-test", node: "engine", task: UUID().uuidString.lowercased())
        let cgroup = try TaskCgroup.create(host: host, path: path, limits: CgroupLimits(memoryBytes: 8 << 20))
        defer { cgroup.remove() }
        let id = try run(["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=4"], host: ["CgroupParent": path],
                         label: UUID().uuidString)
        defer { try? engine.remove(id) }
        try engine.start(id)
        #expect(try engine.wait(id) == 137)
        try engine.remove(id)
        let usage = cgroup.usage()
        #expect(usage.oomKills >= 1, "\(usage)")
        #expect(cgroup.countsOOMKillsExactly)
        #expect((usage.peakMemoryBytes ?? 0) > 0 && (usage.peakMemoryBytes ?? .max) <= 8 << 20, "\(usage)")
    }

    @Test func aPlainKillUnderATaskCgroupIsNoOOM() throws {
        try requireEngine()
        let host = try #require(CgroupHost.detect(), "this host has no memory cgroup (v1 or v2)")
        let path = try TaskCgroup.relativePath(root: "fem-test", node: "engine", task: UUID().uuidString.lowercased())
        let cgroup = try TaskCgroup.create(host: host, path: path, limits: CgroupLimits(memoryBytes: 64 << 20))
        defer { cgroup.remove() }
        let id = try run(["sleep", "60"], host: ["CgroupParent": path], label: UUID().uuidString)
        defer { try? engine.remove(id) }
        try engine.start(id)
        try engine.kill(id, signal: "KILL")
        #expect(try engine.wait(id) == 137)
        try engine.remove(id)
        #expect(cgroup.usage().oomKills == 0)
        cgroup.remove()
        let left = (host.directories(path) + host.allMounts.map { $0 + path }).filter { FileManager.default.fileExists(atPath: $0) }
        #expect(left.isEmpty, "the task cgroup is removed in every hierarchy, also where dockerd made it: \(left)")
    }

    /// Podman's Docker-compatible service (scripts/dev-podman.sh; FEM_TEST_PODMAN_SOCKET) is told apart by its
    /// `/version`, and its 500 answers for what dockerd calls a conflict read as conflicts: a kill of a stopped
    /// container is no error, removing a running one without force is a conflict, as with dockerd.
    @Test func podmanIsRecognisedAndItsConflictsReadAsDockerdsOnes() throws {
        try #require(try engine.kind() == .docker, "dockerd names itself so")
        let socket = try #require(ProcessInfo.processInfo.environment["FEM_TEST_PODMAN_SOCKET"],
                                  "FEM_TEST_PODMAN_SOCKET is not set: run the tests with `bash test.sh`, which starts podman (scripts/dev-podman.sh)")
        let podman = DockerEngine(socket: socket)
        try #require((try? podman.ping()) ?? false, "podman is not answering on \(socket): scripts/dev-podman.sh start")
        #expect(try podman.kind() == .podman)
        for engine in [engine, podman] {
            let id = try engine.createContainer(name: nil, body: [
                "Image": Self.image, "Cmd": ["sleep", "30"], "Labels": ["fem.test": UUID().uuidString],
                "HostConfig": ["NetworkMode": "none"],
            ])
            defer { try? engine.remove(id) }
            try engine.start(id)
            #expect(throws: DockerError.self, "removing a running container without force") {
                do { try engine.remove(id, force: false) } catch let e as DockerError {
                    #expect(e.code == .conflict, "\(e)")
                    throw e
                }
            }
            try engine.kill(id, signal: "KILL")
            #expect(try engine.wait(id) == 137)
            try engine.kill(id)  // no longer running: not an error on either engine
        }
    }

    @Test func pullFromARegistryThatIsDownSaysSo() throws {
        try requireEngine()
        let error = try #require(throws: DockerError.self) {
            try engine.pull("127.0.0.1:5999/fem/nothing:1", registryAuth: "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InNlY3JldCJ9")
        }
        #expect(error.message.contains("127.0.0.1:5999"))
        #expect(error.message.contains("connection refused"))
        #expect(!error.message.contains("secret") && !error.message.contains("eyJ1"))
    }

    @Test func aMissingSocketIsReportedAsUnreachable() throws {
        let error = try #require(throws: DockerError.self) {
            _ = try DockerEngine(socket: "/nonexistent/docker.sock").version()
        }
        #expect(error.code == .unreachable)
        #expect(error.message == "dockerd is not reachable on /nonexistent/docker.sock (is it running?)")
    }

    @Test(arguments: [
        ("127.0.0.1:5000/fem/busybox:1.36", "127.0.0.1:5000/fem/busybox", "1.36"),
        ("busybox", "busybox", "latest"),
        ("reg/x@sha256:abc", "reg/x", "sha256:abc"),
        ("localhost:5000/x", "localhost:5000/x", "latest"),
    ])
    func referenceSplitting(reference: String, repo: String, tag: String) {
        let (r, t) = DockerEngine.split(reference)
        #expect(r == repo && t == tag)
    }
}

/// Which hierarchy a host offers, decided from its mount table alone.
struct CgroupHostTests {
    static let hybrid = """
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
        cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
        cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
        cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
        cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
        """

    @Test func aHybridHostWithoutAV2MemoryControllerUsesV1() throws {
        let host = try #require(CgroupHost.detect(mounts: Self.hybrid, read: { _ in "" }))
        #expect(host.version == .v1)
        #expect(host.roots["cpu"] == "/sys/fs/cgroup/cpu,cpuacct" && host.roots["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct")
        #expect(host.directories("/a/b") == ["/sys/fs/cgroup/cpu,cpuacct/a/b", "/sys/fs/cgroup/memory/a/b",
                                             "/sys/fs/cgroup/pids/a/b"])
        #expect(host.allMounts.contains("/sys/fs/cgroup/unified") && host.allMounts.contains("/sys/fs/cgroup/systemd"))
    }

    @Test func aV2HostWithTheMemoryControllerUsesV2() throws {
        let host = try #require(CgroupHost.detect(mounts: "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
                                                  read: { $0 == "/sys/fs/cgroup/cgroup.controllers" ? "cpu io memory pids\n" : nil }))
        #expect(host.version == .v2 && host.directories("/x") == ["/sys/fs/cgroup/x"])
    }

    @Test func noMemoryControllerMeansNoCgroups() {
        #expect(CgroupHost.detect(mounts: "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", read: { _ in "cpu pids" }) == nil)
    }

    @Test(arguments: ["..", "a/b", "", "x y", "t\n"]) func partsThatCannotNameACgroupAreRefused(part: String) {
        #expect(throws: SystemError.self) { try TaskCgroup.relativePath(root: "fem-client", node: "n", task: part) }
    }
}
