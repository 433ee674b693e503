import FEMSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The system-level pieces the egress policy relies on: folders and files made below an open directory without
/// following symlinks, and libcurl limited to the protocols a request names.
@Suite
struct EgressPrimitivesTests {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "fem-egress-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: "\(dir)/root", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(dir)/victim", withIntermediateDirectories: true)
        try "source\n".write(toFile: "\(dir)/source.txt", atomically: true, encoding: .utf8)
    }

    @Test func filesAndFoldersAreMadeWithoutFollowingSymlinks() throws {
        let root = try DirectoryHandle(root: "\(dir)/root")
        try root.subdirectory(path: ["a", "b"]).writeFile("f.txt", copying: "\(dir)/source.txt")
        #expect(try String(contentsOfFile: "\(dir)/root/a/b/f.txt", encoding: .utf8) == "source\n")
        // Again over the same name: replaced, no temporary file left behind.
        try root.subdirectory(path: ["a", "b"]).writeFile("f.txt", copying: "\(dir)/source.txt")
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/root/a/b") == ["f.txt"])

        try FileManager.default.createSymbolicLink(atPath: "\(dir)/root/link", withDestinationPath: "\(dir)/victim")
        #expect(throws: SystemError.self) { _ = try root.subdirectory(path: ["link", "x"]) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/victim").isEmpty)

        try "precious\n".write(toFile: "\(dir)/victim/target", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/root/a/b/g.txt", withDestinationPath: "\(dir)/victim/target")
        try root.subdirectory(path: ["a", "b"]).writeFile("g.txt", copying: "\(dir)/source.txt")
        #expect(try String(contentsOfFile: "\(dir)/victim/target", encoding: .utf8) == "precious\n")
        #expect(try FileManager.default.attributesOfItem(atPath: "\(dir)/root/a/b/g.txt")[.type] as? FileAttributeType
                == .typeRegular)

        // A planted .partial symlink is removed, not written through.
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/root/a/b/.h.txt.partial",
                                                   withDestinationPath: "\(dir)/victim/target")
        try root.subdirectory(path: ["a", "b"]).writeFile("h.txt", copying: "\(dir)/source.txt")
        #expect(try String(contentsOfFile: "\(dir)/victim/target", encoding: .utf8) == "precious\n")

        for bad in ["", ".", "..", "a/b", "a\0b"] {
            #expect(throws: SystemError.self, "\(bad.debugDescription)") { _ = try root.subdirectory(bad) }
            #expect(throws: SystemError.self, "\(bad.debugDescription)") {
                try root.writeFile(bad, copying: "\(dir)/source.txt")
            }
        }
        // The source itself is never read through a symlink either.
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/source-link", withDestinationPath: "\(dir)/source.txt")
        #expect(throws: SystemError.self) { try root.writeFile("s.txt", copying: "\(dir)/source-link") }
    }

    @Test func libcurlSpeaksOnlyTheProtocolsARequestNames() throws {
        for url in ["file:///etc/hostname", "ftp://127.0.0.1/x", "gopher://127.0.0.1/x", "dict://127.0.0.1/x"] {
            var request = HTTPRequest(url: url, timeoutSeconds: 2)
            request.protocols = "https"
            #expect(throws: HTTPError.self, "\(url)") { _ = try HTTPTransfer.perform(request) }
            do {
                _ = try HTTPTransfer.perform(request)
            } catch let e as HTTPError {
                #expect(e.message.lowercased().contains("protocol"), "\(url): \(e.message)")
            }
        }
        // Even with the default (http and https), file:// is refused.
        #expect(throws: HTTPError.self) { _ = try HTTPTransfer.perform(HTTPRequest(url: "file:///etc/hostname")) }
    }
}
