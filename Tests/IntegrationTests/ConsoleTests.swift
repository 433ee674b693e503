import FEMCore
import FEMSystem
import Foundation
import Testing

/// The steward's console (`[console]`, docs/console.md) of a real daemon, driven in a real browser: headless
/// Chromium (Debian's `chromium` and `chromium-driver`) through Selenium (PyPI, in the venv `FEM_TEST_SELENIUM_PYTHON`;
/// test.sh makes it) by Console/console_test.py. The held outputs go to the WebDAV server of scripts/dev-web.sh.
/// Screenshots of the main pages go to `.build-test/console/` (docs/console/*.png are copies).
@Suite(.serialized)
struct ConsoleTests {
    let web: String

    init() throws {
        web = try TestEnv.webDir()
    }

    static let steward = "alice", viewer = "victor"
    static let stewardPassword = "steward-pass-\(UUID().uuidString.prefix(8))"
    static let viewerPassword = "viewer-pass-\(UUID().uuidString.prefix(8))"

    /// A bcrypt hash made by `fem-client console hash-password` (the password on stdin).
    static func hash(_ password: String) throws -> String {
        let bin = try TestEnv.binary("fem-client")
        let r = try Shell.run(["/bin/sh", "-c", "printf '%s\\n' \"$PW\" | \"$BIN\" console hash-password --cost 10"],
                              environment: ["PW": password, "BIN": bin, "PATH": "/usr/bin:/bin"])
        let hash = r.output.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(r.status == 0 && hash.hasPrefix("$2b$10$") && hash.count == 60, "hash-password: \(r.output)")
        return hash
    }

