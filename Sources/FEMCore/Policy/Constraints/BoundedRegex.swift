/// A regular expression matched in time linear in the text (a Pike VM over a Thompson NFA): no backtracking, so no
/// pattern can make a match take exponential time. Supports literals, `.`, `*`, `+`, `?`, `|`, groups `( )`,
/// classes `[abc]`, `[a-z]`, `[^...]`, anchors `^` and `$`, and escapes (`\.`, `\\`, `\d`, `\w`, `\s`, `\D`, `\W`,
/// `\S`, `\n`, `\t`). Backreferences, counted repetition `{n,m}`, lookaround and `(?...)` groups are refused.
/// A match is a search: the pattern may match anywhere in the text unless anchored.
public struct BoundedRegex: Sendable {
    public static let maxPatternLength = 512
    public static let maxProgramSize = 2_000
    public static let maxGroupDepth = 32

    /// A pattern the engine refuses: the 1-based column in the pattern and what was expected.
    public struct PatternError: Error, Sendable, Equatable, CustomStringConvertible {
        public var column: Int
        public var message: String
        public var description: String { "column \(column) of the pattern: \(message)" }
    }

    enum ClassItem: Sendable {
        case scalar(Unicode.Scalar)
        case range(Unicode.Scalar, Unicode.Scalar)
        case digit(Bool), word(Bool), space(Bool)

        func contains(_ c: Unicode.Scalar) -> Bool {
            switch self {
            case .scalar(let s): c == s
            case .range(let a, let b): a <= c && c <= b
            case .digit(let yes): BoundedRegex.isDigit(c) == yes
            case .word(let yes): BoundedRegex.isWord(c) == yes
            case .space(let yes): BoundedRegex.isSpace(c) == yes
            }
        }
    }

    enum Inst: Sendable {
        case scalar(Unicode.Scalar)
        case any
        case set([ClassItem], negated: Bool)
        case split(Int, Int)
        case jump(Int)
        case begin
        case end
        case match
    }

    indirect enum Node {
        case empty
        case atom(Inst)
        case concat([Node])
        case alternate([Node])
        case star(Node), plus(Node), optional(Node)
    }

    let program: [Inst]
    public let pattern: String

    public init(_ pattern: String) throws(PatternError) {
        let scalars = Array(pattern.unicodeScalars)
        guard scalars.count <= Self.maxPatternLength else {
            throw PatternError(column: Self.maxPatternLength + 1,
                               message: "the pattern is \(scalars.count) characters long; the limit is \(Self.maxPatternLength)")
        }
        var parser = Parser(s: scalars)
        let node = try parser.parseAlternation(depth: 0)
        if parser.i < scalars.count {
            // Only an unmatched `)` stops the top level early.
            throw PatternError(column: parser.i + 1, message: "unmatched \")\"")
        }
        var program: [Inst] = []
        try Self.compile(node, into: &program)
        program.append(.match)
        guard program.count <= Self.maxProgramSize else {
            throw PatternError(column: 1, message: "the pattern is too complex (\(program.count) instructions; the "
                               + "limit is \(Self.maxProgramSize))")
        }
        self.program = program
        self.pattern = pattern
    }

