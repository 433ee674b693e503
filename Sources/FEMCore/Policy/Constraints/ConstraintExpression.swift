import Foundation

/// A selection criterion: a boolean expression over a node's attributes (docs/templates/README.md, "Constraints").
/// Read by a hand-written lexer and recursive-descent parser with limits on length, nesting and list size, so no
/// input can exhaust the stack or take long; evaluated without any `eval`.
///
///     expr       := or
///     or         := and ("or" and)*
///     and        := not ("and" not)*
///     not        := "not" not | comparison
///     comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand
///                            | ("matches" | "=~") STRING)?
///     operand    := STRING | NUMBER | "true" | "false" | "[" (operand ("," operand)*)? "]"
///                 | PATH | FUNCTION "(" expr ")" | "(" expr ")"
///     FUNCTION   := "version" | "defined"
public struct ConstraintExpression: Sendable {
    public static let maxLength = 4096
    public static let maxDepth = 64
    public static let maxListItems = 256

    /// The expression as written.
    public let text: String
    let root: Expr

    public static func parse(_ text: String) throws(ConstraintError) -> ConstraintExpression {
        // Counted before anything else, in UTF-8 bytes (cheap on any string), so a huge input is refused at once.
        if text.utf8.count > maxLength {
            throw ConstraintError(column: maxLength + 1, message: "the expression is \(text.utf8.count) bytes long; "
                                  + "the limit is \(maxLength)")
        }
        var lexer = Lexer(Array(text.unicodeScalars))
        let tokens = try lexer.tokens()
        var parser = Parser(tokens: tokens, source: Array(text.unicodeScalars))
        let root = try parser.parseExpression()
        return ConstraintExpression(text: text, root: root)
    }

    /// The longest reason given (a long `or` lists every alternative's): past it, cut with "…".
    public static let maxReasonLength = 2000

    public func evaluate(_ attributes: NodeAttributes) -> ConstraintVerdict {
        switch Evaluator(attributes: attributes).test(root) {
        case .yes: return ConstraintVerdict(matched: true, reason: nil)
        case .no(let why), .error(let why):
            let reason = why.count > Self.maxReasonLength ? why.prefix(Self.maxReasonLength) + "…" : why
            return ConstraintVerdict(matched: false, reason: reason)
        }
    }
}

/// Whether a node meets an expression; `reason` (when it does not) names the attribute, the operator and both values.
public struct ConstraintVerdict: Sendable, Equatable {
    public var matched: Bool
    public var reason: String?

    public init(matched: Bool, reason: String?) {
        self.matched = matched
        self.reason = reason
    }

    public static let matched = ConstraintVerdict(matched: true, reason: nil)
}

/// An expression that cannot be read: where (1-based column, in characters) and what was expected there.
public struct ConstraintError: Error, Sendable, Equatable, CustomStringConvertible {
    public var column: Int
    public var message: String

    public init(column: Int, message: String) {
        self.column = column
        self.message = message
    }

    public var description: String { "column \(column): \(message)" }
}

// MARK: - Tokens

struct Token: Sendable {
    enum Kind: Sendable, Equatable {
        case string(String)
        case number(Double)
        case name(String)  // an attribute path or a function name; keywords are names without dots
        case op(String)    // == != < <= > >= =~ ( ) [ ] ,
        case end
    }
    var kind: Kind
    var start: Int  // scalar offset
    var end: Int

    var shown: String {
        switch kind {
        case .string: "a string"
        case .number: "a number"
        case .name(let n): "\"\(n)\""
        case .op(let o): "\"\(o)\""
        case .end: "the end of the expression"
        }
    }
}

struct Lexer {
    let s: [Unicode.Scalar]
    var i = 0

    init(_ s: [Unicode.Scalar]) { self.s = s }

    func error(_ message: String, at: Int) -> ConstraintError { ConstraintError(column: at + 1, message: message) }

    static func isNameStart(_ c: Unicode.Scalar) -> Bool { (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "_" }
    static func isNamePart(_ c: Unicode.Scalar) -> Bool { isNameStart(c) || (c >= "0" && c <= "9") }
    static func isDigit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }

