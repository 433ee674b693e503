/// Text from tools and messages on its way to a terminal or a log line: control characters (C0, DEL, C1), line and
/// paragraph separators and bidirectional overrides become visible `\u{…}` escapes, so an ESC/OSC sequence or a
/// forged line never reaches an operator's terminal or log as such.
public enum TextEscaping {
    public static func isUnsafe(_ u: Unicode.Scalar) -> Bool {
        let v = u.value
        return v < 0x20 || v == 0x7f || (0x80...0x9f).contains(v) || v == 0x2028 || v == 0x2029
            || (0x202a...0x202e).contains(v) || (0x2066...0x2069).contains(v)
    }

    /// `text` with every unsafe character escaped (`\t` and `\n` too: one value, one line).
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isUnsafe) else { return text }
        var out = String.UnicodeScalarView()
        for u in text.unicodeScalars {
            if isUnsafe(u) {
                switch u {
                case "\n": out.append(contentsOf: "\\n".unicodeScalars)
                case "\r": out.append(contentsOf: "\\r".unicodeScalars)
                case "\t": out.append(contentsOf: "\\t".unicodeScalars)
                default: out.append(contentsOf: "\\u{\(String(u.value, radix: 16))}".unicodeScalars)
                }
            } else {
                out.append(u)
            }
        }
        return String(out)
    }
}
