@testable import FEMCore
import Foundation
import Testing

struct ConstraintTests {
    let node = NodeAttributes([
        "cpus": .number(8), "memory_mb": .number(16384), "gpus": .number(1), "gpu_model": .string("NVIDIA A100-SXM4-40GB"),
        "os": .string("ubuntu"), "arch": .string("x86_64"), "version": .string("0.5.2"),
        "launchers": .list([.string("docker"), .string("process")]),
        "labels.site": .string("hospital-a"), "labels.sensors": .list([.string("camera")]),
        "labels.trusted": .bool(true), "labels.rack": .number(4),
        "a": .bool(true), "b": .bool(false), "c": .bool(false),
    ])

    func verdict(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConstraintVerdict {
        do {
            return try ConstraintExpression.parse(text).evaluate(node)
        } catch {
            Issue.record("\(text) did not parse: \(error)", sourceLocation: sourceLocation)
            return ConstraintVerdict(matched: false, reason: "parse error")
        }
    }

    func holds(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        let v = verdict(text, sourceLocation: sourceLocation)
        return v.matched
    }

    func parseError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> ConstraintError? {
        do {
            _ = try ConstraintExpression.parse(text)
            Issue.record("\(text.prefix(80)) parsed", sourceLocation: sourceLocation)
            return nil
        } catch {
            return error
        }
    }

    // MARK: precedence

    @Test func andBindsTighterThanOr() {
        #expect(holds("a or b and c"))          // a or (b and c)
        #expect(!holds("(a or b) and c"))
        #expect(holds("b and c or a"))          // (b and c) or a
        #expect(!holds("b and (c or a)"))
    }

    @Test func notBindsTighterThanAnd() {
        #expect(!holds("not a and b"))          // (not a) and b
        #expect(holds("not (a and b)"))
        #expect(holds("not b and not c"))
        #expect(holds("not not a"))
        #expect(holds("not a or a"))            // (not a) or a
    }

    @Test func comparisonsBindTighterThanBooleans() {
        #expect(holds("cpus >= 4 and memory_mb > 8000 or gpus == 0"))
        #expect(holds("not cpus < 4"))
        #expect(holds("cpus == 8 and not labels.site == \"hospital-b\""))
    }

    // MARK: operators and values

    @Test func comparisons() {
        #expect(holds("cpus == 8") && holds("cpus != 7") && holds("cpus < 8.5") && holds("cpus <= 8"))
        #expect(holds("cpus > 7") && holds("cpus >= 8") && !holds("cpus > 8"))
        #expect(holds("labels.site == \"hospital-a\"") && holds("labels.site == 'hospital-a'"))
        #expect(holds("labels.site < \"hospital-b\""))
        #expect(holds("labels.trusted == true") && holds("labels.trusted") && !holds("labels.trusted != true"))
        #expect(holds("launchers == [\"docker\", \"process\"]"))
        #expect(holds("-1 < 0") && holds("1e3 == 1000") && holds("0.5 < 1"))
        #expect(holds("true") && !holds("false"))
    }

    @Test func membership() {
        #expect(holds("\"camera\" in labels.sensors"))
        #expect(!holds("\"lidar\" in labels.sensors"))
        #expect(holds("\"lidar\" not in labels.sensors"))
        #expect(holds("\"docker\" in launchers and \"slurm\" not in launchers"))
        #expect(holds("\"A100\" in gpu_model"))          // substring
        #expect(holds("labels.site in [\"hospital-a\", \"hospital-c\"]"))
        #expect(holds("labels.rack in [1, 4, 9]"))
        #expect(!holds("labels.rack in [\"4\"]"))         // a string is not a number
        #expect(holds("arch in []") == false)
    }

    @Test func stringEscapes() {
        let v = NodeAttributes(["labels.x": .string("a\"b\\c\nd'é")])
        let e = try? ConstraintExpression.parse(#"labels.x == "a\"b\\c\nd\'\u00e9""#)
        #expect(e?.evaluate(v).matched == true)
    }

    @Test func versions() {
        #expect(holds("version(version) >= \"0.5\""))
        #expect(holds("version(version) >= version(\"0.5.0\")"))
        #expect(holds("version(version) < \"0.10\""))     // numerically, not as text
        #expect(!holds("version < \"0.10\""))             // a plain string compares as text
        #expect(holds("version(version) == \"0.5.2\"") && holds("version(version) == \"v0.5.2\""))
        #expect(holds("version(\"1.2.0-rc1\") < \"1.2.0\""))
        #expect(holds("version(\"1.2.0-rc.2\") < \"1.2.0-rc.10\""))
        #expect(holds("version(\"1.2\") == \"1.2.0+build5\""))
        let bad = verdict("version(labels.site) > \"1\"")
        #expect(!bad.matched && bad.reason?.contains("\"hospital-a\" is not a version") == true, "\(bad)")
    }

    @Test func regex() {
        #expect(holds("gpu_model =~ \"A100\""))
        #expect(holds("gpu_model matches \"^NVIDIA (A100|H100)-\""))
        #expect(!holds("gpu_model =~ \"^A100\""))
        #expect(holds("os matches \"^ub.nt[a-u]$\""))
        #expect(holds("labels.site =~ \"^hospital-[^b]$\""))
        #expect(holds("version =~ \"^\\\\d+\\\\.\\\\d+\\\\.\\\\d+$\""))  // the pattern ^\d+\.\d+\.\d+$
        #expect(holds("gpu_model =~ \"4?0GB$\"") && holds("gpu_model =~ \"S+X*M4\""))
        #expect(!holds("os =~ \"^(ubuntu|debian)x$\""))
        #expect(holds("os =~ \"\""))
    }

    @Test func regexEngine() throws {
        let r = try BoundedRegex("^(a|b)*c+d?$")
        #expect(r.matches("ababccc") && r.matches("cd") && !r.matches("abd") && !r.matches("ccdd"))
        #expect(try BoundedRegex("a.c").matches("xabcx") && !BoundedRegex("a.c").matches("a\nc"))
        #expect(try BoundedRegex("[0-9]+\\.[0-9]+").matches("v12.4"))
        #expect(try BoundedRegex("\\w+@\\w+").matches("me@host") && !BoundedRegex("^\\S+$").matches("a b"))
        #expect(try BoundedRegex("[]x]").matches("]"))
        #expect(try BoundedRegex("a\\*").matches("a*") && !BoundedRegex("a\\*").matches("aa"))
        for (pattern, message) in [("(a", "expected \")\""), ("a)", "unmatched"), ("*a", "nothing to repeat"),
                                   ("(\\w)\\1", "backreferences"), ("a{2}", "counted repetition"),
                                   ("(?=a)", "not supported"), ("[a-", "expected \"]\""), ("[z-a]", "out of order"),
                                   ("a\\", "cannot end"), ("\\q", "unknown escape")] {
            do {
                _ = try BoundedRegex(pattern)
                Issue.record("\(pattern) was accepted")
            } catch {
                #expect(error.message.contains(message), "\(pattern): \(error)")
            }
        }
    }

    // MARK: reasons

    @Test func reasonsNameTheAttributeTheOperatorAndBothValues() {
        #expect(verdict("labels.site == \"hospital-b\"").reason
                == "labels.site == \"hospital-b\" is false: labels.site is \"hospital-a\"")
        #expect(verdict("\"lidar\" in labels.sensors").reason
                == "\"lidar\" in labels.sensors is false: labels.sensors is [\"camera\"]")
        #expect(verdict("cpus >= 16 and gpus >= 1").reason == "cpus >= 16 is false: cpus is 8")
        let or = verdict("cpus >= 16 or gpus > 1")
        #expect(or.reason == "none of the alternatives holds: cpus >= 16 is false: cpus is 8; gpus > 1 is false: gpus is 1")
        #expect(verdict("not labels.trusted").reason == "not labels.trusted is false: labels.trusted holds")
        #expect(verdict("gpu_model =~ \"^H100\"").reason
                == "gpu_model =~ \"^H100\" is false: gpu_model is \"NVIDIA A100-SXM4-40GB\"")
        #expect(verdict("cpus >= 4").reason == nil && verdict("cpus >= 4").matched)
    }

    @Test func reasonsAreOneLineAndBounded() {
        #expect(verdict("cpus\n  >=\t16").reason == "cpus >= 16 is false: cpus is 8")
        #expect(verdict("labels.site == \"a  b\"").reason == "labels.site == \"a  b\" is false: labels.site is \"hospital-a\"")
        let many = (0..<250).map { "cpus == \($0 + 100)" }.joined(separator: " or ")
        let v = verdict(many)
        #expect(!v.matched && (v.reason?.count ?? 0) <= ConstraintExpression.maxReasonLength + 1 && v.reason?.hasSuffix("…") == true)
    }

    @Test func missingAttributeIsNotMatchedAndNamed() {
        let v = verdict("labels.room == \"b12\"")
        #expect(!v.matched && v.reason == "labels.room is not set on this node (in labels.room == \"b12\")")
        // A `not` does not turn a missing attribute into a match.
        let n = verdict("not labels.room == \"b12\"")
        #expect(!n.matched && n.reason?.contains("labels.room is not set") == true)
        #expect(!holds("\"x\" not in labels.tags"))
        #expect(holds("not defined(labels.room)") && holds("defined(labels.site)"))
        #expect(holds("not defined(labels.tags) or \"x\" not in labels.tags"))
        #expect(holds("cpus > 1 or labels.room == 1") && !holds("labels.room == 1 or cpus > 1"))
    }

    @Test func typesAreChecked() {
        // Different types are never compared: not matched with a reason naming both, never turned into a match by not.
        let v = verdict("cpus == \"8\"")
        #expect(!v.matched && v.reason == "cpus == \"8\" cannot be evaluated: cpus is a number (8) and \"8\" is a "
                + "string; values of different types are never compared", "\(v)")
        #expect(!holds("not cpus == \"8\""))
        #expect(!holds("labels.site > 3"))
        #expect(verdict("labels.site and a").reason == "labels.site is a string (\"hospital-a\"), not true or false")
        #expect(verdict("cpus").reason?.contains("not true or false") == true)
        #expect(verdict("labels.trusted < false").reason?.contains("only be compared with == and !=") == true)
        #expect(verdict("cpus in 8").reason?.contains("\"in\" needs a list or a string") == true)
        #expect(verdict("labels.sensors =~ \"cam\"").reason?.contains("matches needs a string on its left") == true)
        #expect(verdict("version(true) == \"1\"").reason?.contains("version() takes a string, not a boolean") == true)
    }

    // MARK: errors, with their columns

    @Test func everyErrorHasItsColumn() {
        let cases: [(String, Int, String)] = [
            ("", 1, "expected an expression"),
            ("cpus >", 7, "expected an operand"),
            ("cpus = 4", 6, "single \"=\""),
            ("cpus == 4 && a", 11, "expected \"and\", \"or\" or \"not\""),
            ("(cpus == 4", 11, "expected \")\" to close the \"(\" at column 1"),
            ("cpus == 4)", 10, "expected \"and\", \"or\" or the end"),
            ("labels.site == \"abc", 16, "to close the string"),
            ("labels.site == \"a\\qb\"", 18, "unknown escape"),
            ("labels.site == \"\\u12\"", 17, "four hexadecimal digits"),
            ("[1, 2", 6, "expected \",\" or \"]\" in the list opened at column 1"),
            ("[cpus]", 1, "a list holds only literals"),
            ("cpus == 4.", 11, "digit after \".\""),
            ("cpus == 4x", 10, "expected an operator after the number"),
            ("labels. == 1", 8, "expected a name after \".\""),
            ("a and or b", 7, "expected an operand"),
            ("cpus not 4", 6, "expected \"in\" after \"not\""),
            ("gpu_model =~ cpus", 14, "the pattern as a string literal"),
            ("gpu_model =~ \"a(b\"", 18, "invalid pattern: expected \")\""),
            ("gpu_model =~ \"(a)\\\\1\"", 18, "backreferences"),
            ("size(labels) > 1", 1, "unknown function \"size\""),
            ("defined(1)", 9, "expected an attribute name"),
            ("version(\"1\" > 0", 16, "expected \")\" to close version("),
            ("cpus == 4 ; rm", 11, "unexpected character \";\""),
            ("cpus == 4 and", 14, "found the end of the expression"),
            ("labels.site == \"a\u{1b}[31m\"", 18, "control or formatting character (U+1B)"),
            ("labels.site == \"a\u{202e}b\"", 18, "control or formatting character (U+202E)"),
        ]
        for (text, column, message) in cases {
            guard let e = parseError(text) else { continue }
            #expect(e.column == column && e.message.contains(message), "\(text): \(e)")
            #expect("\(e)".hasPrefix("column \(column): "))
        }
    }

    // MARK: limits and hostile input (each must end, with an error or a verdict)

    @Test func deepNestingIsRefusedWithoutOverflow() {
        let deep = String(repeating: "(", count: 10_000) + "a" + String(repeating: ")", count: 10_000)
        // Over the length limit first; at the limit, the depth limit.
        #expect(parseError(deep)?.message.contains("limit is 4096") == true)
        let nested = String(repeating: "(", count: 2_000) + "a" + String(repeating: ")", count: 2_000)
        let e = parseError(nested)
        #expect(e?.column == 65 && e?.message.contains("nested deeper than 64") == true, "\(String(describing: e))")
        #expect(parseError(String(repeating: "not ", count: 1_000) + "a")?.message.contains("deeper than 64") == true)
        #expect(parseError(String(repeating: "[", count: 1_000))?.message.contains("deeper than 64") == true)
        #expect(parseError(String(repeating: "version(", count: 500))?.message.contains("deeper than 64") == true)
        let ok = String(repeating: "(", count: 60) + "a" + String(repeating: ")", count: 60)
        #expect(holds(ok))
    }

    @Test func longInputIsRefusedAtOnce() {
        let huge = "labels.site == \"" + String(repeating: "x", count: 1 << 20) + "\""
        let e = parseError(huge)
        #expect(e?.column == 4097 && e?.message.contains("the limit is 4096") == true)
        // A long chain within the limit is a flat list, not a deep tree.
        let chain = (0..<800).map { _ in "a" }.joined(separator: " or ")
        #expect(holds(chain))
        let list = "cpus in [" + (0..<300).map(String.init).joined(separator: ",") + "]"
        #expect(parseError(list)?.message.contains("more than 256 items") == true)
    }

    @Test func pathologicalRegexStaysLinear() throws {
        let text = String(repeating: "a", count: 10_000)
        let attrs = NodeAttributes(["labels.x": .string(text)])
        for pattern in ["(a*)*b", "(a|a)*b", "(a+)+b", String(repeating: "a?", count: 30) + String(repeating: "a", count: 30) + "b",
                        "(.*)*x", "((a*)*)*$b"] {
            let e = try ConstraintExpression.parse("labels.x =~ \"\(pattern)\"")
            let v = e.evaluate(attrs)
            #expect(!v.matched && v.reason?.hasPrefix("labels.x =~") == true, "\(pattern)")
        }
        #expect(try ConstraintExpression.parse("labels.x =~ \"^(a*)*$\"").evaluate(attrs).matched)
        // A long subject with a simple pattern (a 1 MB attribute value).
        let big = NodeAttributes(["labels.x": .string(String(repeating: "ab", count: 1 << 19) + "c")])
        #expect(try ConstraintExpression.parse("labels.x =~ \"b+c$\"").evaluate(big).matched)
        #expect(try ConstraintExpression.parse("\"c\" in labels.x").evaluate(big).matched)
        // Patterns over the size limit are refused.
        let long = "labels.x =~ \"" + String(repeating: "a", count: 600) + "\""
        #expect(parseError(long)?.message.contains("the limit is 512") == true)
        let deep = "labels.x =~ \"" + String(repeating: "(", count: 40) + "a" + String(repeating: ")", count: 40) + "\""
        #expect(parseError(deep)?.message.contains("groups nested deeper than 32") == true)
    }

    @Test func documentedExamplesParse() throws {
        // docs/templates/README.md, "Constraints".
        for text in [#""camera" in labels.sensors"#, #"labels.site == "hospital-a" or labels.site == "hospital-c""#,
                     #"gpus >= 1 and gpu_model =~ "A100""#, #"version(version) >= "0.5" and "docker" in launchers"#,
                     #"memory_mb >= 16000 and cpus >= 4 and os == "ubuntu" and version(os_version) >= "22.04""#,
                     #""cohort-a" in datasets and not labels.maintenance"#,
                     #"gpus >= 1 and gpu_model =~ "A100|H100" and "camera" in labels.sensors"#,
                     #"not defined(labels.tags) or "x" in labels.tags"#,
                     #"version(labels.driver) < version("550.54")"#] {
            #expect(throws: Never.self, "\(text)") { _ = try ConstraintExpression.parse(text) }
        }
        // The JSON example's string, once JSON has read it.
        let json = try JSONValue.parse(Data(#"{"constraints": "version =~ \"^\\\\d+\\\\.\""}"#.utf8))
        let text = try #require(json["constraints"]?.stringValue)
        #expect(try ConstraintExpression.parse(text).evaluate(node).matched)
    }

    @Test func attributesEncodeAsAFlatObject() throws {
        let a = NodeAttributes(["cpus": .number(4), "load": .number(0.5), "labels.ok": .bool(true),
                                "gpus": .number(1), "zero": .number(0), "off": .bool(false),
                                "labels.tags": .list([.string("x"), .number(1)])])
        let data = try JSONEncoder().encode(a)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains("\"cpus\":4") && text.contains("\"labels.ok\":true") && text.contains("\"load\":0.5"))
        #expect(try JSONDecoder().decode(NodeAttributes.self, from: data) == a)
        #expect(a.jsonValue["labels.tags"] == .array([.string("x"), .int(1)]))
    }
}