    mutating func tokens() throws(ConstraintError) -> [Token] {
        var out: [Token] = []
        while true {
            while i < s.count, s[i] == " " || s[i] == "\t" || s[i] == "\n" || s[i] == "\r" { i += 1 }
            guard i < s.count else { break }
            let start = i
            let c = s[i]
            if c == "\"" || c == "'" {
                out.append(Token(kind: .string(try string(quote: c)), start: start, end: i))
            } else if Self.isDigit(c) || (c == "-" && i + 1 < s.count && Self.isDigit(s[i + 1])) {
                out.append(Token(kind: .number(try number()), start: start, end: i))
            } else if Self.isNameStart(c) {
                out.append(Token(kind: .name(try name()), start: start, end: i))
            } else {
                let two = i + 1 < s.count ? String(String.UnicodeScalarView([c, s[i + 1]])) : ""
                if ["==", "!=", "<=", ">=", "=~"].contains(two) {
                    i += 2
                    out.append(Token(kind: .op(two), start: start, end: i))
                } else if "<>()[],".unicodeScalars.contains(c) {
                    i += 1
                    out.append(Token(kind: .op(String(c)), start: start, end: i))
                } else if c == "=" {
                    throw error("expected \"==\" (a single \"=\" is not an operator)", at: start)
                } else if c == "&" || c == "|" || c == "!" {
                    throw error("expected \"and\", \"or\" or \"not\" (found \"\(c)\")", at: start)
                } else {
                    let shown = c.properties.isAlphabetic || c.value > 0x20 && c.value < 0x7F ? "\"\(c)\"" : "U+\(String(c.value, radix: 16, uppercase: true))"
                    throw error("unexpected character \(shown)", at: start)
                }
            }
        }
        out.append(Token(kind: .end, start: s.count, end: s.count))
        return out
    }

    mutating func string(quote: Unicode.Scalar) throws(ConstraintError) -> String {
        let open = i
        i += 1
        var value = String.UnicodeScalarView()
        while true {
            guard i < s.count else { throw error("expected \(quote) to close the string opened here", at: open) }
            let c = s[i]
            if c == quote { i += 1; return String(value) }
            if c == "\n" { throw error("a string cannot span lines; expected \(quote)", at: i) }
            if c.value < 0x20 || c.value == 0x7F || (0x80...0x9F).contains(c.value) || c.properties.generalCategory == .format {
                // Never copied raw into a reason, an event or the log.
                throw error("a control or formatting character (U+\(String(c.value, radix: 16, uppercase: true))) in a "
                            + "string; write it as \\uXXXX", at: i)
            }
            if c == "\\" {
                guard i + 1 < s.count else { throw error("expected an escaped character after \"\\\"", at: i) }
                let e = s[i + 1]
                switch e {
                case "\"", "'", "\\": value.append(e)
                case "n": value.append("\n")
                case "t": value.append("\t")
                case "r": value.append("\r")
                case "u":
                    // \uXXXX
                    guard i + 5 < s.count,
                          let code = UInt32(String(String.UnicodeScalarView(s[(i + 2)...(i + 5)])), radix: 16),
                          let scalar = Unicode.Scalar(code) else {
                        throw error("expected four hexadecimal digits after \"\\u\"", at: i)
                    }
                    value.append(scalar)
                    i += 4
                default:
                    throw error("unknown escape \"\\\(e)\" (use \\\\, \\\", \\', \\n, \\t, \\r or \\uXXXX)", at: i)
                }
                i += 2
                continue
            }
            value.append(c)
            i += 1
        }
    }

    mutating func number() throws(ConstraintError) -> Double {
        let start = i
        if s[i] == "-" { i += 1 }
        while i < s.count, Self.isDigit(s[i]) { i += 1 }
        if i < s.count, s[i] == "." {
            i += 1
            guard i < s.count, Self.isDigit(s[i]) else { throw error("expected a digit after \".\" in a number", at: i) }
            while i < s.count, Self.isDigit(s[i]) { i += 1 }
        }
        if i < s.count, s[i] == "e" || s[i] == "E" {
            i += 1
            if i < s.count, s[i] == "+" || s[i] == "-" { i += 1 }
            guard i < s.count, Self.isDigit(s[i]) else { throw error("expected the exponent's digits", at: i) }
            while i < s.count, Self.isDigit(s[i]) { i += 1 }
        }
        if i < s.count, Self.isNameStart(s[i]) {
            throw error("expected an operator after the number, found \"\(s[i])\"", at: i)
        }
        let text = String(String.UnicodeScalarView(s[start..<i]))
        guard let d = Double(text), d.isFinite else { throw error("the number \(text) is out of range", at: start) }
        return d
    }

