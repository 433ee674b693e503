/// Glob patterns for declared outputs, relative to the sandbox's `out/` folder: `*` and `?` within a path
/// segment, `[abc]`/`[a-z]`/`[!x]` classes, and `**` for any number of segments.
public enum Glob {
    public static func problem(in pattern: String) -> String? {
        if pattern.isEmpty { return "must not be empty" }
        if pattern.hasPrefix("/") { return "\"\(pattern)\" is absolute; output patterns are relative to out/" }
        if pattern.split(separator: "/").contains("..") { return "\"\(pattern)\" contains \"..\"" }
        return nil
    }

    public static func matches(_ pattern: String, _ path: String) -> Bool {
        let p = pattern.split(separator: "/").map { Array($0) }
        let s = path.split(separator: "/").map { Array($0) }
        return match(p[...], s[...])
    }

    private static func match(_ p: ArraySlice<[Character]>, _ s: ArraySlice<[Character]>) -> Bool {
        guard let first = p.first else { return s.isEmpty }
        if first == ["*", "*"] {
            // Zero or more whole segments.
            var rest = s
            while true {
                if match(p.dropFirst(), rest) { return true }
                guard !rest.isEmpty else { return false }
                rest = rest.dropFirst()
            }
        }
        guard let seg = s.first, segment(first[...], seg[...]) else { return false }
        return match(p.dropFirst(), s.dropFirst())
    }

    private static func segment(_ p: ArraySlice<Character>, _ s: ArraySlice<Character>) -> Bool {
        guard let c = p.first else { return s.isEmpty }
        switch c {
        case "*":
            var rest = s
            while true {
                if segment(p.dropFirst(), rest) { return true }
                guard !rest.isEmpty else { return false }
                rest = rest.dropFirst()
            }
        case "?":
            return !s.isEmpty && segment(p.dropFirst(), s.dropFirst())
        case "[":
            guard let ch = s.first, let close = p.dropFirst(2).firstIndex(of: "]") else {
                return !s.isEmpty && s.first == "[" && segment(p.dropFirst(), s.dropFirst())
            }
            var set = p[(p.startIndex + 1)..<close]
            let negate = set.first == "!" || set.first == "^"
            if negate { set = set.dropFirst() }
            var hit = false
            var i = set.startIndex
            while i < set.endIndex {
                if i + 2 < set.endIndex, set[i + 1] == "-" {
                    if set[i] <= ch && ch <= set[i + 2] { hit = true }
                    i += 3
                } else {
                    if set[i] == ch { hit = true }
                    i += 1
                }
            }
            return hit != negate && segment(p[(close + 1)...], s.dropFirst())
        default:
            return s.first == c && segment(p.dropFirst(), s.dropFirst())
        }
    }
}
