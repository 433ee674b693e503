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

    @Test func memoryLimitKillIsReportedAsOOM() throws {
        try requireEngine()
        let id = try run(["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=4"],
                         host: ["Memory": 8 << 20, "MemorySwap": 8 << 20], label: UUID().uuidString)
        defer { try? engine.remove(id) }
        try engine.start(id)
        _ = try engine.wait(id)
        let state = try #require(try engine.inspectContainer(id))
        #expect(try engine.wasOOMKilled(id, state: state, since: state.created), "exit \(state.exitCode)")
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
