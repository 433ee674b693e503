import FEMCore
import Foundation

/// A public key this node trusts to sign plans (`[trust.keys.<name>]`).
public struct TrustedKey: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    /// The raw 32-byte Ed25519 public key.
    public var publicKey: [UInt8]
    public var keyID: String

    public init(name: String, publicKey: [UInt8]) {
        self.name = name
        self.publicKey = publicKey
        keyID = SigningKeys.keyID(publicKey: publicKey)
    }

    public var description: String { "\(name) (key id \(keyID))" }
}

/// Signed plans (`[trust]`, docs/security.md "Signed plans"). A signature is checked with the trusted key its key id
/// names, over the plan's canonical form without `signature` (`PlanIdentity.signedBytes`):
/// - a signature that does not verify with a trusted key is always declined (a forged or altered plan is an attack,
///   whether or not signatures are required);
/// - with `require_signed_plans`, an unsigned plan and a plan signed by a key the node does not know are declined;
/// - without it they run, and the `running` event says the plan was not verified.
public struct SignaturePolicy: PlanTrust {
    public var requireSigned: Bool
    public var keys: [TrustedKey]

    public init(requireSigned: Bool, keys: [TrustedKey]) {
        self.requireSigned = requireSigned
        self.keys = keys
    }

    public init(_ config: TrustConfig) {
        self.init(requireSigned: config.requireSignedPlans, keys: config.keys)
    }

    public func admit(_ plan: ToolPlan, taskID: String) -> Result<TrustVerdict, PolicyDecline> {
        let what = "plan \(plan.id) \(plan.version)"
        guard let signature = plan.signature else {
            if requireSigned {
                return .failure(PolicyDecline("\(what) is not signed, and this node requires signed plans "
                                              + "(trust.require_signed_plans)"))
            }
            return .success(TrustVerdict())
        }
        let hash = plan.contentHash.map(JSONValue.string)
        guard let key = keys.first(where: { $0.keyID == signature.keyID }) else {
            let trusted = keys.isEmpty ? "none" : keys.map(\.description).joined(separator: ", ")
            if requireSigned {
                return .failure(PolicyDecline("\(what) is signed by key id \(signature.keyID), which this node does not "
                                              + "trust (trusted keys: \(trusted))"))
            }
            var data: [String: JSONValue] = [
                "signature": .string("not verified: signed by key id \(signature.keyID), which this node does not know"),
            ]
            data["plan_sha256"] = hash
            return .success(TrustVerdict(eventData: data))
        }
        guard signature.algorithm == "ed25519", let document = plan.document,
              SigningKeys.verify(signature.value, of: PlanIdentity.signedBytes(document), publicKey: key.publicKey) else {
            return .failure(PolicyDecline("\(what): its signature does not verify with trusted key \(key.name) (key id "
                                          + "\(key.keyID)): the plan was changed after it was signed, or the signature "
                                          + "is not this key's"))
        }
        // Where signatures are required, a signed plan must also fix the code it fetches.
        if requireSigned, let loose = PlanPinning.unpinned(plan) {
            return .failure(PolicyDecline("\(what) is signed by \(key.name), but \(loose); this node requires signed "
                                          + "plans (trust.require_signed_plans), and a moving source is not what was signed"))
        }
        var data: [String: JSONValue] = ["signed_by": .string(key.name), "key_id": .string(key.keyID)]
        data["plan_sha256"] = hash
        return .success(TrustVerdict(signer: key.name, eventData: data))
    }
}
