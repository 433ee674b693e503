@testable import FEMNode
import FEMSystem
import Foundation
import Testing

/// Keeps every I/O path free of calls that crash the daemon when a write fails (a full disk).
struct IOSafetyTests {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// `try!`, the deprecated `FileHandle.write(_:)` (a `try!` inside corelibs Foundation) and `seekToEndOfFile()`
    /// (the same) are not allowed anywhere in Sources/: each hit is named by file:line.
    @Test func noCrashingIOCallsInSources() throws {
        let forbidden = ["try!", ".write(Data(", "seekToEndOfFile()", "standardError.write(", "standardOutput.write(",
                         "handle.write(", ".readDataToEndOfFile()"]
        let root = "\(Self.repoRoot)/Sources"
        var hits: [String] = []
        let files = FileManager.default.enumerator(atPath: root)?.compactMap { $0 as? String }
            .filter { $0.hasSuffix(".swift") } ?? []
        #expect(files.count > 50, "found the sources under \(root)")
        for file in files {
            let text = try String(contentsOfFile: "\(root)/\(file)", encoding: .utf8)
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let code = line.components(separatedBy: "//").first ?? ""
                for f in forbidden where code.contains(f) {
                    hits.append("Sources/\(file):\(n + 1): \(f)  \(line.trimmingCharacters(in: .whitespaces))")
                }
            }
        }
        #expect(hits.isEmpty, "calls that crash the daemon when a write fails:\n\(hits.joined(separator: "\n"))")
    }

    /// A log on a full filesystem: lines are dropped and counted (never a crash), the trouble is said once, and
    /// when space returns the log says how many lines were dropped.
    @Test func aLogOnAFullDiskDropsCountsAndRecovers() throws {
        // /dev/full fails every write with ENOSPC; a later switch to a real file stands for space returning.
        let trouble = LogTrouble()
        let news = NewsBox()
        trouble.set { news.add($0) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-log-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let full = LineLogHandler.Sink(fd: try FileWriter.open("/dev/full", append: true), path: "/dev/full",
                                       trouble: trouble)
        for i in 0..<5 { full.write("line \(i)\n") }
        #expect(news.dropping == 1, "said once, not five times")
        // Space returns: the same sink's descriptor now points at a writable file.
        let path = "\(dir)/receiver.log"
        let fd = try FileWriter.open(path, append: true)
        #expect(dup2(fd, full.fd) >= 0)
        full.write("after\n")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.contains("5 line(s) were dropped while they failed"))
        #expect(text.contains("No space left on device"))
        #expect(text.hasSuffix("after\n"))
        #expect(news.recoveredCount == 5)
    }
}

final class NewsBox: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [LogTrouble.News] = []
    func add(_ n: LogTrouble.News) { lock.withLock { items.append(n) } }
    var dropping: Int {
        lock.withLock { items.filter { if case .dropping = $0 { true } else { false } }.count }
    }
    var recoveredCount: Int? {
        lock.withLock {
            for case .recovered(let n, _) in items { return n }
            return nil
        }
    }
}
