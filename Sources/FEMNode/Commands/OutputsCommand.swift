import ArgumentParser
import FEMCore
import FEMJournal
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `fem-client outputs`: the output airlock. With `outputs.require_approval = true`, a task's outputs wait as
/// `awaiting_approval` until an administrator of this node approves or rejects them. Each decision is journaled
/// (who, when, why) and sent as an `approval` event; the daemon then uploads (approve) or drops (reject) them.
struct OutputsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outputs", abstract: "Review outputs waiting for approval: list, show, approve, reject.",
        subcommands: [List.self, Show.self, Approve.self, Reject.self])

    static func open(_ options: ConfigOption) throws -> (NodeConfig, SQLiteJournal) {
        var config: NodeConfig
        do {
            config = try NodeConfig.load(path: options.config, brokerFiles: false)
        } catch let e as ConfigError {
            throw ValidationError(e.description)
        }
        return (config, try SQLiteJournal(path: config.journalPath, nodeID: config.nodeID))
    }

    static func waiting(_ journal: SQLiteJournal, _ taskID: String) throws -> TaskRecord {
        guard let rec = try journal.task(taskID) else { throw ValidationError("task \(taskID) is not in the journal") }
        guard rec.state == .awaitingApproval else {
            throw ValidationError("task \(taskID) is \(rec.state.rawValue), not awaiting_approval: there is nothing to decide")
        }
        if let decided = try journal.step(taskID, Runner.approvalStep) {
            throw ValidationError("task \(taskID) is already decided (\(decided)); the daemon is sending or dropping its outputs")
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

        var bytes: Int64 { files.reduce(0) { $0 + $1.size } }
        var toolName: String { [tool["id"], tool["version"]].compactMap { $0 }.joined(separator: " ") }
    }

    /// The manifest stage-out wrote into the sandbox when it held the outputs, raw and read.
    static func manifest(_ config: NodeConfig, _ taskID: String) -> (raw: Data, view: ManifestView)? {
        let path = "\(config.workDir)/sandboxes/\(taskID)/manifest.json"
        guard let data = FileManager.default.contents(atPath: path),
              let view = try? JSONDecoder().decode(ManifestView.self, from: data) else { return nil }
        return (data, view)
    }

    static func decide(_ options: ConfigOption, taskID: String, approve: Bool, reason: String?, by: String?) throws {
        let (_, journal) = try open(options)
        _ = try waiting(journal, taskID)
        let who = by ?? currentUser()
        let decision = approve ? "approved" : "rejected: \(reason ?? "")"
        var data: [String: JSONValue] = ["decision": .string(approve ? "approved" : "rejected"), "by": .string(who),
                                         "at": .string(FEMTime.format(Date()))]
        if let reason { data["reason"] = .string(reason) }
        let message = "outputs \(approve ? "approved" : "rejected") by \(who)" + (reason.map { ": \($0)" } ?? "")
        // The event first, then the step the daemon acts on: an acted-on decision always has its record.
        try journal.note(taskID, kind: .approval, detail: EventDetail(message: message, data: data), at: Date())
        try journal.markStep(taskID, Runner.approvalStep, info: decision)
        print("\(taskID): \(message)")
        print(approve ? "the daemon uploads the outputs within a few seconds (fem-client show \(taskID))"
                      : "the outputs will not leave this node")
    }

    static func currentUser() -> String {
        if let pw = getpwuid(geteuid()), let name = pw.pointee.pw_name { return String(cString: name) }
        return "uid \(geteuid())"
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Tasks whose outputs wait for approval.")
        @OptionGroup var options: ConfigOption

        func run() async throws {
            let (config, journal) = try OutputsCommand.open(options)
            let rows = try journal.tasks(states: [.awaitingApproval], limit: 10_000)
            print("TASK                                   WAITING SINCE         FILES       BYTES  TOOL")
            for r in rows {
                let m = OutputsCommand.manifest(config, r.taskID)?.view
                let id = r.taskID.padding(toLength: 38, withPad: " ", startingAt: 0)
                let since = String(FEMTime.format(r.updatedAt).prefix(19))
                let files = String(m?.files.count ?? 0).leftPadded(5)
                let bytes = String(m?.bytes ?? 0).leftPadded(11)
                print("\(id) \(since)   \(files) \(bytes)  \(m?.toolName ?? "?")")
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
            guard let rec = try journal.task(taskID) else { throw ValidationError("task \(taskID) is not in the journal") }
            guard let manifest = OutputsCommand.manifest(config, taskID) else {
                throw ValidationError("task \(taskID) has no manifest in its sandbox (state \(rec.state.rawValue))")
            }
            if json {
                print(String(decoding: manifest.raw, as: UTF8.self))
                return
            }
            let m = manifest.view
            print("task        \(taskID)   (\(rec.state.rawValue))")
            print("execution   \(rec.executionID)")
            print("tool        \(TextEscaping.escaped(m.toolName))")
            if let commit = m.git_commit { print("git commit  \(commit)") }
            if let image = m.image_digest ?? m.image { print("image       \(image)") }
            print("outcome     \(m.state)" + (m.exit_code.map { ", exit \($0)" } ?? ""))
            print("sandbox     \(config.workDir)/sandboxes/\(taskID)")
            print("files       \(m.files.count), \(m.bytes) bytes")
            for f in m.files {
                print("  \(String(f.size).leftPadded(12))  \(TextEscaping.escaped(f.path))  sha256 \(f.sha256)")
            }
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a task's outputs leave the node.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The task id.") var taskID: String
        @Option(help: "Why (recorded with the decision).") var reason: String?
        @Option(help: "Who decides (default: the user running this command).") var by: String?

        func run() async throws {
            try OutputsCommand.decide(options, taskID: taskID, approve: true, reason: reason, by: by)
        }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Keep a task's outputs on the node: never uploaded.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The task id.") var taskID: String
        @Option(help: "Why (required; recorded and sent with the decision).") var reason: String
        @Option(help: "Who decides (default: the user running this command).") var by: String?

        func run() async throws {
            try OutputsCommand.decide(options, taskID: taskID, approve: false, reason: reason, by: by)
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
