import FEMCore
import FEMSystem
import Foundation

/// One thing an output check found in a file, as `manifest.json` holds it (`findings`). `row` and `column` are
/// 1-based; row 1 is a table's header line. `column_name` and `value` are the tool's text: they stay on the node (the
/// manifest, `fem-client outputs show`) and never go into events (`eventForm`).
public struct OutputFinding: Codable, Sendable, Equatable {
    public var check: String
    /// The file's path in the upload (`out/table.csv`).
    public var file: String
    public var row: Int?
    public var column: Int?
    public var columnName: String?
    public var value: String?
    public var message: String

    enum CodingKeys: String, CodingKey {
        case check, file, row, column, columnName = "column_name", value, message
    }

    public init(check: String, file: String, row: Int? = nil, column: Int? = nil, columnName: String? = nil,
                value: String? = nil, message: String) {
        self.check = check
        self.file = file
        self.row = row
        self.column = column
        self.columnName = columnName
        self.value = value
        self.message = message
    }
}

/// `[outputs.checks]`: what the checks at collection look for.
public struct OutputCheckSettings: Sendable, Equatable {
    /// Counts in count-like table columns must be 0 or at least this; 0 turns the table check off.
    public var minCellCount = 10
    /// Column name patterns (case-insensitive globs: `*`, `?`) of count-like columns; a plan's
    /// `outputs[].count_columns` add to them.
    public var countColumns = ["n", "count", "*_count", "count_*", "n_*", "freq*", "frequency"]
    /// Declared outputs must be what they claim (by content, not name).
    public var fileTypes = true
    /// Outputs with findings cannot be approved without an override reason (needs `outputs.require_approval`).
    public var blockOnFindings = false
    /// Findings listed per file and check; the rest are summed up in one more.
    public var maxFindingsPerFile = 100
    /// Bytes of a file the checks read at most (the rest is not checked, and a finding says so).
    public var maxScanBytes: Int64 = 256 << 20
    /// Findings listed per task (the manifest is journaled); the rest are summed up in one more.
    public var maxFindingsPerTask = 5000

    public init() {}

    /// The checks these settings turn on, in the order they run.
    public var checks: [any OutputCheck] {
        var list: [any OutputCheck] = []
        if minCellCount > 0 { list.append(MinCellCountCheck()) }
        if fileTypes { list.append(FileTypeCheck()) }
        return list
    }
}

/// An output as a check sees it: its name in the upload, the plan's rule that collected it, and its bytes.
public struct CheckedOutput: Sendable {
    /// `out/<relative path>`.
    public var path: String
    public var rule: OutputRule?
    let bytes: Bytes

    enum Bytes: Sendable {
        case file(String)
        case memory([UInt8])
    }

    /// An output read from `source` (the staged copy, or the sandbox's file; never through a symlink).
    public init(path: String, rule: OutputRule?, source: String) {
        self.path = path
        self.rule = rule
        bytes = .file(source)
    }

    /// An output held in memory (tests, small documents).
    public init(path: String, rule: OutputRule?, contents: [UInt8]) {
        self.path = path
        self.rule = rule
        bytes = .memory(contents)
    }

    /// The file name's extension, lowercased (`csv`); "" without one.
    public var fileExtension: String {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return "" }
        return String(name[name.index(after: dot)...]).lowercased()
    }

    /// Reads the first `limit` bytes in blocks, until `each` returns false. Returns whether the file has more
    /// bytes than were read because of the limit.
    @discardableResult
    public func read(limit: Int64, _ each: (UnsafeRawBufferPointer) throws -> Bool) throws -> Bool {
        switch bytes {
        case .memory(let data):
            let n = Int(min(Int64(data.count), limit))
            let more = try data[0..<n].withUnsafeBytes { try each($0) }
            return more && data.count > n
        case .file(let source):
            let fd = try Posix.openForReading(source)
            defer { Posix.release(fd) }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
            defer { buffer.deallocate() }
            var read: Int64 = 0
            while read < limit {
                let want = Int(min(Int64(buffer.count), limit - read))
                let n = try Posix.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), path: source)
                if n == 0 { return false }
                read += Int64(n)
                if try !each(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) { return false }
            }
            // At the limit: is there more?
            var one: UInt8 = 0
            return try withUnsafeMutableBytes(of: &one) { try Posix.read(fd, into: $0, path: source) } > 0
        }
    }

    /// The first `count` bytes (fewer when the file is shorter).
    public func head(_ count: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        try read(limit: Int64(count)) { block in
            out.append(contentsOf: block)
            return true
        }
        return out
    }
}

