import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Image stage-in against real registries (test.sh starts them with scripts/dev-registry.sh): 127.0.0.1:5000
/// without auth, 127.0.0.1:5001 with htpasswd.
@Suite(.serialized)
struct RegistryPullTests {
    let engine = DockerEngine()
    static let open = "127.0.0.1:5000/fem/busybox:1.36"
    static let privateImage = "127.0.0.1:5001/fem/private:1"

    func registryDir() throws -> String {
        guard let d = TestEnv.env["FEM_TEST_REGISTRY_DIR"], FileManager.default.fileExists(atPath: "\(d)/digest") else {
            throw HarnessError("FEM_TEST_REGISTRY_DIR is not set: run the tests with `bash test.sh`, which starts "
                               + "registries on 127.0.0.1:5000 and :5001")
        }
        return d
    }

    func node(_ name: String, passwordFile: String) throws -> TestNode {
        let up = (try? engine.ping()) ?? false
        try #require(up, "dockerd is not answering on /var/run/docker.sock: run the tests with `bash test.sh`")
        return try TestNode(name, extra: """
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            allowed_images = ["127.0.0.1:5000/fem/*", "127.0.0.1:5001/fem/*", "127.0.0.1:5002/fem/*"]
            [registries."127.0.0.1:5001"]
            username = "fem-pull"
            password_file = "\(passwordFile)"
            """)
    }

    static func task(_ image: String, policy: String? = nil) -> [String: JSONValue] {
        var plan: [String: JSONValue] = ["schema_version": 1, "id": "pull-test", "version": "1", "launcher": "docker",
                                         "image": .string(image), "command": ["base": ["/bin/sh", "-c", "echo pulled-and-ran"]]]
        if let policy { plan["pull_policy"] = .string(policy) }
        return ["schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-pull",
                "plan": .object(plan)]
    }

    @Test func pullByTagThenByDigest() throws {
        let dir = try registryDir()
        let digest = try String(contentsOfFile: "\(dir)/digest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(digest.hasPrefix("sha256:"))
        let n = try node("reg-tag", passwordFile: "\(dir)/password")
        try n.start()
        let op = try Operator(node: n)

        try engine.removeImage(Self.open)
        let byTag = Self.task(Self.open)  // a tag: pull policy `always` by default
        try op.submit(byTag)
        try op.waitForFinal([Tasks.id(byTag)], timeout: 90)
        #expect(op.finalState(of: Tasks.id(byTag))?.state == .completed)
        let progress = op.events(of: Tasks.id(byTag)).filter { $0.kind == .progress }.compactMap(\.detail.message)
        #expect(progress.contains("pulling \(Self.open)"))
        #expect(progress.contains { $0.hasPrefix("image \(Self.open) ready (127.0.0.1:5000/fem/busybox@\(digest))") },
                "\(progress)")
        #expect(n.log.contains("pulling \(Self.open)"), "pull progress is in receiver.log")

        let pinned = "127.0.0.1:5000/fem/busybox@\(digest)"
        try engine.removeImage(Self.open)
        try engine.removeImage(pinned)
        let byDigest = Self.task(pinned)
        try op.submit(byDigest)
        try op.waitForFinal([Tasks.id(byDigest)], timeout: 90)
        #expect(op.finalState(of: Tasks.id(byDigest))?.state == .completed)
        #expect(op.events(of: Tasks.id(byDigest)).contains { $0.detail.message == "pulling \(pinned)" })
    }

    @Test func privateRegistryWithRightAndWrongPasswords() throws {
        let dir = try registryDir()
        let good = try node("reg-auth", passwordFile: "\(dir)/password")
        try good.start()
        let op = try Operator(node: good)
        try engine.removeImage(Self.privateImage)
        let t = Self.task(Self.privateImage)
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: 90)
        #expect(op.finalState(of: Tasks.id(t))?.state == .completed, "\(op.finalState(of: Tasks.id(t))?.detail.message ?? "")")

