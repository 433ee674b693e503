import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension SystemError {
    /// `call` failed with `errno` on `path` (nil when the call names no file); the description says all three and
    /// strerror's words.
    public init(call: String, errno: Int32, path: String?) {
        self.init(call, errno: errno, path ?? "")
    }
}

/// What `lstat`/`fstat` say about a file, as the callers use it.
public struct FileStatus: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case regular, directory, symlink, other }
    public var kind: Kind
    /// The permission bits (`mode & 0o7777`).
    public var permissions: UInt32
    public var owner: UInt32
    public var group: UInt32
    public var size: Int64
    /// Hard links (names) the file has.
    public var links: UInt64

    init(_ st: stat) {
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        default: kind = .other
        }
        permissions = UInt32(st.st_mode & 0o7777)
        owner = st.st_uid
        group = st.st_gid
        size = Int64(st.st_size)
        links = UInt64(st.st_nlink)
    }
}

/// The one place raw POSIX calls are made for the layers above FEMSystem. Every call is checked: a failure throws a
/// `SystemError` naming the call, the path and strerror's words; an interrupted call (EINTR) is made again. Nothing
/// here ignores a result. Higher-level helpers (`ensureDirectory`, `writeFileAtomically`, `TCPPort`) are named for
/// what they do.
public enum Posix {
    /// Runs `body` until it returns something other than -1 or fails with something other than EINTR.
    @discardableResult
    static func retrying<T: FixedWidthInteger & SignedInteger>(_ call: String, _ path: String?, _ body: () -> T) throws
        -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            let e = errno
            if e == EINTR { continue }
            throw SystemError(call: call, errno: e, path: path)
        }
    }

    // MARK: - Descriptors

    /// `open(2)`; the descriptor is close-on-exec whatever `flags` say.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws -> Int32 {
        try retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    /// `openat(2)` of `name` in the folder `dir`; `path` (the folder's) is for messages only.
    public static func openat(_ dir: Int32, _ name: String, _ flags: Int32, mode: mode_t = 0, path: String) throws
        -> Int32 {
        try retrying("openat", "\(path)/\(name)") { Glibc.openat(dir, name, flags | O_CLOEXEC, mode) }
    }

    /// Opens an existing file for reading without following a symlink in its place (ELOOP), nor blocking on a FIFO,
    /// nor taking a terminal.
    public static func openForReading(_ path: String) throws -> Int32 {
        try open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
    }

    /// `close(2)` of a descriptor that was written: its error (EIO, ENOSPC on NFS) means data may be lost and is
    /// thrown. EINTR is not retried: on Linux the descriptor is closed whatever close returns.
    public static func close(_ fd: Int32, path: String?) throws {
        if Glibc.close(fd) != 0 && errno != EINTR { throw SystemError(call: "close", errno: errno, path: path) }
    }

    /// Closes a descriptor that was only read from (or never used): the descriptor is released whatever close
    /// returns, and no data can be lost, so there is nothing to report.
    public static func release(_ fd: Int32) {
        guard fd >= 0 else { return }
        _ = Glibc.close(fd)
    }

    /// `read(2)` into `buffer`: the count read, 0 at the end.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String?) throws -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        return try retrying("read", path) { Glibc.read(fd, base, buffer.count) }
    }

    /// `write(2)` from `bytes`: the count written (may be short).
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String?) throws -> Int {
        guard let base = bytes.baseAddress else { return 0 }
        return try retrying("write", path) { Glibc.write(fd, base, bytes.count) }
    }

    /// Writes all of `bytes`, retrying short writes; a write that makes no progress fails with EIO.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String?) throws {
        var offset = 0
        while offset < bytes.count {
            let n = try write(fd, UnsafeRawBufferPointer(rebasing: bytes[offset...]), path: path)
            if n == 0 { throw SystemError(call: "write", errno: EIO, path: path) }
            offset += n
        }
    }

    /// `fsync(2)`: the written bytes are on the disk.
    public static func fsync(_ fd: Int32, path: String?) throws {
        try retrying("fsync", path) { Glibc.fsync(fd) }
    }

    /// `dup(2)`, close-on-exec.
    public static func duplicate(_ fd: Int32, path: String?) throws -> Int32 {
        try retrying("fcntl(F_DUPFD_CLOEXEC)", path) { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
    }

    /// Is `fd` a terminal?
    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    // MARK: - File status

    /// `lstat(2)`: the file at `path` itself (a symlink is described, not followed).
    public static func lstat(_ path: String) throws -> FileStatus {
        var st = Glibc.stat()
        try retrying("lstat", path) { Glibc.lstat(path, &st) }
        return FileStatus(st)
    }

    /// `stat(2)`: what `path` leads to, following symlinks.
    public static func stat(_ path: String) throws -> FileStatus {
        var st = Glibc.stat()
        try retrying("stat", path) { statFollowing(path, &st) }
        return FileStatus(st)
    }

    /// `fstat(2)` of an open descriptor.
    public static func fstat(_ fd: Int32, path: String?) throws -> FileStatus {
        var st = Glibc.stat()
        try retrying("fstat", path) { Glibc.fstat(fd, &st) }
        return FileStatus(st)
    }

    /// `fstatat(2)` of `name` in the folder `dir`, never following a symlink.
    public static func lstat(_ name: String, in dir: Int32, path: String) throws -> FileStatus {
        var st = Glibc.stat()
        try retrying("fstatat", "\(path)/\(name)") { fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) }
        return FileStatus(st)
    }

    /// `lstat`, or nil when nothing is at `path` (ENOENT, or a component on the way that is not a folder).
    public static func lstatIfPresent(_ path: String) throws -> FileStatus? {
        try ifPresent { try lstat(path) }
    }

    /// `stat`, or nil when nothing is at `path`.
    public static func statIfPresent(_ path: String) throws -> FileStatus? {
        try ifPresent { try stat(path) }
    }

    static func ifPresent<T>(_ body: () throws -> T) throws -> T? {
        do {
            return try body()
        } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
            return nil
        }
    }

    /// `access(path, X_OK)` and a regular file: may this process run it?
    public static func isExecutableFile(_ path: String) -> Bool {
        guard let st = try? statIfPresent(path), st.kind == .regular else { return false }
        return access(path, X_OK) == 0
    }

    /// `realpath(3)`: the absolute path with every symlink, `.` and `..` resolved against the real file system.
    public static func realpath(_ path: String) throws -> String {
        guard let p = Glibc.realpath(path, nil) else { throw SystemError(call: "realpath", errno: errno, path: path) }
        defer { free(p) }
        return String(cString: p)
    }

    // MARK: - Changing files

    /// `mkdir(2)`.
    public static func mkdir(_ path: String, mode: mode_t) throws {
        try retrying("mkdir", path) { Glibc.mkdir(path, mode) }
    }

    /// `mkdirat(2)` of `name` in the folder `dir`.
    public static func mkdirat(_ dir: Int32, _ name: String, mode: mode_t, path: String) throws {
        try retrying("mkdirat", "\(path)/\(name)") { Glibc.mkdirat(dir, name, mode) }
    }

    /// `path` is a folder (made if it is missing; a symlink or a file in its place fails), with exactly `mode`.
    public static func ensureDirectory(_ path: String, mode: mode_t) throws {
        do {
            try mkdir(path, mode: mode)
        } catch let e as SystemError where e.errno == EEXIST {
            let st = try lstat(path)
            guard st.kind == .directory else { throw SystemError(call: "mkdir", errno: ENOTDIR, path: path) }
        }
        try chmod(path, mode: mode)
    }

    /// `rename(2)`.
    public static func rename(_ from: String, to: String) throws {
        try retrying("rename", "\(from) → \(to)") { Glibc.rename(from, to) }
    }

    /// `renameat(2)` within one folder.
    public static func renameat(_ dir: Int32, _ from: String, to: String, path: String) throws {
        try retrying("renameat", "\(path)/\(from) → \(to)") { Glibc.renameat(dir, from, dir, to) }
    }

    /// `unlink(2)`.
    public static func unlink(_ path: String) throws {
        try retrying("unlink", path) { Glibc.unlink(path) }
    }

    /// `unlinkat(2)` of the file `name` in the folder `dir`.
    public static func unlinkat(_ dir: Int32, _ name: String, path: String) throws {
        try retrying("unlinkat", "\(path)/\(name)") { Glibc.unlinkat(dir, name, 0) }
    }

    /// `chmod(2)`.
    public static func chmod(_ path: String, mode: mode_t) throws {
        try retrying("chmod", path) { Glibc.chmod(path, mode) }
    }

    /// `fchmod(2)`.
    public static func fchmod(_ fd: Int32, mode: mode_t, path: String?) throws {
        try retrying("fchmod", path) { Glibc.fchmod(fd, mode) }
    }

    /// `chown(2)`.
    public static func chown(_ path: String, uid: UInt32, gid: UInt32) throws {
        try retrying("chown", path) { Glibc.chown(path, uid, gid) }
    }

    /// `fchown(2)`.
    public static func fchown(_ fd: Int32, uid: UInt32, gid: UInt32, path: String?) throws {
        try retrying("fchown", path) { Glibc.fchown(fd, uid, gid) }
    }

    /// Writes `bytes` to `path` so a reader sees the old file or the whole new one: to `<path>.part` (never
    /// following a symlink in its place), fsynced, then renamed over `path`. The partial file is removed on failure.
    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o640) throws {
        let partial = path + ".part"
        let fd = try open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: mode)
        do {
            do {
                try bytes.withUnsafeBytes { try writeAll(fd, $0, path: partial) }
                try fsync(fd, path: partial)
            } catch {
                release(fd)
                throw error
            }
            try close(fd, path: partial)
            try rename(partial, to: path)
        } catch {
            _ = Glibc.unlink(partial)  // best effort: the error being thrown is the one that matters
            throw error
        }
    }

    // MARK: - Who we are

    public static var realUserID: UInt32 { getuid() }
    public static var realGroupID: UInt32 { getgid() }
    public static var effectiveUserID: UInt32 { geteuid() }
    public static var effectiveGroupID: UInt32 { getegid() }
    public static var processID: Int32 { getpid() }

    /// An entry of the password database.
    public struct Account: Sendable, Equatable {
        public var name: String
        public var uid: UInt32
        public var gid: UInt32
    }

    /// The account named `name`, or nil when there is none (or the database cannot be read).
    public static func account(named name: String) -> Account? {
        lookup { pwd, buffer, result in
            let size = buffer.count
            return getpwnam_r(name, &pwd, &buffer, size, &result)
        }
    }

    /// The account with uid `uid`, or nil when there is none.
    public static func account(uid: UInt32) -> Account? {
        lookup { pwd, buffer, result in
            let size = buffer.count
            return getpwuid_r(uid, &pwd, &buffer, size, &result)
        }
    }

    private static func lookup(_ call: (inout passwd, inout [CChar], inout UnsafeMutablePointer<passwd>?) -> Int32)
        -> Account? {
        var size = 16_384
        while size <= 1 << 20 {
            var pwd = passwd()
            var result: UnsafeMutablePointer<passwd>?
            var buffer = [CChar](repeating: 0, count: size)
            let found: Account?? = {
                let rc = call(&pwd, &buffer, &result)
                if rc == ERANGE { return nil }  // a bigger buffer
                guard rc == 0, result != nil, let name = pwd.pw_name else { return .some(nil) }
                return .some(Account(name: String(cString: name), uid: pwd.pw_uid, gid: pwd.pw_gid))
            }()
            if let found { return found }
            size *= 4
        }
        return nil
    }

    // MARK: - Folders

    /// The names in the open folder `dir` (not `.` and `..`), sorted. Reads through a duplicate of `dir`, which
    /// stays open and usable.
    public static func names(inDirectory dir: Int32, path: String) throws -> [String] {
        let copy = try duplicate(dir, path: path)
        guard let stream = fdopendir(copy) else {
            let e = SystemError(call: "fdopendir", errno: errno, path: path)
            release(copy)
            throw e
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var out: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw SystemError(call: "readdir", errno: errno, path: path) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }
}

