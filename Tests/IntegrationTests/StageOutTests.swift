import FEMCore
import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Stage-out through real daemons: nginx with WebDAV PUT and basic auth (scripts/dev-web.sh, started by test.sh)
/// for deliveries and the airlock, and a real HTTP server of the test's own that answers 503 or goes down
/// (Support/flaky_server.py) for retries and resumption across a daemon restart.
@Suite(.serialized)
struct StageOutTests {
    let web: String

    init() throws {
        web = try TestEnv.webDir()
    }

    func node(_ name: String, allowed: [String] = [], outputs: String = "") throws -> TestNode {
        let urls = (["https://localhost:18443/dav/", "http://127.0.0.1:18080/dav/"] + allowed)
            .map { "\"\($0)\"" }.joined(separator: ", ")
        return try TestNode(name, extra: """
            \(TestNode.hostProcesses)
            [outputs]
            allowed_urls = [\(urls)]
            ca_file = "\(web)/ca.pem"
            retries = 4
            retry_delay_ms = 100
            \(outputs)
            [credentials.upload-login]
            username = "fem-upload"
            password_file = "\(web)/password-fem-upload"
            urls = ["https://localhost:18443/dav/", "http://127.0.0.1:18080/dav/"]
            """)
    }

    /// A process task writing `script`'s outputs, collected by `patterns`, delivered to `stageOut`.
    func task(_ script: String, patterns: [String], stageOut: [String: JSONValue]?) -> [String: JSONValue] {
        var t = Tasks.task(["/bin/sh", "-c", script])
        guard case .object(var plan) = t["plan"] else { return t }
        plan["outputs"] = .array(patterns.map { ["pattern": .string($0)] })
        t["plan"] = .object(plan)
        t["execution_id"] = .string("exec-\(UUID().uuidString.prefix(8).lowercased())")
        if let stageOut { t["stage_out"] = .object(stageOut) }
        return t
    }

    static let writeOutputs = """
        cd "$FEM_OUTPUT_DIR" && mkdir -p sub && echo "id,value" > result.csv && echo "1,42" >> result.csv \
        && head -c 2000000 /dev/urandom > sub/data.bin && echo scratch > ignored.tmp \
        && ln -s /etc/passwd leak.csv && echo done
        """

    func sha256(ofFile path: String) throws -> String {
        let data = try #require(FileManager.default.contents(atPath: path), "\(path) is missing")
        var h = SHA256()
        h.update(Array(data))
        return h.finalizeHex()
    }

    struct ManifestFile: Decodable { var path: String; var size: Int64; var sha256: String }
    struct Manifest: Decodable {
        var task_id: String
        var node_id: String
        var state: String
        var exit_code: Int32?
        var tool: [String: String]
        var files: [ManifestFile]
    }

    func manifest(at path: String) throws -> Manifest {
        let data = try #require(FileManager.default.contents(atPath: path), "\(path) is missing")
        return try JSONDecoder().decode(Manifest.self, from: data)
    }

    func run(_ op: Operator, _ t: [String: JSONValue], timeout: Double = 30) throws -> TaskEvent {
        try op.submit(t)
        try op.waitForFinal([Tasks.id(t)], timeout: timeout)
        return try #require(op.finalState(of: Tasks.id(t)))
    }

    /// Where a task's deliveries land: `<url>/<execution_id>/<node_id>/<task_id>/`.
    func uploaded(_ prefix: String, _ t: [String: JSONValue], _ node: TestNode) -> String {
        "\(web)/dav/\(prefix)/\(t["execution_id"]!.stringValue!)/\(node.id)/\(Tasks.id(t))"
    }

    @Test func outputsAndLogsArriveIntactOverWebDAVAndTheManifestChecksOut() throws {
        let node = try node("so-dav")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "run-\(UUID().uuidString.prefix(6).lowercased())"
        let t = task(Self.writeOutputs, patterns: ["*.csv", "sub/**"],
                     stageOut: ["url": .string("https://localhost:18443/dav/\(prefix)"), "credentials": "upload-login"])
        let e = try run(op, t)
        #expect(e.state == .completed, "\(e.detail)")
        let dest = uploaded(prefix, t, node)
        #expect(e.detail.data?["outputs"]?["location"]?.stringValue == "https://localhost:18443/dav/\(prefix)/"
                + "\(t["execution_id"]!.stringValue!)/\(node.id)/\(Tasks.id(t))")
        #expect(e.detail.data?["outputs"]?["files"] == 4)