    static func isDigit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }
    static func isWord(_ c: Unicode.Scalar) -> Bool {
        isDigit(c) || (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "_"
    }
    static func isSpace(_ c: Unicode.Scalar) -> Bool { c == " " || c == "\t" || c == "\n" || c == "\r" || c == "\u{0B}" || c == "\u{0C}" }

    struct Parser {
        let s: [Unicode.Scalar]
        var i = 0

        func error(_ message: String, at: Int? = nil) -> PatternError {
            PatternError(column: (at ?? i) + 1, message: message)
        }

        mutating func parseAlternation(depth: Int) throws(PatternError) -> Node {
            guard depth <= BoundedRegex.maxGroupDepth else {
                throw error("groups nested deeper than \(BoundedRegex.maxGroupDepth) levels")
            }
            var branches = [try parseConcat(depth: depth)]
            while i < s.count, s[i] == "|" {
                i += 1
                branches.append(try parseConcat(depth: depth))
            }
            return branches.count == 1 ? branches[0] : .alternate(branches)
        }

        mutating func parseConcat(depth: Int) throws(PatternError) -> Node {
            var items: [Node] = []
            while i < s.count, s[i] != "|", s[i] != ")" {
                var atom = try parseAtom(depth: depth)
                while i < s.count {
                    let q = s[i]
                    guard q == "*" || q == "+" || q == "?" else {
                        if q == "{" { throw error("counted repetition {n,m} is not supported") }
                        break
                    }
                    i += 1
                    switch q {
                    case "*": atom = .star(atom)
                    case "+": atom = .plus(atom)
                    default: atom = .optional(atom)
                    }
                }
                items.append(atom)
            }
            return items.isEmpty ? .empty : (items.count == 1 ? items[0] : .concat(items))
        }

        mutating func parseAtom(depth: Int) throws(PatternError) -> Node {
            let c = s[i]
            let start = i
            i += 1
            switch c {
            case "(":
                if i < s.count, s[i] == "?" { throw error("\"(?\" groups (lookaround, flags, named groups) are not supported") }
                let inner = try parseAlternation(depth: depth + 1)
                guard i < s.count, s[i] == ")" else { throw error("expected \")\" to close the group opened at column \(start + 1)") }
                i += 1
                return inner
            case "*", "+", "?":
                throw error("\"\(c)\" has nothing to repeat", at: start)
            case "{":
                throw error("counted repetition {n,m} is not supported", at: start)
            case ".": return .atom(.any)
            case "^": return .atom(.begin)
            case "$": return .atom(.end)
            case "[": return try parseClass(openedAt: start)
            case "\\":
                switch try parseEscape() {
                case .scalar(let x): return .atom(.scalar(x))
                case let item: return .atom(.set([item], negated: false))
                }
            default: return .atom(.scalar(c))
            }
        }

        mutating func parseEscape() throws(PatternError) -> ClassItem {
            guard i < s.count else { throw error("a pattern cannot end with \"\\\"") }
            let c = s[i]
            i += 1
            switch c {
            case "d": return .digit(true)
            case "D": return .digit(false)
            case "w": return .word(true)
            case "W": return .word(false)
            case "s": return .space(true)
            case "S": return .space(false)
            case "n": return .scalar("\n")
            case "t": return .scalar("\t")
            case "r": return .scalar("\r")
            case "1"..."9": throw error("backreferences (\\\(c)) are not supported", at: i - 2)
            default:
                if BoundedRegex.isWord(c) { throw error("unknown escape \"\\\(c)\"", at: i - 2) }
                return .scalar(c)
            }
        }

        mutating func parseClass(openedAt start: Int) throws(PatternError) -> Node {
            var negated = false
            if i < s.count, s[i] == "^" { negated = true; i += 1 }
            var items: [ClassItem] = []
            var first = true
            while true {
                guard i < s.count else { throw error("expected \"]\" to close the class opened at column \(start + 1)") }
                var c = s[i]
                if c == "]" && !first { i += 1; break }
                first = false
                i += 1
                var item: ClassItem
                if c == "\\" {
                    item = try parseEscape()
                    guard case .scalar(let x) = item else { items.append(item); continue }
                    c = x
                } else {
                    item = .scalar(c)
                }
                if i + 1 < s.count, s[i] == "-", s[i + 1] != "]" {
                    i += 1
                    var hi = s[i]
                    i += 1
                    if hi == "\\" {
                        guard case .scalar(let x) = try parseEscape() else {
                            throw error("a class range cannot end with a class escape", at: i - 2)
                        }
                        hi = x
                    }
                    guard c <= hi else { throw error("the range \(c)-\(hi) is out of order", at: i - 1) }
                    item = .range(c, hi)
                }
                items.append(item)
            }
            return .atom(.set(items, negated: negated))
        }
    }

    static func compile(_ node: Node, into p: inout [Inst]) throws(PatternError) {
        guard p.count <= maxProgramSize else {
            throw PatternError(column: 1, message: "the pattern is too complex (more than \(maxProgramSize) instructions)")
        }
        switch node {
        case .empty: break
        case .atom(let inst): p.append(inst)
        case .concat(let items): for n in items { try compile(n, into: &p) }
        case .alternate(let branches):
            // split L1, next; L1: branch; jump end; next: split ...
            var jumps: [Int] = []
            for (k, b) in branches.enumerated() {
                if k < branches.count - 1 {
                    let split = p.count
                    p.append(.split(split + 1, 0))
                    try compile(b, into: &p)
                    jumps.append(p.count)
                    p.append(.jump(0))
                    p[split] = .split(split + 1, p.count)
                } else {
                    try compile(b, into: &p)
                }
            }
            for j in jumps { p[j] = .jump(p.count) }
        case .star(let n):
            let split = p.count
            p.append(.split(split + 1, 0))
            try compile(n, into: &p)
            p.append(.jump(split))
            p[split] = .split(split + 1, p.count)
        case .plus(let n):
            let start = p.count
            try compile(n, into: &p)
            p.append(.split(start, p.count + 1))
        case .optional(let n):
            let split = p.count
            p.append(.split(split + 1, 0))
            try compile(n, into: &p)
            p[split] = .split(split + 1, p.count)
        }
    }

    /// True when the pattern matches somewhere in `text`. Time O(text × program), memory O(program).
    public func matches(_ text: String) -> Bool {
        let input = Array(text.unicodeScalars)
        let n = program.count
        var current: [Int] = []
        var next: [Int] = []
        var onList = [Int](repeating: -1, count: n)  // the step at which a pc was last added
        var stack: [Int] = []
        current.reserveCapacity(n)
        next.reserveCapacity(n)

        // Follows jumps, splits and assertions from `pc` at position `pos`, adding the threads that consume a
        // scalar (or match) to `list`. An explicit stack: no recursion however long the chain.
        func add(_ pc: Int, _ pos: Int, _ step: Int, _ list: inout [Int]) -> Bool {
            stack.append(pc)
            while let x = stack.popLast() {
                if onList[x] == step { continue }
                onList[x] = step
                switch program[x] {
                case .jump(let t): stack.append(t)
                case .split(let a, let b): stack.append(b); stack.append(a)
                case .begin: if pos == 0 { stack.append(x + 1) }
                case .end: if pos == input.count { stack.append(x + 1) }
                case .match:
                    stack.removeAll(keepingCapacity: true)
                    return true
                default: list.append(x)
                }
            }
            return false
        }

        var pos = 0
        while true {
            let step = pos
            // The search: a new thread may start at every position.
            if add(0, pos, step, &current) { return true }
            guard pos < input.count else { return false }
            let c = input[pos]
            next.removeAll(keepingCapacity: true)
            let nextStep = pos + 1
            for pc in current {
                let ok: Bool
                switch program[pc] {
                case .scalar(let s): ok = s == c
                case .any: ok = c != "\n"
                case .set(let items, let negated): ok = items.contains { $0.contains(c) } != negated
                default: ok = false
                }
                if ok, add(pc + 1, nextStep, nextStep, &next) { return true }
            }
            swap(&current, &next)
            pos += 1
        }
    }
}
