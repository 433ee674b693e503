import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Stage-in through real daemons against real servers that test.sh starts (scripts/dev-web.sh): a `git daemon`,
/// nginx serving git over https with basic auth and a private CA, and nginx serving task files with basic auth.
@Suite(.serialized)
struct StageInTests {
    let web: String

    init() throws {
        web = try TestEnv.webDir()
    }

    func node(_ name: String, extra: String = "") throws -> TestNode {
        let wrong = try TestEnv.scratch("wrong-password") + "/password"
        try "not-the-password\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        return try TestNode(name, extra: """
            \(TestNode.hostProcesses)
            [stage_in]
            git_allowed_urls = ["file://\(web)/repos/", "git://127.0.0.1:19418/", "https://localhost:18443/git/"]
            file_allowed_urls = ["http://127.0.0.1:18080/files/", "https://localhost:18443/files/"]
            ca_file = "\(web)/ca.pem"
            retries = 3
            retry_delay_ms = 100
            \(extra)
            [credentials.git-login]
            username = "fem-git"
            password_file = "\(web)/password-fem-git"
            urls = ["https://localhost:18443/git/"]
            [credentials.git-wrong]
            username = "fem-git"
            password_file = "\(wrong)"
            urls = ["https://localhost:18443/git/"]
            [credentials.files-login]
            username = "fem-files"
            password_file = "\(web)/password-fem-files"
            urls = ["http://127.0.0.1:18080/files/", "https://localhost:18443/files/"]
            """)
    }

    // MARK: - Repositories

    @discardableResult
    func git(_ args: [String], in cwd: String) throws -> String {
        let r = try Shell.run(["/usr/bin/git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                               "-c", "init.defaultBranch=main"] + args, cwd: cwd)
        try #require(r.status == 0, "git \(args.joined(separator: " ")): \(r.output)")
        return r.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    struct Repo {
        var name: String
        var work: String
        var first: String   // tagged v1, a.txt = "one"
        var second: String  // main, a.txt = "two"
        var dev: String     // branch dev, adds b.txt
    }

    /// A repository served by git daemon and nginx (a bare copy in the web dir's repos/), with a work tree to
    /// commit more from. `extra` runs in the work tree before the first commit.
    func makeRepo(_ prefix: String, extra: ((String) throws -> Void)? = nil) throws -> Repo {
        let name = "\(prefix)-\(UUID().uuidString.prefix(6).lowercased())"
        let work = try TestEnv.scratch("repo-\(name)")
        try git(["init", "-q"], in: work)
        try "one\n".write(toFile: "\(work)/a.txt", atomically: true, encoding: .utf8)
        try extra?(work)
        try git(["add", "-A"], in: work)
        try git(["commit", "-qm", "one"], in: work)
        try git(["tag", "-a", "v1", "-m", "v1"], in: work)
        let first = try git(["rev-parse", "HEAD"], in: work)
        try "two\n".write(toFile: "\(work)/a.txt", atomically: true, encoding: .utf8)
        try git(["commit", "-qam", "two"], in: work)
        let second = try git(["rev-parse", "HEAD"], in: work)
        try git(["checkout", "-qb", "dev"], in: work)
        try "dev\n".write(toFile: "\(work)/b.txt", atomically: true, encoding: .utf8)
        try git(["add", "b.txt"], in: work)
        try git(["commit", "-qm", "dev"], in: work)
        let dev = try git(["rev-parse", "HEAD"], in: work)
        try git(["checkout", "-q", "main"], in: work)
        try git(["clone", "-q", "--bare", work, "\(web)/repos/\(name).git"], in: work)
        return Repo(name: name, work: work, first: first, second: second, dev: dev)
    }

    func push(_ repo: Repo, content: String) throws -> String {
        try content.write(toFile: "\(repo.work)/a.txt", atomically: true, encoding: .utf8)
        try git(["commit", "-qam", content], in: repo.work)
        try git(["push", "-q", "\(web)/repos/\(repo.name).git", "main"], in: repo.work)
        return try git(["rev-parse", "HEAD"], in: repo.work)
    }

    /// A process task whose tool prints its checked-out files.
    func task(source: JSONValue, script: String = "cat \"$FEM_SRC_DIR\"/*.txt", id: String = UUID().uuidString.lowercased())
        -> [String: JSONValue] {
        guard case .object(var plan) = Tasks.plan(["/bin/sh", "-c", script]) else { return [:] }
        plan["source"] = source
        return ["schema_version": 1, "task_id": .string(id), "execution_id": "exec-stage-in",
                "plan": .object(plan), "params": [:]]
    }

    func gitSource(_ url: String, ref: String? = nil, commit: String? = nil, credentials: String? = nil) -> JSONValue {
        var g: [String: JSONValue] = ["url": .string(url)]
        if let ref { g["ref"] = .string(ref) }
        if let commit { g["commit"] = .string(commit) }
        if let credentials { g["credentials"] = .string(credentials) }
        return ["git": .object(g)]
    }

    func stdout(_ node: TestNode, _ id: String) -> String {
        (try? String(contentsOfFile: "\(node.dir)/var/sandboxes/\(id)/logs/stdout.log", encoding: .utf8)) ?? ""
    }

    func run(_ op: Operator, _ t: [String: JSONValue], timeout: Double = 30) throws -> TaskEvent {
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: timeout)
        return try #require(op.finalState(of: Tasks.id(t)))
    }

    func progressData(_ op: Operator, _ id: String, _ key: String) -> [JSONValue] {
        op.events(of: id).filter { $0.kind == .progress }.compactMap { $0.detail.data?[key] }
    }

    // MARK: - Git

    @Test func cloneOverGitDaemonThenASecondTaskFetchesIntoTheCache() throws {
        let repo = try makeRepo("gitd")
        let node = try node("si-gitd")
        try node.start()
        let op = try Operator(node: node)
        let url = "git://127.0.0.1:19418/\(repo.name).git"

        let t1 = task(source: gitSource(url, ref: "main"))
        let e1 = try run(op, t1)
        #expect(e1.state == .completed, "\(e1.detail)")
        #expect(stdout(node, Tasks.id(t1)) == "two\n")
        #expect(progressData(op, Tasks.id(t1), "commit").contains(.string(repo.second)))
        #expect(progressData(op, Tasks.id(t1), "cloned").contains(.bool(true)))

        let third = try push(repo, content: "three\n")
        let t2 = task(source: gitSource(url, ref: "main"))
        let e2 = try run(op, t2)
        #expect(e2.state == .completed, "\(e2.detail)")
        #expect(stdout(node, Tasks.id(t2)) == "three\n")
        #expect(progressData(op, Tasks.id(t2), "commit").contains(.string(third)))
        // The second task fetched into the existing cache instead of cloning again.
        #expect(progressData(op, Tasks.id(t2), "cloned").contains(.bool(false)))
        let caches = try FileManager.default.contentsOfDirectory(atPath: "\(node.dir)/var/cache/git")
            .filter { $0.hasSuffix(".git") }
        #expect(caches.count == 1, "caches: \(caches)")
        // The manifest records the commit the tool ran.
        let manifest = try String(contentsOfFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t2))/manifest.json", encoding: .utf8)
        #expect(manifest.contains(third))
    }

    @Test func tagBranchAndCommitCheckoutsAndAPinnedCommitMismatch() throws {
        let repo = try makeRepo("refs")
        let node = try node("si-refs")
        try node.start()
        let op = try Operator(node: node)
        let url = "file://\(web)/repos/\(repo.name).git"

        let tag = task(source: gitSource(url, ref: "v1"))
        let branch = task(source: gitSource(url, ref: "dev"))
        let commit = task(source: gitSource(url, commit: repo.first))
        let pinnedOK = task(source: gitSource(url, ref: "main", commit: repo.second))
        let mismatch = task(source: gitSource(url, ref: "main", commit: repo.first))
        for t in [tag, branch, commit, pinnedOK, mismatch] { try op.submit(t) }
        try op.waitForFinal([tag, branch, commit, pinnedOK, mismatch].map(Tasks.id))

        #expect(op.finalState(of: Tasks.id(tag))?.state == .completed)
        #expect(stdout(node, Tasks.id(tag)) == "one\n")
        #expect(op.finalState(of: Tasks.id(branch))?.state == .completed)
        #expect(stdout(node, Tasks.id(branch)) == "two\ndev\n")
        #expect(op.finalState(of: Tasks.id(commit))?.state == .completed)
        #expect(stdout(node, Tasks.id(commit)) == "one\n")
        #expect(progressData(op, Tasks.id(commit), "commit").contains(.string(repo.first)))
        #expect(op.finalState(of: Tasks.id(pinnedOK))?.state == .completed)

        let failed = try #require(op.finalState(of: Tasks.id(mismatch)))
        #expect(failed.state == .failed)
        #expect(failed.detail.failureClass == .stageInFailure)
        #expect(failed.detail.message?.contains("not at the pinned commit \(repo.first)") == true, "\(failed.detail)")
        #expect(failed.detail.message?.contains(repo.second) == true)
        // The tool never ran.
        #expect(!op.events(of: Tasks.id(mismatch)).contains { $0.state == .running })
    }

    @Test func httpsWithBasicAuthAndAPrivateCAAndAWrongPasswordFailingFast() throws {
        let repo = try makeRepo("https")
        let node = try node("si-https")
        try node.start()
        let op = try Operator(node: node)
        let url = "https://localhost:18443/git/\(repo.name).git"

        let good = task(source: gitSource(url, ref: "main", credentials: "git-login"))
        let e = try run(op, good)
        #expect(e.state == .completed, "\(e.detail)")
        #expect(stdout(node, Tasks.id(good)) == "two\n")

        let wrong = task(source: gitSource(url, ref: "main", credentials: "git-wrong"))
        let w = try run(op, wrong)
        #expect(w.state == .failed)
        #expect(w.detail.failureClass == .stageInFailure)
        #expect(w.detail.message?.contains("refused the credentials") == true, "\(w.detail)")
        #expect(w.detail.message?.contains("not-the-password") == false)
        let stagingIn = try #require(op.events(of: Tasks.id(wrong)).first { $0.state == .stagingIn })
        let took = w.time.timeIntervalSince(stagingIn.time)
        // libgit2 asks again while a credential callback answers: once refused, the node must not offer the same
        // login again (that loop would run until the step's deadline). Bound far from it, not a speed check.
        #expect(took < 20.0, "a wrong password took \(took) s to fail")
        #expect(!node.log.contains("not-the-password"))

        let none = task(source: gitSource(url, ref: "main"))
        let n = try run(op, none)
        #expect(n.state == .failed)
        #expect(n.detail.message?.contains("asks for credentials and the plan names none") == true, "\(n.detail)")
    }

    @Test func sourcesTheNodeDoesNotAllowAreDeclinedWithTheField() throws {
        let node = try node("si-decline")
        try node.start()
        let op = try Operator(node: node)
        let otherHost = task(source: gitSource("https://github.com/example/tool.git", ref: "main"))
        let loginInURL = task(source: gitSource("https://user:secret@localhost:18443/git/x.git"))
        let unknownCreds = task(source: gitSource("git://127.0.0.1:19418/x.git", credentials: "nobody-has-this"))
        let noSHA = task(source: ["files": [["url": "http://127.0.0.1:18080/files/x.txt", "path": "x.txt"]]])
        for t in [otherHost, loginInURL, unknownCreds, noSHA] { try op.submit(t) }
        try op.waitForFinal([otherHost, loginInURL, unknownCreds, noSHA].map(Tasks.id))
        func declined(_ t: [String: JSONValue], _ text: String) {
            let e = op.finalState(of: Tasks.id(t))
            #expect(e?.state == .declined)
            #expect(e?.detail.message?.contains(text) == true, "\(String(describing: e?.detail))")
        }
        declined(otherHost, "source.git.url: \"https://github.com/example/tool.git\" is not allowed on this node")
        declined(loginInURL, "source.git.url: \"https://***@localhost:18443/git/x.git\" must not carry a login")
        declined(unknownCreds, "source.git.credentials: \"nobody-has-this\" is not defined")
        declined(noSHA, "source.files[0].sha256: is required on this node")
        #expect(!node.log.contains("secret@"))
    }

    // MARK: - Task files

    func serve(_ content: String, at path: String) throws -> String {
        let file = "\(web)/files/\(path)"
        try FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try content.write(toFile: file, atomically: true, encoding: .utf8)
        chmod(file, 0o644)
        var h = SHA256()
        h.update(Array(content.utf8))
        return h.finalizeHex()
    }

    func files(_ items: [(url: String, path: String, sha: String?, creds: String?)]) -> JSONValue {
        .object(["files": .array(items.map { item in
            var o: [String: JSONValue] = ["url": .string(item.url), "path": .string(item.path)]
            if let sha = item.sha { o["sha256"] = .string(sha) }
            if let c = item.creds { o["credentials"] = .string(c) }
            return .object(o)
        })])
    }

    @Test func taskFilesWithBasicAuthChecksumsAndErrorsThatSayWhy() throws {
        let dir = "t-\(UUID().uuidString.prefix(6))"
        let shaA = try serve("alpha\n", at: "\(dir)/a.txt")
        let shaB = try serve("beta\n", at: "\(dir)/nested/b.txt")
        let node = try node("si-files")
        try node.start()
        let op = try Operator(node: node)
        let base = "http://127.0.0.1:18080/files/\(dir)"
        let tlsBase = "https://localhost:18443/files/\(dir)"

        let good = task(source: files([("\(base)/a.txt", "a.txt", shaA, "files-login"),
                                       ("\(tlsBase)/nested/b.txt", "lib/b.txt", shaB, "files-login")]),
                        script: "cat \"$FEM_SRC_DIR\"/a.txt \"$FEM_SRC_DIR\"/lib/b.txt")
        let e = try run(op, good)
        #expect(e.state == .completed, "\(e.detail)")
        #expect(stdout(node, Tasks.id(good)) == "alpha\nbeta\n")
        #expect(progressData(op, Tasks.id(good), "sha256") == [.string(shaA), .string(shaB)])

        let badSum = task(source: files([("\(base)/a.txt", "a.txt", shaB, "files-login")]))
        let missing = task(source: files([("\(base)/missing.txt", "m.txt", shaA, "files-login")]))
        let noLogin = task(source: files([("\(base)/a.txt", "a.txt", shaA, nil)]))
        for t in [badSum, missing, noLogin] { try op.submit(t) }
        try op.waitForFinal([badSum, missing, noLogin].map(Tasks.id))

        let b = op.finalState(of: Tasks.id(badSum))
        #expect(b?.state == .failed && b?.detail.failureClass == .stageInFailure)
        #expect(b?.detail.message?.contains("source.files[0].sha256: checksum mismatch for a.txt: expected \(shaB), got \(shaA)") == true,
                "\(String(describing: b?.detail))")
        #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/var/sandboxes/\(Tasks.id(badSum))/src/a.txt"))

        let m = op.finalState(of: Tasks.id(missing))
        #expect(m?.detail.failureClass == .stageInFailure)
        #expect(m?.detail.message?.contains("not found on the server (404)") == true, "\(String(describing: m?.detail))")
        // 404 is not retried.
        #expect(!op.events(of: Tasks.id(missing)).contains { $0.detail.message?.contains("trying again") == true })

        let n = op.finalState(of: Tasks.id(noLogin))
        #expect(n?.detail.message?.contains("(401)") == true, "\(String(describing: n?.detail))")
        #expect(!node.log.contains(try String(contentsOfFile: "\(web)/password-fem-files", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    @Test func aServerThatFailsTwiceWithA503IsRetriedAndTheDownloadCompletes() throws {
        let server = try FlakyServer(failures: 2)
        defer { server.stop() }
        let content = String(repeating: "payload ", count: 1000)
        try content.write(toFile: "\(server.root)/data.txt", atomically: true, encoding: .utf8)
        var h = SHA256()
        h.update(Array(content.utf8))
        let node = try node("si-retry", extra: "")
        // The flaky server is plain http on its own port: allow it on this node only.
        try node.editConfig {
            $0.replacingOccurrences(of: "file_allowed_urls = [", with: "file_allowed_urls = [\"\(server.url)/\", ")
        }
        try node.start()
        let op = try Operator(node: node)
        let t = task(source: files([("\(server.url)/data.txt", "data.txt", h.finalizeHex(), nil)]),
                     script: "wc -c < \"$FEM_SRC_DIR\"/data.txt")
        let e = try run(op, t)
        #expect(e.state == .completed, "\(e.detail)")
        #expect(stdout(node, Tasks.id(t)).trimmingCharacters(in: .whitespacesAndNewlines) == "8000")
        let retries = op.events(of: Tasks.id(t)).filter { $0.detail.message?.contains("trying again") == true }
        #expect(retries.count == 2, "retry events: \(retries.map { $0.detail.message ?? "" })")
        #expect(server.requests() == ["GET /data.txt 503", "GET /data.txt 503", "GET /data.txt 200"])
    }

    // MARK: - Paths

    /// The audit's chain: no single target climbs above its own folder, yet `etc` resolves to the host's /etc.
    /// Served by git daemon (git://) and by nginx (https), each checkout is refused naming the first link that leaves.
    @Test func aChainOfSymlinksThatLeavesSrcIsRefused() throws {
        let chain = try makeRepo("chain") { work in
            try FileManager.default.createSymbolicLink(atPath: "\(work)/a", withDestinationPath: ".")
            let names = ["a", "b", "c", "d", "e", "f", "g", "h"]
            for (prev, name) in zip(names, names.dropFirst()) {
                try FileManager.default.createSymbolicLink(atPath: "\(work)/\(name)", withDestinationPath: "\(prev)/..")
            }
            try FileManager.default.createSymbolicLink(atPath: "\(work)/etc", withDestinationPath: "h/etc")
        }
        let node = try node("si-chain")
        try node.start()
        let op = try Operator(node: node)
        let viaDaemon = task(source: gitSource("git://127.0.0.1:19418/\(chain.name).git", ref: "main"),
                             script: "cat \"$FEM_SRC_DIR\"/etc/hostname")
        let viaHTTPS = task(source: gitSource("https://localhost:18443/git/\(chain.name).git", ref: "main",
                                              credentials: "git-login"),
                            script: "cat \"$FEM_SRC_DIR\"/etc/hostname")
        for t in [viaDaemon, viaHTTPS] {
            let e = try run(op, t, timeout: 60)
            #expect(e.state == .failed && e.detail.failureClass == .stageInFailure, "\(e.detail)")
            #expect(e.detail.message == "source.git: the repository's symlink b points outside the sandbox (a/..); "
                    + "refused (and 7 more)", "\(e.detail.message ?? "")")
            #expect(!op.events(of: Tasks.id(t)).contains { $0.state == .running }, "the tool never ran")
            #expect(stdout(node, Tasks.id(t)).isEmpty)
        }
    }

    @Test func pathsThatLeaveTheSandboxAreRefused() throws {
        let escaping = try makeRepo("evil") { work in
            try FileManager.default.createSymbolicLink(atPath: "\(work)/passwd", withDestinationPath: "../../../../../../etc/passwd")
        }
        let inside = try makeRepo("fine") { work in
            try FileManager.default.createSymbolicLink(atPath: "\(work)/link.txt", withDestinationPath: "a.txt")
        }
        let node = try node("si-paths")
        try node.start()
        let op = try Operator(node: node)
        let evil = task(source: gitSource("git://127.0.0.1:19418/\(escaping.name).git", ref: "main"))
        let fine = task(source: gitSource("git://127.0.0.1:19418/\(inside.name).git", ref: "main"),
                        script: "cat \"$FEM_SRC_DIR\"/link.txt")
        let dotdot = task(source: files([("http://127.0.0.1:18080/files/x", "../escape.txt", String(repeating: "0", count: 64), nil)]))
        let absolute = task(source: files([("http://127.0.0.1:18080/files/x", "/etc/cron.d/x", String(repeating: "0", count: 64), nil)]))
        for t in [evil, fine, dotdot, absolute] { try op.submit(t) }
        _ = try op.waitFor("the four tasks to end") { events in
            [evil, fine, dotdot, absolute].allSatisfy { t in
                events.contains { $0.taskID == Tasks.id(t) && $0.state.isTerminal }
            }
        }

        let e = op.finalState(of: Tasks.id(evil))
        #expect(e?.state == .failed && e?.detail.failureClass == .stageInFailure)
        #expect(e?.detail.message?.contains("symlink passwd points outside the sandbox") == true, "\(String(describing: e?.detail))")
        #expect(!op.events(of: Tasks.id(evil)).contains { $0.state == .running })
        #expect(op.finalState(of: Tasks.id(fine))?.state == .completed)
        #expect(stdout(node, Tasks.id(fine)) == "two\n")

        for (t, text) in [(dotdot, "contains \"..\""), (absolute, "is an absolute path")] {
            let r = op.finalState(of: Tasks.id(t))
            #expect(r?.state == .rejected, "\(String(describing: r))")
            #expect(r?.detail.message?.contains("plan.source.files[0].path") == true, "\(String(describing: r?.detail))")
            #expect(r?.detail.message?.contains(text) == true, "\(String(describing: r?.detail))")
        }
        #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/var/escape.txt"))
    }

    // MARK: - Sandboxes

    @Test func sandboxesAreRemovedAfterTheirRetention() throws {
        let node = try node("si-retention", extra: "")
        try node.editConfig { $0 + "\n[sandboxes]\nkeep_completed_hours = 0\nkeep_failed_hours = 1\n" }
        try node.start()
        let op = try Operator(node: node)
        let ok = Tasks.task(["/bin/true"])
        let bad = Tasks.task(["/bin/false"])
        try op.submit(ok)
        try op.submit(bad)
        try op.waitForFinal([Tasks.id(ok), Tasks.id(bad)])
        try eventually("the completed task's sandbox to be removed") {
            !FileManager.default.fileExists(atPath: "\(node.dir)/var/sandboxes/\(Tasks.id(ok))")
        }
        #expect(FileManager.default.fileExists(atPath: "\(node.dir)/var/sandboxes/\(Tasks.id(bad))/logs"))
    }
}
