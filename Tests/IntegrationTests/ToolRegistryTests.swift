import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The node's tool registry through a real daemon and a real broker: with `[trust] require_approved_tools = true`
/// only plans approved with `fem-client tools approve` run; revoked or changed plans are declined naming why; a
/// docker plan's image is pinned to the digest its tag had at approval, and a moved tag is refused (real dockerd,
/// the test registry on 127.0.0.1:5000).
@Suite(.serialized)
struct ToolRegistryTests {
    static let registryOn = """
        [trust]
        require_approved_tools = true
        """

    /// A plan file in the node's folder, written from the plan's JSON as the task carries it.
    func planFile(_ node: TestNode, _ plan: JSONValue, name: String) throws -> String {
        let path = "\(node.dir)/\(name).plan.json"
        try Data(plan.encoded()).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func task(_ plan: JSONValue) -> [String: JSONValue] {
        ["schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-registry",
         "plan": plan]
    }

    func final(_ op: Operator, _ task: [String: JSONValue], timeout: Double = 30) throws -> TaskEvent {
        try op.waitForFinal([Tasks.id(task)], timeout: timeout)
        return try #require(op.finalState(of: Tasks.id(task)))
    }

    @Test func onlyApprovedPlansRunAndRevocationDeclinesAgain() throws {
        let node = try TestNode("registry", extra: TestNode.hostProcesses + "\n" + Self.registryOn)
        try node.start()
        let op = try Operator(node: node)
        let plan = Tasks.plan(["/bin/echo", "approved-tool-ran"])
        let file = try planFile(node, plan, name: "echo")
        let hash = PlanIdentity.hash(plan)
        let short = "sha256:" + hash.dropFirst(7).prefix(12)

        // Not approved yet: declined, naming the plan, its hash and how to approve it.
        let before = Self.task(plan)
        try op.submit(before)
        let declined = try final(op, before)
        #expect(declined.state == .declined)
        #expect(declined.detail.message == "plan test-tool 1.0 (\(short)) is not approved on this node (fem-client "
                + "tools approve); no version of test-tool is approved", "\(declined.detail.message ?? "")")

        let checkBefore = try node.run(["check"])
        #expect(checkBefore.output.contains("warn  trust.require_approved_tools: only approved tool plans run; 0 approved "
                                            + "(fem-client tools list): every task is declined"), "\(checkBefore.output)")

        // Approved from the shell while the daemon runs: the next task runs.
        let approve = try node.run(["tools", "approve", file, "--reason", "reviewed the script"])
        #expect(approve.status == 0, "\(approve.output)")
        #expect(approve.output.contains("approved plan test-tool 1.0 (process)"), "\(approve.output)")
        #expect(approve.output.contains("hash        \(hash)"), "\(approve.output)")
        let again = try node.run(["tools", "approve", file])
        #expect(again.status == 0 && again.output.contains("is already approved on this node; nothing changed"),
                "\(again.output)")

        #expect(try node.run(["check"]).output.contains("info  trust.require_approved_tools: only approved tool plans "
                                                        + "run; 1 approved (fem-client tools list)"))

        let approved = Self.task(plan)
        try op.submit(approved)
        let ran = try final(op, approved)
        #expect(ran.state == .completed, "\(ran.detail.message ?? "")")

        // One byte changed (a command argument), same id and version: a new plan, declined, naming the approved versions.
        let changed = Tasks.plan(["/bin/echo", "approved-tool-rax"])
        let other = Self.task(changed)
        try op.submit(other)
        let otherFinal = try final(op, other)
        #expect(otherFinal.state == .declined)
        let changedShort = "sha256:" + PlanIdentity.hash(changed).dropFirst(7).prefix(12)
        #expect(otherFinal.detail.message == "plan test-tool 1.0 (\(changedShort)) is not approved on this node "
                + "(fem-client tools approve); approved versions of test-tool: 1.0", "\(otherFinal.detail.message ?? "")")

        let list = try node.run(["tools", "list"])
        #expect(list.status == 0 && list.output.contains("test-tool") && list.output.contains(String(short)),
                "\(list.output)")

        // Revocation needs a reason; with one, the plan is declined again, naming who revoked it and why.
        let noReason = try node.run(["tools", "revoke", "test-tool", "1.0"])
        #expect(noReason.status != 0 && noReason.output.contains("--reason"), "\(noReason.output)")
        let blank = try node.run(["tools", "revoke", "test-tool", "1.0", "--reason", "  "])
        #expect(blank.status == 2 && blank.output.contains("a revocation needs a reason"), "\(blank.output)")
        let revoke = try node.run(["tools", "revoke", "test-tool", "1.0", "--reason", "prints too much"])
        #expect(revoke.status == 0 && revoke.output.contains("revoked plan test-tool 1.0 (\(short))"), "\(revoke.output)")
        let twice = try node.run(["tools", "revoke", hash, "--reason", "again"])
        #expect(twice.status == 1 && twice.output.contains("has no active approval on this node"), "\(twice.output)")

        let after = Self.task(plan)
        try op.submit(after)
        let revoked = try final(op, after)
        #expect(revoked.state == .declined)
        let account = Posix.account(uid: Posix.realUserID)?.name ?? "uid \(Posix.realUserID)"
        let message = revoked.detail.message ?? ""
        #expect(message.hasPrefix("plan test-tool 1.0 (\(short)) was revoked on this node by \(account) at "), "\(message)")
        #expect(message.hasSuffix(": prints too much"), "\(message)")

        // The history stays: --all lists the revoked approval with who, when and why.
        let all = try node.run(["tools", "list", "--all", "--json"])
        guard case .array(let rows) = try JSONValue.parse(Data(all.output.utf8)) else {
            Issue.record("tools list --json: not an array: \(all.output)")
            return
        }
        #expect(rows.count == 1)
        #expect(rows.first?["revoked"] == JSONValue.bool(true) && rows.first?["revoke_reason"]?.stringValue == "prints too much"
                && rows.first?["reason"]?.stringValue == "reviewed the script", "\(all.output)")
        #expect(try node.run(["tools", "list"]).output.contains("(no approved tools)"))
    }

    @Test func approvalRefusesBadInput() throws {
        let node = try TestNode("registry-input", extra: TestNode.hostProcesses + "\n" + Self.registryOn)
        try node.start()
        let bad = try planFile(node, .object(["schema_version": 1, "id": "x"]), name: "bad")
        let invalid = try node.run(["tools", "approve", bad])
        #expect(invalid.status == 2 && invalid.output.contains("not a valid tool plan"), "\(invalid.output)")
        let process = try planFile(node, Tasks.plan(["/bin/true"]), name: "true")
        let digest = try node.run(["tools", "approve", process, "--image-digest", "sha256:" + String(repeating: "0", count: 64)])
        #expect(digest.status == 2 && digest.output.contains("has no image to pin"), "\(digest.output)")
        let docker: JSONValue = ["schema_version": 1, "id": "img", "version": "1", "launcher": "docker",
                                 "image": "127.0.0.1:5000/fem/busybox:1.36", "command": ["base": ["/bin/true"]]]
        let notADigest = try node.run(["tools", "approve", try planFile(node, docker, name: "img"),
                                       "--image-digest", "latest"])
        #expect(notADigest.status == 2 && notADigest.output.contains("--image-digest: \"latest\" is not a digest"),
                "\(notADigest.output)")
        let odd: JSONValue = ["schema_version": 1, "id": "img", "version": "1", "launcher": "docker",
                              "image": "127.0.0.1:5000/fem/x?all=1#", "command": ["base": ["/bin/true"]]]
        let oddImage = try node.run(["tools", "approve", try planFile(node, odd, name: "odd")])
        #expect(oddImage.status == 2 && oddImage.output.contains("image: image \"127.0.0.1:5000/fem/x?all=1#\" is not an "
                                                                 + "image reference"), "\(oddImage.output)")
        // A plan whose code comes from a branch or an unchecked file is not what a reviewer saw: not approved.
        var branch = Tasks.plan(["/bin/true"])
        if case .object(var p) = branch {
            p["source"] = ["git": ["url": "git://127.0.0.1:19418/tool.git", "ref": "main"]]
            branch = .object(p)
        }
        let moving = try node.run(["tools", "approve", try planFile(node, branch, name: "branch")])
        #expect(moving.status == 2 && moving.output.contains("not approved: plan.source.git has no commit (ref main is "
                                                             + "whatever the server holds at run time)"), "\(moving.output)")
        var file = Tasks.plan(["/bin/true"])
        if case .object(var p) = file {
            p["source"] = ["files": [["url": "http://127.0.0.1:18080/files/tool.py", "path": "tool.py"]]]
            file = .object(p)
        }
        let unchecked = try node.run(["tools", "approve", try planFile(node, file, name: "file")])
        #expect(unchecked.status == 2 && unchecked.output.contains("plan.source.files[0] (tool.py) has no sha256"),
                "\(unchecked.output)")
        let badHash = try node.run(["tools", "revoke", "sha256:abc", "--reason", "x"])
        #expect(badHash.status == 2 && badHash.output.contains("is not a plan hash"), "\(badHash.output)")
    }

    // MARK: - Docker: digest pinning

    static let base = "127.0.0.1:5000/fem/busybox:1.36"
    static let repo = "127.0.0.1:5000/fem/registry-test"

    /// The Engine API on dockerd's socket, for what the launcher has no call for (tag, commit, push).
    func engineCall(_ method: String, _ path: String, headers: [(String, String)] = []) throws -> HTTPResponse {
        try HTTPTransfer.perform(HTTPRequest(method: method, url: "http://localhost/v1.41\(path)", headers: headers,
                                             unixSocket: "/var/run/docker.sock", timeoutSeconds: 120))
    }

    /// Pushes `repo:tag` to the test registry (no login there); a failure in the push stream fails the test.
    func push(_ tag: String) throws {
        let auth = Data("{}".utf8).base64EncodedString()
        let r = try engineCall("POST", "/images/\(Self.repo)/push?tag=\(tag)", headers: [("X-Registry-Auth", auth)])
        let text = String(decoding: r.body, as: UTF8.self)
        try #require(r.status == 200 && !text.contains("\"error\""), "push \(Self.repo):\(tag): \(text)")
    }

    /// The digest the registry holds for `repo:tag`, as dockerd sees it after a push.
    func registryDigest(_ engine: DockerEngine, _ tag: String) throws -> String {
        try engine.distributionDigest("\(Self.repo):\(tag)")
    }

    /// `repo:<new tag>` pushed to the test registry as a copy of the base image; returns the tag and its digest.
    func pushedTag(_ engine: DockerEngine) throws -> (tag: String, digest: String) {
        let tag = "t" + UUID().uuidString.prefix(8).lowercased()
        try engine.pull(Self.base)
        let tagged = try engineCall("POST", "/images/\(Self.base)/tag?repo=\(Self.repo)&tag=\(tag)")
        try #require(tagged.status == 201, "tag: \(String(decoding: tagged.body, as: UTF8.self))")
        try push(tag)
        return (tag, try registryDigest(engine, tag))
    }

    /// Moves `repo:tag` in the registry to another image (a commit of the base with one more label); returns the
    /// digest it points to now.
    func moveTag(_ engine: DockerEngine, _ tag: String) throws -> String {
        let container = try engine.createContainer(name: nil, body: ["Image": Self.base, "Cmd": ["/bin/true"]])
        defer { try? engine.remove(container) }
        let changes = DockerEngineQuery.escape("LABEL org.fem-client.test=\(tag)")
        let committed = try engineCall("POST", "/commit?container=\(container)&repo=\(Self.repo)&tag=\(tag)&changes=\(changes)")
        try #require(committed.status == 201, "commit: \(String(decoding: committed.body, as: UTF8.self))")
        try push(tag)
        return try registryDigest(engine, tag)
    }

    /// A Slurm container job (rootless podman in the job) pulls and runs the approved digest, whatever the tag says
    /// now: the tag is moved after the approval, the job runs, and its script names only `repo@<approved digest>`.
    @Test func aSlurmContainerJobRunsThePinnedDigestAfterTheTagMoved() throws {
        let engine = DockerEngine()
        try #require((try? engine.ping()) ?? false, "dockerd is not answering on /var/run/docker.sock")
        let slurm = try SlurmTests.slurmDir()
        let (tag, approvedDigest) = try pushedTag(engine)
        let reference = "\(Self.repo):\(tag)"
        let node = try TestNode("registry-slurm")
        try node.editConfig { $0 + """

            [launchers]
            enabled = ["slurm"]
            [launchers.slurm]
            shared_dir = "\(node.dir)"
            slurm_conf = "\(slurm)/slurm.conf"
            allowed_executables = ["/bin/sh"]
            poll_interval_ms = 100
            container_runtime = "podman"
            allowed_images = ["127.0.0.1:5000/fem/*"]
            insecure_registries = ["127.0.0.1:5000"]
            \(Self.registryOn)
            """ }
        try node.start()
        let op = try Operator(node: node)
        let plan: JSONValue = ["schema_version": 1, "id": "pinned-job", "version": "1.0", "launcher": "slurm",
                               "image": .string(reference), "command": ["base": ["/bin/sh", "-c", "echo pinned-job-ran"]]]
        let approve = try node.run(["tools", "approve", try planFile(node, plan, name: "job")])
        #expect(approve.status == 0 && approve.output.contains("\(reference) → \(approvedDigest)"), "\(approve.output)")
        let movedDigest = try moveTag(engine, tag)
        try #require(movedDigest != approvedDigest)

        let t = Self.task(plan)
        try op.submit(t)
        let ran = try final(op, t, timeout: 120)
        #expect(ran.state == .completed, "\(ran.detail.message ?? "")")
        let script = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/logs/slurm-job.sh", encoding: .utf8)
        #expect(script.contains("\(Self.repo)@\(approvedDigest)"), "\(script)")
        #expect(!script.contains(tag) && !script.contains(movedDigest), "the job never names the tag nor the moved image")
        try? engine.removeImage(reference)
    }

    @Test func aDockerPlanRunsByItsPinnedDigestAndAMovedTagIsRefused() throws {
        let engine = DockerEngine()
        try #require((try? engine.ping()) ?? false, "dockerd is not answering on /var/run/docker.sock")
        guard let dir = TestEnv.env["FEM_TEST_REGISTRY_DIR"], FileManager.default.fileExists(atPath: "\(dir)/digest") else {
            throw HarnessError("FEM_TEST_REGISTRY_DIR is not set: the test registry on 127.0.0.1:5000 is needed")
        }
        let (tag, approvedDigest) = try pushedTag(engine)
        let reference = "\(Self.repo):\(tag)"

        let node = try TestNode("registry-docker", extra: """
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            allowed_images = ["127.0.0.1:5000/fem/*"]
            \(Self.registryOn)
            """)
        try node.start()
        let op = try Operator(node: node)
        let plan: JSONValue = ["schema_version": 1, "id": "pinned-tool", "version": "2.0", "launcher": "docker",
                               "image": .string(reference), "command": ["base": ["/bin/sh", "-c", "echo pinned-ran"]]]
        let file = try planFile(node, plan, name: "pinned")
        let approve = try node.run(["tools", "approve", file, "--reason", "image reviewed"])
        #expect(approve.status == 0, "\(approve.output)")
        #expect(approve.output.contains("image       \(reference) → \(approvedDigest)"), "\(approve.output)")

        // The tag still points where it did: the task runs, by digest.
        let unmoved = Self.task(plan)
        try op.submit(unmoved)
        let ran = try final(op, unmoved, timeout: 90)
        #expect(ran.state == .completed, "\(ran.detail.message ?? "")")
        let progress = op.events(of: Tasks.id(unmoved)).compactMap(\.detail.message)
        #expect(progress.contains("image \(reference) ready (\(Self.repo)@\(approvedDigest))"), "\(progress)")

        // Another image under the same tag (a commit of the base with one more label), pushed: the tag was moved.
        let movedDigest = try moveTag(engine, tag)
        try #require(movedDigest != approvedDigest)

        let moved = Self.task(plan)
        try op.submit(moved)
        let refused = try final(op, moved, timeout: 90)
        #expect(refused.state == .declined)
        #expect(refused.detail.message == "image \(reference) resolves to \(movedDigest), but this node approved "
                + "pinned-tool 2.0 with \(approvedDigest): the tag was moved; approve the plan again after review",
                "\(refused.detail.message ?? "")")
        #expect(!op.events(of: Tasks.id(moved)).contains { $0.state == .running }, "the moved image never ran")
        try? engine.removeImage(reference)
    }
}

/// Percent-encoding for an Engine API query value.
enum DockerEngineQuery {
    static func escape(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? s
    }
}
