@testable import FEMNode
import FEMCore
import FEMJournal
import Foundation
import Testing

/// `[trust] require_approved_tools` and the policy that reads the journal's tool registry at each admission.
struct ToolRegistryPolicyTests {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-registry-\(UUID().uuidString)").path

    init() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    @Test func theKeyDefaultsToOffAndIsTyped() throws {
        #expect(try NodeConfig.parse(NodeConfigTests.toml(), source: "t", environment: [:]).requireApprovedTools == false)
        let on = try NodeConfig.parse(NodeConfigTests.toml("[trust]\nrequire_approved_tools = true"), source: "t",
                                      environment: [:])
        #expect(on.requireApprovedTools)
        let wrong = NodeConfigTests.problems(NodeConfigTests.toml("[trust]\nrequire_approved_tools = \"yes\""))
        #expect(wrong.contains { $0.hasPrefix("trust.require_approved_tools:") }, "\(wrong)")
        let unknown = NodeConfigTests.problems(NodeConfigTests.toml("[trust]\nrequire_aproved_tools = true"))
        #expect(unknown.contains { $0.hasPrefix("trust.require_aproved_tools: is not a known key") }, "\(unknown)")
    }

    func plan(_ version: String, image: String? = nil, arg: String = "x") throws -> ToolPlan {
        var doc: [String: JSONValue] = ["schema_version": 1, "id": "tool", "version": .string(version),
                                        "launcher": image == nil ? "process" : "docker",
                                        "command": ["base": ["/bin/echo", .string(arg)]]]
        if let image { doc["image"] = .string(image) }
        return try DocumentReader.readPlan(.object(doc))
    }

    func approve(_ j: SQLiteJournal, _ p: ToolPlan, digest: String? = nil) throws {
        _ = try j.approveTool(ToolApproval(planID: p.id, version: p.version, contentHash: try #require(p.contentHash),
                                           launcher: p.launcher, image: p.image, imageDigest: digest,
                                           approvedBy: "steward", approvedAt: Date()))
    }

    @Test func declinesUnapprovedAndRevokedAndBindsTheDigest() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        let policy = ToolRegistryPolicy(journal: j)
        let v1 = try plan("1.0")
        let short = ToolRegistryPolicy.short(try #require(v1.contentHash))
        #expect(short.count == "sha256:".count + 12)
        guard case .failure(let none) = policy.admit(v1, taskID: "t") else { Issue.record("unapproved admitted"); return }
        #expect(none.reason == "plan tool 1.0 (\(short)) is not approved on this node (fem-client tools approve); "
                + "no version of tool is approved")

        let digest = "sha256:" + String(repeating: "e", count: 64)
        let image = try plan("1.1", image: "r/tool:1")
        try approve(j, v1)
        try approve(j, image, digest: digest)
        #expect(try policy.admit(v1, taskID: "t").get() == TrustVerdict())
        #expect(try policy.admit(image, taskID: "t").get().imageDigest == digest)

        let changed = try plan("1.0", arg: "y")
        guard case .failure(let other) = policy.admit(changed, taskID: "t") else { Issue.record("changed admitted"); return }
        #expect(other.reason.hasSuffix("is not approved on this node (fem-client tools approve); approved versions "
                                       + "of tool: 1.0, 1.1"), "\(other.reason)")

        let at = Date(timeIntervalSince1970: 1_800_000_000)
        _ = try j.revokeTool(.plan(id: "tool", version: "1.0"), by: "auditor", at: at, reason: "too chatty")
        guard case .failure(let revoked) = policy.admit(v1, taskID: "t") else { Issue.record("revoked admitted"); return }
        #expect(revoked.reason == "plan tool 1.0 (\(short)) was revoked on this node by auditor at "
                + "\(FEMTime.format(at)): too chatty")
    }
}
