import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Egress through the real daemon, broker, nginx (WebDAV, git over https), git daemon and a recording HTTP server
/// (Support/flaky_server.py): every way around the node's URL policy that issue 12 lists is refused with the field
/// and the reason, credentials reach only the hosts they are bound to, file:// deliveries never follow a planted
/// symlink, and hostile input costs no more than its size.
@Suite(.serialized)
struct EgressTests {
    let web: String

    init() throws {
        web = try TestEnv.webDir()
    }

    static let launcher = """
        [launchers]
        enabled = ["process"]
        [launchers.process]
        allowed_executables = ["/bin/sh", "/bin/true"]
        """

    func node(_ name: String, _ extra: String) throws -> TestNode {
        try TestNode(name, extra: Self.launcher + "\n" + extra)
    }

    func task(_ script: String = "echo result > \"$FEM_OUTPUT_DIR\"/r.txt", patterns: [String] = ["*.txt"],
              stageOut: [String: JSONValue]? = nil, source: JSONValue? = nil, execution: String? = nil,
              id: String = UUID().uuidString.lowercased()) -> [String: JSONValue] {
        var t = Tasks.task(["/bin/sh", "-c", script], id: id)
        guard case .object(var plan) = t["plan"] else { return t }
        plan["outputs"] = .array(patterns.map { ["pattern": .string($0)] })
        if let source { plan["source"] = source }
        t["plan"] = .object(plan)
        t["execution_id"] = .string(execution ?? "exec-\(UUID().uuidString.prefix(8).lowercased())")
        if let stageOut { t["stage_out"] = .object(stageOut) }
        return t
    }

    /// Submits all, waits for all to end, returns each one's final event.
    func run(_ op: Operator, _ tasks: [[String: JSONValue]], timeout: Double = 30) throws -> [TaskEvent] {
        for t in tasks { try op.submit(t) }
        try op.waitForFinal(tasks.map(Tasks.id), timeout: timeout)
        return try tasks.map { try #require(op.finalState(of: Tasks.id($0))) }
    }

    func expectDeclined(_ e: TaskEvent, _ texts: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(e.state == .declined, "\(e.state): \(e.detail)", sourceLocation: sourceLocation)
        for text in texts {
            #expect(e.detail.message?.contains(text) == true, "\(String(describing: e.detail.message)) lacks \(text)",
                    sourceLocation: sourceLocation)
        }
    }

