import FEMCore
@testable import FEMLaunchers
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Where host tasks cannot be confined, the launcher refuses unless the admin said otherwise.
struct HostConfinementTests {
    @Test func noCgroupMeansRefusalUnlessAllowed() {
        let none = CgroupHost.detect(mounts: "proc /proc proc rw 0 0\ntmpfs /sys/fs/cgroup tmpfs rw 0 0\n")
        #expect(none == nil)
        let strict = HostConfinementConfig(section: "launchers.process", user: nil, nodeID: "n1", cgroups: none)
        let refusal = strict.refusal()
        #expect(refusal?.hasPrefix("launchers.process.allow_unconfined: this host has no usable cgroup") == true,
                "\(refusal ?? "nil")")
        #expect(refusal?.contains(CgroupHost.unavailable) == true)
        let allowed = HostConfinementConfig(section: "launchers.process", user: nil, nodeID: "n1", cgroups: none,
                                            allowUnconfined: true)
        #expect(allowed.refusal() == nil)
    }

    @Test func aV1HostWithoutThePidsControllerIsNotEnough() {
        let memoryOnly = CgroupHost(version: .v1, roots: ["memory": "/sys/fs/cgroup/memory"])
        #expect(TaskCgroup.probe(host: memoryOnly, node: "n1")?.contains("pids controller is not mounted") == true)
    }

    /// Flower's environments are made by the task user (venv and pip run as it, so a package's build code never runs
    /// as root) and then belong to the daemon, readable by all: a stand-in interpreter records who ran it.
    @Test func pythonEnvironmentsAreMadeByTheTaskUserAndKeptByTheDaemon() async throws {
        let user = try #require(TaskUser.lookup("fem-task"), "test.sh creates the task user fem-task")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-venv-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: "\(dir)/logs", withIntermediateDirectories: true)
        chmod(dir, 0o755)
        let pip = "\(dir)/pip-template"
        try "#!/bin/sh\nid -u > \"$(dirname \"$0\")/../pip-uid\"\n".write(toFile: pip, atomically: true, encoding: .utf8)
        let python = "\(dir)/python"
        try ("#!/bin/sh\nmkdir -p \"$3/bin\" && cp \"\(pip)\" \"$3/bin/pip\" && id -u > \"$3/venv-uid\" "
             + "&& grep NoNewPrivs /proc/self/status > \"$3/venv-status\"\n")
            .write(toFile: python, atomically: true, encoding: .utf8)
        chmod(pip, 0o755)
        chmod(python, 0o755)
        let envs = PythonEnvironments(python: python, root: "\(dir)/venvs", wheelDir: nil, user: user)
        let pins = try PythonRequirement.parseAll(["numpy==2.4.6"]).get()
        let venv = try await envs.ensure(tool: "t", version: "1", requirements: pins, log: "\(dir)/logs/venv.log")
        #expect(try String(contentsOfFile: "\(venv)/venv-uid", encoding: .utf8) == "\(user.uid)\n")
        #expect(try String(contentsOfFile: "\(venv)/pip-uid", encoding: .utf8) == "\(user.uid)\n")
        #expect(try String(contentsOfFile: "\(venv)/venv-status", encoding: .utf8).contains("NoNewPrivs:\t1"))
        for path in [venv, "\(venv)/bin", "\(venv)/bin/pip", "\(venv)/pip-uid"] {
            let attrs = try FileManager.default.attributesOfItem(atPath: path)
            #expect((attrs[.ownerAccountID] as? NSNumber)?.uint32Value == getuid(), "\(path) is the daemon's")
            let mode = (attrs[.posixPermissions] as? Int) ?? 0
            #expect(mode & 0o022 == 0, "\(path) is writable by the daemon only: \(String(mode, radix: 8))")
            #expect(mode & 0o004 != 0, "\(path) is readable by all: \(String(mode, radix: 8))")
        }
        let pipMode = (try FileManager.default.attributesOfItem(atPath: "\(venv)/bin/pip")[.posixPermissions] as? Int) ?? 0
        #expect(pipMode == 0o755, "an executable stays executable for all")
        try? FileManager.default.removeItem(atPath: dir)
    }
}
