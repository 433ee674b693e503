import FEMSystem
import Foundation
import Testing

/// libgit2 caches against local repositories made with the git command line (file:// and plain paths). The
/// network transports (git://, https with a private CA and basic auth) are covered by IntegrationTests.
@Suite
struct GitTests {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "fem-git-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    @discardableResult
    func git(_ args: String..., in cwd: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/git")
        p.arguments = ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"] + args
        p.currentDirectoryURL = URL(fileURLWithPath: cwd)
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "git \(args.joined(separator: " ")) failed")
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A repository with two commits on main (the first tagged v1) and a branch `dev` with a third.
    func makeRemote() throws -> (path: String, first: String, second: String, dev: String) {
        let remote = "\(dir)/remote"
        try FileManager.default.createDirectory(atPath: remote, withIntermediateDirectories: true)
        try git("init", "-q", in: remote)
        try "one\n".write(toFile: "\(remote)/a.txt", atomically: true, encoding: .utf8)
        try git("add", ".", in: remote)
        try git("commit", "-qm", "one", in: remote)
        try git("tag", "-a", "v1", "-m", "v1", in: remote)
        let first = try git("rev-parse", "HEAD", in: remote)
        try "two\n".write(toFile: "\(remote)/a.txt", atomically: true, encoding: .utf8)
        try git("commit", "-qam", "two", in: remote)
        let second = try git("rev-parse", "HEAD", in: remote)
        try git("checkout", "-qb", "dev", in: remote)
        try "dev\n".write(toFile: "\(remote)/b.txt", atomically: true, encoding: .utf8)
        try git("add", ".", in: remote)
        try git("commit", "-qm", "dev", in: remote)
        let dev = try git("rev-parse", "HEAD", in: remote)
        try git("checkout", "-q", "main", in: remote)
        return (remote, first, second, dev)
    }

    @Test func cloneResolvesBranchesTagsAndHeadThenChecksOut() throws {
        let r = try makeRemote()
        let cache = "\(dir)/cache.git"
        let fetched = try Git.fetch(url: "file://\(r.path)", into: cache, login: nil)
        #expect(fetched.cloned && fetched.receivedObjects > 0)
        #expect(try Git.resolve(repository: cache, revision: nil) == r.second)
        #expect(try Git.resolve(repository: cache, revision: "main") == r.second)
        #expect(try Git.resolve(repository: cache, revision: "v1") == r.first)  // annotated tag, peeled
        #expect(try Git.resolve(repository: cache, revision: "dev") == r.dev)
        #expect(try Git.resolve(repository: cache, revision: r.first) == r.first)
        #expect(throws: GitError.self) { try Git.resolve(repository: cache, revision: "no-such-branch") }

        let work = "\(dir)/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        try Git.checkout(repository: cache, commit: r.dev, into: work)
        #expect(try String(contentsOfFile: "\(work)/a.txt", encoding: .utf8) == "two\n")
        #expect(try String(contentsOfFile: "\(work)/b.txt", encoding: .utf8) == "dev\n")
        #expect(!FileManager.default.fileExists(atPath: "\(work)/.git"))
    }

    @Test func aSecondFetchBringsOnlyNewCommits() throws {
        let r = try makeRemote()
        let cache = "\(dir)/cache.git"
        _ = try Git.fetch(url: r.path, into: cache, login: nil)  // a plain path works too
        try "three\n".write(toFile: "\(r.path)/a.txt", atomically: true, encoding: .utf8)
        try git("commit", "-qam", "three", in: r.path)
        let third = try git("rev-parse", "HEAD", in: r.path)
        let again = try Git.fetch(url: r.path, into: cache, login: nil)
        #expect(!again.cloned)
        #expect(again.receivedObjects > 0 && again.receivedObjects < 10, "objects: \(again.receivedObjects)")
        #expect(try Git.resolve(repository: cache, revision: "main") == third)
        let idle = try Git.fetch(url: r.path, into: cache, login: nil)
        #expect(idle.receivedObjects == 0)
    }

    @Test func aMissingRepositoryIsNotFound() throws {
        do {
            _ = try Git.fetch(url: "file://\(dir)/nothing-here", into: "\(dir)/c.git", login: nil)
            Issue.record("fetch of a missing repository succeeded")
        } catch let e as GitError {
            #expect(e.message.contains("nothing-here"), "\(e)")
        }
    }

    @Test func fileLockSerializes() throws {
        let path = "\(dir)/lock"
        let first = try FileLock(path: path)
        let flag = Flag()
        let waiter = Thread {
            let second = try? FileLock(path: path)
            flag.set()
            second?.unlock()
        }
        waiter.start()
        Thread.sleep(forTimeInterval: 0.3)
        #expect(!flag.isSet, "a second lock was taken while the first was held")
        first.unlock()
        for _ in 0..<50 where !flag.isSet { Thread.sleep(forTimeInterval: 0.05) }
        #expect(flag.isSet)
    }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
