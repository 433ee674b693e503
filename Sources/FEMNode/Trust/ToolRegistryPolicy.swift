import FEMCore
import FEMJournal
import Foundation

/// `[trust] require_approved_tools = true`: only plans whose canonical hash (`PlanIdentity.hash`: the plan's RFC 8785
/// form without its signature) an administrator approved with `fem-client tools approve` run on this node. The
/// registry is read from the journal at each admission (approvals are made from the shell while the daemon runs; one
/// indexed query). An approved plan's run is bound to the image digest pinned at its approval.
struct ToolRegistryPolicy: PlanTrust {
    let journal: SQLiteJournal

    func admit(_ plan: ToolPlan, taskID: String) -> Result<TrustVerdict, PolicyDecline> {
        guard let hash = plan.contentHash else {
            return .failure(PolicyDecline("plan \(plan.id) \(plan.version) has no document to hash, so this node "
                                          + "cannot tell whether it was approved (trust.require_approved_tools)"))
        }
        let name = "plan \(plan.id) \(plan.version) (\(Self.short(hash)))"
        do {
            if let approval = try journal.toolApproval(hash: hash) {
                if !approval.isRevoked {
                    // Approved before sources had to be pinned (or with the node's check bypassed): still not run.
                    if let loose = PlanPinning.unpinned(plan) {
                        return .failure(PolicyDecline("\(name) is approved, but \(loose) (trust.require_approved_tools "
                                                      + "runs only code that was reviewed)"))
                    }
                    return .success(TrustVerdict(imageDigest: approval.imageDigest))
                }
                let when = approval.revokedAt.map(FEMTime.format) ?? "?"
                return .failure(PolicyDecline("\(name) was revoked on this node by \(approval.revokedBy ?? "?") at "
                                              + "\(when): \(approval.revokeReason ?? "")"))
            }
            let versions = try journal.approvedVersions(of: plan.id)
            return .failure(PolicyDecline("\(name) is not approved on this node (fem-client tools approve); "
                                          + (versions.isEmpty ? "no version of \(plan.id) is approved"
                                                              : "approved versions of \(plan.id): "
                                                                + versions.joined(separator: ", "))))
        } catch {
            // Fail closed: a registry that cannot be read approves nothing.
            return .failure(PolicyDecline("cannot read this node's tool registry (trust.require_approved_tools): \(error)"))
        }
    }

    /// `sha256:` and the first 12 hex digits: enough to tell plans apart in a message.
    static func short(_ hash: String) -> String {
        hash.hasPrefix("sha256:") ? "sha256:" + hash.dropFirst(7).prefix(12) : String(hash.prefix(19))
    }
}
