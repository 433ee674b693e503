import ArgumentParser
import FEMCore
import FEMJournal
import FEMLaunchers
import FEMStaging
import FEMSystem
import Foundation

/// `fem-client tools`: the node's tool registry. With `[trust] require_approved_tools = true` only plans whose
/// canonical hash (`PlanIdentity.hash`: RFC 8785 form, `signature` left out) was approved here run; a docker plan's
/// image is pinned to a manifest digest at its approval, and the node refuses the plan when its image resolves to
/// another. Approvals and revocations are journaled with the OS user who ran the command, when and why.
struct ToolsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tools", abstract: "The node's tool registry: approve, list and revoke tool plans.",
        subcommands: [Approve.self, List.self, Revoke.self])

    static let digestPattern = #"^sha256:[0-9a-f]{64}$"#

    static func short(_ hash: String) -> String { ToolRegistryPolicy.short(hash) }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Approve a tool plan (its canonical hash) and pin its image's digest.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The plan file (*.plan.json).") var file: String
        @Option(help: "Why (recorded with the approval). The approver recorded is the OS user running this command.")
        var reason: String?
        @Option(name: .customLong("image-digest"),
                help: "The image's manifest digest (sha256:...), for a tag dockerd cannot resolve here (offline sites).")
        var imageDigest: String?

        func run() async throws {
            let value = try DocumentFile.load(file)
            let plan = try DocumentFile.plan(value, file: file, why: "not a valid tool plan")
            // A reviewed plan must fix the code it fetches; a branch or an unchecked file is not what was reviewed.
            if let loose = PlanPinning.unpinned(plan) {
                throw CommandFailure.invalid("\(file): not approved: \(loose)")
            }
            let hash = PlanIdentity.hash(value)
            let needsRegistry = plan.image.map { !$0.contains("@") } == true && imageDigest == nil
            let config = try options.loadConfig(brokerFiles: needsRegistry)
            let digest = try Self.pinnedDigest(plan, explicit: imageDigest, config: config)
            let journal = try config.openJournal()
            let reasonText = reason.flatMap { $0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? nil : $0 }
            let result = try journal.approveTool(ToolApproval(
                planID: plan.id, version: plan.version, contentHash: hash, launcher: plan.launcher, image: plan.image,
                imageDigest: digest, approvedBy: Airlock.Decider.shell().name, approvedAt: Date(), reason: reasonText))
            switch result {
            case .approved(let a):
                print("approved plan \(a.planID.escapedForTerminal) \(a.version.escapedForTerminal) (\(a.launcher))")
                ToolsCommand.printDetails(a)
            case .alreadyApproved(let a):
                print("plan \(a.planID.escapedForTerminal) \(a.version.escapedForTerminal) (\(ToolsCommand.short(hash))) "
                      + "is already approved on this node; nothing changed")
                ToolsCommand.printDetails(a)
            }
        }

        /// The digest the plan's image is pinned to: the one its reference names, the one given, or the one the tag
        /// resolves to in its registry now (asked through dockerd, without pulling). Nil for plans without an image.
        static func pinnedDigest(_ plan: ToolPlan, explicit: String?, config: NodeConfig) throws -> String? {
            if let explicit, !Patterns.matches(ToolsCommand.digestPattern, explicit) {
                throw CommandFailure.invalid("--image-digest: \"\(explicit.escapedForTerminal)\" is not a digest "
                                             + "(sha256: and 64 lowercase hex digits)")
            }
            guard let image = plan.image else {
                if explicit != nil {
                    throw CommandFailure.invalid("--image-digest: plan \(plan.id) \(plan.version) has no image to pin")
                }
                return nil
            }
            // The reference goes into an Engine API path: only what a reference may hold.
            if let why = SlurmContainerScript.imageProblem(image) { throw CommandFailure.invalid("image: \(why)") }
            if image.contains("@") {
                let named = DockerEngine.split(image).1 ?? ""
                guard Patterns.matches(ToolsCommand.digestPattern, named) else {
                    throw CommandFailure.invalid("image: \"\(image.escapedForTerminal)\" names a digest that is not "
                                                 + "sha256: and 64 lowercase hex digits")
                }
                if let explicit, explicit != named {
                    throw CommandFailure.invalid("--image-digest: \(explicit) is not the digest the plan's image names "
                                                 + "(\(named))")
                }
                return named
            }
            if let explicit { return explicit }
            let engine = DockerEngine(socket: config.docker.socket)
            let auth = config.registries[ImageStageIn.registryHost(image)].map {
                ImageStageIn.authHeader(username: $0.username ?? "", password: $0.secret,
                                        server: ImageStageIn.registryHost(image))
            }
            do {
                return try engine.distributionDigest(image, registryAuth: auth)
            } catch let e as DockerError {
                throw CommandFailure("cannot resolve image \(image.escapedForTerminal) to a digest through dockerd on "
                                     + "\(config.docker.socket) (launchers.docker.socket): \(e.message); give the "
                                     + "digest with --image-digest sha256:... after checking it")
            }
        }
    }

    static func printDetails(_ a: ToolApproval) {
        print("hash        \(a.contentHash)")
        if let image = a.image {
            print("image       \(image.escapedForTerminal) → \(a.imageDigest ?? "(no digest)")")
        }
        print("approved    by \(a.approvedBy.escapedForTerminal) at \(FEMTime.format(a.approvedAt))"
              + (a.reason.map { ": \($0.escapedForTerminal)" } ?? ""))
        if let at = a.revokedAt {
            print("revoked     by \((a.revokedBy ?? "?").escapedForTerminal) at \(FEMTime.format(at)): "
                  + (a.revokeReason ?? "").escapedForTerminal)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Approved tool plans (with --all, revoked ones too).")
        @OptionGroup var options: ConfigOption
        @Flag(help: "Also list revoked approvals, with who revoked them, when and why.") var all = false
        @Flag(help: "Print the approvals as JSON.") var json = false

        func run() async throws {
            let config = try options.loadConfig(brokerFiles: false)
            let rows = try config.openJournal().toolApprovals(includeRevoked: all)
            if json {
                let items: [JSONValue] = rows.map { a in
                    var o: [String: JSONValue] = [
                        "plan_id": .string(a.planID), "version": .string(a.version), "hash": .string(a.contentHash),
                        "launcher": .string(a.launcher), "approved_by": .string(a.approvedBy),
                        "approved_at": .string(FEMTime.format(a.approvedAt)), "revoked": .bool(a.isRevoked),
                    ]
                    if let v = a.image { o["image"] = .string(v) }
                    if let v = a.imageDigest { o["image_digest"] = .string(v) }
                    if let v = a.reason { o["reason"] = .string(v) }
                    if let v = a.revokedBy { o["revoked_by"] = .string(v) }
                    if let v = a.revokedAt { o["revoked_at"] = .string(FEMTime.format(v)) }
                    if let v = a.revokeReason { o["revoke_reason"] = .string(v) }
                    return .object(o)
                }
                print(String(decoding: JSONValue.array(items).encoded(), as: UTF8.self))
                return
            }
            if rows.isEmpty {
                print(all ? "(no tool was ever approved on this node)" : "(no approved tools)")
                return
            }
            print("PLAN                     VERSION     HASH                  APPROVED BY  AT                    IMAGE")
            for a in rows {
                let plan = a.planID.padding(toLength: 24, withPad: " ", startingAt: 0)
                let version = a.version.padding(toLength: 11, withPad: " ", startingAt: 0)
                let by = a.approvedBy.padding(toLength: 12, withPad: " ", startingAt: 0)
                let image = a.image.map { "\($0) → \(a.imageDigest ?? "?")" } ?? "-"
                print("\(plan.escapedForTerminal) \(version.escapedForTerminal) \(ToolsCommand.short(a.contentHash)) "
                      + "\(by.escapedForTerminal) \(FEMTime.format(a.approvedAt).prefix(19))   \(image.escapedForTerminal)")
                if let at = a.revokedAt {
                    print("    revoked by \((a.revokedBy ?? "?").escapedForTerminal) at \(FEMTime.format(at)): "
                          + (a.revokeReason ?? "").escapedForTerminal)
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an approval: by plan id and version (every hash of it), or by hash.",
            discussion: "fem-client tools revoke <plan-id> <version> --reason R, or fem-client tools revoke "
                + "sha256:<hash> --reason R. The approval's row stays in the journal with who revoked it, when and why.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "<plan-id> <version>, or sha256:<hash>.") var target: [String]
        @Option(help: "Why (required; recorded with the revocation).") var reason: String

        func run() async throws {
            let why = reason.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !why.isEmpty else { throw CommandFailure.invalid("--reason: a revocation needs a reason") }
            let what: ToolRevocationTarget
            switch target.count {
            case 1 where target[0].hasPrefix("sha256:"):
                guard Patterns.matches(ToolsCommand.digestPattern, target[0]) else {
                    throw CommandFailure.invalid("\"\(target[0].escapedForTerminal)\" is not a plan hash "
                                                 + "(sha256: and 64 lowercase hex digits)")
                }
                what = .hash(target[0])
            case 2:
                what = .plan(id: target[0], version: target[1])
            default:
                throw CommandFailure.invalid("give <plan-id> <version> or sha256:<hash> (fem-client tools list shows them)")
            }
            let config = try options.loadConfig(brokerFiles: false)
            let revoked = try config.openJournal().revokeTool(what, by: Airlock.Decider.shell().name, at: Date(),
                                                              reason: why)
            guard !revoked.isEmpty else {
                throw CommandFailure("\(what.description.escapedForTerminal) has no active approval on this node "
                                     + "(fem-client tools list --all)")
            }
            for a in revoked {
                print("revoked plan \(a.planID.escapedForTerminal) \(a.version.escapedForTerminal) "
                      + "(\(ToolsCommand.short(a.contentHash))); its tasks are declined from now on")
            }
        }
    }
}
