@testable import FEMCore
import Foundation
import Testing

struct URLPolicyTests {
    func url(_ s: String) throws -> ParsedURL { try ParsedURL.parse(s) }

    func refused(_ s: String, _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let u = try ParsedURL.parse(s)
            Issue.record("\(s) was accepted as \(u)", sourceLocation: sourceLocation)
        } catch {
            #expect("\(error)".contains(reason), "\(s): \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func normalisesSchemeHostPortAndPath() throws {
        let u = try url("HTTPS://Files.Example.ORG/tools/./a//b/../c%7e%41%20x")
        #expect(u.scheme == "https" && u.host == "files.example.org" && u.port == 443)
        #expect(u.path == "/tools/a/c~A%20x")
        #expect(u.description == "https://files.example.org/tools/a/c~A%20x")
        #expect(try url("http://h").port == 80 && url("http://h").path == "/")
        #expect(try url("git://h/r.git").port == 9418)
        #expect(try url("https://h:8443/x/").description == "https://h:8443/x/")
        #expect(try url("https://h:443/x") == url("https://h/x"))
        #expect(try url("file:///srv/outbox/").filePath == "/srv/outbox/")
        #expect(try url("file://localhost/srv/a%20b").filePath == "/srv/a b")
        #expect(try url("https://[::1]:8443/x").host == "[::1]")
        #expect(try url("https://h/a?X-Sig=abc%2F").query == "X-Sig=abc%2F")
    }

    @Test func dotSegmentsAreResolvedAndClimbingAboveTheRootIsRefused() throws {
        #expect(try url("file:///srv/outbox/../elsewhere").path == "/srv/elsewhere")
        #expect(try url("https://h/tools/x/..").path == "/tools/")
        refused("file:///srv/../../etc", "climbs above the root")
        refused("https://h/..", "climbs above the root")
    }

    @Test func percentEncodingTricksLoginsAndBadCharactersAreRefused() {
        refused("https://h/tools/%2e%2e/private", "%2e")
        refused("https://h/tools/%2E./private", "%2e")
        refused("https://h/tools%2fprivate", "%2f")
        refused("https://h/tools%5cprivate", "backslash")
        refused("https://h/a%00b", "NUL")
        refused("https://h/a%zz", "invalid percent-encoding")
        refused("https://h\\@evil/x", "backslash")
        refused("https://user:pw@h/x", "must not carry a login")
        refused("https://user@h/x", "must not carry a login")
        refused("https://h/a\nb", "control character")
        refused("https://h/a\u{2028}", "control character")
        refused("https://h/a b", "space")
        refused("https://h/a\"b", "character")
        refused("https://h/x#frag", "fragment")
        refused("ftp://h/x", "scheme \"ftp\"")
        refused("/srv/tools/repo", "not an absolute URL")
        refused("https:///x", "has no host")
        refused("https://h:99999/x", "invalid port")
        refused("https://h%2e.evil/x", "percent-encoded host")
        refused("https://*.h/x", "wildcard")
        refused("file://otherhost/x", "names a host")
        refused("git://h/r.git?x=1", "query")
    }

    func policy(_ entries: [String]) throws -> URLPolicy { try URLPolicy(entries) }

    @Test func hostsCompareExactly() throws {
        let p = try policy(["https://good.example.org/"])
        #expect(p.allows(try url("https://good.example.org/x")))
        #expect(p.allows(try url("https://GOOD.example.org:443/x")))
        #expect(!p.allows(try url("https://good.example.org.evil.net/")))
        #expect(!p.allows(try url("https://evil.net/good.example.org/")))
        #expect(!p.allows(try url("https://sub.good.example.org/")))
        #expect(!p.allows(try url("http://good.example.org/")))
        #expect(!p.allows(try url("https://good.example.org:8443/")))
        // An entry without a trailing slash is still a host boundary.
        let bare = try policy(["https://fem.example.org"])
        #expect(bare.allows(try url("https://fem.example.org/uploads")))
        #expect(!bare.allows(try url("https://fem.example.org.evil.com/")))
    }

    @Test func wildcardEntriesMatchSubdomainsOnly() throws {
        let p = try policy(["https://*.example.org/"])
        #expect(p.allows(try url("https://a.example.org/x")))
        #expect(p.allows(try url("https://a.b.example.org/x")))
        #expect(!p.allows(try url("https://example.org/x")))
        #expect(!p.allows(try url("https://badexample.org/x")))
        #expect(!p.allows(try url("https://a.example.org.evil.net/x")))
    }

    @Test func pathsCompareOnSegmentBoundaries() throws {
        let p = try policy(["https://h/tools"])
        #expect(p.allows(try url("https://h/tools")))
        #expect(p.allows(try url("https://h/tools/x")))
        #expect(!p.allows(try url("https://h/toolsx")))
        #expect(!p.allows(try url("https://h/tools/../private")))
        #expect(!p.allows(try url("https://h/")))
        let files = try policy(["file:///srv/outbox/"])
        #expect(files.allows(try url("file:///srv/outbox/a")))
        #expect(!files.allows(try url("file:///srv/outbox/../elsewhere")))
        #expect(!files.allows(try url("file:///srv/outbox2")))
        // Default ports are explicit on both sides.
        let ports = try policy(["https://h:443/", "http://h:8080/"])
        #expect(ports.allows(try url("https://h/x")))
        #expect(ports.allows(try url("http://h:8080/x")))
        #expect(!ports.allows(try url("http://h/x")))
    }

    @Test func anEmptyListAllowsNothingAndCheckNamesTheField() throws {
        let empty = try policy([])
        #expect(!empty.allows(try url("https://h/")))
        #expect(throws: ParsedURL.Problem.self) { _ = try empty.check("https://h/", field: "stage_out.url") }
        do {
            _ = try policy(["file:///srv/outbox/"]).check("file:///srv/outbox/../elsewhere", field: "stage_out.url")
            Issue.record("accepted")
        } catch {
            #expect("\(error)" == "stage_out.url: \"file:///srv/outbox/../elsewhere\" (normalised: file:///srv/elsewhere) "
                    + "is not allowed on this node (allowed: file:///srv/outbox/)")
        }
        do {
            _ = try policy(["https://h/"]).check("https://u:p@h/x", field: "source.git.url")
            Issue.record("accepted")
        } catch {
            #expect("\(error)".hasPrefix("source.git.url: \"https://***@h/x\" must not carry a login"), "\(error)")
        }
        #expect(throws: ParsedURL.Problem.self) { _ = try policy(["https://h/?q=1"]) }
        #expect(throws: ParsedURL.Problem.self) { _ = try policy(["https://"]) }
    }

    @Test func appendingEncodesEachComponent() throws {
        let u = try url("https://h/dav/").appending(["exec-1", "node a", "t/1"])
        #expect(u.description == "https://h/dav/exec-1/node%20a/t%2F1")
    }
}