    mutating func name() throws(ConstraintError) -> String {
        let start = i
        while true {
            while i < s.count, Self.isNamePart(s[i]) { i += 1 }
            guard i < s.count, s[i] == "." else { break }
            i += 1
            guard i < s.count, Self.isNameStart(s[i]) else {
                throw error("expected a name after \".\" in an attribute path", at: i)
            }
        }
        return String(String.UnicodeScalarView(s[start..<i]))
    }
}

// MARK: - Syntax tree

enum CompareOp: String, Sendable {
    case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">="
}

struct Expr: Sendable {
    indirect enum Kind: Sendable {
        case literal(Value)
        case list([Expr])
        case path(String)
        case version(Expr)
        case defined(String)
        case compare(CompareOp, Expr, Expr)
        case member(Expr, Expr, negated: Bool)
        case regex(Expr, BoundedRegex)
        case and([Expr])
        case or([Expr])
        case not(Expr)
    }
    var kind: Kind
    /// The source text of this part of the expression, for reasons.
    var text: String
}

/// A value during evaluation.
enum Value: Sendable, Equatable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case list([Value])
    case version(SemanticVersion)

    init(_ a: AttributeValue) {
        switch a {
        case .string(let s): self = .string(s)
        case .number(let d): self = .number(d)
        case .bool(let b): self = .bool(b)
        case .list(let l): self = .list(l.map(Value.init))
        }
    }

    var typeName: String {
        switch self {
        case .string: "a string"
        case .number: "a number"
        case .bool: "a boolean"
        case .list: "a list"
        case .version: "a version"
        }
    }

    /// As written in an expression, shortened when long.
    var shown: String {
        switch self {
        case .string(let s): Self.quote(s)
        case .number(let d): Self.format(d)
        case .bool(let b): b ? "true" : "false"
        case .list(let l):
            l.count > 10 ? "[" + l.prefix(10).map(\.shown).joined(separator: ", ") + ", … (\(l.count) items)]"
                : "[" + l.map(\.shown).joined(separator: ", ") + "]"
        case .version(let v): "version(\(Self.quote(v.text)))"
        }
    }

    static func format(_ d: Double) -> String {
        d.rounded() == d && abs(d) < 1e15 ? String(Int64(d)) : String(d)
    }

    static func quote(_ s: String, limit: Int = 80) -> String {
        var out = "\""
        var n = 0
        for c in s.unicodeScalars {
            if n == limit { out += "…"; break }
            n += 1
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if c.value < 0x20 || c.value == 0x7F || (0x80...0x9F).contains(c.value) || c.properties.generalCategory == .format {
                    out += String(format: "\\u%04X", c.value)
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out + "\""
    }
}

/// A version for `version(...)`: dot-separated numbers (an optional leading `v`, missing parts count as 0), then an
/// optional `-prerelease` that sorts before the release (`1.2.0-rc1 < 1.2.0`) and an ignored `+build`.
struct SemanticVersion: Sendable, Equatable, Comparable {
    var numbers: [Int]
    var prerelease: [String]
    var text: String

    init?(_ text: String) {
        self.text = text
        var body = Substring(text)
        if body.first == "v" || body.first == "V" { body = body.dropFirst() }
        if let plus = body.firstIndex(of: "+") { body = body[..<plus] }
        var pre: Substring = ""
        if let dash = body.firstIndex(of: "-") {
            pre = body[body.index(after: dash)...]
            body = body[..<dash]
            guard !pre.isEmpty else { return nil }
        }
        let parts = body.split(separator: ".", omittingEmptySubsequences: false)
        guard !parts.isEmpty, parts.count <= 16 else { return nil }
        var numbers: [Int] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 9, p.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(p) else { return nil }
            numbers.append(n)
        }
        self.numbers = numbers
        self.prerelease = pre.isEmpty ? [] : pre.split(separator: ".").map(String.init)
    }

    static func == (a: Self, b: Self) -> Bool { !(a < b) && !(b < a) }

    static func < (a: Self, b: Self) -> Bool {
        for k in 0..<max(a.numbers.count, b.numbers.count) {
            let x = k < a.numbers.count ? a.numbers[k] : 0
            let y = k < b.numbers.count ? b.numbers[k] : 0
            if x != y { return x < y }
        }
        // A prerelease comes before its release.
        if a.prerelease.isEmpty != b.prerelease.isEmpty { return !a.prerelease.isEmpty }
        for (x, y) in zip(a.prerelease, b.prerelease) where x != y {
            switch (Int(x), Int(y)) {
            case let (i?, j?): return i < j
            case (_?, nil): return true
            case (nil, _?): return false
            default: return x < y
            }
        }
        return a.prerelease.count < b.prerelease.count
    }
}

