@testable import FEMCore
import FEMStaging
import FEMSystem
import Foundation
import Testing

/// Path checks, journaled-step idempotence and sandbox retention, with local repositories and folders. The
/// network transports are covered by IntegrationTests/StageInTests.
@Suite
struct StageInUnitTests {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "fem-staging-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    @Test func prepareFileCreatesFoldersAndRefusesSymlinksOnTheWay() throws {
        let root = "\(dir)/src"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        #expect(try SandboxPaths.prepareFile(root: root, relative: "a/b/c.txt") == "\(root)/a/b/c.txt")
        var isDir: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: "\(root)/a/b", isDirectory: &isDir) && isDir.boolValue)

        try FileManager.default.createSymbolicLink(atPath: "\(root)/out", withDestinationPath: "/etc")
        #expect(throws: TaskFailure.self) { try SandboxPaths.prepareFile(root: root, relative: "out/cron.d/x") }
        try FileManager.default.createSymbolicLink(atPath: "\(root)/file.txt", withDestinationPath: "/etc/passwd")
        #expect(throws: TaskFailure.self) { try SandboxPaths.prepareFile(root: root, relative: "file.txt") }
        for bad in ["../x", "/etc/passwd", "a/../../x", "a//b", "./a"] {
            #expect(throws: TaskFailure.self, "\(bad)") { try SandboxPaths.prepareFile(root: root, relative: bad) }
        }
    }

    @Test func escapingSymlinksAreFoundAndInsideOnesAreNot() throws {
        let root = "\(dir)/tree"
        try FileManager.default.createDirectory(atPath: "\(root)/lib/deep", withIntermediateDirectories: true)
        let links = [("ok", "lib/deep"), ("lib/deep/up", "../../ok"), ("abs", "/etc/passwd"),
                     ("lib/escape", "../../outside"), ("lib/deep/sneaky", "../x/../../../y")]
        for (path, target) in links {
            try FileManager.default.createSymbolicLink(atPath: "\(root)/\(path)", withDestinationPath: target)
        }
        let found = SandboxPaths.escapingSymlinks(under: root).map(\.path)
        #expect(found == ["abs", "lib/deep/sneaky", "lib/escape"])
    }

    /// The audit's chain: each target looks harmless on its own (`..` never climbs above the link's folder), yet
    /// `a → .`, `b → a/..`, `c → b/..` … `h → g/..` and `etc → h/etc` lead to /etc. Resolved link by link against
    /// the real file system, `b` already leaves (it is the parent of the root), and so does everything built on it.
    @Test func aChainOfInnocentLookingLinksIsFollowedToWhereItReallyLeads() throws {
        let root = "\(dir)/src"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(root)/a", withDestinationPath: ".")
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"]
        for (prev, name) in zip(names, names.dropFirst()) {
            try FileManager.default.createSymbolicLink(atPath: "\(root)/\(name)", withDestinationPath: "\(prev)/..")
        }
        try FileManager.default.createSymbolicLink(atPath: "\(root)/etc", withDestinationPath: "h/etc")
        try "x".write(toFile: "\(root)/inside.txt", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: "\(root)/fine", withDestinationPath: "a/a/inside.txt")
        let found = SandboxPaths.escapingSymlinks(under: root)
        #expect(found.map(\.path) == ["b", "c", "d", "e", "f", "g", "h", "etc"].sorted())
        #expect(found.first { $0.path == "etc" }?.target == "h/etc")
        // The kernel agrees: `etc` leads outside the root, to the host's /etc when the root is at most 7 folders
        // deep (the old lexical check let every one of these links through).
        func real(_ p: String) -> String? {
            guard let r = realpath(p, nil) else { return nil }
            defer { free(r) }
            return String(cString: r)
        }
        let realRoot = try #require(real(root))
        let realEtc = try #require(real("\(root)/etc"))
        #expect(!realEtc.hasPrefix(realRoot + "/"))
        if realRoot.split(separator: "/").count <= 7 { #expect(realEtc == "/etc") }

        // A loop is refused, not followed forever.
        let loop = "\(dir)/loop"
        try FileManager.default.createDirectory(atPath: loop, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(loop)/x", withDestinationPath: "y")
        try FileManager.default.createSymbolicLink(atPath: "\(loop)/y", withDestinationPath: "x")
        #expect(SandboxPaths.escapingSymlinks(under: loop).map(\.path) == ["x", "y"])
    }

    final class Steps: @unchecked Sendable {
        let lock = NSLock()
        var done: [String: String] = [:]
        var messages: [String] = []
        var reporter: StageReporter {
            StageReporter(progress: { m, _ in self.lock.withLock { self.messages.append(m) } },
                          isDone: { s in self.lock.withLock { self.done[s] } },
                          markDone: { s, v in self.lock.withLock { self.done[s] = v } })
        }
    }

    func job(_ source: PlanSource, sandbox: String) throws -> LaunchJob {
        var plan = try DocumentReader.readPlan([
            "schema_version": 1, "id": "t", "version": "1", "launcher": "process",
            "command": ["base": ["/bin/true"]],
        ])
        plan.source = source
        let task = TaskSpec(schemaVersion: 1, taskID: "t1", executionID: "e1", plan: plan, params: [:],
                            timeoutSeconds: nil, stageOut: nil, flower: nil)
        let paths = ToolPaths.under(sandbox)
        try FileManager.default.createDirectory(atPath: paths.src, withIntermediateDirectories: true)
        let command = try Renderer.render(task, context: RenderContext(nodeID: "n", nodeName: "n", paths: paths, datasets: [:]),
                                          timeoutSeconds: 60)
        return LaunchJob(task: task, command: command, sandbox: paths)
    }

    func policy(_ prefixes: [String] = ["file:///"]) throws -> SourcePolicy {
        SourcePolicy(gitURLs: try URLPolicy(prefixes), fileURLs: try URLPolicy(["https://h/"]), requireSHA256: true, caFile: nil,
                     retry: RetryPolicy(attempts: 2, base: .milliseconds(10)), credentials: [:], cacheDir: "\(dir)/cache")
    }

    @Test func aFinishedCloneIsNotRepeatedAfterARestart() async throws {
        let remote = "\(dir)/remote"
        try FileManager.default.createDirectory(atPath: remote, withIntermediateDirectories: true)
        for args in [["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "one"]] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/git")
            p.arguments = ["-c", "user.name=t", "-c", "user.email=t@example.org"] + args
            p.currentDirectoryURL = URL(fileURLWithPath: remote)
            try p.run()
            p.waitUntilExit()
            try #require(p.terminationStatus == 0)
        }
        let stage = try SourceStageIn(policy: try policy())
        let source = PlanSource.git(GitSource(url: "file://\(remote)", ref: "main", commit: nil, credentials: nil))
        let j = try job(source, sandbox: "\(dir)/sb")
        let steps = Steps()
        try await stage.stageIn(j, reporter: steps.reporter)
        let commit = try #require(steps.done["git"])
        #expect(commit.count == 40)

        // The remote is gone: a second stage-in of the same task (after a restart) must not need it.
        try FileManager.default.removeItem(atPath: remote)
        try await stage.stageIn(j, reporter: steps.reporter)
        #expect(steps.messages.last?.contains("already checked out at \(commit)") == true, "\(steps.messages)")

        // A new task does need it, and says what is missing.
        await #expect(throws: TaskFailure.self) {
            try await stage.stageIn(try job(source, sandbox: "\(dir)/sb2"), reporter: Steps().reporter)
        }
    }

    @Test func checkNamesTheFieldOfWhatTheNodeRefuses() throws {
        let stage = try SourceStageIn(policy: try policy(["https://git.example.org/"]))
        func plan(_ s: PlanSource) throws -> ToolPlan { try job(s, sandbox: "\(dir)/c").task.plan }
        let git = PlanSource.git(GitSource(url: "https://evil.example.com/x.git", ref: nil, commit: nil, credentials: nil))
        #expect(try stage.check(plan(git))?.hasPrefix("source.git.url: \"https://evil.example.com/x.git\" is not allowed") == true)
        let ok = PlanSource.git(GitSource(url: "https://git.example.org/x.git", ref: nil, commit: nil, credentials: nil))
        #expect(try stage.check(plan(ok)) == nil)
        let creds = PlanSource.git(GitSource(url: "https://git.example.org/x.git", ref: nil, commit: nil, credentials: "c"))
        #expect(try stage.check(plan(creds)) == "source.git.credentials: \"c\" is not defined in this node's [credentials]")
        let file = PlanSource.files([SourceFile(url: "https://h/x", path: "x", sha256: nil, credentials: nil)])
        #expect(try stage.check(plan(file)) == "source.files[0].sha256: is required on this node (stage_in.require_sha256)")
    }

    @Test func retentionSweepRemovesOnlyFinishedSandboxesPastTheirTime() throws {
        let journal = MemoryJournal(nodeID: "n")
        let sandboxes = DirectorySandboxes(workDir: dir, retention: SandboxRetention(completed: .seconds(3600),
                                                                                     other: .seconds(7200)))
        let now = Date()
        let plan = try job(.files([]), sandbox: "\(dir)/x").task.plan
        let cases: [(String, TaskState?, Double)] = [
            ("old-done", .completed, 4000), ("new-done", .completed, 100), ("old-failed", .failed, 4000),
            ("older-failed", .failed, 8000), ("running", .running, 9000), ("unknown", nil, 9000),
        ]
        for (id, state, age) in cases {
            _ = try sandboxes.prepare(taskID: id)
            guard let state else { continue }
            let spec = TaskSpec(schemaVersion: 1, taskID: id, executionID: "e", plan: plan, params: [:],
                                timeoutSeconds: nil, stageOut: nil, flower: nil)
            _ = try journal.admit(spec, document: [:], at: now.addingTimeInterval(-age))
            let path: [TaskState] = state == .running ? [.stagingIn, .running] : [.stagingIn, .running, .stagingOut, state]
            for s in path { _ = try journal.transition(id, to: s, detail: .none, at: now.addingTimeInterval(-age)) }
        }
        let removed = sandboxes.sweep(journal: journal, now: now)
        #expect(removed.sorted() == ["old-done", "older-failed"])
        let left = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/sandboxes").sorted()
        #expect(left == ["new-done", "old-failed", "running", "unknown"])
    }
}
