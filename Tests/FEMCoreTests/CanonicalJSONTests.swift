import FEMCore
import Foundation
import Testing

/// RFC 8785 (JSON Canonicalization Scheme) against the RFC's own published examples: what a plan's signature and
/// its registry hash are computed over, so any difference from other implementations breaks interoperability.
struct CanonicalJSONTests {
    static func canonical(_ text: String) throws -> String {
        CanonicalJSON.string(try JSONValue.parse(Data(text.utf8)))
    }

    /// RFC 8785 Appendix B: IEEE 754 bit patterns and the text ECMAScript prints for them.
    @Test(arguments: [
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),  // minus zero
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ])
    func numbersAsRFC8785AppendixB(hex: String, expected: String) throws {
        let bits = try #require(UInt64(hex, radix: 16))
        let d = Double(bitPattern: bits)
        #expect(CanonicalJSON.number(d) == expected, "\(hex)")
        #expect(CanonicalJSON.string(.double(d)) == expected, "\(hex) as a JSON value")
    }

    /// The same numbers as a document's author may spell them, through the node's parser (which reads an integral
    /// value that fits Int64 as an integer).
    @Test(arguments: [
        ("1e21", "1e+21"), ("1E21", "1e+21"), ("1e20", "100000000000000000000"), ("1e-7", "1e-7"),
        ("0.000001", "0.000001"), ("0.0000001", "1e-7"), ("333333333.3333333", "333333333.3333333"),
        ("333333333.33333329", "333333333.3333333"), ("-0", "0"), ("-0.0", "0"), ("5e-324", "5e-324"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"), ("9007199254740993", "9007199254740992"),
        ("9007199254740992", "9007199254740992"), ("-9007199254740993", "-9007199254740992"),
        ("9223372036854775807", "9223372036854776000"), ("1.0", "1"), ("4.50", "4.5"), ("2e-3", "0.002"),
        ("1E30", "1e+30"), ("0.000000000000000000000000001", "1e-27"), ("100", "100"), ("-1.5e-9", "-1.5e-9"),
    ])
    func numbersAsWritten(text: String, expected: String) throws {
        #expect(try Self.canonical(text) == expected, "\(text)")
    }

    /// RFC 8785 §3.2.3: members sorted by the UTF-16 code units of their names, a non-BMP name (a surrogate pair,
    /// D83D) before U+FB33 though its scalar is larger.
    @Test func memberOrderIsByUTF16CodeUnits() throws {
        let input = #"""
            {
              "\u20ac": "Euro Sign",
              "\r": "Carriage Return",
              "\ufb33": "Hebrew Letter Dalet With Dagesh",
              "1": "One",
              "\ud83d\ude00": "Emoji: Grinning Face",
              "\u0080": "Control",
              "\u00f6": "Latin Small Letter O With Diaeresis"
            }
            """#
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\","
            + "\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\","
            + "\"\u{1F600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        #expect(try Self.canonical(input) == expected)
    }

    /// RFC 8785 §3.2.4's example: whitespace gone, numbers re-spelled, strings with only the required escapes.
    @Test func rfcExampleDocument() throws {
        let input = #"""
            {
              "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
              "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
              "literals": [null, true, false]
            }
            """#
        let expected = #"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"#
            + "\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        #expect(try Self.canonical(input) == expected)
        // The bytes are UTF-8: € is three bytes, never \u20ac.
        let bytes = CanonicalJSON.bytes(try JSONValue.parse(Data(input.utf8)))
        #expect(bytes.contains(0xE2) && !String(decoding: bytes, as: UTF8.self).contains("\\u20ac"))
    }

    /// String escapes: `"` `\` and the C0 controls only (the short forms where JSON has them, else \u00xx in
    /// lowercase hex); `/`, DEL and everything above U+001F are written as they are.
    @Test func stringEscapes() {
        let s = "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\"\\/\u{7f}é\u{2028}\u{1F600}"
        let expected = "\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f\\\"\\\\/\u{7f}é\u{2028}\u{1F600}\""
        #expect(CanonicalJSON.string(.string(s)) == expected)
    }

    /// Nested objects are sorted at every level; arrays keep their order; no whitespace anywhere.
    @Test func nestedAndOrdered() throws {
        let text = #"{ "b": [3, {"z": 1, "a": [true, null]}], "a": {"y": "", "x": -1.25} }"#
        #expect(try Self.canonical(text) == #"{"a":{"x":-1.25,"y":""},"b":[3,{"a":[true,null],"z":1}]}"#)
    }

    /// The plan hash leaves out `signature` and nothing else, and does not depend on how the author laid it out.
    @Test func planIdentityIgnoresSignatureAndLayout() throws {
        let a = try JSONValue.parse(Data(#"{"id":"t","version":"1.0","n":1.0}"#.utf8))
        let b = try JSONValue.parse(Data(#"{ "n": 1, "version": "1.0", "id": "t", "signature": {"x": 1} }"#.utf8))
        #expect(PlanIdentity.signedBytes(a) == Array(#"{"id":"t","n":1,"version":"1.0"}"#.utf8))
        #expect(PlanIdentity.hash(a) == PlanIdentity.hash(b))
        let c = try JSONValue.parse(Data(#"{"id":"t","version":"1.1","n":1}"#.utf8))
        #expect(PlanIdentity.hash(a) != PlanIdentity.hash(c))
        #expect(PlanIdentity.hash(a).hasPrefix("sha256:") && PlanIdentity.hash(a).count == 71)
    }
}
