import FEMCore
import Foundation

/// `min_cell_count`: in CSV/TSV tables (rule kind `table`, or any `.csv`/`.tsv` name), integer cells
/// of count-like columns (by name pattern) that are above 0 and below the node's minimum cell count. Small counts in
/// aggregate tables can identify people; this is a screen for them, not disclosure control by itself.
public struct MinCellCountCheck: OutputCheck {
    public static let checkName = "min_cell_count"
    public var name: String { Self.checkName }

    public init() {}

    /// Is the output a table this check reads? Kind `table`, and any `.csv`/`.tsv` whatever kind its rule declares
    /// (a plan cannot take a table out of the check by calling it `file` or `text`).
    static func isTable(_ output: CheckedOutput) -> Bool {
        output.rule?.kind == .table || ["csv", "tsv"].contains(output.fileExtension)
    }

    /// Does a column name match a pattern (a case-insensitive glob with `*` and `?`)?
    public static func matches(_ pattern: String, _ name: String) -> Bool {
        Glob.matchesName(pattern, name.trimmingCharacters(in: .whitespaces), caseInsensitive: true)
    }

    public func check(_ output: CheckedOutput, settings: OutputCheckSettings) throws -> [OutputFinding] {
        let minimum = settings.minCellCount
        guard minimum > 0, Self.isTable(output) else { return [] }
        let patterns = settings.countColumns + (output.rule?.countColumns ?? [])
        var countColumns: [(index: Int, name: String)] = []
        var findings: [OutputFinding] = []
        var more = 0
        let outcome = try TableScan.scan(output, limit: settings.maxScanBytes, header: { names in
            for (i, n) in names.enumerated() where patterns.contains(where: { Self.matches($0, n) }) {
                countColumns.append((i, n))
            }
        }, record: { r in
            for (i, n) in countColumns where i < r.fields.count {
                let cell = r.fields[i]
                guard let v = Int(cell.trimmingCharacters(in: .whitespaces)), v > 0, v < minimum else { continue }
                guard findings.count < settings.maxFindingsPerFile else {
                    more += 1
                    continue
                }
                findings.append(OutputFinding(check: name, file: output.path, row: r.line, column: i + 1,
                                              columnName: OutputChecks.shortened(n),
                                              value: OutputChecks.shortened(cell), message: "count \(v) is below this node's minimum cell "
                                                  + "count \(minimum)"))
            }
        })
        if more > 0 {
            findings.append(OutputFinding(check: name, file: output.path, message: "and \(more) more counts below "
                                          + "this node's minimum cell count \(minimum) (only the first "
                                          + "\(settings.maxFindingsPerFile) are listed)"))
        }
        if let problem = outcome.problem, !settings.fileTypes {
            // Otherwise the file-type check reports it.
            findings.append(OutputFinding(check: name, file: output.path, row: problem.line,
                                          message: "the table cannot be read past line \(problem.line) (\(problem)): "
                                              + "the rest was not checked"))
        }
        if outcome.truncated {
            findings.append(OutputFinding(check: name, file: output.path, message: "only the first "
                                          + "\(settings.maxScanBytes) bytes were checked: the file is larger"))
        }
        return findings
    }
}

/// `file_type`: declared outputs are what they claim, by content: a table (rule kind `table`, `.csv`, `.tsv`) reads
/// as one (UTF-8, every record with the header's number of fields); `.png`, `.jpg`/`.jpeg`, `.gif` and `.pdf` start
/// with their magic bytes; `.json` parses; kind `image` is a PNG, JPEG or GIF; kind `text` is UTF-8; an archive (by
/// content or name) is allowed only where its rule says kind `archive`, and a rule of kind `archive` holds archives.
public struct FileTypeCheck: OutputCheck {
    public static let checkName = "file_type"
    public var name: String { Self.checkName }
    /// The largest `.json` output parsed whole.
    public static let maxJSONBytes: Int64 = 64 << 20

    public init() {}

    /// A type told by the first bytes. The names are this check's own (never the tool's text).
    public enum Magic: String, Sendable, CaseIterable {
        case png = "a PNG image", jpeg = "a JPEG image", gif = "a GIF image", pdf = "a PDF document"
        case zip = "a zip archive", gzip = "a gzip archive", tar = "a tar archive", sevenZip = "a 7z archive"
        case xz = "an xz archive", bzip2 = "a bzip2 archive", zstd = "a zstd archive", rar = "a RAR archive"