// MARK: - Parser

struct Parser {
    let tokens: [Token]
    let source: [Unicode.Scalar]
    var k = 0
    var depth = 0

    init(tokens: [Token], source: [Unicode.Scalar]) {
        self.tokens = tokens
        self.source = source
    }

    var current: Token { tokens[k] }

    /// The source of what was read since `start`, each run of whitespace one space (for one-line reasons).
    func text(from start: Int) -> String {
        let end = tokens[max(k - 1, 0)].end
        var out = String.UnicodeScalarView()
        var inString: Unicode.Scalar?
        var escaped = false
        for c in source[start..<max(end, start)] {
            if let q = inString {
                if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == q { inString = nil }
                out.append(c)
            } else if c == "\"" || c == "'" {
                inString = c
                out.append(c)
            } else if c == " " || c == "\t" || c == "\n" || c == "\r" {
                if out.last != " " { out.append(" ") }
            } else {
                out.append(c)
            }
        }
        return String(out)
    }

    func error(_ message: String, at token: Token? = nil) -> ConstraintError {
        ConstraintError(column: (token ?? current).start + 1, message: message)
    }

    func isKeyword(_ word: String) -> Bool {
        if case .name(let n) = current.kind, n == word { return true }
        return false
    }

    func isOp(_ op: String) -> Bool {
        if case .op(let o) = current.kind, o == op { return true }
        return false
    }

    /// One more level of nesting, opened by `token`.
    mutating func enter(_ token: Token) throws(ConstraintError) {
        depth += 1
        if depth > ConstraintExpression.maxDepth {
            throw error("the expression is nested deeper than \(ConstraintExpression.maxDepth) levels", at: token)
        }
    }

    mutating func parseExpression() throws(ConstraintError) -> Expr {
        if case .end = current.kind { throw error("expected an expression, found nothing") }
        let e = try parseOr()
        guard case .end = current.kind else {
            throw error("expected \"and\", \"or\" or the end of the expression, found \(current.shown)")
        }
        return e
    }

    mutating func parseOr() throws(ConstraintError) -> Expr {
        let start = current.start
        var items = [try parseAnd()]
        while isKeyword("or") {
            k += 1
            items.append(try parseAnd())
        }
        return items.count == 1 ? items[0] : Expr(kind: .or(items), text: text(from: start))
    }

    mutating func parseAnd() throws(ConstraintError) -> Expr {
        let start = current.start
        var items = [try parseNot()]
        while isKeyword("and") {
            k += 1
            items.append(try parseNot())
        }
        return items.count == 1 ? items[0] : Expr(kind: .and(items), text: text(from: start))
    }

    mutating func parseNot() throws(ConstraintError) -> Expr {
        let start = current.start
        if isKeyword("not") {
            let token = current
            k += 1
            try enter(token)
            defer { depth -= 1 }
            let inner = try parseNot()
            return Expr(kind: .not(inner), text: text(from: start))
        }
        return try parseComparison()
    }

