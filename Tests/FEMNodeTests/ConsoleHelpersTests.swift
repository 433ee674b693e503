@testable import FEMNode
import FEMCore
import Foundation
import Testing

/// The console's helpers: escaping, CSRF tokens and their comparison, sessions, forms, CSV previews, `[console]`.
struct ConsoleHelpersTests {
    @Test func escapingLeavesNoMarkupAndShowsControlCharacters() {
        #expect(HTML.escape("<script>alert('x')</script> & \"q\"")
                == "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;")
        #expect(HTML.escape("a\u{1B}[2Kb\u{202E}c") == "a\\u{1b}[2Kb\\u{202e}c")
        #expect(HTML.escape("line\n\tnext") == "line\n\tnext")
        #expect(HTML.urlComponent("a b/<c>") == "a%20b%2F%3Cc%3E")
    }

    @Test func tokensAreRandom256BitsAndCompareInConstantTime() {
        let a = ConsoleCrypto.token(), b = ConsoleCrypto.token()
        #expect(a.count == 64 && a.allSatisfy(\.isHexDigit) && a != b)
        #expect(ConsoleCrypto.constantTimeEqual(a, a))
        #expect(!ConsoleCrypto.constantTimeEqual(a, b))
        #expect(!ConsoleCrypto.constantTimeEqual(a, String(a.dropLast())))
        #expect(!ConsoleCrypto.constantTimeEqual("", a))
    }

    @Test func sessionsExpireWhenIdleAndCloseOnLogout() {
        let sessions = ConsoleSessions(idle: 60)
        let start = Date()
        let (id, s) = sessions.open(account: "alice", role: .steward, now: start)
        #expect(s.csrf.count == 64 && s.csrf != id)
        #expect(sessions.session(id, now: start.addingTimeInterval(50))?.account == "alice")
        // Use keeps it alive: 50 s after the last use it is still there.
        #expect(sessions.session(id, now: start.addingTimeInterval(100)) != nil)
        #expect(sessions.session(id, now: start.addingTimeInterval(161)) == nil, "idle for over 60 s")
        #expect(sessions.session(id, now: start.addingTimeInterval(162)) == nil, "and forgotten")
        let (other, _) = sessions.open(account: "bob", role: .viewer, now: start)
        sessions.close(other)
        #expect(sessions.session(other, now: start) == nil)
        #expect(sessions.session("not-a-session", now: start) == nil)
    }

    @Test func formsAndCookiesParseStrictly() {
        #expect(ConsoleCrypto.form("a=1&b=x+y%21&c=") == ["a": "1", "b": "x y!", "c": ""])
        #expect(ConsoleCrypto.form("a=1&a=2") == nil, "a repeated field is ambiguous")
        #expect(ConsoleCrypto.form("a=%zz") == nil)
        #expect(ConsoleCrypto.cookie("fem_console", in: "x=1; fem_console=abc; y=2") == "abc")
        #expect(ConsoleCrypto.cookie("fem_console", in: "fem_console_x=abc") == nil)
    }

    @Test func csvPreviewsReadQuotedFieldsAndStopAtTheirRowLimit() {
        let (rows, more) = ConsoleFiles.csv("a,b\n1,\"x, \"\"y\"\"\"\n2,\"multi\nline\"\r\n3,z\n", separator: ",", maxRows: 3)
        #expect(rows == [["a", "b"], ["1", "x, \"y\""], ["2", "multi\nline"]])
        #expect(more)
        #expect(ConsoleFiles.csv("a\tb\n1\t2", separator: "\t", maxRows: 10).rows == [["a", "b"], ["1", "2"]])
    }

    @Test func stagedPathsStayInsideTheirFolderAndImagesGoByMagicBytes() {
        #expect(ConsoleFiles.inside("/s", "out/a.csv") == "/s/out/a.csv")
        for bad in ["../x", "out/../../x", "/etc/passwd", "out//a", "./a", ""] {
            #expect(ConsoleFiles.inside("/s", bad) == nil, "\(bad)")
        }
        #expect(ConsoleFiles.imageType([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0]) == .png)
        #expect(ConsoleFiles.imageType([0xFF, 0xD8, 0xFF, 0xE0]) == .jpeg)
        #expect(ConsoleFiles.imageType(Array("GIF89a..".utf8)) == .gif)
        #expect(ConsoleFiles.imageType(Array("<svg>".utf8)) == nil, "SVG (which can hold script) is not an image here")
    }

    static let hash = "$2b$10$" + String(repeating: "a", count: 53)

    @Test func consoleConfigIsReadAndChecked() throws {
        let on = NodeConfigTests.toml("""
            [console]
            listen = "127.0.0.1:8480"
            [console.accounts.alice]
            password_hash = "\(Self.hash)"
            role = "steward"
            """)
        let c = try NodeConfig.parse(on, source: "t", environment: [:])
        let console = try #require(c.console)
        #expect(console.listen.port == 8480 && console.tls == nil && console.sessionMinutes == 30)
        #expect(console.accounts["alice"]?.role == .steward)
        #expect(try NodeConfig.parse(NodeConfigTests.toml(), source: "t", environment: [:]).console == nil, "off by default")

        let tls = try NodeConfig.parse(on.replacingOccurrences(of: "listen = \"127.0.0.1:8480\"",
                                                               with: "listen = \"0.0.0.0:8480\"\ntls = true"),
                                       source: "t", environment: [:])
        #expect(tls.console?.tls?.certFile == "\(NodeConfigTests.dir)/c.pem", "the node's own certificate by default")

        let problems = NodeConfigTests.problems(NodeConfigTests.toml("""
            [console]
            listen = "10.0.0.5:8480"
            tls_cert_file = "/x.pem"
            [console.accounts.bob]
            password_hash = "$2y$10$short"
            """))
        #expect(problems.contains { $0.hasPrefix("console.listen: 10.0.0.5:8480 is not a loopback address") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("console.tls_cert_file, console.tls_key_file: set both") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("console.accounts.bob.password_hash: is not a bcrypt hash") }, "\(problems)")
        #expect(problems.contains("console.accounts.bob.role: is required (viewer or steward)"), "\(problems)")
        #expect(!problems.joined().contains("short"), "the refused hash is not echoed")
        let none = NodeConfigTests.problems(NodeConfigTests.toml("[console]\nlisten = \"127.0.0.1:8480\""))
        #expect(none.contains { $0.hasPrefix("console.accounts: none, so nobody could log in") }, "\(none)")
    }

    @Test func theReviewPageEscapesToolTextAndAsksForAnOverrideOnlyWithFindings() throws {
        let json = """
            {"tool": {"id": "t<b>", "version": "1"}, "state": "completed", "exit_code": 0, "image": "img\\"><script>",
             "files": [{"path": "out/<img src=x onerror=alert(1)>.csv", "size": 3, "sha256": "ab"}],
             "findings": [{"check": "small_cells", "file": "out/a.csv", "row": 2, "column": 1,
                           "message": "<script>count 3 < 5</script>"}]}
            """
        var manifest = try JSONDecoder().decode(Airlock.ManifestView.self, from: Data(json.utf8))
        let rec = TaskRecord(taskID: "t1", executionID: "e<1>", state: .awaitingApproval,
                             document: .object(["stage_out": .object(["url": "https://x/dav/", "credentials": "up",
                                                                      "token": "SECRET-TOKEN"])]),
                             launcher: "process", receivedAt: Date(), updatedAt: Date(), seq: 3, handle: nil,
                             exitCode: 0, failureClass: nil, message: nil, cancelRequested: false)
        let viewer = ConsolePages.Viewer(account: "alice", role: .steward, csrf: "c0ffee")
        let preview = ConsolePages.Preview.table([["a", "<script>x</script>"]], truncated: false)
        var page = ConsolePages.review(.init(rec: rec, manifest: manifest, sha256: "abc", previews: [manifest.files[0].path: preview],
                                             decided: nil), viewer: viewer, nodeID: "n")
        #expect(!page.contains("<script>") && !page.contains("<img src=x"), "\(page)")
        #expect(page.contains("&lt;script&gt;count 3 &lt; 5&lt;/script&gt;") && page.contains("&lt;td&gt;") == false)
        #expect(page.contains("name=\"override\""), "an override reason is asked for when there are findings")
        #expect(page.contains("name=\"csrf\" value=\"c0ffee\"") && page.contains("value=\"abc\""))
        #expect(page.contains("(credentials up)") && !page.contains("SECRET-TOKEN"), "the credentials' name, never a token")
        manifest.findings = nil
        page = ConsolePages.review(.init(rec: rec, manifest: manifest, sha256: "abc", previews: [:], decided: nil),
                                   viewer: viewer, nodeID: "n")
        #expect(!page.contains("name=\"override\""))
    }
}
