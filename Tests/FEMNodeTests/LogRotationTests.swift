@testable import FEMNode
import FEMCore
import FEMSystem
import Foundation
import Logging
import Testing

/// receiver.log's own size rotation and its reopen, on the sink itself (small sizes; OperationsTests runs the daemon).
struct LogRotationTests {
    func folder() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-rot-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func rotationKeepsLogKeepFilesAndLosesNoLineOfTheKeptOnes() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = "\(dir)/receiver.log"
        let sink = LineLogHandler.Sink(fd: try FileWriter.open(path, append: true, mode: 0o600), path: path,
                                       trouble: LogTrouble(), maxBytes: 1000, keep: 3)
        // 100 lines of 100 bytes: 10 files' worth; the newest four (the log and three rotated) are kept.
        for i in 0..<100 {
            let text = "line \(String(format: "%03d", i)) "
            sink.write(text + String(repeating: "x", count: 100 - text.count - 1) + "\n")
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(names == ["receiver.log", "receiver.log.1", "receiver.log.2", "receiver.log.3"])
        var lines: [String] = []
        for name in ["receiver.log.3", "receiver.log.2", "receiver.log.1", "receiver.log"] {
            let text = try String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8)
            #expect(text.utf8.count <= 1000, "\(name) is over log_max_mb")
            lines += text.split(separator: "\n").map(String.init)
        }
        // The kept files hold the last lines, in order, none missing.
        #expect(lines.map { String($0.prefix(8)) } == (60..<100).map { "line \(String(format: "%03d", $0))" })
    }

    @Test func reopenWritesToTheNewFileAfterAMove() throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = "\(dir)/receiver.log"
        let sink = LineLogHandler.Sink(fd: try FileWriter.open(path, append: true, mode: 0o600), path: path,
                                       trouble: LogTrouble())
        sink.write("before\n")
        try Posix.rename(path, to: "\(path).1")
        sink.write("still old\n")
        #expect(sink.reopen() == nil)
        sink.write("after\n")
        #expect(try String(contentsOfFile: "\(path).1", encoding: .utf8) == "before\nstill old\n")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "after\n")
    }

    @Test func jsonLinesCarryTimeLevelMessageAndMetadata() throws {
        let line = LineLogHandler.jsonLine(time: Date(timeIntervalSince1970: 0), level: .warning,
                                           message: "two\nlines \u{1b}", metadata: ["task": "t1", "exit": "3"])
        #expect(line.hasSuffix("\n") && line.dropLast().split(separator: "\n").count == 1)
        let o = try JSONValue.parse(Data(line.utf8))
        #expect(o["level"] == .string("warning") && o["task"] == .string("t1") && o["exit"] == .string("3"))
        #expect(o["message"] == .string("two\nlines \u{1b}"))
        #expect(o["time"] == .string("1970-01-01T00:00:00.000Z"))
    }
}