        public var isArchive: Bool {
            switch self {
            case .png, .jpeg, .gif, .pdf: false
            default: true
            }
        }
        public var isImage: Bool { [.png, .jpeg, .gif].contains(self) }

        /// What the first bytes (at least 262 for tar) say the file is.
        public static func of(_ head: [UInt8]) -> Magic? {
            func starts(_ m: [UInt8]) -> Bool { head.starts(with: m) }
            if starts([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
            if starts([0xFF, 0xD8, 0xFF]) { return .jpeg }
            if starts(Array("GIF87a".utf8)) || starts(Array("GIF89a".utf8)) { return .gif }
            if starts(Array("%PDF-".utf8)) { return .pdf }
            if starts([0x50, 0x4B, 0x03, 0x04]) || starts([0x50, 0x4B, 0x05, 0x06]) || starts([0x50, 0x4B, 0x07, 0x08]) {
                return .zip
            }
            if starts([0x1F, 0x8B]) { return .gzip }
            if starts([0x37, 0x7A, 0xBC, 0xAF, 0x27, 0x1C]) { return .sevenZip }
            if starts([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) { return .xz }
            if starts(Array("BZh".utf8)) { return .bzip2 }
            if starts([0x28, 0xB5, 0x2F, 0xFD]) { return .zstd }
            if starts(Array("Rar!\u{1A}\u{07}".utf8)) { return .rar }
            if head.count >= 262 && Array(head[257..<262]) == Array("ustar".utf8) { return .tar }
            return nil
        }
    }

    /// Extensions that name an archive.
    static let archiveExtensions: Set<String> = ["zip", "gz", "tgz", "tar", "7z", "xz", "txz", "bz2", "tbz", "tbz2",
                                                 "zst", "rar", "jar"]
    /// Extensions whose magic bytes are checked, and what they must be.
    static let magicExtensions: [String: Set<Magic>] = ["png": [.png], "jpg": [.jpeg], "jpeg": [.jpeg], "gif": [.gif],
                                                        "pdf": [.pdf]]

    public func check(_ output: CheckedOutput, settings: OutputCheckSettings) throws -> [OutputFinding] {
        guard settings.fileTypes else { return [] }
        let head = try output.head(512)
        let magic = Magic.of(head)
        let ext = output.fileExtension
        let kind = output.rule?.kind
        func finding(_ message: String, row: Int? = nil) -> [OutputFinding] {
            [OutputFinding(check: name, file: output.path, row: row, message: message)]
        }
        let content = magic.map { " (its content is \($0.rawValue))" } ?? ""

        // Archives: only where the plan declares them.
        if kind == .archive {
            return magic?.isArchive == true ? [] : finding("is declared an archive (kind \"archive\") but its content "
                                                            + "is not a zip, gzip, tar, 7z, xz, bzip2, zstd or RAR archive")
        }
        if let magic, magic.isArchive {
            return finding("is \(magic.rawValue); archives are allowed only from an output rule of kind \"archive\"")
        }
        if Self.archiveExtensions.contains(ext) {
            return finding("is named .\(ext) (an archive); archives are allowed only from an output rule of kind "
                           + "\"archive\"")
        }
        switch kind {
        case .image?:
            return magic?.isImage == true ? [] : finding("is declared an image (kind \"image\") but is not a PNG, "
                                                          + "JPEG or GIF image\(content)")
        case .text? where !["csv", "tsv"].contains(ext):
            let scan = try Self.firstNonUTF8(output, limit: settings.maxScanBytes)
            if let offset = scan.offset {
                return finding("is declared text (kind \"text\") but is not UTF-8 text (at byte \(offset))\(content)")
            }
            return scan.truncated ? finding("only the first \(settings.maxScanBytes) bytes were checked: the file is "
                                            + "larger") : []
        case .table?:
            return try table(output, settings: settings, magic: magic, claim: "is declared a table (kind \"table\")")
        case .archive?:
            return []  // checked above
        case .text?, .file?, nil:
            break
        }
        if ["csv", "tsv"].contains(ext) {  // kind nil, file or text: the name still claims a table
            return try table(output, settings: settings, magic: magic, claim: "is named .\(ext)")
        }
        if let allowed = Self.magicExtensions[ext] {
            guard let magic, allowed.contains(magic) else {
                let want = allowed.first.map(\.rawValue) ?? "?"
                return finding("is named .\(ext) but is not \(want)\(content)")
            }
            return []
        }
        if ext == "json" {
            return try json(output, settings: settings, content: content)
        }
        return []
    }

    /// A table must read as one: UTF-8, quotes closed, every record with the header's number of fields.
    func table(_ output: CheckedOutput, settings: OutputCheckSettings, magic: Magic?, claim: String) throws
        -> [OutputFinding] {
        if let magic {
            return [OutputFinding(check: name, file: output.path, message: "\(claim) but is not a table (its content "
                                  + "is \(magic.rawValue))")]
        }
        var width = 0
        var ragged: (line: Int, fields: Int)?
        let outcome = try TableScan.scan(output, limit: settings.maxScanBytes, header: { width = $0.count }, record: { r in
            if ragged == nil && r.fields.count != width { ragged = (r.line, r.fields.count) }
        })
        var findings: [OutputFinding] = []
        if let ragged {
            findings.append(OutputFinding(check: name, file: output.path, row: ragged.line,
                                          message: "\(claim) but is not a table: line \(ragged.line) has "
                                              + "\(ragged.fields) fields where the header (line 1) has \(width)"))
        }
        if let problem = outcome.problem {
            findings.append(OutputFinding(check: name, file: output.path, row: problem.line,
                                          message: "\(claim) but is not a table: \(problem)"))
        }
        if outcome.truncated && settings.minCellCount == 0 {
            // The count check says so when it runs.
            findings.append(OutputFinding(check: name, file: output.path, message: "only the first "
                                          + "\(settings.maxScanBytes) bytes were checked: the file is larger"))
        }
        return findings
    }

    func json(_ output: CheckedOutput, settings: OutputCheckSettings, content: String) throws -> [OutputFinding] {
        var data: [UInt8] = []
        let limit = min(settings.maxScanBytes, Self.maxJSONBytes)
        let more = try output.read(limit: limit) { block in
            data.append(contentsOf: block)
            return true
        }
        if more {
            return [OutputFinding(check: name, file: output.path, message: "is named .json but is larger than "
                                  + "\(limit) bytes: it was not checked")]
        }
        guard (try? JSONSerialization.jsonObject(with: Data(data), options: [.fragmentsAllowed])) != nil else {
            return [OutputFinding(check: name, file: output.path, message: "is named .json but does not parse as "
                                  + "JSON\(content)")]
        }
        return []
    }

    /// The offset of the first byte that is not part of valid UTF-8 (nil: all of it is, up to `limit`), and whether
    /// the file is longer than `limit`.
    static func firstNonUTF8(_ output: CheckedOutput, limit: Int64) throws -> (offset: Int64?, truncated: Bool) {
        var carry: [UInt8] = []
        var offset: Int64 = 0  // of carry's first byte
        var bad: Int64?
        let more = try output.read(limit: limit) { block in
            var bytes = carry
            bytes.append(contentsOf: block)
            switch utf8Scan(bytes[...]) {
            case .valid:
                carry = []
                offset += Int64(bytes.count)
            case .incomplete(let at):
                carry = Array(bytes[at...])
                offset += Int64(at)
            case .invalid(let at):
                bad = offset + Int64(at)
                return false
            }
            return true
        }
        if bad == nil && !more && !carry.isEmpty { bad = offset }
        return (bad, more && bad == nil)
    }

    enum UTF8Scan: Equatable { case valid, incomplete(Int), invalid(Int) }

    /// Validates UTF-8 (no overlong forms, surrogates or values above U+10FFFF); a sequence cut off by the end of
    /// `b` is `incomplete` from its first byte. Offsets are from `b`'s start.
    static func utf8Scan(_ b: ArraySlice<UInt8>) -> UTF8Scan {
        let base = b.startIndex
        var i = base
        while i < b.endIndex {
            let c = b[i]
            if c < 0x80 {
                i += 1
                continue
            }
            var lower: UInt8 = 0x80, upper: UInt8 = 0xBF
            let n: Int
            switch c {
            case 0xC2...0xDF: n = 1
            case 0xE0: n = 2; lower = 0xA0
            case 0xE1...0xEC, 0xEE, 0xEF: n = 2
            case 0xED: n = 2; upper = 0x9F
            case 0xF0: n = 3; lower = 0x90
            case 0xF1...0xF3: n = 3
            case 0xF4: n = 3; upper = 0x8F
            default: return .invalid(i - base)
            }
            for k in 1...n {
                guard i + k < b.endIndex else { return .incomplete(i - base) }
                let x = b[i + k]
                let (lo, hi) = k == 1 ? (lower, upper) : (UInt8(0x80), UInt8(0xBF))
                guard x >= lo && x <= hi else { return .invalid(i - base) }
            }
            i += n + 1
        }
        return .valid
    }
}
