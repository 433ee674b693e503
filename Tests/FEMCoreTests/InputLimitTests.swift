@testable import FEMCore
import Foundation
import Testing

/// Inputs that used to cost far more than their size, and patterns that matched more than the whole string.
struct InputLimitTests {
    func seconds(_ body: () throws -> Void) rethrows -> Double {
        let start = ContinuousClock.now
        try body()
        let d = (ContinuousClock.now - start).components
        return Double(d.seconds) + Double(d.attoseconds) / 1e18
    }

    @Test func globWorstCasesAreInstant() {
        let name = String(repeating: "a", count: 40)
        var hit = true
        let t = seconds { hit = Glob.matches("*a*a*a*a*a*a*a*a*b", name) }
        #expect(!hit)
        #expect(t < 0.05, "took \(t) s")
        let deep = Array(repeating: "a", count: 30).joined(separator: "/")
        let t2 = seconds { hit = Glob.matches(Array(repeating: "**", count: 8).joined(separator: "/") + "/b", deep) }
        #expect(!hit)
        #expect(t2 < 0.05, "took \(t2) s")
        #expect(Glob.matches("*a*a*a*a*a*a*a*a*b", name + "b"))
    }

    @Test(arguments: [
        ("**", "a/b/c", true), ("**/x", "x", true), ("a/**/b", "a/b", true), ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/x/y/c", false), ("**/*.csv", "a.csv", true), ("*", "a/b", false), ("a*b*c", "abxbc", true),
        ("a*b*c", "abxbcx", false), ("[a-c]x", "bx", true), ("[a-c]x", "dx", false), ("[!a-c]x", "dx", true),
        ("[x", "[x", true), ("[]]x", "]x", true), ("?", "", false), ("*", "", false), ("a**b", "axxb", true),
    ])
    func globSemantics(pattern: String, path: String, matches: Bool) {
        #expect(Glob.matches(pattern, path) == matches, "\(pattern) vs \(path)")
    }

    @Test func deeplyNestedJSONIsRejectedFastAndShallowJSONParses() throws {
        let deep = Data((String(repeating: "[", count: 32768) + String(repeating: "]", count: 32768)).utf8)
        #expect(deep.count == 65536)
        var error: (any Error)?
        let t = seconds {
            do { _ = try JSONValue.parse(deep) } catch let e { error = e }
        }
        #expect("\(String(describing: error))".contains("nested deeper than 64 levels"), "\(String(describing: error))")
        #expect(t < 0.1, "took \(t) s")
        let objects = Data((String(repeating: "{\"a\":", count: 100) + "1" + String(repeating: "}", count: 100)).utf8)
        #expect(throws: DocumentError.self) { _ = try JSONValue.parse(objects) }
        let ok = Data((String(repeating: "[", count: 64) + String(repeating: "]", count: 64)).utf8)
        #expect(throws: Never.self) { _ = try JSONValue.parse(ok) }
        let tooDeep = Data((String(repeating: "[", count: 65) + String(repeating: "]", count: 65)).utf8)
        #expect(throws: DocumentError.self) { _ = try JSONValue.parse(tooDeep) }
    }

    @Test func aLargeFlatDocumentParsesInLinearTime() throws {
        let items = (0..<20000).map { "{\"k\":\"v\($0)\",\"n\":\($0)}" }.joined(separator: ",")
        let doc = Data("[\(items)]".utf8)
        var v: JSONValue?
        let t = try seconds { v = try JSONValue.parse(doc) }
        #expect(t < 2, "\(doc.count) bytes took \(t) s")
        guard case .array(let a)? = v else { Issue.record("not an array"); return }
        #expect(a.count == 20000 && a[7]["n"] == .int(7))
    }

    @Test func jsonValuesKeepTheirTypes() throws {
        let v = try JSONValue.parse(Data(#"{"i":1,"f":1.5,"e":1e2,"one":1.0,"big":10000000000000000000,"s":"a\u00e9\ud83d\ude00\n\"","b":true,"z":null,"a":[],"o":{},"d":1,"d":2}"#.utf8))
        #expect(v["i"] == .int(1) && v["f"] == .double(1.5) && v["e"] == .int(100) && v["one"] == .int(1))
        #expect(v["big"] == .double(1e19))
        #expect(v["s"] == .string("aé😀\n\""))
        #expect(v["b"] == .bool(true) && v["z"] == .null && v["a"] == .array([]) && v["o"] == .object([:]))
        #expect(v["d"] == .int(1))
        for bad in ["", "[1,]", "{\"a\" 1}", "[01]", "\"a\u{01}\"", "[\"\\ud800\"]", "tru", "[1] x", "{\"a\":1,}", "1.", "-"] {
            #expect(throws: DocumentError.self, "\(bad)") { _ = try JSONValue.parse(Data(bad.utf8)) }
        }
        #expect(throws: DocumentError.notUTF8) { _ = try JSONValue.parse(Data([0x22, 0xff, 0x22])) }
    }

    @Test func idPatternsMatchToTheEndOfTheString() {
        for id in ["abc\n", "abc\r\n", "abc\u{2028}", "abc\u{2029}", "abc\u{85}", "\nabc", "ab\0c"] {
            #expect(!Patterns.matches(Patterns.taskID, id), "\(id.debugDescription)")
        }
        #expect(Patterns.matches(Patterns.taskID, "abc"))
        #expect(!Patterns.matches(Patterns.commit, String(repeating: "a", count: 40) + "\n"))
        #expect(Patterns.matches(Patterns.commit, String(repeating: "a", count: 40)))
    }

    @Test func controlCharactersAreEscapedForTerminalsAndLogs() {
        #expect(TextEscaping.escaped("plain text é") == "plain text é")
        #expect(TextEscaping.escaped("a\u{1B}]0;owned\u{07}b\0c\nd\u{2028}e\u{202E}f")
                == "a\\u{1b}]0;owned\\u{7}b\\u{0}c\\nd\\u{2028}e\\u{202e}f")
    }
}