    mutating func parseComparison() throws(ConstraintError) -> Expr {
        let start = current.start
        let left = try parseOperand()
        if case .op(let o) = current.kind, let op = CompareOp(rawValue: o) {
            k += 1
            let right = try parseOperand()
            return Expr(kind: .compare(op, left, right), text: text(from: start))
        }
        if isKeyword("in") {
            k += 1
            let right = try parseOperand()
            return Expr(kind: .member(left, right, negated: false), text: text(from: start))
        }
        if isKeyword("not") {
            guard k + 1 < tokens.count, case .name("in") = tokens[k + 1].kind else {
                throw error("expected \"in\" after \"not\" here (\"not\" before an operand goes at its start)")
            }
            k += 2
            let right = try parseOperand()
            return Expr(kind: .member(left, right, negated: true), text: text(from: start))
        }
        if isKeyword("matches") || isOp("=~") {
            k += 1
            let patternToken = current
            guard case .string(let pattern) = patternToken.kind else {
                throw error("expected the pattern as a string literal after \"matches\", found \(current.shown)")
            }
            k += 1
            let regex: BoundedRegex
            do {
                regex = try BoundedRegex(pattern)
            } catch {
                // The pattern's own column, counted from its opening quote (exact when it has no escapes).
                throw ConstraintError(column: patternToken.start + 1 + error.column,
                                      message: "invalid pattern: \(error.message)")
            }
            return Expr(kind: .regex(left, regex), text: text(from: start))
        }
        return left
    }

    mutating func parseOperand() throws(ConstraintError) -> Expr {
        let token = current
        let start = token.start
        switch token.kind {
        case .string(let s):
            k += 1
            return Expr(kind: .literal(.string(s)), text: text(from: start))
        case .number(let d):
            k += 1
            return Expr(kind: .literal(.number(d)), text: text(from: start))
        case .op("("):
            k += 1
            try enter(token)
            defer { depth -= 1 }
            let inner = try parseOr()
            guard isOp(")") else {
                throw error("expected \")\" to close the \"(\" at column \(start + 1), found \(current.shown)")
            }
            k += 1
            return inner
        case .op("["):
            k += 1
            try enter(token)
            defer { depth -= 1 }
            var items: [Expr] = []
            if isOp("]") {
                k += 1
                return Expr(kind: .list([]), text: text(from: start))
            }
            while true {
                let item = try parseOperand()
                switch item.kind {
                case .literal, .list: break
                default: throw error("a list holds only literals (strings, numbers, true, false, lists)", at: token)
                }
                items.append(item)
                if items.count > ConstraintExpression.maxListItems {
                    throw error("the list has more than \(ConstraintExpression.maxListItems) items", at: token)
                }
                if isOp(",") { k += 1; continue }
                if isOp("]") { k += 1; break }
                throw error("expected \",\" or \"]\" in the list opened at column \(start + 1), found \(current.shown)")
            }
            return Expr(kind: .list(items), text: text(from: start))
        case .name(let name):
            switch name {
            case "true", "false":
                k += 1
                return Expr(kind: .literal(.bool(name == "true")), text: text(from: start))
            case "and", "or", "in", "not", "matches":
                throw error("expected an operand (a value, an attribute or \"(\"), found \"\(name)\"")
            case "version" where tokens[k + 1].kind == .op("("), "defined" where tokens[k + 1].kind == .op("("):
                // A function when a "(" follows; else the attribute of that name (`version`).
                k += 2
                try enter(token)
                defer { depth -= 1 }
                if name == "defined" {
                    guard case .name(let path) = current.kind, !Self.reserved.contains(path) else {
                        throw error("expected an attribute name in defined(...), found \(current.shown)")
                    }
                    k += 1
                    guard isOp(")") else { throw error("expected \")\" after defined(\(path), found \(current.shown)") }
                    k += 1
                    return Expr(kind: .defined(path), text: text(from: start))
                }
                let inner = try parseOr()
                guard isOp(")") else { throw error("expected \")\" to close version(, found \(current.shown)") }
                k += 1
                return Expr(kind: .version(inner), text: text(from: start))
            default:
                k += 1
                if isOp("(") { throw error("unknown function \"\(name)\" (there are version(...) and defined(...))", at: token) }
                return Expr(kind: .path(name), text: text(from: start))
            }
        case .op(let o):
            throw error("expected an operand (a value, an attribute or \"(\"), found \"\(o)\"")
        case .end:
            throw error("expected an operand (a value, an attribute or \"(\"), found the end of the expression")
        }
    }

