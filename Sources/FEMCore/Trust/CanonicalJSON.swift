import Foundation

/// The JSON Canonicalization Scheme (RFC 8785): the one byte sequence a JSON value has, whatever whitespace, key
/// order or number spelling its author used. What a plan's signature and its registry hash are computed over.
///
/// - objects: members sorted by their names' UTF-16 code units, no whitespace anywhere;
/// - strings: UTF-8, with only `"`, `\`, and C0 controls escaped (`\b \f \n \r \t`, others as `\u00xx`);
/// - numbers: as ECMAScript's `Number.prototype.toString` prints the IEEE double (so `1.0` and `1` are both `1`,
///   `1e-7` is `1e-7`, and an integer beyond 2^53 is the double nearest to it, as every RFC 8785 implementation does).
public enum CanonicalJSON {
    public static func bytes(_ value: JSONValue) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        write(value, into: &out)
        return out
    }

    public static func string(_ value: JSONValue) -> String { String(decoding: bytes(value), as: UTF8.self) }

    static func write(_ value: JSONValue, into out: inout [UInt8]) {
        switch value {
        case .null: out += Array("null".utf8)
        case .bool(let b): out += Array((b ? "true" : "false").utf8)
        case .int(let i):
            if i.magnitude <= 1 << 53 { out += Array(String(i).utf8) } else { out += Array(number(Double(i)).utf8) }
        case .double(let d): out += Array(number(d).utf8)
        case .string(let s): writeString(s, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                write(item, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            let keys = members.keys.sorted { $0.utf16.lexicographicallyPrecedes($1.utf16) }
            for (i, key) in keys.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                if let member = members[key] { write(member, into: &out) }
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeString(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [0x5C, 0x22]
            case UInt8(ascii: "\\"): out += [0x5C, 0x5C]
            case 0x08: out += [0x5C, UInt8(ascii: "b")]
            case 0x0C: out += [0x5C, UInt8(ascii: "f")]
            case 0x0A: out += [0x5C, UInt8(ascii: "n")]
            case 0x0D: out += [0x5C, UInt8(ascii: "r")]
            case 0x09: out += [0x5C, UInt8(ascii: "t")]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// ECMAScript's Number::toString for a finite double (RFC 8785 §3.2.2.3). JSON has no NaN or infinity; they
    /// print as `null`, which no parsed document contains.
    public static func number(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        if d == 0 { return "0" }
        let negative = d < 0
        // Swift prints the shortest digits that round-trip, as ECMAScript requires; only the layout differs.
        let text = "\(d.magnitude)"
        var mantissa = Substring(text)
        var exponent = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            mantissa = text[..<e]
            exponent = Int(text[text.index(after: e)...]) ?? 0
        }
        var intPart = Substring(mantissa)
        var fracPart: Substring = ""
        if let dot = mantissa.firstIndex(of: ".") {
            intPart = mantissa[..<dot]
            fracPart = mantissa[mantissa.index(after: dot)...]
        }
        // digits × 10^(n − k): n is where the decimal point falls after the first significant digit.
        var digits = Array(intPart + fracPart)
        var n = intPart.count + exponent
        while let first = digits.first, first == "0", digits.count > 1 { digits.removeFirst(); n -= 1 }
        while let last = digits.last, last == "0", digits.count > 1 { digits.removeLast() }
        let k = digits.count
        let s = String(digits)
        var result: String
        if k <= n && n <= 21 {
            result = s + String(repeating: "0", count: n - k)
        } else if 0 < n && n <= 21 {
            result = String(digits[0..<n]) + "." + String(digits[n...])
        } else if -6 < n && n <= 0 {
            result = "0." + String(repeating: "0", count: -n) + s
        } else {
            let e = n - 1
            let sign = e < 0 ? "-" : "+"
            result = (k == 1 ? s : String(digits[0]) + "." + String(digits[1...])) + "e" + sign + String(abs(e))
        }
        return negative ? "-" + result : result
    }
}

/// What identifies a plan's content on a node: the SHA-256 of its canonical form without its `signature` member,
/// so that signing a plan does not change the hash a site approved.
public enum PlanIdentity {
    /// The member of a plan document that carries its signature; not part of what is signed or hashed.
    public static let signatureMember = "signature"

    /// The canonical bytes of a plan document, `signature` left out.
    public static func signedBytes(_ document: JSONValue) -> [UInt8] {
        guard case .object(var members) = document else { return CanonicalJSON.bytes(document) }
        members[signatureMember] = nil
        return CanonicalJSON.bytes(.object(members))
    }

    /// `sha256:<64 hex>` of `signedBytes`.
    public static func hash(_ document: JSONValue) -> String {
        var digest = SHA256()
        digest.update(signedBytes(document))
        return "sha256:" + digest.finalizeHex()
    }
}
