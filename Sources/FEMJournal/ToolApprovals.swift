import FEMCore
import Foundation
import GRDB

/// One approval of a tool plan in the node's tool registry (`fem-client tools`): the plan's canonical hash
/// (`PlanIdentity.hash`), what it is, the image digest pinned for it, who approved it, when and why; and, once
/// revoked, who revoked it, when and why. A revoked approval keeps its row (the registry's history).
public struct ToolApproval: Sendable, Equatable {
    public var id: Int64
    public var planID: String
    public var version: String
    /// `sha256:<64 hex>` of the plan's canonical form without its signature.
    public var contentHash: String
    public var launcher: String
    /// The plan's `image` as written (a tag or a digest reference), nil for plans without one.
    public var image: String?
    /// The `sha256:<hex>` manifest digest the image was pinned to when approved.
    public var imageDigest: String?
    public var approvedBy: String
    public var approvedAt: Date
    public var reason: String?
    public var revokedBy: String?
    public var revokedAt: Date?
    public var revokeReason: String?

    public var isRevoked: Bool { revokedAt != nil }

    public init(id: Int64 = 0, planID: String, version: String, contentHash: String, launcher: String,
                image: String? = nil, imageDigest: String? = nil, approvedBy: String, approvedAt: Date,
                reason: String? = nil, revokedBy: String? = nil, revokedAt: Date? = nil, revokeReason: String? = nil) {
        self.id = id
        self.planID = planID
        self.version = version
        self.contentHash = contentHash
        self.launcher = launcher
        self.image = image
        self.imageDigest = imageDigest
        self.approvedBy = approvedBy
        self.approvedAt = approvedAt
        self.reason = reason
        self.revokedBy = revokedBy
        self.revokedAt = revokedAt
        self.revokeReason = revokeReason
    }
}

/// What an approval did: a new row, or the hash was approved already (no second row).
public enum ToolApprovalResult: Sendable, Equatable {
    case approved(ToolApproval)
    case alreadyApproved(ToolApproval)
}

/// What is revoked: every active approval of a plan id and version, or the one of a hash.
public enum ToolRevocationTarget: Sendable, Equatable, CustomStringConvertible {
    case plan(id: String, version: String)
    case hash(String)

    public var description: String {
        switch self {
        case .plan(let id, let version): "plan \(id) \(version)"
        case .hash(let hash): hash
        }
    }
}

extension SQLiteJournal {
    /// The `tool_approvals` table (migration `v2-tool-approvals`). At most one active (unrevoked) row per hash.
    static func createToolApprovals(_ db: Database) throws {
        try db.execute(sql: """
            CREATE TABLE tool_approvals (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                plan_id TEXT NOT NULL,
                version TEXT NOT NULL,
                content_hash TEXT NOT NULL,
                launcher TEXT NOT NULL,
                image TEXT,
                image_digest TEXT,
                approved_by TEXT NOT NULL,
                approved_at TEXT NOT NULL,
                reason TEXT,
                revoked_by TEXT,
                revoked_at TEXT,
                revoke_reason TEXT
            );
            CREATE INDEX tool_approvals_hash ON tool_approvals(content_hash);
            CREATE INDEX tool_approvals_plan ON tool_approvals(plan_id, version);
            CREATE UNIQUE INDEX tool_approvals_active ON tool_approvals(content_hash) WHERE revoked_at IS NULL;
            """)
    }