    static let reserved: Set<String> = ["true", "false", "and", "or", "in", "not", "matches"]
}

// MARK: - Evaluation

enum Truth {
    case yes
    case no(String)
    /// A missing attribute or a type mismatch: not matched, whatever the operators around it (a `not` does not
    /// turn it into a match).
    case error(String)
}

struct Evaluator {
    let attributes: NodeAttributes

    func value(_ e: Expr) -> Result<Value, Failure> {
        switch e.kind {
        case .literal(let v): return .success(v)
        case .list(let items):
            var out: [Value] = []
            for item in items {
                switch value(item) {
                case .success(let v): out.append(v)
                case .failure(let f): return .failure(f)
                }
            }
            return .success(.list(out))
        case .path(let p):
            guard let v = attributes[p] else { return .failure(Failure("\(p) is not set on this node")) }
            return .success(Value(v))
        case .version(let inner):
            switch value(inner) {
            case .success(.string(let s)):
                guard let v = SemanticVersion(s) else {
                    return .failure(Failure("\(e.text): \(Value.quote(s)) is not a version (numbers separated by dots)"))
                }
                return .success(.version(v))
            case .success(.number(let d)):
                guard let v = SemanticVersion(Value.format(d)) else {
                    return .failure(Failure("\(e.text): \(Value.format(d)) is not a version"))
                }
                return .success(.version(v))
            case .success(.version(let v)): return .success(.version(v))
            case .success(let other):
                return .failure(Failure("\(e.text): version() takes a string, not \(other.typeName) (\(other.shown))"))
            case .failure(let f): return .failure(f)
            }
        case .compare, .member, .regex, .and, .or, .not, .defined:
            switch test(e) {
            case .yes: return .success(.bool(true))
            case .no: return .success(.bool(false))
            case .error(let why): return .failure(Failure(why))
            }
        }
    }

    struct Failure: Error {
        var reason: String
        var typeMismatch = false
        init(_ reason: String, typeMismatch: Bool = false) {
            self.reason = reason
            self.typeMismatch = typeMismatch
        }
    }

    /// Why `e` is false: its text and the value of each attribute it reads.
    func falseBecause(_ e: Expr, _ parts: [(Expr, Value)]) -> String {
        let shown = parts.compactMap { part, v -> String? in
            if case .literal = part.kind { return nil }
            if case .list = part.kind { return nil }
            return "\(part.text) is \(v.shown)"
        }
        return shown.isEmpty ? "\(e.text) is false" : "\(e.text) is false: " + shown.joined(separator: ", ")
    }

    func test(_ e: Expr) -> Truth {
        switch e.kind {
        case .and(let items):
            for item in items {
                switch test(item) {
                case .yes: continue
                case let other: return other
                }
            }
            return .yes
        case .or(let items):
            var reasons: [String] = []
            for item in items {
                switch test(item) {
                case .yes: return .yes
                case .no(let why): reasons.append(why)
                case .error(let why): return .error(why)
                }
            }
            return .no("none of the alternatives holds: " + reasons.joined(separator: "; "))
        case .not(let inner):
            switch test(inner) {
            case .yes: return .no("\(e.text) is false: \(inner.text) holds")
            case .no: return .yes
            case .error(let why): return .error(why)
            }
        case .defined(let path):
            return attributes[path] != nil ? .yes : .no("\(e.text) is false: \(path) is not set on this node")
        case .compare(let op, let l, let r):
            let a: Value, b: Value
            switch (value(l), value(r)) {
            case (.failure(let f), _), (_, .failure(let f)): return .error(notMatched(e, f))
            case (.success(let x), .success(let y)): (a, b) = (x, y)
            }
            switch compare(op, a, b) {
            case .success(true): return .yes
            case .success(false): return .no(falseBecause(e, [(l, a), (r, b)]))
            case .failure(let f) where f.typeMismatch:
                return .error("\(e.text) cannot be evaluated: \(describe(l, a)) and \(describe(r, b)); values of "
                              + "different types are never compared")
            case .failure(let f): return .error("\(e.text) cannot be evaluated: \(f.reason)")
            }
        case .member(let l, let r, let negated):
            let a: Value, b: Value
            switch (value(l), value(r)) {
            case (.failure(let f), _), (_, .failure(let f)): return .error(notMatched(e, f))
            case (.success(let x), .success(let y)): (a, b) = (x, y)
            }
            let found: Bool
            switch (a, b) {
            case (_, .list(let items)): found = items.contains { equal(a, $0) }
            case (.string(let needle), .string(let hay)): found = hay.contains(needle)
            default:
                return .error("\(e.text) cannot be evaluated: \"in\" needs a list or a string on its right and a "
                              + "string on its left for a string; \(describe(l, a)) and \(describe(r, b))")
            }
            return found != negated ? .yes : .no(falseBecause(e, [(l, a), (r, b)]))
        case .regex(let l, let regex):
            switch value(l) {
            case .failure(let f): return .error(notMatched(e, f))
            case .success(.string(let s)):
                return regex.matches(s) ? .yes : .no(falseBecause(e, [(l, .string(s))]))
            case .success(let other):
                return .error("\(e.text) cannot be evaluated: matches needs a string on its left; \(describe(l, other))")
            }
        case .literal, .list, .path, .version:
            switch value(e) {
            case .success(.bool(true)): return .yes
            case .success(.bool(false)):
                if case .literal = e.kind { return .no("\(e.text) is false") }
                return .no("\(e.text) is false")
            case .success(let v):
                return .error("\(e.text) is \(v.typeName) (\(v.shown)), not true or false")
            case .failure(let f): return .error(notMatched(e, f))
            }
        }
    }