    func files(under dir: String) -> [String] {
        (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String] ?? []).sorted()
    }

    // MARK: - file:// stage-out

    @Test func fileStageOutEscapesAreDeclinedAndDeliveriesCarryTheTaskID() throws {
        let base = try TestEnv.scratch("outbox")
        let outbox = "\(base)/outbox"
        let elsewhere = "\(base)/elsewhere"
        for d in [outbox, elsewhere] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        let node = try node("eg-file", """
            [outputs]
            allowed_urls = ["file://\(outbox)/"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let dotdot = task(stageOut: ["url": .string("file://\(outbox)/../elsewhere")])
        let encoded = task(stageOut: ["url": .string("file://\(outbox)/%2e%2e/elsewhere")])
        let sibling = task(stageOut: ["url": .string("file://\(base)/outbox2/")])
        let climbing = task(stageOut: ["url": .string("file://\(outbox)/" + String(repeating: "../", count: 40) + "etc")])
        let execution = "exec-shared-\(UUID().uuidString.prefix(6).lowercased())"
        let first = task("echo one > \"$FEM_OUTPUT_DIR\"/r.txt", stageOut: ["url": .string("file://\(outbox)/sub")],
                         execution: execution)
        let second = task("echo two > \"$FEM_OUTPUT_DIR\"/r.txt", stageOut: ["url": .string("file://\(outbox)/sub")],
                          execution: execution)
        let ends = try run(op, [dotdot, encoded, sibling, climbing, first, second])

        expectDeclined(ends[0], ["stage_out.url: \"file://\(outbox)/../elsewhere\" (normalised: file://\(base)/elsewhere) "
                                 + "is not allowed on this node (allowed: file://\(outbox)/)"])
        expectDeclined(ends[1], ["stage_out.url:", "percent-encoded '.' (%2e)"])
        expectDeclined(ends[2], ["stage_out.url:", "is not allowed on this node"])
        expectDeclined(ends[3], ["stage_out.url:", "climbs above the root"])
        #expect(files(under: elsewhere).isEmpty, "\(files(under: elsewhere))")
        #expect(!FileManager.default.fileExists(atPath: "\(base)/outbox2"))

        // Two tasks of one execution on one node no longer overwrite each other.
        #expect(ends[4].state == .completed && ends[5].state == .completed, "\(ends[4].detail) \(ends[5].detail)")
        for (t, text) in [(first, "one\n"), (second, "two\n")] {
            let dest = "\(outbox)/sub/\(execution)/\(node.id)/\(Tasks.id(t))"
            #expect(try String(contentsOfFile: "\(dest)/out/r.txt", encoding: .utf8) == text)
            #expect(FileManager.default.fileExists(atPath: "\(dest)/manifest.json"))
            #expect(op.finalState(of: Tasks.id(t))?.detail.data?["outputs"]?["location"]?.stringValue
                    == "file://\(outbox)/sub/\(execution)/\(node.id)/\(Tasks.id(t))")
        }
    }

    @Test func aSymlinkPlantedInTheDestinationTreeIsNeverFollowed() throws {
        let base = try TestEnv.scratch("outbox-links")
        let outbox = "\(base)/outbox"
        let victim = "\(base)/victim"
        for d in [outbox, victim] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try "precious\n".write(toFile: "\(victim)/cron", atomically: true, encoding: .utf8)
        let node = try node("eg-links", """
            [outputs]
            allowed_urls = ["file://\(outbox)/"]
            retries = 1
            """)
        try node.start()
        let op = try Operator(node: node)

        // A folder on the way is a symlink to somewhere else: delivery fails, nothing lands there.
        let folderLink = task(stageOut: ["url": .string("file://\(outbox)/")])
        let execution = folderLink["execution_id"]!.stringValue!
        try FileManager.default.createSymbolicLink(atPath: "\(outbox)/\(execution)", withDestinationPath: victim)
        // The file itself is a symlink to a file elsewhere: the link is replaced, its target untouched.
        let fileLink = task(stageOut: ["url": .string("file://\(outbox)/")])
        let dest = "\(outbox)/\(fileLink["execution_id"]!.stringValue!)/\(node.id)/\(Tasks.id(fileLink))/out"
        try FileManager.default.createDirectory(atPath: dest, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(dest)/r.txt", withDestinationPath: "\(victim)/cron")

        let ends = try run(op, [folderLink, fileLink])
        #expect(ends[0].state == .failed && ends[0].detail.failureClass == .stageOutFailure, "\(ends[0].detail)")
        #expect(ends[0].detail.message?.contains("a symlink is never followed") == true, "\(ends[0].detail)")
        #expect(files(under: victim) == ["cron"], "\(files(under: victim))")
        #expect(try String(contentsOfFile: "\(victim)/cron", encoding: .utf8) == "precious\n")

        #expect(ends[1].state == .completed, "\(ends[1].detail)")
        let attributes = try FileManager.default.attributesOfItem(atPath: "\(dest)/r.txt")
        #expect(attributes[.type] as? FileAttributeType == .typeRegular)
        #expect(try String(contentsOfFile: "\(dest)/r.txt", encoding: .utf8) == "result\n")
    }

    // MARK: - Stage-in

    @Test func gitAndFileSourcesOutsideTheirAllowlistsAreDeclined() throws {
        let base = try TestEnv.scratch("tools")
        let tools = "\(base)/tools"
        try FileManager.default.createDirectory(atPath: tools, withIntermediateDirectories: true)
        // A real repository next to the allowed folder, and a symlink inside the folder that points at it.
        let secret = "\(base)/secret-repo"
        let r = try Shell.run(["/usr/bin/git", "init", "-q", "--bare", secret])
        try #require(r.status == 0, "\(r.output)")
        try FileManager.default.createSymbolicLink(atPath: "\(tools)/link.git", withDestinationPath: secret)
        let node = try node("eg-sources", """
            [stage_in]
            git_allowed_urls = ["file://\(tools)/", "https://localhost:18443/git/"]
            file_allowed_urls = ["http://127.0.0.1:18080/files/"]
            require_sha256 = false
            """)
        try node.start()
        let op = try Operator(node: node)
        func git(_ url: String) -> JSONValue { ["git": ["url": .string(url), "ref": "main"]] }
        func file(_ url: String) -> JSONValue { ["files": [["url": .string(url), "path": "x.txt"]]] }
        let tasks = [
            task(source: git("file://\(tools)/../secret-repo")),
            task(source: git("file://\(tools)/link.git")),
            task(source: git("https://localhost.evil.example:18443/git/x.git")),
            task(source: git("https://localhost:18443/gitx/x.git")),
            task(source: git("https://localhost:18443/git/%2e%2e/files/x")),
            task(source: git("ssh://localhost/git/x.git")),
            task(source: file("http://127.0.0.1:18080/files/../dav/x.txt")),
            task(source: file("http://127.0.0.1:18080/files\\..\\dav/x.txt")),
            task(source: file("http://127.0.0.1:18081/files/x.txt")),
            task(source: file("https://127.0.0.1:18080/files/x.txt")),
        ]
        let ends = try run(op, tasks)
        expectDeclined(ends[0], ["source.git.url: \"file://\(tools)/../secret-repo\" (normalised: file://\(secret)) "
                                 + "is not allowed on this node"])
        expectDeclined(ends[1], ["source.git.url: file://\(tools)/link.git resolves to \(secret), which is not under "
                                 + "an allowed folder"])
        expectDeclined(ends[2], ["source.git.url: \"https://localhost.evil.example:18443/git/x.git\" is not allowed"])
        expectDeclined(ends[3], ["source.git.url: \"https://localhost:18443/gitx/x.git\" is not allowed"])
        expectDeclined(ends[4], ["source.git.url:", "%2e"])
        expectDeclined(ends[5], ["source.git.url:", "scheme \"ssh\""])
        expectDeclined(ends[6], ["source.files[0].url:", "(normalised: http://127.0.0.1:18080/dav/x.txt) is not allowed"])
        expectDeclined(ends[7], ["source.files[0].url:", "backslash"])
        expectDeclined(ends[8], ["source.files[0].url:", "is not allowed"])
        expectDeclined(ends[9], ["source.files[0].url:", "is not allowed"])
        for t in tasks { #expect(!op.events(of: Tasks.id(t)).contains { $0.state == .running }) }
    }

    @Test func withNothingConfiguredNothingLeavesAndCheckSaysSo() throws {
        let node = try node("eg-default", "")
        let check = try node.run(["check"])
        for key in ["stage_in.git_allowed_urls", "stage_in.file_allowed_urls", "outputs.allowed_urls"] {
            #expect(check.output.contains("info  \(key) is empty: egress denied"), "\(check.output)")
        }
        try node.start()
        let op = try Operator(node: node)
        let ends = try run(op, [
            task(stageOut: ["url": "https://localhost:18443/dav/x"]),
            task(source: ["git": ["url": "https://localhost:18443/git/x.git"]]),
            task(source: ["files": [["url": "https://localhost:18443/files/x", "path": "x",
                                     "sha256": .string(String(repeating: "0", count: 64))]]]),
        ])
        expectDeclined(ends[0], ["stage_out.url:", "is not allowed on this node (allowed: none)"])
        expectDeclined(ends[1], ["source.git.url:", "is not allowed on this node (allowed: none)"])
        expectDeclined(ends[2], ["source.files[0].url:", "is not allowed on this node (allowed: none)"])
    }

    // MARK: - Credentials

    @Test func credentialsGoOnlyToTheirOwnHosts() throws {
        let other = try FlakyServer(failures: 0)
        defer { other.stop() }
        // A server on an allowed URL that sends clients to `other`, by another host name (libgit2 1.5 counts only a
        // different host as off-site: a redirect to another port of the same host it still follows).
        let redirecting = try FlakyServer(failures: 0,
                                          redirectTo: other.url.replacingOccurrences(of: "127.0.0.1", with: "localhost"))
        defer { redirecting.stop() }
        let node = try node("eg-creds", """
            [stage_in]
            git_allowed_urls = ["https://localhost:18443/git/", "\(other.url)/", "\(redirecting.url)/"]
            file_allowed_urls = ["http://127.0.0.1:18080/files/", "\(other.url)/", "\(redirecting.url)/"]
            require_sha256 = false
            [outputs]
            allowed_urls = ["http://127.0.0.1:18080/dav/", "\(other.url)/", "\(redirecting.url)/"]
            retries = 1
            [credentials.upload-login]
            username = "fem-upload"
            password_file = "\(web)/password-fem-upload"
            urls = ["http://127.0.0.1:18080/dav/"]
            [credentials.files-login]
            username = "fem-files"
            password_file = "\(web)/password-fem-files"
            urls = ["http://127.0.0.1:18080/files/", "\(redirecting.url)/"]
            [credentials.git-login]
            username = "fem-git"
            password_file = "\(web)/password-fem-git"
            urls = ["https://localhost:18443/git/"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let token = "tok-\(UUID().uuidString)"
        let upload = task(stageOut: ["url": .string("\(other.url)/up"), "credentials": "upload-login"])
        let files = task(source: ["files": [["url": .string("\(other.url)/x.txt"), "path": "x.txt",
                                             "credentials": "files-login"]]])
        let git = task(source: ["git": ["url": .string("\(other.url)/r.git"), "credentials": "git-login"]])
        let ownToken = task(stageOut: ["url": .string("\(other.url)/tok"), "token": .string(token)])
        let redirected = task(source: ["files": [["url": .string("\(redirecting.url)/x.txt"), "path": "x.txt",
                                                  "credentials": "files-login"]]])
        let redirectedUpload = task(stageOut: ["url": .string("\(redirecting.url)/up"), "token": .string(token)])
        let redirectedGit = task(source: ["git": ["url": .string("\(redirecting.url)/r.git")]])
        let ends = try run(op, [upload, files, git, ownToken, redirected, redirectedUpload, redirectedGit])

        expectDeclined(ends[0], ["stage_out.credentials: the credential \"upload-login\" may not be sent to "
                                 + "\(other.url)/up (its urls: http://127.0.0.1:18080/dav/)"])
        expectDeclined(ends[1], ["source.files[0].credentials: the credential \"files-login\" may not be sent to "
                                 + "\(other.url)/x.txt"])
        expectDeclined(ends[2], ["source.git.credentials: the credential \"git-login\" may not be sent to \(other.url)/r.git"])

        // The task's own token goes to its own stage_out URL, and only there.
        #expect(ends[3].state == .completed, "\(ends[3].detail)")
        let seen = other.authorizations()
        let withToken = seen.filter { $0.hasSuffix("Bearer \(token)") }
        #expect(!withToken.isEmpty && withToken.allSatisfy { $0.hasPrefix("PUT /tok/") }, "\(seen)")
        #expect(!seen.contains { $0.contains("Basic") }, "a node credential reached an unlisted host: \(seen)")

        // A redirect is never followed: neither the file login nor the token reaches the other server that way.
        #expect(ends[4].state == .failed && ends[4].detail.message?.contains("the server answered 307") == true,
                "\(ends[4].detail)")
        #expect(ends[5].state == .failed && ends[5].detail.message?.contains("the server answered 307") == true,
                "\(ends[5].detail)")
        // libgit2 follows an off-site redirect of its first request by default; the node turns that off.
        #expect(ends[6].state == .failed && ends[6].detail.failureClass == .stageInFailure, "\(ends[6].detail)")
        #expect(redirecting.requests().contains { $0.hasPrefix("GET /r.git/info/refs") }, "\(redirecting.requests())")
        #expect(!other.requests().contains { $0.contains("/x.txt") || $0.hasPrefix("PUT /up/") || $0.contains("/r.git") },
                "\(other.requests())")
        #expect(redirecting.authorizations().contains { $0.hasPrefix("GET /x.txt Basic ") })
        // Nothing of the secrets in the log, and the token is gone from the journal once the tasks ended.
        let password = try String(contentsOfFile: "\(web)/password-fem-files", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!node.log.contains(password) && !node.log.contains(token))
        let shown = try node.run(["show", Tasks.id(ownToken), "--json"])
        #expect(shown.status == 0 && !shown.output.contains(token), "\(shown.output)")
        let journal = try Shell.run(["/usr/bin/sqlite3", "\(node.dir)/var/journal.sqlite",
                                     "SELECT document FROM tasks WHERE task_id = '\(Tasks.id(ownToken))'"])
        #expect(journal.status == 0 && journal.output.contains("\(other.url)/tok") && !journal.output.contains(token),
                "\(journal.output)")
    }

    @Test func aDownloadOverTheNodesLimitStopsAndFailsTheTask() throws {
        let name = "eg-big-\(UUID().uuidString.prefix(6)).bin"
        let path = "\(web)/files/\(name)"
        try Data(repeating: 0x61, count: 2 << 20).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o644)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let node = try node("eg-big", """
            [stage_in]
            file_allowed_urls = ["http://127.0.0.1:18080/files/"]
            require_sha256 = false
            max_file_mb = 1
            [credentials.files-login]
            username = "fem-files"
            password_file = "\(web)/password-fem-files"
            urls = ["http://127.0.0.1:18080/files/"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let t = task(source: ["files": [["url": .string("http://127.0.0.1:18080/files/\(name)"), "path": "big.bin",
                                         "credentials": "files-login"]]])
        let e = try #require(try run(op, [t]).first)
        #expect(e.state == .failed && e.detail.failureClass == .stageInFailure, "\(e.detail)")
        #expect(e.detail.message?.contains("source.files[0]: the download is larger than this node's limit of 1048576 "
                                           + "bytes (stage_in.max_file_mb)") == true, "\(e.detail)")
        #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/src/big.bin"))
        #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/src/big.bin.part"))
    }

    @Test func toolTextReachesTheOperatorsTerminalEscaped() throws {
        let node = try node("eg-show", "")
        try node.start()
        let op = try Operator(node: node)
        // A tool reporting an error whose text carries a terminal title escape and a forged line.
        let t = task(#"printf '%s\n' '{"type":"error","message":"x\u001b]0;owned\u0007y\nFAKE line"}'; exit 1"#)
        let e = try #require(try run(op, [t]).first)
        #expect(e.state == .failed && e.detail.message?.contains("\u{1B}]0;owned") == true, "\(e.detail)")
        let show = try node.run(["show", Tasks.id(t)])
        #expect(show.status == 0, "\(show.output)")
        #expect(!show.output.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 }, "\(show.output)")
        #expect(show.output.contains("x\\u{1b}]0;owned\\u{7}y\\nFAKE line"), "\(show.output)")
        let tasks = try node.run(["tasks"])
        #expect(!tasks.output.unicodeScalars.contains { $0.value == 0x1B }, "\(tasks.output)")
        #expect(!node.log.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 })
    }

    // MARK: - Input limits

    func rssKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    @Test func oversizeDeepAndControlCharacterMessagesAreRejectedCheaply() throws {
        let node = try node("eg-input", "")
        try node.start()
        let op = try Operator(node: node)
        let pid = try #require(node.pid)
        // Warm up: one ordinary task through every part of the daemon first.
        let warm = Tasks.task(["/bin/true"])
        try op.submit(warm)
        try op.waitForFinal([Tasks.id(warm)])
        let before = rssKiB(pid)

        let big = Array(repeating: UInt8(ascii: " "), count: 2 << 20)
        try op.publish(big)
        let deep = Array((String(repeating: "[", count: 32768) + String(repeating: "]", count: 32768)).utf8)
        let published = Date()
        try op.publish(deep)
        var evil = Tasks.task(["/bin/true"], id: "ctl")
        evil["task_id"] = .string("ab\u{1B}]0;owned\u{07}c\u{0}d")
        try op.submit(evil)
        var newline = Tasks.task(["/bin/true"], id: "nl")
        newline["task_id"] = .string("abc\n")
        try op.submit(newline)
        let after = Tasks.task(["/bin/true"])
        try op.submit(after)
        try op.waitForFinal([Tasks.id(after)])
        let rejections = try op.waitFor("four rejections") { $0.filter { $0.state == .rejected }.count >= 4 }
            .filter { $0.state == .rejected }
        let messages = rejections.compactMap(\.detail.message)
        #expect(messages.contains { $0.contains("message is 2097152 bytes, over the limit of 65536 bytes") }, "\(messages)")
        let nested = try #require(rejections.first { $0.detail.message?.contains("nested deeper than 64 levels") == true },
                                  "\(messages)")
        #expect(nested.time.timeIntervalSince(published) < 2, "the nested document took \(nested.time.timeIntervalSince(published)) s")
        #expect(messages.filter { $0.contains("task_id") }.count == 2, "\(messages)")
        let grown = rssKiB(pid) - before
        #expect(grown < 1536, "the daemon's RSS grew by \(grown) KiB for a 2 MiB message it should never hold")

        // Control characters never reach receiver.log raw.
        let log = try Data(contentsOf: URL(fileURLWithPath: "\(node.dir)/receiver.log"))
        #expect(!log.contains(0x1B) && !log.contains(0x00) && !log.contains(0x07))
        #expect(node.log.contains("\\u{1b}]0;owned\\u{7}c\\u{0}d"), "\(node.log.suffix(2000))")
        #expect(op.finalState(of: Tasks.id(after))?.state == .completed)
    }
}