    /// Records an approval, unless the same hash has an active one already (returned as `.alreadyApproved`).
    public func approveTool(_ approval: ToolApproval) throws -> ToolApprovalResult {
        try db.write { db in
            if let active = try Self.activeApproval(db, hash: approval.contentHash) { return .alreadyApproved(active) }
            try db.execute(sql: """
                INSERT INTO tool_approvals (plan_id, version, content_hash, launcher, image, image_digest, approved_by,
                                            approved_at, reason)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [approval.planID, approval.version, approval.contentHash, approval.launcher,
                                 approval.image, approval.imageDigest, approval.approvedBy,
                                 FEMTime.format(approval.approvedAt), approval.reason])
            var row = approval
            row.id = db.lastInsertedRowID
            row.revokedBy = nil
            row.revokedAt = nil
            row.revokeReason = nil
            return .approved(row)
        }
    }

    /// Revokes the active approvals `target` names; returns them as revoked (empty: there was none to revoke).
    public func revokeTool(_ target: ToolRevocationTarget, by: String, at: Date, reason: String) throws -> [ToolApproval] {
        try db.write { db in
            let (condition, args): (String, StatementArguments) = switch target {
            case .plan(let id, let version): ("plan_id = ? AND version = ?", [id, version])
            case .hash(let hash): ("content_hash = ?", [hash])
            }
            let active = try Row.fetchAll(db, sql: "SELECT * FROM tool_approvals WHERE \(condition) AND revoked_at IS NULL "
                                              + "ORDER BY id", arguments: args).map(Self.approval)
            guard !active.isEmpty else { return [] }
            try db.execute(sql: """
                UPDATE tool_approvals SET revoked_by = ?, revoked_at = ?, revoke_reason = ?
                WHERE \(condition) AND revoked_at IS NULL
                """, arguments: [by, FEMTime.format(at), reason] + args)
            return active.map { var r = $0; r.revokedBy = by; r.revokedAt = at; r.revokeReason = reason; return r }
        }
    }

    /// The registry's answer for one hash: its active approval, else its latest revoked one, else nil.
    public func toolApproval(hash: String) throws -> ToolApproval? {
        try db.read { db in
            try Row.fetchOne(db.cachedStatement(sql: """
                SELECT * FROM tool_approvals WHERE content_hash = ? ORDER BY (revoked_at IS NULL) DESC, id DESC LIMIT 1
                """), arguments: [hash]).map(Self.approval)
        }
    }

    /// The versions of `planID` with an active approval, in the order they were first approved.
    public func approvedVersions(of planID: String) throws -> [String] {
        try db.read { db in
            try String.fetchAll(db.cachedStatement(sql: """
                SELECT version FROM tool_approvals WHERE plan_id = ? AND revoked_at IS NULL
                GROUP BY version ORDER BY MIN(id)
                """), arguments: [planID])
        }
    }

    /// Approvals in the order they were made: the active ones, or (`includeRevoked`) all.
    public func toolApprovals(includeRevoked: Bool) throws -> [ToolApproval] {
        try db.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM tool_approvals"
                             + (includeRevoked ? "" : " WHERE revoked_at IS NULL") + " ORDER BY id").map(Self.approval)
        }
    }

    private static func activeApproval(_ db: Database, hash: String) throws -> ToolApproval? {
        try Row.fetchOne(db, sql: "SELECT * FROM tool_approvals WHERE content_hash = ? AND revoked_at IS NULL",
                         arguments: [hash]).map(approval)
    }

    /// A row as written; a time that does not read is an error naming the approval, never "now".
    private static func approval(_ row: Row) throws -> ToolApproval {
        let id: Int64 = row["id"]
        guard let approvedAt = FEMTime.parse(row["approved_at"]) else {
            throw JournalError.corrupt("tool approval \(id)", "its approved_at does not read")
        }
        let revokedText: String? = row["revoked_at"]
        let revokedAt = revokedText.flatMap(FEMTime.parse)
        if revokedText != nil && revokedAt == nil {
            throw JournalError.corrupt("tool approval \(id)", "its revoked_at does not read")
        }
        return ToolApproval(id: id, planID: row["plan_id"], version: row["version"], contentHash: row["content_hash"],
                            launcher: row["launcher"], image: row["image"], imageDigest: row["image_digest"],
                            approvedBy: row["approved_by"], approvedAt: approvedAt, reason: row["reason"],
                            revokedBy: row["revoked_by"], revokedAt: revokedAt, revokeReason: row["revoke_reason"])
    }
}