    func notMatched(_ e: Expr, _ f: Failure) -> String {
        f.reason.hasPrefix(e.text) ? f.reason : "\(f.reason) (in \(e.text))"
    }

    func describe(_ e: Expr, _ v: Value) -> String {
        if case .literal = e.kind { return "\(v.shown) is \(v.typeName)" }
        return "\(e.text) is \(v.typeName) (\(v.shown))"
    }

    func equal(_ a: Value, _ b: Value) -> Bool {
        switch (a, b) {
        case (.version(let x), .string(let s)), (.string(let s), .version(let x)):
            return SemanticVersion(s).map { $0 == x } ?? false
        case (.version(let x), .version(let y)): return x == y
        case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        default: return a == b
        }
    }

    /// Compares two values of one type. Different types are an error (with both types named), never false: a
    /// string `"4"` is not a number `4`, and `not` must not turn the mistake into a match.
    func compare(_ op: CompareOp, _ a: Value, _ b: Value) -> Result<Bool, Failure> {
        var a = a, b = b
        // A string next to a version is read as a version.
        if case .version = a, case .string(let s) = b {
            guard let v = SemanticVersion(s) else { return .failure(Failure("\(Value.quote(s)) is not a version")) }
            b = .version(v)
        }
        if case .version = b, case .string(let s) = a {
            guard let v = SemanticVersion(s) else { return .failure(Failure("\(Value.quote(s)) is not a version")) }
            a = .version(v)
        }
        let order: Int  // -1, 0, 1
        switch (a, b) {
        case (.number(let x), .number(let y)): order = x < y ? -1 : (x > y ? 1 : 0)
        case (.string(let x), .string(let y)):
            let xs = Array(x.unicodeScalars.map(\.value)), ys = Array(y.unicodeScalars.map(\.value))
            order = xs == ys ? 0 : (xs.lexicographicallyPrecedes(ys) ? -1 : 1)
        case (.version(let x), .version(let y)): order = x < y ? -1 : (x == y ? 0 : 1)
        case (.bool(let x), .bool(let y)):
            guard op == .eq || op == .ne else {
                return .failure(Failure("booleans can only be compared with == and !="))
            }
            order = x == y ? 0 : 1
        case (.list, .list):
            guard op == .eq || op == .ne else { return .failure(Failure("lists can only be compared with == and !=")) }
            order = equal(a, b) ? 0 : 1
        default:
            return .failure(Failure("different types", typeMismatch: true))
        }
        switch op {
        case .eq: return .success(order == 0)
        case .ne: return .success(order != 0)
        case .lt: return .success(order < 0)
        case .le: return .success(order <= 0)
        case .gt: return .success(order > 0)
        case .ge: return .success(order >= 0)
        }
    }
}
