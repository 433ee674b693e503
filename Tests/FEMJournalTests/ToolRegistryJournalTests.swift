import FEMCore
@testable import FEMJournal
import Foundation
import Testing

/// The journal's `tool_approvals` table: approvals, no duplicate for one hash, revocation keeping the row.
struct ToolRegistryJournalTests {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-registry-\(UUID().uuidString)").path

    init() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    static let hashA = "sha256:" + String(repeating: "a", count: 64)
    static let hashB = "sha256:" + String(repeating: "b", count: 64)
    static let digest = "sha256:" + String(repeating: "d", count: 64)
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func approval(_ hash: String, version: String = "1.0", image: String? = nil) -> ToolApproval {
        ToolApproval(planID: "tool", version: version, contentHash: hash, launcher: image == nil ? "process" : "docker",
                     image: image, imageDigest: image == nil ? nil : Self.digest, approvedBy: "steward",
                     approvedAt: t0, reason: "reviewed")
    }

    @Test func approveListAndFindByHash() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        #expect(try j.toolApproval(hash: Self.hashA) == nil)
        guard case .approved(let a) = try j.approveTool(approval(Self.hashA, image: "r/x:1")) else {
            Issue.record("the first approval should be recorded")
            return
        }
        #expect(a.id > 0 && !a.isRevoked)
        let found = try #require(try j.toolApproval(hash: Self.hashA))
        #expect(found == a)
        #expect(found.imageDigest == Self.digest && found.image == "r/x:1" && found.approvedAt == t0)
        #expect(try j.toolApprovals(includeRevoked: false).map(\.contentHash) == [Self.hashA])
    }

    @Test func aSecondApprovalOfOneHashAddsNoRow() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        _ = try j.approveTool(approval(Self.hashA))
        var again = approval(Self.hashA)
        again.approvedBy = "someone-else"
        guard case .alreadyApproved(let existing) = try j.approveTool(again) else {
            Issue.record("a second approval of the same hash should say it is already approved")
            return
        }
        #expect(existing.approvedBy == "steward")
        #expect(try j.toolApprovals(includeRevoked: true).count == 1)
    }

    @Test func revokeKeepsTheRowAndAllowsANewApproval() throws {
        let j = try SQLiteJournal(path: "\(dir)/j.sqlite", nodeID: "n1")
        _ = try j.approveTool(approval(Self.hashA))
        _ = try j.approveTool(approval(Self.hashB, version: "1.1"))
        #expect(try j.approvedVersions(of: "tool") == ["1.0", "1.1"])
        let t1 = t0.addingTimeInterval(60)
        let revoked = try j.revokeTool(.plan(id: "tool", version: "1.0"), by: "auditor", at: t1, reason: "leaks ids")
        #expect(revoked.map(\.contentHash) == [Self.hashA])
        #expect(revoked.first?.revokedBy == "auditor")
        let row = try #require(try j.toolApproval(hash: Self.hashA))
        #expect(row.isRevoked && row.revokedBy == "auditor" && row.revokedAt == t1 && row.revokeReason == "leaks ids")
        #expect(try j.toolApprovals(includeRevoked: false).map(\.contentHash) == [Self.hashB])
        #expect(try j.toolApprovals(includeRevoked: true).count == 2)
        #expect(try j.approvedVersions(of: "tool") == ["1.1"])
        // Nothing left to revoke: an empty answer, not a second revocation.
        #expect(try j.revokeTool(.hash(Self.hashA), by: "auditor", at: t1, reason: "again").isEmpty)
        // Approved again after review: a new row; the revoked one stays as history, and the hash is active again.
        guard case .approved(let renewed) = try j.approveTool(approval(Self.hashA)) else {
            Issue.record("a revoked hash can be approved again")
            return
        }
        #expect(try j.toolApproval(hash: Self.hashA)?.id == renewed.id)
        #expect(try j.toolApprovals(includeRevoked: true).count == 3)
        #expect(try j.revokeTool(.hash(Self.hashB), by: "auditor", at: t1, reason: "old").map(\.version) == ["1.1"])
    }
}
