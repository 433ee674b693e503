import Foundation

/// One problem in a document: where (a JSON path such as `plan.command.args[2].type`) and what.
public struct ValidationIssue: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String

    public init(_ path: String, _ message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Every problem found in a document, reported at once.
public struct ValidationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var issues: [ValidationIssue]

    public init(_ issues: [ValidationIssue]) { self.issues = issues }

    public var description: String { issues.map(\.description).joined(separator: "; ") }
}

/// Collects issues while a document is walked.
final class IssueLog {
    var issues: [ValidationIssue] = []
    func add(_ path: String, _ message: String) { issues.append(ValidationIssue(path, message)) }
}

/// Shared patterns. The JSON Schemas in docs/templates use the same expressions; a test keeps them in step.
public enum Patterns {
    public static let planID = #"^[a-z0-9][a-z0-9._-]{0,63}$"#
    public static let version = #"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"#
    public static let taskID = #"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"#
    public static let argID = #"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"#
    public static let datasetID = #"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"#
    public static let envName = #"^(?!FEM_)[A-Za-z_][A-Za-z0-9_]{0,127}$"#
    /// A Slurm partition (account, QOS) name: Slurm's own characters, never an option.
    public static let slurmName = #"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"#
    public static let credentialsRef = #"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"#
    public static let sha256 = #"^[0-9a-f]{64}$"#
    public static let commit = #"^[0-9a-f]{40}$"#
    /// A table column name or name pattern (`n_*`): 1 to 128 characters, no control characters.
    public static let countColumn = #"^[^\x00-\x1F\x7F]{1,128}$"#

    /// Does `pattern` match the whole of `text`? NSRegularExpression's `$` also matches before a final line
    /// terminator (`"abc\n"`, `"abc\r\n"`, `"abc\u{2028}"`), so the match must also span every UTF-16 unit.
    public static func matches(_ pattern: String, _ text: String) -> Bool {
        guard let re = cache[pattern] ?? (try? NSRegularExpression(pattern: pattern)) else { return false }
        let range = NSRange(text.startIndex..., in: text)
        guard let match = re.firstMatch(in: text, range: range) else { return false }
        return match.range.location == 0 && match.range.length == range.length
    }

    private static let cache: [String: NSRegularExpression] = {
        var c: [String: NSRegularExpression] = [:]
        for p in [planID, version, taskID, argID, datasetID, envName, credentialsRef, sha256, commit, countColumn] {
            c[p] = try? NSRegularExpression(pattern: p)
        }
        return c
    }()
}

/// A JSON object under inspection: typed getters that log what is wrong, and `finish()` to report fields
/// nobody asked for (a typo in a field name is an error, not a silently ignored setting).
final class Fields {
    let path: String
    let values: [String: JSONValue]
    let log: IssueLog
    private var seen = Set<String>()

    init?(_ value: JSONValue?, path: String, log: IssueLog, required: Bool = true) {
        guard let value else {
            if required { log.add(path, "is required") }
            return nil
        }
        guard case .object(let o) = value else {
            log.add(path, "expected an object, got \(value.typeName)")
            return nil
        }
        self.path = path
        self.values = o
        self.log = log
    }