        let wrongFile = try TestEnv.scratch("wrong") + "/password"
        try "not-the-password".write(toFile: wrongFile, atomically: true, encoding: .utf8)
        let bad = try node("reg-wrong", passwordFile: wrongFile)
        try bad.start()
        let op2 = try Operator(node: bad)
        try engine.removeImage(Self.privateImage)
        let t2 = Self.task(Self.privateImage)
        try op2.submit(t2)
        try op2.waitForFinal([Tasks.id(t2)], timeout: 90)
        let final = try #require(op2.finalState(of: Tasks.id(t2)))
        #expect(final.state == .failed && final.detail.failureClass == .stageInFailure)
        #expect(final.detail.message?.hasPrefix("the registry refused the credentials for \(Self.privateImage)") == true,
                "\(final.detail.message ?? "")")
        #expect(!bad.log.contains("not-the-password") && !(final.detail.message ?? "").contains("not-the-password"))
    }

    /// The authors' docker example, end to end with `fem-client run`: pulled from the local registry, run locked
    /// down, its dataset counted, its output staged out.
    @Test func theHelloDockerExampleRuns() throws {
        _ = try registryDir()
        let dir = try TestEnv.scratch("hello-docker")
        try FileManager.default.createDirectory(atPath: "\(dir)/data", withIntermediateDirectories: true)
        try "a\nb\nc\n".write(toFile: "\(dir)/data/rows.txt", atomically: true, encoding: .utf8)
        chmod("\(dir)/data", 0o755)
        chmod("\(dir)/data/rows.txt", 0o644)
        try """
            [node]
            id = "hello"
            [broker]
            url = "amqps://fem@localhost:5671/%2f"
            ca_file = "unused"
            cert_file = "unused"
            key_file = "unused"
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            allowed_images = ["127.0.0.1:5000/fem/*"]
            [datasets.demo]
            path = "\(dir)/data"
            """.write(toFile: "\(dir)/node.toml", atomically: true, encoding: .utf8)
        let r = try Shell.run([try TestEnv.binary("fem-client"), "run",
                               "\(TestEnv.repoRoot)/docs/templates/examples/hello-docker.task.json",
                               "--config", "\(dir)/node.toml", "--work-dir", "\(dir)/work"], cwd: dir)
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("state    completed"))
        // Delivered below <execution_id>/<node_id>/<task_id>.
        let count = try String(contentsOfFile: try CommandLineTests.delivered("\(dir)/work/outputs/exec-docker-1/hello")
                               + "/out/count.txt", encoding: .utf8)
        #expect(count.trimmingCharacters(in: .whitespaces) == "3\n")
    }

    @Test func unknownImageAndRegistryDownEachSaySo() throws {
        let dir = try registryDir()
        let n = try node("reg-missing", passwordFile: "\(dir)/password")
        try n.start()
        let op = try Operator(node: n)
        let missing = Self.task("127.0.0.1:5000/fem/no-such-image:9")
        let down = Self.task("127.0.0.1:5002/fem/x:1")
        try op.submit(missing)
        try op.waitForFinal([Tasks.id(missing)], timeout: 60)
        #expect(op.finalState(of: Tasks.id(missing))?.detail.message?
            .hasPrefix("image 127.0.0.1:5000/fem/no-such-image:9 was not found in its registry") == true,
                "\(op.finalState(of: Tasks.id(missing))?.detail.message ?? "")")
        // Nothing listens on 5002.
        try op.submit(down)
        try op.waitForFinal([Tasks.id(down)], timeout: 60)
        let final = try #require(op.finalState(of: Tasks.id(down)))
        #expect(final.state == .failed && final.detail.failureClass == .stageInFailure)
        #expect(final.detail.message?.hasPrefix("the registry of 127.0.0.1:5002/fem/x:1 is unreachable") == true,
                "\(final.detail.message ?? "")")
    }
}