/// A check of one output at collection, before the airlock. Pure: it reads the output and returns what it found;
/// the manifest holds the findings and events carry them without the tool's text.
public protocol OutputCheck: Sendable {
    /// The name findings carry (`min_cell_count`, `file_type`).
    var name: String { get }
    func check(_ output: CheckedOutput, settings: OutputCheckSettings) throws -> [OutputFinding]
}

/// Runs the checks the node's settings turn on over the collected outputs.
public enum OutputChecks {
    /// The findings of every enabled check over the files under `out/` (logs are not checked); a file that cannot
    /// be read is a finding itself.
    public static func run(_ files: [CollectedFile], plan: ToolPlan, settings: OutputCheckSettings) -> [OutputFinding] {
        let checks = settings.checks
        guard !checks.isEmpty else { return [] }
        var findings: [OutputFinding] = []
        for file in files where file.path.hasPrefix("out/") {
            let rel = String(file.path.dropFirst(4))
            let rule = plan.outputs.first { Glob.matches($0.pattern, rel) }
            let output = CheckedOutput(path: file.path, rule: rule, source: file.source)
            for check in checks {
                do {
                    findings += try check.check(output, settings: settings)
                } catch {
                    findings.append(OutputFinding(check: check.name, file: file.path,
                                                  message: unreadable + ": \(error)"))
                }
            }
        }
        let cap = max(1, settings.maxFindingsPerTask)
        if findings.count > cap {
            let first = findings[cap]
            let more = findings.count - cap
            findings = Array(findings.prefix(cap))
            findings.append(OutputFinding(check: first.check, file: first.file, message: "and \(more) more findings in "
                                          + "this and later files (only the first \(cap) of the task are listed)"))
        }
        return findings
    }

    /// The findings as events carry them: check, row, column and a message without cell values or column names;
    /// the file's path only when it is not the tool's choice (`named`: the outputs leave without an airlock, or the
    /// plan names the file exactly), else its place in the manifest's `files` (`file_index`, 1-based).
    public static func eventForm(_ findings: [OutputFinding], files: [CollectedFile], plan: ToolPlan,
                                 pathsLeave: Bool) -> [JSONValue] {
        findings.prefix(StageOutSummary.maxEventFindings).map { f in
            var o: [String: JSONValue] = ["check": .string(f.check), "message": .string(eventMessage(f))]
            let rel = f.file.hasPrefix("out/") ? String(f.file.dropFirst(4)) : f.file
            if pathsLeave || plan.outputs.contains(where: { $0.pattern == rel && isLiteral($0.pattern) }) {
                o["file"] = .string(f.file)
            }
            if let i = files.firstIndex(where: { $0.path == f.file }) { o["file_index"] = .int(Int64(i + 1)) }
            if let row = f.row { o["row"] = .int(Int64(row)) }
            if let column = f.column { o["column"] = .int(Int64(column)) }
            return .object(o)
        }
    }

    /// A pattern without glob characters: the plan names the file itself.
    static func isLiteral(_ pattern: String) -> Bool {
        !pattern.contains { "*?[]\\".contains($0) }
    }

    /// The start of the message of a finding about a file a check could not read (the error names its path).
    static let unreadable = "could not be checked"

    /// A finding's message for events: the cell-level count messages name the value, and a read error the staged
    /// copy's path, so they are replaced.
    static func eventMessage(_ f: OutputFinding) -> String {
        if f.check == MinCellCountCheck.checkName && f.value != nil {
            return "a count below this node's minimum cell count (the value is on the node: fem-client outputs show)"
        }
        if f.message.hasPrefix(unreadable) { return unreadable + " (the reason is on the node: fem-client outputs show)" }
        return f.message
    }

    /// The tool's text as a finding keeps it: at most 256 bytes (a header name can be long).
    static func shortened(_ s: String) -> String {
        guard s.utf8.count > 256 else { return s }
        var out = ""
        for c in s {
            if out.utf8.count + c.utf8.count > 253 { break }
            out.append(c)
        }
        return out + "…"
    }
}
