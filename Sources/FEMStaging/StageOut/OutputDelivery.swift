import FEMCore
import FEMSystem
import Foundation

/// What the node allows stage-out to do.
public struct DeliveryPolicy: Sendable {
    public var nodeID: String
    public var limits: OutputLimits
    /// Where a task's `stage_out.url` may point (`https://fem.example.org/uploads/`, `file:///mnt/outbox/`).
    /// Empty: nowhere.
    public var allowedURLs: URLPolicy
    /// Hold outputs as `awaiting_approval` until a local administrator approves or rejects them.
    public var requireApproval: Bool
    /// With approval: do the logs wait too (true), or go at once (false)?
    public var holdLogs: Bool
    public var retry: RetryPolicy
    public var credentials: [String: Credential]
    /// A private CA for https targets, in addition to the system's.
    public var caFile: String?
    /// The node-owned folder outputs are copied into at collection (`<work_dir>/staging`); nil: next to the
    /// `sandboxes` folder.
    public var stagingRoot: String? = nil
    /// `[outputs.checks]`: the checks run over the outputs at collection.
    public var checks = OutputCheckSettings()

    public init(nodeID: String, limits: OutputLimits, allowedURLs: URLPolicy, requireApproval: Bool, holdLogs: Bool,
                retry: RetryPolicy, credentials: [String: Credential], caFile: String?) {
        self.nodeID = nodeID
        self.limits = limits
        self.allowedURLs = allowedURLs
        self.requireApproval = requireApproval
        self.holdLogs = holdLogs
        self.retry = retry
        self.credentials = credentials
        self.caFile = caFile
    }
}

/// Stage-out: collects the task's logs and declared outputs, writes `manifest.json` into the sandbox, holds them
/// for approval when the node requires it, then delivers them to the task's target (`https://`/`http://` PUT to
/// `<url>/<execution_id>/<node_id>/<task_id>/<path>`, or the same folders below a `file://` root), the manifest
/// last. Each delivered file is
/// journaled (`upload:<path>` → its sha256), so a restarted stage-out sends only what was not yet confirmed. A task
/// without a target keeps its outputs and manifest in its sandbox.
public struct OutputDelivery: StageOut {
    let policy: DeliveryPolicy

    public init(policy: DeliveryPolicy) {
        self.policy = policy
    }

    public func check(_ target: StageOutTarget?) -> String? {
        guard let target else { return nil }
        do {
            _ = try Self.checkedURL(target, policy: policy)
            return nil
        } catch {
            return "\(error)"
        }
    }

    struct Refusal: Error, CustomStringConvertible {
        var description: String
    }

    /// The target's URL, normalised, when the node allows it (and the credentials named, if any, for it).
    static func checkedURL(_ target: StageOutTarget, policy: DeliveryPolicy) throws -> ParsedURL {
        let url: ParsedURL
        do {
            url = try policy.allowedURLs.check(target.url, field: "stage_out.url")
        } catch let e as ParsedURL.Problem {
            throw Refusal(description: e.description)
        }
        guard ["https", "http", "file"].contains(url.scheme) else {
            throw Refusal(description: "stage_out.url: \"\(target.url)\" is not an https://, http:// or file:// URL")
        }
        if url.query != nil {
            throw Refusal(description: "stage_out.url: must not have a query (?): files are delivered below its path")
        }
        if let problem = Credential.refusal(target.credentials, in: policy.credentials, url: url,
                                            field: "stage_out.credentials") {
            throw Refusal(description: problem)
        }
        return url
    }

    /// The journal step holding the manifest of the staged copy, as JSON: written once, when the outputs are
    /// collected; what `fem-client outputs show` prints and the steward approves.
    public static let manifestStep = "held_manifest"
    /// The journal step holding the sha256 of the manifest an approval was given for.
    public static let approvedManifestStep = "approved_manifest"

    /// `<staging root>/<task_id>`.
    func stagingFolder(_ job: LaunchJob) -> String {
        let root = policy.stagingRoot ?? (((job.sandbox.sandbox as NSString).deletingLastPathComponent as NSString)
            .deletingLastPathComponent as NSString).appendingPathComponent("staging")
        return "\(root)/\(job.task.taskID)"
    }

