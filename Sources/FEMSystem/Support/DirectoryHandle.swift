import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An open directory, and files and folders made below it only relative to open descriptors: `mkdirat` then
/// `openat(O_DIRECTORY | O_NOFOLLOW)` for folders, `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` for files. A symlink
/// planted anywhere below the root is never followed, whatever it points at.
public final class DirectoryHandle: @unchecked Sendable {
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

    deinit { close(fd) }

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
        if create && mkdirat(fd, name, 0o755) != 0 && errno != EEXIST {
            throw SystemError("mkdirat", "\(path)/\(name)")
        }
        let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard sub >= 0 else { throw SystemError("openat", "\(path)/\(name) (a symlink is never followed)") }
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
        let input = open(source, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard input >= 0 else { throw SystemError("open", source) }
        defer { close(input) }
        let partial = ".\(name.prefix(200)).partial"
        if unlinkat(fd, partial, 0) != 0 && errno != ENOENT {
            throw SystemError("unlinkat", "\(path)/\(partial)")
        }
        let output = openat(fd, partial, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard output >= 0 else { throw SystemError("openat", "\(path)/\(partial)") }
        var closed = false
        defer { if !closed { close(output) } }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = read(input, buffer, 1 << 16)
            if n < 0 {
                if errno == EINTR { continue }
                let e = SystemError("read", source)
                unlinkat(fd, partial, 0)
                throw e
            }
            if n == 0 { break }
            var offset = 0
            while offset < n {
                let w = write(output, buffer + offset, n - offset)
                if w < 0 {
                    if errno == EINTR { continue }
                    let e = SystemError("write", "\(path)/\(partial)")
                    unlinkat(fd, partial, 0)
                    throw e
                }
                offset += w
            }
        }
        closed = true
        if close(output) != 0 {
            let e = SystemError("close", "\(path)/\(partial)")
            unlinkat(fd, partial, 0)
            throw e
        }
        guard renameat(fd, partial, fd, name) == 0 else {
            let e = SystemError("renameat", "\(path)/\(name)")
            unlinkat(fd, partial, 0)
            throw e
        }
    }
}
