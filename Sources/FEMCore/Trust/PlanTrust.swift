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