/// `stat(2)` at file scope, where `stat` names the C function (inside `Posix` it names `Posix.stat`, and
/// `Glibc.stat` the struct).
private func statFollowing(_ path: String, _ st: inout stat) -> Int32 { stat(path, &st) }

/// TCP ports, for launchers that start servers or wait for one.
public enum TCPPort {
    /// Does something at `host:port` accept a TCP connection now? Every address the name resolves to is tried.
    public static func acceptsConnections(host: String, port: UInt16) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else { return false }
        defer { freeaddrinfo(list) }
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let a = entry {
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue),
                            a.pointee.ai_protocol)
            if fd >= 0 {
                defer { Posix.release(fd) }
                // A connect interrupted by a signal goes on in the background (calling it again says EALREADY):
                // wait for it to finish and read its result instead.
                if connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return true }
                if errno == EINTR || errno == EINPROGRESS {
                    var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    var ready: Int32
                    repeat { ready = poll(&p, 1, 2_000) } while ready < 0 && errno == EINTR
                    var err: Int32 = 0
                    var len = socklen_t(MemoryLayout<Int32>.size)
                    if ready == 1, getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0, err == 0 { return true }
                }
            }
            entry = a.pointee.ai_next
        }
        return false
    }

    /// A loopback port nobody listens on now (the kernel's choice for a bind to port 0).
    public static func unusedLoopbackPort() throws -> Int {
        let fd = try Posix.retrying("socket", nil) { socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0) }
        defer { Posix.release(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &addr) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                try Posix.retrying("bind", "127.0.0.1:0") { bind(fd, sa, len) }
                try Posix.retrying("getsockname", "127.0.0.1") { getsockname(fd, sa, &len) }
            }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
