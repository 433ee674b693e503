import Foundation

/// A streaming reader of CSV (RFC 4180: fields separated by commas, quoted with `"`, a quote inside a quoted field
/// doubled, commas and line breaks allowed inside quotes) and TSV (the same with tabs) tables. Records end at LF,
/// CRLF or a lone CR; fields must be UTF-8. Fed in blocks of any size; each complete record is handed on with the
/// line it starts on (1-based). Bounded: a field over `maxFieldBytes` or a record over `maxFields` fields is a
/// problem, so a file without line breaks cannot grow memory without end.
public struct TableReader: Sendable {
    public struct Record: Sendable, Equatable {
        public var fields: [String]
        /// The line the record starts on (1-based: the header is line 1).
        public var line: Int
        /// A line with nothing on it (one empty, unquoted field).
        public var isBlank: Bool { fields.count == 1 && fields[0].isEmpty && !quoted }
        var quoted = false

        public init(fields: [String], line: Int) {
            self.fields = fields
            self.line = line
        }
    }

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case notUTF8(line: Int)
        case unterminatedQuote(line: Int)
        case textAfterQuote(line: Int)
        case fieldTooLong(line: Int, limit: Int)
        case tooManyFields(line: Int, limit: Int)
        case recordTooLong(line: Int, limit: Int)

        public var line: Int {
            switch self {
            case .notUTF8(let l), .unterminatedQuote(let l), .textAfterQuote(let l), .fieldTooLong(let l, _),
                 .tooManyFields(let l, _), .recordTooLong(let l, _): l
            }
        }

        public var description: String {
            switch self {
            case .notUTF8(let l): "line \(l) is not UTF-8 text"
            case .unterminatedQuote(let l): "the quoted field starting on line \(l) is never closed"
            case .textAfterQuote(let l): "line \(l) has text after a closing quote (a quote inside a field must be doubled)"
            case .fieldTooLong(let l, let limit): "a field on line \(l) is longer than \(limit) bytes"
            case .tooManyFields(let l, let limit): "the record on line \(l) has more than \(limit) fields"
            case .recordTooLong(let l, let limit): "the record on line \(l) is longer than \(limit) bytes"
            }
        }
    }

    public let separator: UInt8
    public var maxFieldBytes = 1 << 20
    public var maxFields = 10_000
    public var maxRecordBytes = 4 << 20

    private enum State: Sendable { case fieldStart, unquoted, quoted, quoteInQuoted }
    private var state = State.fieldStart
    private var field: [UInt8] = []
    private var fields: [String] = []
    private var recordQuoted = false
    private var recordBytes = 0
    /// The current line (1-based) and the one the current record started on.
    private var line = 1
    private var recordLine = 1
    /// The last byte was a CR ending a line: a LF right after it belongs to the same line break.
    private var afterCR = false
    /// Bytes were seen since the last record ended (an empty last line is no record).
    private var pending = false
    private var failed: Problem?

    /// A reader for `.tsv` files (tab-separated) or anything else (comma-separated).
    public init(tabs: Bool) {
        separator = tabs ? 0x09 : 0x2C
    }

    /// A reader for fields separated by `separator` (`,` `;` tab or `|`).
    public init(separator: UInt8) {
        self.separator = separator
    }

    /// The separator a table's first line uses: the most frequent of `,` `;` tab `|` outside quotes, `fallback`
    /// when none appears (a one-column table) or on a tie with it. A European spreadsheet's `;`-separated `.csv`
    /// is read by its columns, not as one column per line that no count pattern would match.
    public static func sniffSeparator(_ bytes: UnsafeRawBufferPointer, fallback: UInt8) -> UInt8 {
        let candidates: [UInt8] = [0x2C, 0x3B, 0x09, 0x7C]
        var counts = [UInt8: Int]()
        var quoted = false
        for b in bytes {
            if b == 0x22 { quoted.toggle(); continue }
            if !quoted && (b == 0x0A || b == 0x0D) { break }
            if !quoted && candidates.contains(b) { counts[b, default: 0] += 1 }
        }
        let best = candidates.max { (counts[$0] ?? 0) < (counts[$1] ?? 0) } ?? fallback
        return (counts[best] ?? 0) > (counts[fallback] ?? 0) ? best : fallback
    }

    /// Reads `bytes`, handing on each record completed in them.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ emit: (Record) throws -> Void) throws {
        if let failed { throw failed }
        do {
            for b in bytes { try take(b, emit) }
        } catch let p as Problem {
            failed = p
            throw p
        }
    }

    public mutating func feed(_ bytes: [UInt8], _ emit: (Record) throws -> Void) throws {
        try bytes.withUnsafeBytes { try feed($0, emit) }
    }

    /// The end of the input: hands on the last record if it has no line break after it.
    public mutating func finish(_ emit: (Record) throws -> Void) throws {
        if let failed { throw failed }
        switch state {
        case .quoted:
            failed = .unterminatedQuote(line: recordLine)
            throw Problem.unterminatedQuote(line: recordLine)
        case .fieldStart, .unquoted, .quoteInQuoted:
            if pending { try endRecord(emit) }
        }
    }

    private mutating func take(_ b: UInt8, _ emit: (Record) throws -> Void) throws {
        let quote: UInt8 = 0x22, lf: UInt8 = 0x0A, cr: UInt8 = 0x0D
        if afterCR {
            afterCR = false
            if b == lf { return }  // CRLF: one line break
        }
        if !pending { recordLine = line }
        pending = true
        switch state {
        case .fieldStart, .unquoted:
            if b == separator {
                try endField()
                state = .fieldStart
            } else if b == lf || b == cr {
                try endRecord(emit)
                newLine(cr: b == cr)
            } else if b == quote && state == .fieldStart {
                state = .quoted
                recordQuoted = true
            } else {
                try append(b)  // a quote inside an unquoted field is taken as it is
                state = .unquoted
            }
        case .quoted:
            if b == quote {
                state = .quoteInQuoted
            } else {
                if b == lf || b == cr {
                    if b == lf && field.last == cr { } else { line += 1 }  // CRLF inside quotes: one line
                }
                try append(b)
            }
        case .quoteInQuoted:
            if b == quote {
                try append(quote)
                state = .quoted
            } else if b == separator {
                try endField()
                state = .fieldStart
            } else if b == lf || b == cr {
                try endRecord(emit)
                newLine(cr: b == cr)
            } else {
                throw Problem.textAfterQuote(line: line)
            }
        }
    }

    private mutating func newLine(cr: Bool) {
        line += 1
        afterCR = cr
        pending = false
        state = .fieldStart
    }

    private mutating func append(_ b: UInt8) throws {
        guard field.count < maxFieldBytes else { throw Problem.fieldTooLong(line: line, limit: maxFieldBytes) }
        guard recordBytes < maxRecordBytes else { throw Problem.recordTooLong(line: recordLine, limit: maxRecordBytes) }
        recordBytes += 1
        field.append(b)
    }

    private mutating func endField() throws {
        guard fields.count < maxFields else { throw Problem.tooManyFields(line: recordLine, limit: maxFields) }
        guard let text = String(validating: field, as: UTF8.self) else { throw Problem.notUTF8(line: line) }
        fields.append(text)
        field.removeAll(keepingCapacity: true)
    }

    private mutating func endRecord(_ emit: (Record) throws -> Void) throws {
        try endField()
        var record = Record(fields: fields, line: recordLine)
        record.quoted = recordQuoted
        fields.removeAll(keepingCapacity: true)
        recordQuoted = false
        recordBytes = 0
        pending = false
        state = .fieldStart
        try emit(record)
    }

    /// Every record of `bytes` (tests, small tables).
    public static func records(_ bytes: [UInt8], tabs: Bool = false) throws -> [Record] {
        var reader = TableReader(tabs: tabs)
        var out: [Record] = []
        try reader.feed(bytes) { out.append($0) }
        try reader.finish { out.append($0) }
        return out
    }
}

