import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An open directory, and files and folders made below it only relative to open descriptors: `mkdirat` then
/// `openat(O_DIRECTORY | O_NOFOLLOW)` for folders, `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` for files. A symlink
/// planted anywhere below the root is never followed, whatever it points at.
public final class DirectoryHandle: Sendable {
    public let fd: Int32
    /// For messages only; never used to open anything.
    public let path: String

    /// Opens `path` itself (a canonical path: symlinks in it are the administrator's, and resolved by the caller).
    /// With `followingSymlink` false, a symlink in the place of the last component fails (ELOOP).
    public init(root path: String, followingSymlink: Bool = true) throws {
        self.fd = try Posix.open(path, O_RDONLY | O_DIRECTORY | (followingSymlink ? 0 : O_NOFOLLOW))
        self.path = path
    }

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { Posix.release(fd) }  // only read through, or written through files of their own

    /// A single path component: not empty, not `.` or `..`, no `/` or NUL.
    public static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.utf8.contains(0)
            && name.utf8.count <= 255
    }

    private func checked(_ name: String) throws -> String {
        guard Self.isPlainName(name) else {
            throw SystemError("path", errno: EINVAL, "\"\(name)\" under \(path) is not a plain file name")
        }
        return name
    }

    /// The folder `name` below this one, made (mode 0755 before umask) if it is not there. A symlink in its place
    /// fails with ELOOP or ENOTDIR.
    public func subdirectory(_ name: String, create: Bool = true) throws -> DirectoryHandle {
        let name = try checked(name)
        if create {
            do {
                try Posix.mkdirat(fd, name, mode: 0o755, path: path)
            } catch let e as SystemError where e.errno == EEXIST {
                // there already: opened below, which refuses a symlink
            }
        }
        let sub: Int32
        do {
            sub = try Posix.openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, path: path)
        } catch let e as SystemError {
            throw SystemError("openat", errno: e.errno, "\(path)/\(name) (a symlink is never followed)")
        }
        return DirectoryHandle(fd: sub, path: "\(path)/\(name)")
    }

    /// What `name` in this folder is, without following a symlink; nil when it is gone.
    public func status(of name: String) throws -> FileStatus? {
        let name = try checked(name)
        return try Posix.ifPresent { try Posix.lstat(name, in: fd, path: path) }
    }

    /// The names in this folder (not `.` and `..`), sorted.
    public func names() throws -> [String] {
        try Posix.names(inDirectory: fd, path: path)
    }

    /// Opens the file `name` in this folder for reading, never following a symlink in its place (ELOOP), nor
    /// blocking on a FIFO, nor taking a terminal. The caller closes it (`Posix.release`).
    public func openForReading(_ name: String) throws -> Int32 {
        try Posix.openat(fd, try checked(name), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, path: path)
    }

    /// The folder at `components` below this one, each made as needed.
    public func subdirectory(path components: [String]) throws -> DirectoryHandle {
        var current = self
        for c in components { current = try current.subdirectory(c) }
        return current
    }

    /// Copies the file at `source` (opened without following a symlink) to `name` in this folder: written to a
    /// fresh temporary name made with O_EXCL, then renamed over `name`.
    public func writeFile(_ name: String, copying source: String, mode: mode_t = 0o644) throws {
        let name = try checked(name)
        let input = try Posix.open(source, O_RDONLY | O_NOFOLLOW)
        defer { Posix.release(input) }
        let partial = ".\(name.prefix(200)).partial"
        do {
            try Posix.unlinkat(fd, partial, path: path)
        } catch let e as SystemError where e.errno == ENOENT {
            // no leftover of an earlier attempt
        }
        let output = try Posix.openat(fd, partial, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: mode, path: path)
        do {
            do {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
                defer { buffer.deallocate() }
                while true {
                    let n = try Posix.read(input, into: buffer, path: source)
                    if n == 0 { break }
                    try Posix.writeAll(output, UnsafeRawBufferPointer(rebasing: buffer[0..<n]), path: "\(path)/\(partial)")
                }
            } catch {
                Posix.release(output)
                throw error
            }
            try Posix.close(output, path: "\(path)/\(partial)")
            try Posix.renameat(fd, partial, to: name, path: path)
        } catch {
            _ = unlinkat(fd, partial, 0)  // best effort: the error being thrown is the one that matters
            throw error
        }
    }
}
