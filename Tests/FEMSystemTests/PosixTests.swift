@testable import FEMSystem
import Foundation
import Testing

/// The checked wrapper the layers above FEMSystem make their system calls through.
struct PosixTests {
    func scratch() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fem-posix-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func aFailedCallNamesTheCallThePathAndWhy() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let missing = "\(dir)/no/such/file"
        let error = try #require(throws: SystemError.self) { try Posix.chmod(missing, mode: 0o600) }
        #expect(error.errno == ENOENT)
        #expect(error.description == "\(missing): chmod: No such file or directory")
        let open = try #require(throws: SystemError.self) { _ = try Posix.open(missing, O_RDONLY) }
        #expect(open.description.contains("open") && open.description.contains(missing))
        #expect(try Posix.lstatIfPresent(missing) == nil, "missing is nil, not an error")
    }

    @Test func ensureDirectorySetsTheModeAndRefusesASymlink() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Posix.ensureDirectory("\(dir)/a", mode: 0o700)
        try Posix.chmod("\(dir)/a", mode: 0o755)
        try Posix.ensureDirectory("\(dir)/a", mode: 0o711)  // there already: only the mode changes
        let st = try Posix.lstat("\(dir)/a")
        #expect(st.kind == .directory && st.permissions == 0o711)
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/link", withDestinationPath: "\(dir)/a")
        let error = try #require(throws: SystemError.self) { try Posix.ensureDirectory("\(dir)/link", mode: 0o700) }
        #expect(error.errno == ENOTDIR, "\(error)")
        #expect(try Posix.lstat("\(dir)/a").permissions == 0o711, "the link's target was not changed")
    }

    @Test func writeFileAtomicallyReplacesTheFileAndNeverFollowsALink() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Posix.writeFileAtomically("\(dir)/f", Array("one".utf8))
        try Posix.writeFileAtomically("\(dir)/f", Array("two".utf8), mode: 0o600)
        #expect(try String(contentsOfFile: "\(dir)/f", encoding: .utf8) == "two")
        #expect(try Posix.lstatIfPresent("\(dir)/f.part") == nil)
        // A link planted where the partial file goes is not written through.
        try Data("victim".utf8).write(to: URL(fileURLWithPath: "\(dir)/victim"))
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/g.part", withDestinationPath: "\(dir)/victim")
        let error = try #require(throws: SystemError.self) { try Posix.writeFileAtomically("\(dir)/g", Array("x".utf8)) }
        #expect(error.errno == ELOOP, "\(error)")
        #expect(try String(contentsOfFile: "\(dir)/victim", encoding: .utf8) == "victim")
    }

    @Test func namesAndStatusThroughADirectoryHandle() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data("x".utf8).write(to: URL(fileURLWithPath: "\(dir)/b"))
        try Posix.mkdir("\(dir)/a", mode: 0o700)
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/c", withDestinationPath: "/etc/passwd")
        let handle = try DirectoryHandle(root: dir, followingSymlink: false)
        #expect(try handle.names() == ["a", "b", "c"])
        #expect(try handle.names() == ["a", "b", "c"], "listing twice reads the folder again")
        #expect(try handle.status(of: "a")?.kind == .directory)
        #expect(try handle.status(of: "b")?.kind == .regular)
        #expect(try handle.status(of: "c")?.kind == .symlink)
        #expect(try handle.status(of: "gone") == nil)
        let error = try #require(throws: SystemError.self) { _ = try handle.openForReading("c") }
        #expect(error.errno == ELOOP)
        #expect(throws: SystemError.self) { _ = try DirectoryHandle(root: "\(dir)/c", followingSymlink: false) }
    }

    @Test func theTreeWalkChangesModesBelowTheRootAndNeverThroughALink() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let outside = "\(dir)/outside"
        try Data("o".utf8).write(to: URL(fileURLWithPath: outside))
        try Posix.chmod(outside, mode: 0o644)
        try Posix.mkdir("\(dir)/root", mode: 0o755)
        try Posix.mkdir("\(dir)/root/sub", mode: 0o755)
        try Data("f".utf8).write(to: URL(fileURLWithPath: "\(dir)/root/sub/file"))
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/root/link", withDestinationPath: outside)
        var visited: [String] = []
        try NoFollowTree.walk(below: "\(dir)/root") { entry in
            visited.append(entry.name)
            try entry.changeMode(0o700)
        }
        #expect(visited.sorted() == ["file", "sub"])
        #expect(try Posix.lstat("\(dir)/root/sub/file").permissions == 0o700)
        #expect(try Posix.lstat(outside).permissions == 0o644, "the link's target was left alone")
    }

    @Test func tcpPorts() throws {
        let port = try TCPPort.unusedLoopbackPort()
        #expect(port > 0 && port < 65536)
        #expect(!TCPPort.acceptsConnections(host: "127.0.0.1", port: UInt16(port)), "nobody listens there")
    }

    @Test func accountsAndIDs() {
        #expect(Posix.account(uid: 0)?.name == "root")
        #expect(Posix.account(named: "root")?.uid == 0)
        #expect(Posix.account(named: "no-such-user-fem") == nil)
        #expect(Posix.processID == ProcessInfo.processInfo.processIdentifier)
    }
}