/// A table read through: its header, then each record, stopping at the first problem.
enum TableScan {
    struct Outcome {
        var problem: TableReader.Problem?
        /// The file is larger than the bytes read.
        var truncated: Bool
    }

    /// Reads `output` as a table (TSV for `.tsv`, else CSV), handing on the header's names and each further record
    /// that is not a blank line. A UTF-8 byte order mark before the header is dropped.
    static func scan(_ output: CheckedOutput, limit: Int64, header: ([String]) -> Void,
                     record: (TableReader.Record) -> Void) throws -> Outcome {
        var reader = TableReader(tabs: output.fileExtension == "tsv")
        let fallback = reader.separator
        var first = true
        var sawHeader = false
        func handle(_ r: TableReader.Record) {
            if !sawHeader {
                sawHeader = true
                header(r.fields)
            } else if !r.isBlank {
                record(r)
            }
        }
        var problem: TableReader.Problem?
        let truncated = try output.read(limit: limit) { block in
            var block = block
            if first {
                first = false
                if block.starts(with: [0xEF, 0xBB, 0xBF]) { block = UnsafeRawBufferPointer(rebasing: block[3...]) }
                reader = TableReader(separator: TableReader.sniffSeparator(block, fallback: fallback))
            }
            do {
                try reader.feed(block, handle)
            } catch let p as TableReader.Problem {
                problem = p
                return false
            }
            return true
        }
        if problem == nil && !truncated {
            do {
                try reader.finish(handle)
            } catch let p as TableReader.Problem {
                problem = p
            }
        }
        return Outcome(problem: problem, truncated: truncated)
    }
}