    public func stageOut(_ job: LaunchJob, record: TaskRecord, outcome: TaskOutcome, reporter: StageReporter) async throws
        -> StageOutSummary {
        guard let target = job.task.stageOut else {
            // Nothing leaves the node: the outputs and their manifest stay in the sandbox.
            let files = try OutputCollector.collect(plan: job.task.plan, sandbox: job.sandbox, limits: policy.limits)
            var manifest = Manifest(job: job, record: record, nodeID: policy.nodeID, outcome: outcome,
                                    startedAt: record.receivedAt, gitCommit: reporter.isDone("git"),
                                    imageDigest: reporter.isDone("image"), files: files)
            manifest.findings = OutputChecks.run(files, plan: job.task.plan, settings: policy.checks)
            try write(manifest.encoded(), to: "\(job.sandbox.sandbox)/manifest.json")
            var summary = StageOutSummary(files: files.count, bytes: files.reduce(Int64(0)) { $0 + $1.size },
                                          location: job.sandbox.sandbox)
            summarize(manifest.findings ?? [], files: files, plan: job.task.plan, pathsLeave: false, into: &summary)
            return summary
        }
        let destination = try Self.destination(target, job: job, policy: policy)
        let folder = stagingFolder(job)
        let manifestPath = "\(folder)/manifest.json"

        // The staged copy and its journaled manifest: made once; a resumed stage-out (after a restart or an
        // approval) works from them and never looks at out/ again.
        let manifestJSON: String
        let files: [CollectedFile]
        if let held = reporter.isDone(Self.manifestStep) {
            manifestJSON = held
            files = try Self.heldFiles(held, folder: folder)
        } else {
            let staged = try StagingCopy.stage(plan: job.task.plan, sandbox: job.sandbox, limits: policy.limits,
                                               into: folder)
            files = staged.files
            if staged.skipped > 0 {
                // A count only: the names are the tool's, and may not leave before an approval.
                reporter.progress("\(staged.skipped) entries of out/ match the outputs but are not regular files "
                                  + "(symlinks, devices, FIFOs, sockets): not collected",
                                  ["not_collected": .int(Int64(staged.skipped))])
            }
            var manifest = Manifest(job: job, record: record, nodeID: policy.nodeID, outcome: outcome,
                                    startedAt: record.receivedAt, gitCommit: reporter.isDone("git"),
                                    imageDigest: reporter.isDone("image"), files: files)
            // The checks read the staged copies: what they found is what would leave.
            manifest.findings = OutputChecks.run(files, plan: job.task.plan, settings: policy.checks)
            manifestJSON = String(decoding: manifest.encoded(), as: UTF8.self)
            try write(Data(manifestJSON.utf8), to: manifestPath)
            // A copy for whoever looks into the sandbox; the journaled one is what counts.
            try? Data(manifestJSON.utf8).write(to: URL(fileURLWithPath: "\(job.sandbox.sandbox)/manifest.json"))
            reporter.markDone(Self.manifestStep, manifestJSON)
        }
        let digest = SHA256Digest()
        digest.update(Array(manifestJSON.utf8))
        let manifestFile = CollectedFile(source: manifestPath, path: "manifest.json",
                                         size: Int64(manifestJSON.utf8.count), sha256: digest.finalizeHex())
        let bytes = files.reduce(Int64(0)) { $0 + $1.size }
        let findings = Self.heldFindings(manifestJSON)
        // Without the airlock the files leave with their names anyway; with it, names wait for the approval.
        let pathsLeave = !policy.requireApproval
        var checked = StageOutSummary(files: 0, bytes: 0, location: nil)
        summarize(findings, files: files, plan: job.task.plan, pathsLeave: pathsLeave, into: &checked)

        var sendNow = files
        if policy.requireApproval {
            let decision = reporter.isDone(Runner.approvalStep)
            if decision == nil || decision?.hasPrefix("rejected") == true {
                // Logs may go ahead of the decision when the node says so; outputs and the manifest never do.
                sendNow = policy.holdLogs ? [] : files.filter { $0.path.hasPrefix("logs/") }
                try await deliver(sendNow, to: destination, reporter: reporter)
                let location = sendNow.isEmpty ? nil : destination.description
                if decision != nil { try? FileManager.default.removeItem(atPath: folder) }
                var summary = StageOutSummary(files: sendNow.count, bytes: sendNow.reduce(0) { $0 + $1.size },
                                              location: location, awaitingApproval: decision == nil)
                (summary.findings, summary.findingsCount) = (checked.findings, checked.findingsCount)
                return summary
            }
            guard reporter.isDone(Self.approvedManifestStep) == manifestFile.sha256 else {
                throw TaskFailure(.stageOutFailure, "the approval was not given for the held manifest (sha256 "
                                  + "\(manifestFile.sha256)); nothing was sent")
            }
        }
        try await deliver(sendNow + [manifestFile], to: destination, reporter: reporter)
        try? FileManager.default.removeItem(atPath: folder)
        var summary = StageOutSummary(files: files.count, bytes: bytes, location: destination.description)
        (summary.findings, summary.findingsCount) = (checked.findings, checked.findingsCount)
        return summary
    }

