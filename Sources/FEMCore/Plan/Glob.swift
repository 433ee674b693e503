/// Glob patterns for declared outputs, relative to the sandbox's `out/` folder: `*` and `?` within a path
/// segment, `[abc]`/`[a-z]`/`[!x]` classes, and `**` for any number of segments.
public enum Glob {
    public static func problem(in pattern: String) -> String? {
        if pattern.isEmpty { return "must not be empty" }
        if pattern.hasPrefix("/") { return "\"\(pattern)\" is absolute; output patterns are relative to out/" }
        if pattern.split(separator: "/").contains("..") { return "\"\(pattern)\" contains \"..\"" }
        return nil
    }

    /// Matches without backtracking blow-up: `*` within a segment and `**` across segments are each handled by
    /// the classic single-resume wildcard scan, so the time is at most (pattern length × name length) per level.
    /// `*` (any run) and `?` (one character) over a whole name, every other character literal; with
    /// `caseInsensitive`, letters match either case (column names in output checks).
    public static func matchesName(_ pattern: String, _ name: String, caseInsensitive: Bool = false) -> Bool {
        let p = Array(caseInsensitive ? pattern.lowercased() : pattern)
        let s = Array(caseInsensitive ? name.lowercased() : name)
        return scan(p.count, s.count, isStar: { p[$0] == "*" }, matchesOne: { p[$0] == "?" || p[$0] == s[$1] })
    }

    public static func matches(_ pattern: String, _ path: String) -> Bool {
        let p = pattern.split(separator: "/").map { Token.parse(Array($0)) }
        let s = path.split(separator: "/").map { Array($0) }
        return scan(p.count, s.count,
                    isStar: { p[$0].count == 1 && p[$0][0] == .doubleStar },
                    matchesOne: { segment(p[$0], s[$1]) })
    }

    enum Token: Equatable {
        case literal(Character)
        case any                                   // ?
        case star                                  // * within a segment
        case doubleStar                            // a whole `**` segment
        case set([ClosedRange<Character>], negated: Bool)

        static func parse(_ chars: [Character]) -> [Token] {
            if chars == ["*", "*"] { return [.doubleStar] }
            var tokens: [Token] = []
            var i = 0
            while i < chars.count {
                let c = chars[i]
                switch c {
                case "*":
                    if tokens.last != .star { tokens.append(.star) }
                case "?":
                    tokens.append(.any)
                case "[":
                    // A class needs at least one member before its "]"; otherwise "[" is literal.
                    guard i + 2 < chars.count, let close = chars[(i + 2)...].firstIndex(of: "]") else {
                        tokens.append(.literal("["))
                        break
                    }
                    var set = Array(chars[(i + 1)..<close])
                    let negated = set.first == "!" || set.first == "^"
                    if negated { set.removeFirst() }
                    var ranges: [ClosedRange<Character>] = []
                    var j = 0
                    while j < set.count {
                        if j + 2 < set.count, set[j + 1] == "-" {
                            if set[j] <= set[j + 2] { ranges.append(set[j]...set[j + 2]) }
                            j += 3
                        } else {
                            ranges.append(set[j]...set[j])
                            j += 1
                        }
                    }
                    tokens.append(.set(ranges, negated: negated))
                    i = close
                default:
                    tokens.append(.literal(c))
                }
                i += 1
            }
            return tokens
        }

        func matches(_ c: Character) -> Bool {
            switch self {
            case .literal(let l): return l == c
            case .any: return true
            case .set(let ranges, let negated): return ranges.contains { $0.contains(c) } != negated
            case .star, .doubleStar: return false
            }
        }
    }

    private static func segment(_ p: [Token], _ s: [Character]) -> Bool {
        scan(p.count, s.count, isStar: { p[$0] == .star }, matchesOne: { p[$0].matches(s[$1]) })
    }

    /// Wildcard matching of `n` pattern items against `m` subject items, where a star item matches any run of
    /// subject items and every other item exactly one. On a mismatch only the most recent star is resumed (one
    /// item further); earlier stars never need revisiting, so the scan is O(n × m).
    private static func scan(_ n: Int, _ m: Int, isStar: (Int) -> Bool, matchesOne: (Int, Int) -> Bool) -> Bool {
        var p = 0, s = 0
        var starP = -1, starS = 0
        while s < m {
            if p < n && !isStar(p) && matchesOne(p, s) {
                p += 1
                s += 1
            } else if p < n && isStar(p) {
                starP = p
                starS = s
                p += 1
            } else if starP >= 0 {
                p = starP + 1
                starS += 1
                s = starS
            } else {
                return false
            }
        }
        while p < n && isStar(p) { p += 1 }
        return p == n
    }
}
