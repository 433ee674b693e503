#if canImport(Glibc)
import Glibc
#endif

/// An operating-system call failed because of the environment (not a programming error).
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var errno: Int32
    public var context: String

    public init(_ call: String, errno: Int32 = Glibc.errno, _ context: String = "") {
        self.call = call
        self.errno = errno
        self.context = context
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return context.isEmpty ? "\(call): \(reason)" : "\(context): \(call): \(reason)"
    }
}

/// Free bytes on the filesystem holding `path`, or nil when it cannot be read.
public func freeDiskBytes(at path: String) -> UInt64? {
    var st = statvfs()
    guard statvfs(path, &st) == 0 else { return nil }
    return UInt64(st.f_bavail) * UInt64(st.f_frsize)
}

/// Ignore SIGPIPE: a broker or upload server that hangs up must produce an error, not kill the daemon.
public func ignoreSIGPIPE() {
    signal(SIGPIPE, SIG_IGN)
}
