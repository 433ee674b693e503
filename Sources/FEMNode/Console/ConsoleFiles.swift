import FEMCore
import FEMSystem
import Foundation

/// What the console reads from the node's folders: the staged copies of held outputs (previews) and the tail of a
/// task's logs. Paths come from the journaled manifest (tool-chosen): each is checked to stay inside its folder and
/// to be a regular file (never a link), and only a bounded prefix or suffix is read.
enum ConsoleFiles {
    static let textLimit = 64 * 1024
    static let csvRows = 20
    static let imageLimit = 20 * 1024 * 1024
    /// Files previewed on one review page.
    static let maxPreviews = 50

    /// `out/result.csv` → `<dir>/out/result.csv`, or nil for an absolute path, `..`, `.` or an empty part.
    static func inside(_ dir: String, _ relative: String) -> String? {
        let parts = relative.split(separator: "/", omittingEmptySubsequences: false)
        guard !relative.hasPrefix("/"), !parts.isEmpty,
              parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." && !$0.contains("\0") }) else { return nil }
        return dir + "/" + relative
    }

    /// The first `limit` bytes of a regular file (not a link), and whether there was more.
    static func head(_ path: String, limit: Int) -> (bytes: [UInt8], more: Bool)? {
        guard let fd = try? Posix.openForReading(path) else { return nil }
        defer { Posix.release(fd) }
        guard let st = try? Posix.fstat(fd, path: path), st.kind == .regular else { return nil }
        // No more buffer than the file has (it may grow meanwhile: one byte more says so).
        let bytes = readUpTo(fd, Int(min(Int64(limit), max(0, st.size))) + 1, path)
        return (Array(bytes.prefix(limit)), bytes.count > limit)
    }

    /// Up to `count` bytes from the descriptor's position.
    static func readUpTo(_ fd: Int32, _ count: Int, _ path: String) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buffer.withUnsafeMutableBytes { buf in
                (try? Posix.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buf[got...]), path: path)) ?? 0
            }
            if n <= 0 { break }
            got += n
        }
        return Array(buffer.prefix(got))
    }

    /// The last `lines` lines of a regular file, from at most its last 64 KiB.
    static func tail(_ path: String, lines: Int = 100) -> [String]? {
        guard let fd = try? Posix.openForReading(path) else { return nil }
        defer { Posix.release(fd) }
        guard let st = try? Posix.fstat(fd, path: path), st.kind == .regular else { return nil }
        let start = max(0, st.size - Int64(textLimit))
        if start > 0 {
            // The handle only moves the shared offset; the descriptor is released above.
            let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
            guard (try? handle.seek(toOffset: UInt64(start))) != nil else { return nil }
        }
        var text = String(decoding: readUpTo(fd, textLimit, path), as: UTF8.self)
        if text.hasSuffix("\n") { text.removeLast() }
        var all = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // A cut first line is dropped (unless it is all there is).
        if start > 0 && all.count > 1 { all.removeFirst() }
        return text.isEmpty ? [] : Array(all.suffix(lines))
    }

    enum ImageType: String {
        case png = "image/png", jpeg = "image/jpeg", gif = "image/gif"
    }

    /// PNG, JPEG or GIF by their magic bytes (never by the name).
    static func imageType(_ bytes: [UInt8]) -> ImageType? {
        if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if bytes.starts(with: [0xFF, 0xD8, 0xFF]) { return .jpeg }
        if bytes.starts(with: Array("GIF87a".utf8)) || bytes.starts(with: Array("GIF89a".utf8)) { return .gif }
        return nil
    }

    static func preview(dir: String, path: String) -> ConsolePages.Preview {
        guard let full = inside(dir, path) else { return .none("no preview: the path is not inside the staging folder") }
        guard let h = head(full, limit: textLimit) else {
            return .none("no preview: the staged copy is missing or not a regular file")
        }
        let bytes = h.bytes, more = h.more
        if imageType(bytes) != nil { return .image }
        guard !bytes.contains(0), let text = utf8Prefix(bytes) else { return .none("binary content: no preview") }
        let lower = path.lowercased()
        if lower.hasSuffix(".csv") || lower.hasSuffix(".tsv") {
            let rows = csv(text, separator: lower.hasSuffix(".tsv") ? "\t" : ",", maxRows: csvRows + 1)
            return .table(rows.rows, truncated: rows.more || more)
        }
        return .text(text, truncated: more)
    }

    /// The bytes as UTF-8, allowing a character cut at the end; nil when they are not UTF-8.
    static func utf8Prefix(_ bytes: [UInt8]) -> String? {
        for cut in 0...min(3, bytes.count) {
            if let s = String(validating: bytes.dropLast(cut), as: UTF8.self) { return s }
        }
        return nil
    }

    /// RFC 4180 rows (quoted fields, doubled quotes, line breaks inside quotes), at most `maxRows`.
    static func csv(_ text: String, separator: Character, maxRows: Int) -> (rows: [[String]], more: Bool) {
        var rows: [[String]] = []
        var row: [String] = []
        var field = ""
        var quoted = false
        var chars = text.makeIterator()
        var pending: Character? = nil
        func next() -> Character? {
            if let p = pending { pending = nil; return p }
            return chars.next()
        }
        while let c = next() {
            if quoted {
                if c == "\"" {
                    if let n = next() {
                        if n == "\"" { field.append("\"") } else { quoted = false; pending = n }
                    } else { quoted = false }
                } else {
                    field.append(c)
                }
                continue
            }
            if c == "\"" && field.isEmpty {
                quoted = true
            } else if c == separator {
                row.append(field); field = ""
            } else if c == "\n" || c == "\r\n" || c == "\r" {
                row.append(field); field = ""
                rows.append(row); row = []
                if rows.count == maxRows { return (rows, next() != nil) }
            } else {
                field.append(c)
            }
        }
        if !field.isEmpty || !row.isEmpty {
            row.append(field)
            rows.append(row)
        }
        return (rows, false)
    }
}