    /// The findings of a journaled manifest (none in manifests made before the checks).
    static func heldFindings(_ manifestJSON: String) -> [OutputFinding] {
        struct Held: Decodable { var findings: [OutputFinding]? }
        return (try? JSONDecoder().decode(Held.self, from: Data(manifestJSON.utf8)))?.findings ?? []
    }

    /// The findings as the task's events carry them.
    private func summarize(_ findings: [OutputFinding], files: [CollectedFile], plan: ToolPlan, pathsLeave: Bool,
                           into summary: inout StageOutSummary) {
        summary.findingsCount = findings.count
        summary.findings = OutputChecks.eventForm(findings, files: files, plan: plan, pathsLeave: pathsLeave)
    }

    /// The files a journaled manifest lists, at their places in the staging folder.
    static func heldFiles(_ manifestJSON: String, folder: String) throws -> [CollectedFile] {
        struct Held: Decodable {
            struct File: Decodable { var path: String; var size: Int64; var sha256: String }
            var files: [File]
        }
        guard let held = try? JSONDecoder().decode(Held.self, from: Data(manifestJSON.utf8)) else {
            throw TaskFailure(.stageOutFailure, "the journaled manifest of the held outputs cannot be read")
        }
        return try held.files.map { f in
            let parts = f.path.split(separator: "/", omittingEmptySubsequences: false)
            guard !parts.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
                throw TaskFailure(.stageOutFailure, "the journaled manifest names an unusable path")
            }
            return CollectedFile(source: "\(folder)/\(f.path)", path: f.path, size: f.size, sha256: f.sha256)
        }
    }

    private func write(_ data: Data, to path: String) throws {
        do {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot write \(path): \(error.localizedDescription)")
        }
    }

    /// Sends each file from its staged copy, checked against its manifest entry right before it goes and again
    /// after it went (a copy changed in between fails the task, naming the file).
    private func deliver(_ files: [CollectedFile], to destination: any OutputDestination,
                         reporter: StageReporter) async throws {
        let retry = policy.retry
        for file in files {
            let step = "upload:\(file.path)"
            if reporter.isDone(step) == file.sha256 { continue }
            let started = ContinuousClock.now
            try await offload("fem-upload") {
                try StagingCopy.verify(file)
                try retry.run(retryable: RetryPolicy.transient, waiting: { attempt, pause, error in
                    reporter.progress("upload of \(file.path): attempt \(attempt) failed (\(error)); trying again "
                                      + "in \(pause)", ["path": .string(file.path), "attempt": .int(Int64(attempt))])
                }) {
                    do {
                        try destination.put(file)
                    } catch let e as HTTPStatusError {
                        throw e.retryable ? e : TaskFailure(.stageOutFailure, e.description)
                    }
                }
                try StagingCopy.verify(file)
            }
            reporter.markDone(step, file.sha256)
            let ms = Int((ContinuousClock.now - started).seconds * 1000)
            reporter.progress("uploaded \(file.path) (\(file.size) bytes in \(ms) ms)",
                              ["path": .string(file.path), "bytes": .int(file.size), "sha256": .string(file.sha256)])
        }
    }

    static func destination(_ target: StageOutTarget, job: LaunchJob, policy: DeliveryPolicy) throws
        -> any OutputDestination {
        let url: ParsedURL
        do {
            url = try checkedURL(target, policy: policy)
        } catch {
            throw TaskFailure(.stageOutFailure, "\(error)")
        }
        // The ids become folder names: checked again here, whatever checked them before.
        let ids = [("execution_id", job.task.executionID), ("node_id", policy.nodeID), ("task_id", job.task.taskID)]
        for (name, id) in ids where !Patterns.matches(Patterns.taskID, id) || !DirectoryHandle.isPlainName(id) {
            throw TaskFailure(.stageOutFailure, "\(name): \"\(id)\" cannot name a folder of the destination")
        }
        let components = ids.map(\.1)
        if url.scheme == "file" {
            return try FolderDestination(url: url, components: components, policy: policy.allowedURLs)
        }
        var authorization: String?
        if let token = target.token {
            // The task's own token goes only to its own stage_out URL (redirects are never followed).
            authorization = "Bearer \(token)"
        } else if let ref = target.credentials {
            authorization = policy.credentials[ref]?.authorization
        }
        return HTTPDestination(base: url.appending(components), authorization: authorization, caFile: policy.caFile)
    }
}

