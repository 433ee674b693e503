import Foundation

/// The node's own word on whether a plan may run here, beyond its launcher allowlists: who signed it and whether
/// the site approved it (docs/security.md, "Trust"). Asked before a task starts and again before a plan alternative
/// runs; a refusal is a decline naming the reason.
public protocol PlanTrust: Sendable {
    /// Why this node refuses the plan (`.failure`), or what it binds the run to (`.success`).
    func admit(_ plan: ToolPlan, taskID: String) -> Result<TrustVerdict, PolicyDecline>
}

/// What a trusted plan's run is bound to.
public struct TrustVerdict: Sendable, Equatable {
    /// The image digest (`sha256:<hex>`) the site approved for the plan's `image`: the launcher refuses an image
    /// that resolves to another.
    public var imageDigest: String?
    /// The trusted key that signed the plan (its name in `[trust.keys]`), when it was signed.
    public var signer: String?
    /// What the task's `running` event says about the plan's trust (`signed_by`, `plan_sha256`, `signature`).
    public var eventData: [String: JSONValue] = [:]

    public init(imageDigest: String? = nil, signer: String? = nil, eventData: [String: JSONValue] = [:]) {
        self.imageDigest = imageDigest
        self.signer = signer
        self.eventData = eventData
    }
}

/// No trust policy: every plan the allowlists permit may run (the default, `[trust]` absent).
public struct OpenPlanTrust: PlanTrust {
    public init() {}
    public func admit(_ plan: ToolPlan, taskID: String) -> Result<TrustVerdict, PolicyDecline> { .success(TrustVerdict()) }
}

/// Several policies in turn: the first refusal wins; verdicts merge (a later policy's values fill what is unset).
public struct CombinedPlanTrust: PlanTrust {
    public var policies: [any PlanTrust]
    public init(_ policies: [any PlanTrust]) { self.policies = policies }

    public func admit(_ plan: ToolPlan, taskID: String) -> Result<TrustVerdict, PolicyDecline> {
        var verdict = TrustVerdict()
        for policy in policies {
            switch policy.admit(plan, taskID: taskID) {
            case .failure(let decline): return .failure(decline)
            case .success(let v):
                verdict.imageDigest = verdict.imageDigest ?? v.imageDigest
                verdict.signer = verdict.signer ?? v.signer
                verdict.eventData.merge(v.eventData) { first, _ in first }
            }
        }
        return .success(verdict)
    }
}

/// What a reviewed plan must fix besides its own bytes: the code it fetches. A git branch or an unchecked file URL
/// serves whatever its server holds at run time, so a plan a site approved, or an author signed, would run code
/// nobody reviewed. Images are pinned by digest at approval (the tool registry); sources must be pinned in the plan.
public enum PlanPinning {
    /// Why `plan` does not fix the code it fetches (naming the field and what to add); nil when it does.
    public static func unpinned(_ plan: ToolPlan) -> String? {
        switch plan.source {
        case .git(let git)? where git.commit == nil:
            return "plan.source.git has no commit (ref \(git.ref ?? "HEAD") is whatever the server holds at run "
                + "time): pin the reviewed commit in `commit`"
        case .files(let files)?:
            if let i = files.firstIndex(where: { $0.sha256 == nil }) {
                return "plan.source.files[\(i)] (\(files[i].path)) has no sha256: pin the reviewed file's sha256"
            }
            return nil
        default:
            return nil
        }
    }
}