    func sub(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func raw(_ key: String, required: Bool) -> JSONValue? {
        seen.insert(key)
        guard let v = values[key] else {
            if required { log.add(sub(key), "is required") }
            return nil
        }
        return v
    }

    func string(_ key: String, required: Bool = false, pattern: String? = nil, allowed: [String]? = nil,
                placeholders: Bool = false, secret: Bool = false, nonEmpty: Bool = true) -> String? {
        guard let v = raw(key, required: required) else { return nil }
        guard case .string(let s) = v else {
            log.add(sub(key), "expected a string, got \(v.typeName)")
            return nil
        }
        return Self.checkString(s, path: sub(key), log: log, pattern: pattern, allowed: allowed,
                                placeholders: placeholders, secret: secret, nonEmpty: nonEmpty)
    }

    static func checkString(_ s: String, path: String, log: IssueLog, pattern: String? = nil,
                            allowed: [String]? = nil, placeholders: Bool = false, secret: Bool = false,
                            nonEmpty: Bool = true) -> String? {
        if let allowed, !allowed.contains(s) {
            log.add(path, "\"\(s)\" is not one of \(allowed.joined(separator: ", "))")
            return nil
        }
        if nonEmpty && s.isEmpty {
            log.add(path, "must not be empty")
            return nil
        }
        if let pattern, !Patterns.matches(pattern, s) {
            // A secret's value never appears in a message.
            log.add(path, secret ? "is not well-formed" : "\"\(s)\" does not match \(pattern)")
            return nil
        }
        if placeholders, let problem = Placeholders.check(s) {
            log.add(path, problem)
            return nil
        }
        return s
    }

    func int(_ key: String, required: Bool = false, min: Int64? = nil, max: Int64? = nil) -> Int? {
        guard let v = raw(key, required: required) else { return nil }
        guard case .int(let i) = v else {
            log.add(sub(key), "expected an integer, got \(v.typeName)")
            return nil
        }
        if let min, i < min {
            log.add(sub(key), "must be at least \(min), got \(i)")
            return nil
        }
        if let max, i > max {
            log.add(sub(key), "must be at most \(max), got \(i)")
            return nil
        }
        return Int(i)
    }

    func number(_ key: String, exclusiveMin: Double) -> Double? {
        guard let v = raw(key, required: false) else { return nil }
        let d: Double
        switch v {
        case .int(let i): d = Double(i)
        case .double(let x): d = x
        default:
            log.add(sub(key), "expected a number, got \(v.typeName)")
            return nil
        }
        if d <= exclusiveMin {
            log.add(sub(key), "must be greater than \(exclusiveMin), got \(d)")
            return nil
        }
        return d
    }

    func bool(_ key: String) -> Bool? {
        guard let v = raw(key, required: false) else { return nil }
        guard case .bool(let b) = v else {
            log.add(sub(key), "expected a boolean, got \(v.typeName)")
            return nil
        }
        return b
    }

    func array(_ key: String, required: Bool = false, nonEmpty: Bool = false) -> [(String, JSONValue)]? {
        guard let v = raw(key, required: required) else { return nil }
        guard case .array(let a) = v else {
            log.add(sub(key), "expected an array, got \(v.typeName)")
            return nil
        }
        if nonEmpty && a.isEmpty {
            log.add(sub(key), "must not be empty")
            return nil
        }
        return a.enumerated().map { ("\(sub(key))[\($0.offset)]", $0.element) }
    }

    func stringArray(_ key: String, pattern: String? = nil, placeholders: Bool = false, nonEmpty: Bool = false,
                     unique: Bool = false) -> [String]? {
        guard let items = array(key, nonEmpty: nonEmpty) else { return nil }
        var out: [String] = []
        var ok = true
        for (p, item) in items {
            guard case .string(let s) = item else {
                log.add(p, "expected a string, got \(item.typeName)")
                ok = false
                continue
            }
            guard let s = Self.checkString(s, path: p, log: log, pattern: pattern, placeholders: placeholders) else {
                ok = false
                continue
            }
            if unique && out.contains(s) {
                log.add(p, "\"\(s)\" is listed twice")
                ok = false
            }
            out.append(s)
        }
        return ok ? out : nil
    }

    func object(_ key: String, required: Bool = false) -> Fields? {
        let v = raw(key, required: required)
        if v == nil { return nil }
        return Fields(v, path: sub(key), log: log)
    }

    /// Reports every key that no getter asked for.
    func finish() {
        for key in values.keys.sorted() where !seen.contains(key) {
            log.add(sub(key), "is not a known field")
        }
    }
}

/// `%%name%%` placeholders that the node expands in plan-authored strings (never in parameter values).
public enum Placeholders {
    public static let names = ["node_name", "node_id", "sandbox", "src", "in", "out", "logs", "task_id",
                               "execution_id"]

    /// Nil when every `%%` in `text` opens a known placeholder; otherwise what is wrong.
    public static func check(_ text: String) -> String? {
        for token in tokens(in: text) {
            switch token {
            case .unclosed:
                return "has \"%%\" without a closing \"%%\" (placeholders look like %%sandbox%%)"
            case .placeholder(let name):
                if names.contains(name) { continue }
                if name.hasPrefix("dataset:"), Patterns.matches(Patterns.datasetID, String(name.dropFirst(8))) {
                    continue
                }
                return "unknown placeholder %%\(name)%% (known: \(names.map { "%%\($0)%%" }.joined(separator: ", ")), "
                    + "%%dataset:<id>%%)"
            case .text:
                continue
            }
        }
        return nil
    }

    /// Dataset ids named by `%%dataset:<id>%%` in `text`.
    public static func datasets(in text: String) -> [String] {
        tokens(in: text).compactMap {
            if case .placeholder(let n) = $0, n.hasPrefix("dataset:") { String(n.dropFirst(8)) } else { nil }
        }
    }

    enum Token: Equatable {
        case text(String)
        case placeholder(String)
        case unclosed
    }

    static func tokens(in text: String) -> [Token] {
        var out: [Token] = []
        var rest = Substring(text)
        while let open = rest.range(of: "%%") {
            if open.lowerBound > rest.startIndex { out.append(.text(String(rest[..<open.lowerBound]))) }
            let after = rest[open.upperBound...]
            guard let close = after.range(of: "%%") else {
                out.append(.unclosed)
                return out
            }
            out.append(.placeholder(String(after[..<close.lowerBound])))
            rest = after[close.upperBound...]
        }
        if !rest.isEmpty { out.append(.text(String(rest))) }
        return out
    }

    /// Replaces every placeholder using `lookup`; a name `lookup` does not know is an error.
    public static func expand(_ text: String, _ lookup: (String) -> String?) throws -> String {
        var out = ""
        for token in tokens(in: text) {
            switch token {
            case .text(let t): out += t
            case .placeholder(let name):
                guard let value = lookup(name) else { throw RenderError.unknownPlaceholder(name) }
                out += value
            case .unclosed: throw RenderError.unknownPlaceholder("%%")
            }
        }
        return out
    }
}