        let m = try manifest(at: "\(dest)/manifest.json")
        #expect(m.task_id == Tasks.id(t) && m.node_id == node.id && m.state == "completed" && m.exit_code == 0)
        #expect(m.tool["id"] == "test-tool")
        #expect(m.files.map(\.path) == ["logs/stdout.log", "logs/stderr.log", "out/result.csv", "out/sub/data.bin"])
        for f in m.files {
            #expect(try sha256(ofFile: "\(dest)/\(f.path)") == f.sha256, "\(f.path)")
            let size = try FileManager.default.attributesOfItem(atPath: "\(dest)/\(f.path)")[.size] as? Int64
            #expect(size == f.size, "\(f.path)")
        }
        #expect(m.files.first { $0.path == "out/sub/data.bin" }?.size == 2_000_000)
        // The symlink to a file outside out/ matches *.csv but never leaves; neither does an undeclared file.
        #expect(!FileManager.default.fileExists(atPath: "\(dest)/out/leak.csv"))
        #expect(!FileManager.default.fileExists(atPath: "\(dest)/out/ignored.tmp"))
        let password = try String(contentsOfFile: "\(web)/password-fem-upload", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!node.log.contains(password))
    }

    @Test func aRefusedLoginGivesUpAtOnceWithTheServersAnswerAndNeverLogsTheToken() throws {
        let node = try node("so-401")
        try node.start()
        let op = try Operator(node: node)
        let token = "tok-\(UUID().uuidString)"
        let t = task("echo hi > \"$FEM_OUTPUT_DIR\"/r.txt", patterns: ["*.txt"],
                     stageOut: ["url": "http://127.0.0.1:18080/dav/refused", "token": .string(token)])
        let e = try run(op, t)
        #expect(e.state == .failed && e.detail.failureClass == .stageOutFailure, "\(e.detail)")
        #expect(e.detail.message?.contains("(401)") == true, "\(e.detail)")
        // The server's status line, never its body.
        #expect(e.detail.message?.hasSuffix("(401): 401 Unauthorized") == true, "the server's answer: \(e.detail)")
        #expect(e.detail.message?.contains("<html>") == false && e.detail.message?.contains("nginx") == false)
        #expect(!op.events(of: Tasks.id(t)).contains { $0.detail.message?.contains("trying again") == true })
        #expect(!node.log.contains(token))
        #expect(!op.events(of: Tasks.id(t)).contains { String(decoding: (try? JSONEncoder().encode($0)) ?? Data(), as: UTF8.self).contains(token) })
    }

    @Test func aServerAnswering503TwiceIsRetriedThenAccepts() throws {
        let server = try FlakyServer(failures: 2)
        defer { server.stop() }
        let node = try node("so-503", allowed: ["\(server.url)/"])
        try node.start()
        let op = try Operator(node: node)
        let t = task("echo result > \"$FEM_OUTPUT_DIR\"/r.txt", patterns: ["*.txt"],
                     stageOut: ["url": .string("\(server.url)/up")])
        let e = try run(op, t)
        #expect(e.state == .completed, "\(e.detail)")
        let requests = server.requests()
        #expect(requests.prefix(2).allSatisfy { $0.hasSuffix(" 503") }, "\(requests)")
        #expect(requests.filter { $0.hasSuffix(" 201") }.count == 4, "logs x2, r.txt, manifest: \(requests)")
        let dest = "\(server.root)/up/\(t["execution_id"]!.stringValue!)/\(node.id)/\(Tasks.id(t))"
        #expect(try String(contentsOfFile: "\(dest)/out/r.txt", encoding: .utf8) == "result\n")
        #expect(op.events(of: Tasks.id(t)).filter { $0.detail.message?.contains("trying again") == true }.count == 2)
    }

    @Test func anUploadServerDownAcrossARestartResumesWithoutResendingConfirmedFiles() throws {
        // Three stored PUTs (the two logs and out/a.txt), then the server is down until comeBack().
        let server = try FlakyServer(failures: 0, downAfter: 3)
        defer { server.stop() }
        let node = try node("so-resume", allowed: ["\(server.url)/"], outputs: "")
        try node.editConfig {
            $0.replacingOccurrences(of: "retries = 4", with: "retries = 50")
                .replacingOccurrences(of: "retry_delay_ms = 100", with: "retry_delay_ms = 200")
        }
        try node.start()
        let op = try Operator(node: node)
        let t = task("cd \"$FEM_OUTPUT_DIR\" && echo a > a.txt && echo b > b.txt && echo c > c.txt", patterns: ["*.txt"],
                     stageOut: ["url": .string("\(server.url)/resume")])
        try op.submit(t)
        try eventually("the server to go down mid-way through the uploads", timeout: 30) {
            server.requests().contains { $0.hasSuffix(" 503") }
        }
        node.kill(SIGKILL)
        server.comeBack()
        try node.start()
        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let e = try #require(op.finalState(of: Tasks.id(t)))
        #expect(e.state == .completed, "\(e.detail)")
        let stored = server.requests().filter { $0.hasSuffix(" 201") }.map { $0.split(separator: " ")[1] }
        #expect(stored.count == Set(stored).count, "a file was sent twice: \(server.requests())")
        #expect(stored.count == 6, "logs x2, a, b, c, manifest: \(server.requests())")
        #expect(stored.last?.hasSuffix("/manifest.json") == true)
        let dest = "\(server.root)/resume/\(t["execution_id"]!.stringValue!)/\(node.id)/\(Tasks.id(t))"
        for name in ["a", "b", "c"] {
            #expect(try String(contentsOfFile: "\(dest)/out/\(name).txt", encoding: .utf8) == "\(name)\n")
        }
    }

    @Test func anOversizeOutputFailsTheTaskAndNamesTheFile() throws {
        let node = try node("so-big", outputs: "max_file_bytes = 1000")
        try node.start()
        let op = try Operator(node: node)
        let t = task("head -c 5000 /dev/zero > \"$FEM_OUTPUT_DIR\"/big.bin; echo ok > \"$FEM_OUTPUT_DIR\"/small.txt",
                     patterns: ["*"], stageOut: ["url": "http://127.0.0.1:18080/dav/big", "credentials": "upload-login"])
        let e = try run(op, t)
        #expect(e.state == .failed && e.detail.failureClass == .stageOutFailure, "\(e.detail)")
        #expect(e.detail.message?.contains("out/big.bin is 5000 bytes, over the limit of 1000 bytes") == true, "\(e.detail)")
        #expect(!FileManager.default.fileExists(atPath: "\(web)/dav/big/\(t["execution_id"]!.stringValue!)"))
    }

    @Test func theAirlockHoldsOutputsUntilApprovedAndNeverSendsRejectedOnes() throws {
        let node = try node("so-airlock", outputs: "require_approval = true")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "airlock-\(UUID().uuidString.prefix(6).lowercased())"
        let target: [String: JSONValue] = ["url": .string("http://127.0.0.1:18080/dav/\(prefix)"),
                                           "credentials": "upload-login"]
        let approved = task("echo fine > \"$FEM_OUTPUT_DIR\"/ok.txt", patterns: ["*.txt"], stageOut: target)
        let rejected = task("echo 'patient 123' > \"$FEM_OUTPUT_DIR\"/leak.txt", patterns: ["*.txt"], stageOut: target)
        try op.submit(approved)
        try op.submit(rejected)
        _ = try op.waitFor("both tasks to wait for approval") { events in
            [approved, rejected].allSatisfy { t in
                events.contains { $0.taskID == Tasks.id(t) && $0.state == .awaitingApproval }
            }
        }
        // Nothing has left the node.
        for t in [approved, rejected] {
            #expect(!FileManager.default.fileExists(atPath: uploaded(prefix, t, node)))
        }
        let list = try node.run(["outputs", "list"])
        #expect(list.status == 0 && list.output.contains(Tasks.id(approved)) && list.output.contains(Tasks.id(rejected)),
                "\(list.output)")
        let show = try node.run(["outputs", "show", Tasks.id(approved)])
        #expect(show.output.contains("out/ok.txt") && show.output.contains("awaiting_approval"), "\(show.output)")

        let yes = try node.run(["outputs", "approve", Tasks.id(approved), "--reason", "aggregate only"])
        #expect(yes.status == 0, "\(yes.output)")
        let no = try node.run(["outputs", "reject", Tasks.id(rejected), "--reason", "row-level data"])
        #expect(no.status == 0, "\(no.output)")
        let again = try node.run(["outputs", "approve", Tasks.id(rejected)])
        #expect(again.status != 0 && again.output.contains("already decided"), "\(again.output)")

        try op.waitForFinal([Tasks.id(approved), Tasks.id(rejected)])
        let a = try #require(op.finalState(of: Tasks.id(approved)))
        #expect(a.state == .completed)
        #expect(a.detail.data?["outputs"]?["approval"] == "approved")
        let dest = uploaded(prefix, approved, node)
        #expect(try String(contentsOfFile: "\(dest)/out/ok.txt", encoding: .utf8) == "fine\n")
        #expect(FileManager.default.fileExists(atPath: "\(dest)/manifest.json"))

        let r = try #require(op.finalState(of: Tasks.id(rejected)))
        #expect(r.detail.message?.contains("outputs rejected: row-level data; nothing was uploaded") == true, "\(r.detail)")
        #expect(!FileManager.default.fileExists(atPath: uploaded(prefix, rejected, node)))

        let decisions = (op.events(of: Tasks.id(approved)) + op.events(of: Tasks.id(rejected))).filter { $0.kind == .approval }
        #expect(decisions.count == 2)
        #expect(decisions.allSatisfy { $0.detail.data?["by"] == .string(Self.osUser) && $0.detail.data?["at"] != nil })
        #expect(decisions.contains { $0.detail.data?["decision"] == "rejected" && $0.detail.data?["reason"] == "row-level data" })
    }

    @Test func withHoldLogsOffTheLogsGoAheadOfTheDecisionAndTheOutputsWait() throws {
        let node = try node("so-logs-first", outputs: "require_approval = true\nhold_logs = false")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "logs-first-\(UUID().uuidString.prefix(6).lowercased())"
        let t = task("echo working; echo secret > \"$FEM_OUTPUT_DIR\"/result.txt", patterns: ["*.txt"],
                     stageOut: ["url": .string("http://127.0.0.1:18080/dav/\(prefix)"), "credentials": "upload-login"])
        try op.submit(t)
        _ = try op.waitFor("the outputs to wait for approval") { events in
            events.contains { $0.taskID == Tasks.id(t) && $0.state == .awaitingApproval }
        }
        let dest = uploaded(prefix, t, node)
        #expect(try String(contentsOfFile: "\(dest)/logs/stdout.log", encoding: .utf8) == "working\n")
        #expect(!FileManager.default.fileExists(atPath: "\(dest)/out/result.txt"))
        #expect(!FileManager.default.fileExists(atPath: "\(dest)/manifest.json"))
        let no = try node.run(["outputs", "reject", Tasks.id(t), "--reason", "not aggregated"])
        #expect(no.status == 0, "\(no.output)")
        try op.waitForFinal([Tasks.id(t)])
        #expect(op.finalState(of: Tasks.id(t))?.detail.data?["outputs"]?["approval"] == "rejected: not aggregated")
        #expect(!FileManager.default.fileExists(atPath: "\(dest)/out/result.txt"))
    }

    // MARK: - Approval bound to content (issue 12, item 5)

    /// The OS account running the tests: the approver the journal must name.
    static var osUser: String {
        guard let pw = getpwuid(getuid()), let name = pw.pointee.pw_name else { return "uid \(getuid())" }
        return String(cString: name)
    }

    /// Where a task's files land below a WebDAV prefix (with or without the task id as the last folder).
    func delivered(_ prefix: String, _ t: [String: JSONValue], _ node: TestNode, _ path: String) -> String? {
        let base = uploaded(prefix, t, node)
        return ["\(base)/\(Tasks.id(t))/\(path)", "\(base)/\(path)"].first { FileManager.default.fileExists(atPath: $0) }
    }

    func waitForHold(_ op: Operator, _ ts: [[String: JSONValue]]) throws {
        _ = try op.waitFor("the outputs to wait for approval") { events in
            ts.allSatisfy { t in
                events.contains { $0.taskID == Tasks.id(t) && ($0.state == .awaitingApproval || $0.state.isTerminal) }
            }
        }
        for t in ts {
            try #require(op.events(of: Tasks.id(t)).contains { $0.state == .awaitingApproval },
                         "\(op.events(of: Tasks.id(t)).map(\.detail))")
        }
    }

    @Test func whatIsDeliveredIsTheStagedCopyTheStewardApprovedAndAChangedCopyFailsDelivery() throws {
        let node = try node("so-bound", outputs: "require_approval = true\n[sandboxes]\nkeep_failed_hours = 0")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "bound-\(UUID().uuidString.prefix(6).lowercased())"
        let target: [String: JSONValue] = ["url": .string("http://127.0.0.1:18080/dav/\(prefix)"),
                                           "credentials": "upload-login"]
        let outChanged = task("echo aggregate > \"$FEM_OUTPUT_DIR\"/ok.txt", patterns: ["*.txt"], stageOut: target)
        let stagingChanged = task("echo aggregate > \"$FEM_OUTPUT_DIR\"/ok.txt", patterns: ["*.txt"], stageOut: target)
        try op.submit(outChanged)
        try op.submit(stagingChanged)
        try waitForHold(op, [outChanged, stagingChanged])

        // The staged copy lives outside the sandbox, in a folder only the node's account can enter.
        let staging = "\(node.dir)/var/staging/\(Tasks.id(outChanged))"
        var st = stat()
        #expect(stat(staging, &st) == 0 && st.st_mode & 0o777 == 0o700, "\(staging) mode \(String(st.st_mode, radix: 8))")
        #expect(try String(contentsOfFile: "\(staging)/out/ok.txt", encoding: .utf8) == "aggregate\n")

        // A host process rewrites out/ while the steward reviews, and adds a file matching the patterns.
        let out = "\(node.dir)/var/sandboxes/\(Tasks.id(outChanged))/out"
        try "patient 123, row-level\n".write(toFile: "\(out)/ok.txt", atomically: false, encoding: .utf8)
        try "patient 456\n".write(toFile: "\(out)/late.txt", atomically: false, encoding: .utf8)
        // Someone with access to the node changes a staged copy after it was held.
        let stagedCopy = "\(node.dir)/var/staging/\(Tasks.id(stagingChanged))/out/ok.txt"
        try "patient 789\n".write(toFile: stagedCopy, atomically: false, encoding: .utf8)

        for t in [outChanged, stagingChanged] {
            let yes = try node.run(["outputs", "approve", Tasks.id(t)])
            #expect(yes.status == 0 && yes.output.contains("manifest sha256"), "\(yes.output)")
        }
        try op.waitForFinal([Tasks.id(outChanged), Tasks.id(stagingChanged)])

        let a = try #require(op.finalState(of: Tasks.id(outChanged)))
        #expect(a.state == .completed, "\(a.detail)")
        let sent = try #require(delivered(prefix, outChanged, node, "out/ok.txt"), "out/ok.txt was not delivered")
        #expect(try String(contentsOfFile: sent, encoding: .utf8) == "aggregate\n", "the approved content went, not out/'s")
        #expect(delivered(prefix, outChanged, node, "out/late.txt") == nil, "a file added after the hold never leaves")
        #expect(!FileManager.default.fileExists(atPath: staging), "the staged copy is removed once delivered")

        let b = try #require(op.finalState(of: Tasks.id(stagingChanged)))
        #expect(b.state == .failed && b.detail.failureClass == .stageOutFailure, "\(b.detail)")
        #expect(b.detail.message?.contains("out/ok.txt changed after it was held") == true, "\(b.detail)")
        #expect(delivered(prefix, stagingChanged, node, "out/ok.txt") == nil, "a changed copy is never sent")
        #expect(delivered(prefix, stagingChanged, node, "manifest.json") == nil)
        #expect(!FileManager.default.fileExists(atPath: "\(node.dir)/var/staging/\(Tasks.id(stagingChanged))"),
                "a failed task's staged copy goes with its sandbox (keep_failed_hours = 0)")
    }

    @Test func outputsShowEscapesToolChosenNamesAndShowsTheDestinationAndTheApproverIsTheOSUser() throws {
        let node = try node("so-show", outputs: "require_approval = true")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "show-\(UUID().uuidString.prefix(6).lowercased())"
        let url = "http://127.0.0.1:18080/dav/\(prefix)"
        let t = task("cd \"$FEM_OUTPUT_DIR\" && echo x > \"$(printf 'evil\\033[2K\\rok.txt')\"", patterns: ["*.txt"],
                     stageOut: ["url": .string(url), "credentials": "upload-login"])
        try op.submit(t)
        try waitForHold(op, [t])
        let show = try node.run(["outputs", "show", Tasks.id(t)])
        #expect(show.status == 0, "\(show.output)")
        #expect(!show.output.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x0D }, "raw escapes: \(show.output)")
        #expect(show.output.contains("out/evil\\u{1b}[2K\\rok.txt"), "\(show.output)")
        #expect(show.output.contains("destination \(url)  (credentials upload-login)"), "\(show.output)")

        // --by is gone: the decision names the OS account that ran the command.
        let spoof = try node.run(["outputs", "approve", Tasks.id(t), "--by", "someone-else"])
        #expect(spoof.status != 0, "\(spoof.output)")
        let no = try node.run(["outputs", "reject", Tasks.id(t), "--reason", "odd file names"])
        #expect(no.status == 0 && no.output.contains("rejected by \(Self.osUser)"), "\(no.output)")
        try op.waitForFinal([Tasks.id(t)])
        let decision = try #require(op.events(of: Tasks.id(t)).first { $0.kind == .approval })
        #expect(decision.detail.data?["by"] == .string(Self.osUser) && decision.detail.data?["uid"] == .int(Int64(getuid())),
                "\(decision.detail)")
    }

    @Test func aHardLinkedOutputIsRefused() throws {
        // In a container (host tasks' sandboxes are taken back without extra names before stage-out).
        let engine = DockerEngine()
        try #require((try? engine.ping()) ?? false,
                     "dockerd is not answering on /var/run/docker.sock: run the tests with `bash test.sh`")
        let node = try TestNode("so-hardlink", extra: """
            [launchers]
            enabled = ["docker"]
            [launchers.docker]
            allowed_images = ["fem-test/*"]
            [outputs]
            allowed_urls = ["http://127.0.0.1:18080/dav/"]
            require_approval = true
            [credentials.upload-login]
            username = "fem-upload"
            password_file = "\(web)/password-fem-upload"
            urls = ["http://127.0.0.1:18080/dav/"]
            """)
        try node.start()
        let op = try Operator(node: node)
        let t: [String: JSONValue] = [
            "schema_version": 1, "task_id": .string(UUID().uuidString.lowercased()), "execution_id": "exec-hardlink",
            "plan": ["schema_version": 1, "id": "docker-test", "version": "1", "launcher": "docker",
                     "image": "fem-test/busybox:2", "pull_policy": "if-not-present",
                     "command": ["base": ["/bin/sh", "-c", "echo x > /fem/out/a.txt && ln /fem/out/a.txt /fem/out/b.txt"]],
                     "outputs": [["pattern": "*.txt"]], "resources": ["cpus": .double(0.5)]],
            "stage_out": ["url": "http://127.0.0.1:18080/dav/hardlink", "credentials": "upload-login"],
        ]
        let e = try run(op, t, timeout: 60)
        #expect(e.state == .failed && e.detail.failureClass == .stageOutFailure, "\(e.detail)")
        #expect(e.detail.message?.contains("out/a.txt has 2 names (a hard link)") == true, "\(e.detail)")
    }

    @Test func anUploadWhoseFileDiffersFromItsApprovedHashIsStoppedBeforeItsLastByte() throws {
        let dir = try TestEnv.scratch("hash-upload")
        let file = "\(dir)/data.bin"
        try Data(repeating: 7, count: 300_000).write(to: URL(fileURLWithPath: file))
        let good = try sha256(ofFile: file)
        let password = try String(contentsOfFile: "\(web)/password-fem-upload", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let auth = "Basic " + Data("fem-upload:\(password)".utf8).base64EncodedString()
        let prefix = "hash-\(UUID().uuidString.prefix(6).lowercased())"
        func put(_ name: String, _ expected: (Int64, String)) throws -> HTTPResponse {
            var r = HTTPRequest(method: "PUT", url: "http://127.0.0.1:18080/dav/\(prefix)/\(name)",
                                headers: [("Authorization", auth)], timeoutSeconds: 30, bodyFile: file)
            r.bodyExpected = expected
            return try HTTPTransfer.perform(r)
        }
        // The file on disk is not the approved one (another hash, or another size): the server never gets it whole.
        for (name, expected) in [("other-hash.bin", (Int64(300_000), String(repeating: "0", count: 64))),
                                 ("grown.bin", (Int64(200_000), good)), ("shrunk.bin", (Int64(400_000), good))] {
            do {
                _ = try put(name, expected)
                Issue.record("\(name): the upload went through")
            } catch let e as HTTPError {
                #expect(e.code == .bodyChanged && e.message.contains("stopped before its last byte"), "\(e)")
            }
            #expect(!FileManager.default.fileExists(atPath: "\(web)/dav/\(prefix)/\(name)"), "\(name) was stored")
        }
        let ok = try put("approved.bin", (300_000, good))
        #expect((200..<300).contains(ok.status))
        #expect(try sha256(ofFile: "\(web)/dav/\(prefix)/approved.bin") == good)
    }

    @Test func heldOutputsSurviveADaemonRestartAndTheStagedCopyIsWhatGoesAfterApproval() throws {
        let node = try node("so-held-restart", outputs: "require_approval = true")
        try node.start()
        let op = try Operator(node: node)
        let prefix = "held-restart-\(UUID().uuidString.prefix(6).lowercased())"
        let t = task("echo '{\"type\":\"print\",\"message\":\"row 17\"}'; echo approved-content > \"$FEM_OUTPUT_DIR\"/r.txt",
                     patterns: ["*.txt"],
                     stageOut: ["url": .string("http://127.0.0.1:18080/dav/\(prefix)"), "credentials": "upload-login"])
        try op.submit(t)
        try waitForHold(op, [t])
        node.stop()
        // While the daemon is down, out/ changes; after the restart the steward reviews and approves.
        try "changed-content\n".write(toFile: "\(node.dir)/var/sandboxes/\(Tasks.id(t))/out/r.txt", atomically: false,
                                      encoding: .utf8)
        try node.start()
        let show = try node.run(["outputs", "show", Tasks.id(t)])
        #expect(show.output.contains("out/r.txt") && show.output.contains("print: row 17"), "\(show.output)")
        let yes = try node.run(["outputs", "approve", Tasks.id(t)])
        #expect(yes.status == 0, "\(yes.output)")
        try op.waitForFinal([Tasks.id(t)])
        #expect(op.finalState(of: Tasks.id(t))?.state == .completed, "\(String(describing: op.finalState(of: Tasks.id(t))))")
        let sent = try #require(delivered(prefix, t, node, "out/r.txt"))
        #expect(try String(contentsOfFile: sent, encoding: .utf8) == "approved-content\n")
    }
}

