import FEMSystem
import Foundation
import Testing

@Suite
struct DigestTests {
    @Test func knownVectors() {
        let empty = SHA256Digest()
        #expect(empty.finalizeHex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let abc = SHA256Digest()
        abc.update(Array("abc".utf8))
        #expect(abc.finalizeHex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func aFileHashedInBlocksEqualsTheWholeAndSha256sum() throws {
        let path = NSTemporaryDirectory() + "fem-digest-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let bytes = (0..<3_000_001).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let whole = SHA256Digest()
        whole.update(bytes)
        let (size, sha) = try SHA256Digest.file(path)
        #expect(size == 3_000_001)
        #expect(sha == whole.finalizeHex())
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = [path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(text.hasPrefix(sha + " "))
        #expect(throws: SystemError.self) { try SHA256Digest.file(path + ".missing") }
    }
}

@Suite
struct FileTailTests {
    @Test func followsAGrowingFileAndReadsTheRestWhenFinished() async throws {
        let path = NSTemporaryDirectory() + "fem-tail-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (lines, finish) = FileTail.follow(path, interval: .milliseconds(20))
        let writer = Task {
            try await Task.sleep(for: .milliseconds(100))  // the file does not exist yet when following starts
            try "one\ntw".write(toFile: path, atomically: false, encoding: .utf8)
            try await Task.sleep(for: .milliseconds(100))
            let h = try #require(FileHandle(forWritingAtPath: path))
            try h.seekToEnd()
            try h.write(contentsOf: Data("o\nthree\nlast-without-newline".utf8))
            try h.close()
            try await Task.sleep(for: .milliseconds(100))
            finish()
        }
        var seen: [String] = []
        for await line in lines { seen.append(line) }
        try await writer.value
        #expect(seen == ["one", "two", "three", "last-without-newline"])
    }
}