    static func seleniumPython() throws -> String {
        let python = TestEnv.env["FEM_TEST_SELENIUM_PYTHON"] ?? ""
        try #require(!python.isEmpty && FileManager.default.isExecutableFile(atPath: python),
                     "FEM_TEST_SELENIUM_PYTHON is not set or not executable: run the tests with `bash test.sh`, which makes a venv with Selenium (pip install selenium) under .build-test/cache/selenium")
        for path in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            try #require(FileManager.default.isExecutableFile(atPath: path),
                         "\(path) is missing: install Debian's chromium and chromium-driver (test.sh does)")
        }
        return python
    }

    func node(_ name: String, console: String) throws -> TestNode {
        try TestNode(name, extra: """
            \(TestNode.hostProcesses)
            [outputs]
            allowed_urls = ["http://127.0.0.1:18080/dav/"]
            require_approval = true
            [outputs.checks]
            block_on_findings = true
            [credentials.upload-login]
            username = "fem-upload"
            password_file = "\(web)/password-fem-upload"
            urls = ["http://127.0.0.1:18080/dav/"]
            \(console)
            """)
    }

    /// A task writing a CSV (one cell a `<script>`), a file named with a `<script>`, and a PNG.
    static let outputsScript = #"""
        import os, struct, zlib
        os.chdir(os.environ["FEM_OUTPUT_DIR"])
        print("console-stdout-marker", flush=True)
        with open("counts.csv", "w") as f:
            f.write('site,count,note\nnorth,42,aggregate\nsouth,7,"<script>window.__pwned = 1</script>"\n')
        with open("<script>window.__pwned=2<script>.txt", "w") as f:
            f.write("a file name a tool chose\n")
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        w = 48
        raw = b"".join(b"\0" + b"".join(bytes((x * 5, y * 5, 160)) for x in range(w)) for y in range(w))
        with open("chart.png", "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, w, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        """#

    @Test func aStewardReviewsAndApprovesInABrowserAndRefusalsLeaveTheTaskWaiting() throws {
        let python = try Self.seleniumPython()
        let node = try node("console", console: """
            [console]
            listen = "127.0.0.1:0"
            [console.accounts.\(Self.steward)]
            password_hash = "\(try Self.hash(Self.stewardPassword))"
            role = "steward"
            [console.accounts.\(Self.viewer)]
            password_hash = "\(try Self.hash(Self.viewerPassword))"
            role = "viewer"
            """)
        try node.start()
        let base = try consoleAddress(node)
        let op = try Operator(node: node)
        let prefix = "console-\(UUID().uuidString.prefix(6).lowercased())"
        var t = Tasks.task(["/usr/bin/python3", "-c", Self.outputsScript])
        if case .object(var plan) = t["plan"] {
            plan["outputs"] = .array(["*.csv", "*.txt", "*.png"].map { ["pattern": .string($0)] })
            t["plan"] = .object(plan)
        }
        t["execution_id"] = .string("exec-\(UUID().uuidString.prefix(8).lowercased())")
        t["stage_out"] = .object(["url": .string("http://127.0.0.1:18080/dav/\(prefix)"), "credentials": "upload-login"])
        try op.submit(t)
        _ = try op.waitFor("the outputs to wait for approval") { events in
            events.contains { $0.taskID == Tasks.id(t) && ($0.state == .awaitingApproval || $0.state.isTerminal) }
        }
        try #require(op.events(of: Tasks.id(t)).contains { $0.state == .awaitingApproval },
                     "\(op.events(of: Tasks.id(t)).map(\.detail))")

        let shots = "\(TestEnv.repoRoot)/.build-test/console"
        try FileManager.default.createDirectory(atPath: shots, withIntermediateDirectories: true)
        let script = "\(TestEnv.repoRoot)/Tests/IntegrationTests/Console/console_test.py"
        let run = try Shell.run([python, script, base, Tasks.id(t), shots], environment: [
            "PATH": "/usr/bin:/bin", "HOME": node.dir,
            "CONSOLE_STEWARD": Self.steward, "CONSOLE_STEWARD_PASSWORD": Self.stewardPassword,
            "CONSOLE_VIEWER": Self.viewer, "CONSOLE_VIEWER_PASSWORD": Self.viewerPassword,
        ])
        print(run.output)
        #expect(run.status == 0 && run.output.contains(#"{"result": "passed"}"#), "console_test.py:\n\(run.output)")

        try op.waitForFinal([Tasks.id(t)], timeout: 60)
        let end = try #require(op.finalState(of: Tasks.id(t)))
        #expect(end.state == .completed, "\(end.detail)")
        let dest = "\(web)/dav/\(prefix)/\(t["execution_id"]!.stringValue!)/\(node.id)/\(Tasks.id(t))"
        #expect(try String(contentsOfFile: "\(dest)/out/counts.csv", encoding: .utf8).contains("north,42,aggregate"))
        #expect(FileManager.default.fileExists(atPath: "\(dest)/out/chart.png"))
        #expect(FileManager.default.fileExists(atPath: "\(dest)/manifest.json"))

        // One decision only (the refused attempts journaled nothing), naming the console account and the reason.
        let decisions = op.events(of: Tasks.id(t)).filter { $0.kind == .approval }
        #expect(decisions.count == 1, "\(decisions.map(\.detail))")
        let d = try #require(decisions.first)
        #expect(d.detail.data?["by"] == .string(Self.steward) && d.detail.data?["via"] == "console", "\(d.detail)")
        #expect(d.detail.data?["decision"] == "approved" && d.detail.data?["reason"] == "aggregate counts only", "\(d.detail)")
        #expect(d.detail.data?["manifest_sha256"]?.stringValue?.count == 64, "\(d.detail)")
        #expect(d.detail.data?["override"] == "the 7 is a count of sites, not of people" && d.detail.data?["findings"] == 1,
                "the override of the one finding is journaled with the decision: \(d.detail)")

        for name in ["login", "tasks", "timeline", "review"] {
            #expect(FileManager.default.fileExists(atPath: "\(shots)/\(name).png"), "no screenshot \(name).png")
        }
        // The log has the logins, the failures and the decisions; never a password or a session id.
        let log = node.log
        #expect(log.contains("console: \(Self.steward) logged in (role steward)"), "\(log)")
        #expect(log.contains("console: failed login for account \"\(Self.steward)\""), "\(log)")
        #expect(log.contains("console: refused a decision on task \(Tasks.id(t)) by \(Self.viewer): role viewer"), "\(log)")
        #expect(log.contains("the CSRF token is missing or wrong"), "\(log)")
        #expect(log.contains("outputs approved by \(Self.steward) (console) overriding 1 finding(s): aggregate counts only"),
                "\(log)")
        #expect(!log.contains(Self.stewardPassword) && !log.contains(Self.viewerPassword), "a password is in the log")
    }

    @Test func theConsoleIsRefusedOffLoopbackWithoutTLSAndWithAnythingButABcryptHash() throws {
        let node = try node("console-bad", console: """
            [console]
            listen = "0.0.0.0:8480"
            session_minutes = 0
            [console.accounts.bob]
            password_hash = "hunter2-not-a-hash"
            role = "admin"
            [console.accounts.carol]
            password_hash = "$2b$10$abcdefghijklmnopqrstuuQ3Zk1zT5e6Zr8wH3x9PjJ0e0r5bQmbe"
            role = "viewer"
            colour = "blue"
            """)
        let check = try node.run(["check"])
        #expect(check.status != 0, "\(check.output)")
        #expect(check.output.contains("console.listen: 0.0.0.0:8480 is not a loopback address"), "\(check.output)")
        #expect(check.output.contains("console.accounts.bob.password_hash: is not a bcrypt hash"), "\(check.output)")
        #expect(!check.output.contains("hunter2"), "the refused value is not echoed: \(check.output)")
        #expect(check.output.contains("console.accounts.bob.role: \"admin\" is not a role (viewer or steward)"), "\(check.output)")
        #expect(check.output.contains("console.session_minutes: 0 is out of range"), "\(check.output)")
        #expect(check.output.contains("console.accounts.carol.colour: is not a known key"), "\(check.output)")
    }

    @Test func withTLSTheConsoleServesHTTPSAndTheCookieIsSecure() throws {
        let node = try node("console-tls", console: """
            [console]
            listen = "127.0.0.1:0"
            tls = true
            tls_cert_file = "\(web)/server.pem"
            tls_key_file = "\(web)/server.key"
            [console.accounts.\(Self.steward)]
            password_hash = "\(try Self.hash(Self.stewardPassword))"
            role = "steward"
            """)
        try node.start()
        let base = try consoleAddress(node)
        #expect(base.hasPrefix("https://127.0.0.1:"), "\(base)")
        let port = base.split(separator: ":").last.map(String.init) ?? ""
        // A server certificate for localhost (the test web server's), signed by its CA.
        // The password from a file (curl's `@file`), never in argv.
        let passwordFile = "\(node.dir)/console-password"
        try Self.stewardPassword.write(toFile: passwordFile, atomically: true, encoding: .utf8)
        let login = try Shell.run(["/usr/bin/curl", "-sS", "-o", "/dev/null", "-D", "-", "--cacert", "\(web)/ca.pem",
                                   "--data-urlencode", "account=\(Self.steward)", "--data-urlencode", "password@\(passwordFile)",
                                   "https://localhost:\(port)/login"], environment: ["PATH": "/usr/bin:/bin"])
        #expect(login.status == 0 && login.output.contains("HTTP/1.1 303"), "\(login.output)")
        #expect(login.output.contains("; Path=/; HttpOnly; SameSite=Strict; Secure"), "\(login.output)")
        #expect(login.output.lowercased().contains("content-security-policy: default-src 'self'"), "\(login.output)")
        #expect(login.output.lowercased().contains("x-frame-options: deny"), "\(login.output)")
        let plain = try Shell.run(["/usr/bin/curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                   "http://127.0.0.1:\(port)/login"], environment: ["PATH": "/usr/bin:/bin"])
        #expect(plain.output != "200", "plain HTTP is not answered on a TLS console: \(plain.output)")
    }

    func consoleAddress(_ node: TestNode, timeout: Double = 30) throws -> String {
        var found: String?
        try eventually("the daemon's log to say where it serves the console", timeout: timeout) {
            if let line = node.log.split(separator: "\n").first(where: { $0.contains("console: serving ") }),
               let start = line.range(of: "console: serving ") {
                found = line[start.upperBound...].split(separator: " ").first.map { String($0.dropLast()) }
            }
            return found != nil
        }
        return try #require(found)
    }
}
