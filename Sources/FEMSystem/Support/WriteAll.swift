#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Plain `write(2)` loops for every write the daemon makes to a file it keeps open (logs, container output):
/// an error comes back as a `SystemError` (ENOSPC on a full disk), never as a crash.
public enum FileWriter {
    /// Writes all of `bytes` to `fd`, retrying short writes and EINTR.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, context: String = "") throws {
        try Posix.writeAll(fd, bytes, path: context)
    }

    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], context: String = "") throws {
        try bytes.withUnsafeBytes { try writeAll(fd, $0, context: context) }
    }

    /// Opens `path` for writing (created with `mode` when missing): appending, or truncated first.
    public static func open(_ path: String, append: Bool, mode: mode_t = 0o640) throws -> Int32 {
        try Posix.open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), mode: mode)
    }

    /// True when `error` says the filesystem is full (ENOSPC, EDQUOT, or SQLite's "database or disk is full").
    public static func isDiskFull(_ error: any Error) -> Bool {
        if let e = error as? SystemError { return e.errno == ENOSPC || e.errno == EDQUOT }
        return isDiskFull(message: "\(error)")
    }

    public static func isDiskFull(message: String) -> Bool {
        message.contains("No space left on device") || message.contains("database or disk is full")
            || message.contains("Disk quota exceeded") || message.contains("SQLITE_FULL")
    }
}

extension ChildProcess {
    /// True while `pid` is a live process (not a zombie waiting to be reaped, not gone).
    public static func isAlive(_ pid: Int32) -> Bool {
        guard pid > 1, let state = statField(pid, 3) else { return false }
        return state != "Z" && state != "X" && state != "x"
    }

    /// The members of process group `pgid` that are alive (zombies left out), read from /proc.
    public static func liveMembers(ofGroup pgid: Int32) -> [Int32] {
        guard pgid > 1, let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return names.compactMap(Int32.init).filter { processGroup(of: $0) == pgid && isAlive($0) }
    }
}
