import ArgumentParser
import FEMCore
import FEMJournal
import FEMStaging
import FEMSystem
import Foundation

/// `fem-client outputs`: the output airlock. With `outputs.require_approval = true`, a task's outputs wait as
/// `awaiting_approval` until an administrator of this node approves or rejects them. What is reviewed is the manifest
/// journaled when the outputs were copied into the node's staging folder; an approval is bound to that manifest's
/// sha256, and the daemon uploads the staged copies only while they still match it. Each decision is journaled (the
/// OS user who ran the command, when, why) and sent as an `approval` event.
struct OutputsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outputs", abstract: "Review outputs waiting for approval: list, show, approve, reject.",
        subcommands: [List.self, Show.self, Approve.self, Reject.self])

    static func open(_ options: ConfigOption) throws -> (NodeConfig, SQLiteJournal) {
        let config = try options.loadConfig(brokerFiles: false)
        return (config, try config.openJournal())
    }

    static func decide(_ options: ConfigOption, taskID: String, approve: Bool, reason: String?,
                       override: String? = nil) throws {
        let (config, journal) = try open(options)
        let decided = try Airlock.decide(journal, taskID: taskID, approve: approve, reason: reason, by: .shell(),
                                         override: override, blockOnFindings: config.outputChecks.blockOnFindings)
        print("\(taskID): \(decided.message.escapedForTerminal)"
              + (decided.manifestSHA256.map { " (manifest sha256 \($0))" } ?? ""))
        print(approve ? "the daemon uploads the outputs within a few seconds (fem-client show \(taskID))"
                      : "the outputs will not leave this node")
    }

    /// Tool text the airlock kept out of events, for the steward.
    static func printHeld(_ held: String) {
        print("tool text   held on this node (never sent in events):")
        for line in held.split(separator: "\n") { print("  \(String(line).escapedForTerminal)") }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Tasks whose outputs wait for approval.")
        @OptionGroup var options: ConfigOption

        func run() async throws {
            let (_, journal) = try OutputsCommand.open(options)
            let rows = try journal.tasks(states: [.awaitingApproval], limit: 10_000)
            print("TASK                                   WAITING SINCE         FILES       BYTES  FINDINGS  TOOL")
            for r in rows {
                let m = Airlock.manifest(journal, r.taskID)?.view
                let id = r.taskID.padding(toLength: 38, withPad: " ", startingAt: 0)
                let since = String(FEMTime.format(r.updatedAt).prefix(19))
                let files = String(m?.files.count ?? 0).leftPadded(5)
                let bytes = String(m?.bytes ?? 0).leftPadded(11)
                let findings = String(m?.findings?.count ?? 0).leftPadded(8)
                print("\(id.escapedForTerminal) \(since)   \(files) \(bytes)  \(findings)  "
                      + "\((m?.toolName ?? "?").escapedForTerminal)")
            }
            if rows.isEmpty { print("(no outputs waiting)") }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The manifest and file sizes of a waiting task.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The task id.") var taskID: String
        @Flag(help: "Print the manifest as JSON.") var json = false

        func run() async throws {
            let (config, journal) = try OutputsCommand.open(options)
            guard let rec = try journal.task(taskID) else { throw CommandFailure("task \(taskID) is not in the journal") }
            guard let manifest = Airlock.manifest(journal, taskID) else {
                // No outputs were held (no stage_out target, or the task never got that far); its held text, if any,
                // is still the steward's to read.
                guard !json, let held = try journal.completedStep(Runner.heldTextStep, of: taskID) else {
                    throw CommandFailure("task \(taskID) has no journaled manifest of held outputs (state "
                                          + "\(rec.state.rawValue))")
                }
                print("task        \(taskID.escapedForTerminal)   (\(rec.state.rawValue))")
                print("files       none held (the task has no stage_out target, or ended before its outputs were collected)")
                OutputsCommand.printHeld(held)
                return
            }
            if json {
                // JSON escapes C0 control characters itself; C1 controls and bidi overrides are escaped here too.
                var text = ""
                for u in String(decoding: manifest.raw, as: UTF8.self).unicodeScalars {
                    switch u.value {
                    case 0x7F..<0xA0, 0x2028, 0x2029, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069:
                        text += String(format: "\\u%04x", u.value)
                    default: text.unicodeScalars.append(u)
                    }
                }
                print(text)
                return
            }
            let m = manifest.view
            let target = rec.document["stage_out"]
            print("task        \(taskID.escapedForTerminal)   (\(rec.state.rawValue))")
            print("execution   \(rec.executionID.escapedForTerminal)")
            print("tool        \(m.toolName.escapedForTerminal)")
            if let commit = m.git_commit { print("git commit  \(commit.escapedForTerminal)") }
            if let image = m.image_digest ?? m.image { print("image       \(image.escapedForTerminal)") }
            print("outcome     \(m.state.escapedForTerminal)" + (m.exit_code.map { ", exit \($0)" } ?? ""))
            print("destination \((target?["url"]?.stringValue ?? "none (the outputs stay on this node)").escapedForTerminal)"
                  + (target?["credentials"]?.stringValue.map { "  (credentials \($0.escapedForTerminal))" } ?? "")
                  + (target?["token"] != nil ? "  (with the task's token)" : ""))
            print("staged copy \(config.workDir)/staging/\(taskID.escapedForTerminal)")
            print("manifest    sha256 \(manifest.sha256)  (an approval is bound to it)")
            print("files       \(m.files.count), \(m.bytes) bytes")
            for f in m.files {
                print("  \(String(f.size).leftPadded(12))  \(f.path.escapedForTerminal)  sha256 \(f.sha256.escapedForTerminal)")
            }
            OutputsCommand.printFindings(m.findings, blocking: config.outputChecks.blockOnFindings)
            if let held = try journal.completedStep(Runner.heldTextStep, of: taskID) { OutputsCommand.printHeld(held) }
        }
    }

    /// What the output checks found, one finding a line (the file, row and column names and cell values are the
    /// tool's text: escaped).
    static func printFindings(_ findings: [Airlock.Finding]?, blocking: Bool) {
        guard let findings else {
            print("findings    none recorded (the outputs were collected before the output checks)")
            return
        }
        guard !findings.isEmpty else {
            print("findings    none (outputs.checks)")
            return
        }
        print("findings    \(findings.count)" + (blocking ? " (approval needs --override REASON: "
                                                  + "outputs.checks.block_on_findings)" : ""))
        for f in findings {
            var at: [String] = []
            if let row = f.row { at.append("row \(row)") }
            if let column = f.column {
                at.append("column \(column)" + (f.column_name.map { " \"\($0.escapedForTerminal)\"" } ?? ""))
            }
            if let value = f.value { at.append("value \"\(value.escapedForTerminal)\"") }
            print("  \(f.check.escapedForTerminal)  \(f.file.escapedForTerminal)"
                  + (at.isEmpty ? "" : "  " + at.joined(separator: ", ")) + ": \(f.message.escapedForTerminal)")
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a task's outputs leave the node.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The task id.") var taskID: String
        @Option(help: "Why (recorded with the decision). The approver recorded is the OS user running this command.")
        var reason: String?
        @Option(help: "Why outputs with findings of the output checks are approved anyway (journaled and sent with the decision; required when outputs.checks.block_on_findings is true).")
        var override: String?

        func run() async throws {
            try OutputsCommand.decide(options, taskID: taskID, approve: true, reason: reason, override: override)
        }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Keep a task's outputs on the node: never uploaded.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The task id.") var taskID: String
        @Option(help: "Why (required; recorded and sent with the decision). The OS user running this command is recorded as the one who decided.")
        var reason: String

        func run() async throws {
            try OutputsCommand.decide(options, taskID: taskID, approve: false, reason: reason)
        }
    }
}

extension String {
    /// Tool-chosen text made safe to print (control characters, separators and bidi overrides as visible escapes).
    var escapedForTerminal: String { TextEscaping.escaped(self) }

    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
