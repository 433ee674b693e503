import FEMCore
import FEMJournal
import FEMStaging
import FEMSystem
import Foundation

/// The output airlock's decisions, whoever makes them: `fem-client outputs approve|reject` on the node's shell (the
/// OS account) or the steward's console (the logged-in console account). What is reviewed is the manifest journaled
/// when the outputs were copied into the node's staging folder; an approval is bound to that manifest's sha256, and
/// the daemon uploads the staged copies only while they still match it. Each decision is journaled (who, how, when,
/// why) and sent as an `approval` event.
enum Airlock {
    /// Who decides: a name no one can type on the decider's behalf (the OS account behind the shell, or the account
    /// that logged in to the console), and through what.
    struct Decider: Sendable {
        var name: String
        /// `shell` or `console`.
        var via: String
        /// The OS user id, for decisions made on the shell.
        var uid: UInt32?

        /// The real user running the command (getuid → passwd), e.g. the steward behind `sudo -u fem`.
        static func shell() -> Decider {
            let uid = Posix.realUserID
            return Decider(name: Posix.account(uid: uid)?.name ?? "uid \(uid)", via: "shell", uid: uid)
        }
    }

    /// The task, when its outputs wait for a decision; otherwise why there is nothing to decide.
    static func waiting(_ journal: SQLiteJournal, _ taskID: String) throws -> TaskRecord {
        guard let rec = try journal.task(taskID) else { throw CommandFailure("task \(taskID) is not in the journal") }
        guard rec.state == .awaitingApproval else {
            throw CommandFailure("task \(taskID) is \(rec.state.rawValue), not awaiting_approval: there is nothing to decide")
        }
        if let decided = try journal.completedStep(Runner.approvalStep, of: taskID) {
            throw CommandFailure("task \(taskID) is already decided (\(decided)); the daemon is sending or dropping its outputs")
        }
        return rec
    }

    /// The parts of `manifest.json` a reviewer looks at.
    struct ManifestView: Decodable {
        struct File: Decodable {
            var path: String
            var size: Int64
            var sha256: String
        }
        var tool: [String: String]
        var state: String
        var exit_code: Int32?
        var git_commit: String?
        var image: String?
        var image_digest: String?
        var files: [File]
        /// What the output checks found at collection (`[outputs.checks]`); nil in manifests made before them.
        var findings: [Finding]?

        var bytes: Int64 { files.reduce(0) { $0 + $1.size } }
        var toolName: String { [tool["id"], tool["version"]].compactMap { $0 }.joined(separator: " ") }
    }

    /// One finding of an output check, as `manifest.json` holds it. `row` and `column` are 1-based (row 1 is a
    /// table's header line); `value` is the cell as written (node-local: never sent in events).
    struct Finding: Codable, Sendable, Equatable {
        var check: String
        var file: String
        var row: Int?
        var column: Int?
        var column_name: String?
        var value: String?
        var message: String
    }

    /// The manifest journaled when the outputs were staged, raw, read, and its sha256 (what an approval binds to).
    static func manifest(_ journal: SQLiteJournal, _ taskID: String) -> (raw: Data, view: ManifestView, sha256: String)? {
        guard let text = try? journal.completedStep(OutputDelivery.manifestStep, of: taskID) else { return nil }
        let data = Data(text.utf8)
        guard let view = try? JSONDecoder().decode(ManifestView.self, from: data) else { return nil }
        let digest = SHA256Digest()
        digest.update(Array(data))
        return (data, view, digest.finalizeHex())
    }

    /// What was decided, for the decider to see.
    struct Decision: Sendable {
        var message: String
        var manifestSHA256: String?
    }

    /// Journals a decision on a task's held outputs: the `approval` event first, then the steps the daemon acts on,
    /// so an acted-on decision always has its record and an approval names the manifest it was given for.
    /// - Parameters:
    ///   - manifestSHA256: when given, the manifest the decider reviewed: the decision is refused if the held
    ///     manifest is another (the console page was older than the outputs).
    ///   - override: why outputs with findings are approved anyway; required to approve them when
    ///     `blockOnFindings` (`outputs.checks.block_on_findings`), journaled with the decision either way.
    @discardableResult
    static func decide(_ journal: SQLiteJournal, taskID: String, approve: Bool, reason: String?, by decider: Decider,
                       manifestSHA256 expected: String? = nil, override: String? = nil,
                       blockOnFindings: Bool = false) throws -> Decision {
        _ = try waiting(journal, taskID)
        let held = manifest(journal, taskID)
        if approve && held == nil {
            throw CommandFailure("task \(taskID) has no journaled manifest of held outputs (held by an older version?): "
                                  + "it cannot be approved; reject it and run the task again")
        }
        if let expected, let held, expected != held.sha256 {
            throw CommandFailure("task \(taskID)'s held manifest is sha256 \(held.sha256), not the \(expected) that was "
                                  + "reviewed: review it again")
        }
        let findings = held?.view.findings ?? []
        let overriding = override.flatMap { $0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? nil : $0 }
        if approve && blockOnFindings && !findings.isEmpty && overriding == nil {
            throw CommandFailure("task \(taskID)'s outputs have \(findings.count) finding(s) of the output checks and "
                                  + "this node blocks their approval (outputs.checks.block_on_findings): review them "
                                  + "(fem-client outputs show \(taskID)) and approve with an override reason, or reject")
        }
        let decision = approve ? "approved" : "rejected: \(reason ?? "")"
        var data: [String: JSONValue] = ["decision": .string(approve ? "approved" : "rejected"),
                                         "by": .string(decider.name), "via": .string(decider.via),
                                         "at": .string(FEMTime.format(Date()))]
        if let uid = decider.uid { data["uid"] = .int(Int64(uid)) }
        if let held { data["manifest_sha256"] = .string(held.sha256) }
        if let reason { data["reason"] = .string(reason) }
        if !findings.isEmpty { data["findings"] = .int(Int64(findings.count)) }
        if approve, let overriding, !findings.isEmpty { data["override"] = .string(overriding) }
        let message = "outputs \(approve ? "approved" : "rejected") by \(decider.name)"
            + (decider.via == "shell" ? "" : " (\(decider.via))")
            + (approve && overriding != nil && !findings.isEmpty ? " overriding \(findings.count) finding(s)" : "")
            + (reason.map { ": \($0)" } ?? "")
        // One transaction: a second decision made at the same time (the console and a shell) finds this one and
        // writes nothing, so a rejection can never be followed by an approval that releases the outputs.
        let steps = approve ? held.map { [(step: OutputDelivery.approvedManifestStep, info: $0.sha256)] } ?? [] : []
        let recorded = try journal.recordDecision(taskID, detail: EventDetail(message: message, data: data), steps: steps,
                                                  decisionStep: Runner.approvalStep, decision: decision, at: Date())
        if recorded == nil {
            let other = (try? journal.completedStep(Runner.approvalStep, of: taskID)) ?? nil
            throw CommandFailure("task \(taskID) was decided meanwhile" + (other.map { " (\($0))" } ?? "")
                                  + "; nothing was changed")
        }
        return Decision(message: message, manifestSHA256: held?.sha256)
    }
}