/// Where delivered files go.
protocol OutputDestination: Sendable, CustomStringConvertible {
    /// Sends one file; throws `HTTPStatusError`/`HTTPError` (retried when transient) or `TaskFailure`.
    func put(_ file: CollectedFile) throws
}

/// HTTP PUT of each file to `<base>/<path>`: WebDAV servers and presigned-URL object stores. The authorization
/// header is a secret: never in a description, a log line or an error.
struct HTTPDestination: OutputDestination {
    let base: ParsedURL
    let authorization: String?
    let caFile: String?

    var description: String { base.description }

    func put(_ file: CollectedFile) throws {
        let url = base.appending(file.path.split(separator: "/").map(String.init)).description
        var headers = [("Content-Type", "application/octet-stream")]
        if let authorization { headers.append(("Authorization", authorization)) }
        var request = HTTPRequest(method: "PUT", url: url, headers: headers, timeoutSeconds: 0, caFile: caFile,
                                  bodyFile: file.source)
        request.stallSeconds = 60
        request.protocols = base.scheme
        request.maxBodyBytes = 1 << 20
        // Hash while uploading: a staged copy that is not what the manifest says never arrives whole.
        request.bodyExpected = (file.size, file.sha256)
        let response: HTTPResponse
        do {
            response = try HTTPTransfer.perform(request)
        } catch let e as HTTPError where e.code == .bodyChanged {
            throw TaskFailure(.stageOutFailure, "\(file.path) changed while it was sent: it no longer matches the "
                              + "approved manifest (sha256 \(file.sha256)); the upload was stopped before its last byte")
        }
        guard (200..<300).contains(response.status) else {
            throw HTTPStatusError(status: response.status, what: "PUT \(url)", serverText: response.statusLine)
        }
    }
}

/// A local or mounted folder. Its root is the canonical path of the allowlist entry the URL matched, opened once;
/// every folder below it (the rest of the URL's path, then execution, node and task id, then the file's own
/// folders) and every file is made relative to an open descriptor without following symlinks, so a link planted
/// in the destination tree leads nowhere.
final class FolderDestination: OutputDestination, Sendable {
    let root: DirectoryHandle
    /// Below `root`: the URL's remaining path segments and the ids.
    let below: [String]
    let shown: String

    init(url: ParsedURL, components: [String], policy: URLPolicy) throws {
        let fail = { (why: String) in TaskFailure(.stageOutFailure, "stage_out.url: \(url): \(why)") }
        guard let entry = policy.entries.first(where: { $0.url.scheme == "file" && $0.matches(url) }) else {
            throw fail("is not under an allowed folder")
        }
        let canonical: String
        do {
            canonical = try Posix.realpath(entry.url.filePath)
        } catch {
            throw fail("the allowed folder \(entry.url.filePath) cannot be used on this node (\(error))")
        }
        let rest = url.segments.dropFirst(entry.url.segments.count).map { ParsedURL.percentDecodedSegment(String($0)) }
        guard rest.allSatisfy(DirectoryHandle.isPlainName) else { throw fail("has a path segment that is not a plain name") }
        do {
            root = try DirectoryHandle(root: canonical)
        } catch {
            throw fail("cannot open \(canonical): \(error)")
        }
        below = rest + components
        shown = url.appending(components).description
    }

    var description: String { shown }

    func put(_ file: CollectedFile) throws {
        var parts = file.path.split(separator: "/").map(String.init)
        guard let name = parts.popLast() else { return }
        do {
            let folder = try root.subdirectory(path: below + parts)
            try folder.writeFile(name, copying: file.source)
        } catch {
            throw TaskFailure(.stageOutFailure, "cannot write \(file.path) to \(shown): \(error)")
        }
    }
}
