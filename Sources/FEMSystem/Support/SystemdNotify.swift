import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// systemd's service notification protocol (`Type=notify`, sd_notify(3)) without libsystemd: one datagram of
/// `KEY=VALUE` lines on the unix socket named by `NOTIFY_SOCKET` (an abstract socket when it starts with `@`).
/// Without `NOTIFY_SOCKET` (start.sh, a shell) every call does nothing.
public struct SystemdNotify: Sendable {
    /// The socket's address as given (`/run/systemd/notify` or `@abstract`); nil: not run by systemd.
    public let socketPath: String?
    /// `WATCHDOG_USEC` (when meant for this process, per `WATCHDOG_PID`): how often systemd wants a `WATCHDOG=1`.
    public let watchdog: Duration?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        socketPath = path
        var watchdog: Duration?
        if path != nil, let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 {
            // WATCHDOG_PID, when set, names the process the watchdog is for (not a child that inherited it).
            let forUs = environment["WATCHDOG_PID"].flatMap(Int32.init).map { $0 == getpid() } ?? true
            if forUs { watchdog = .microseconds(Int64(clamping: usec)) }
        }
        self.watchdog = watchdog
    }

    /// The interval between `WATCHDOG=1` pings: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
    public var watchdogPingInterval: Duration? { watchdog.map { $0 / 2 } }

    /// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=…`, several lines joined by `\n`). Returns nil when sent (or
    /// when there is no socket), else why it failed: a failure is never fatal, the caller logs it.
    @discardableResult
    public func send(_ state: String) -> String? {
        guard let path = socketPath else { return nil }
        return Self.send(state, to: path)
    }

    /// One datagram to the unix socket `path` (`@name`: the abstract socket `\0name`).
    static func send(_ state: String, to path: String) -> String? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A path needs its terminating NUL; an abstract name is exactly its bytes.
        guard bytes.count + (abstract ? 0 : 1) <= capacity, bytes.count > 1 || (!abstract && !bytes.isEmpty) else {
            return "NOTIFY_SOCKET \(path) is not a usable unix socket address"
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? 2)
            + socklen_t(bytes.count + (abstract ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return "socket(AF_UNIX, SOCK_DGRAM): \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        let message = Array(state.utf8)
        while true {
            let sent = message.withUnsafeBytes { body in
                withUnsafePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        sendto(fd, body.baseAddress, body.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT), sa, length)
                    }
                }
            }
            if sent >= 0 { return nil }
            let e = errno
            if e == EINTR { continue }
            return "sendto(\(path)): \(String(cString: strerror(e)))"
        }
    }
}

/// SIGHUP asks the daemon to reopen its log and reload its config: ignored from the start (its default action ends
/// the process) until the handler runs. Children get default dispositions again (ChildProcess sets them).
public func ignoreSIGHUP() {
    signal(SIGHUP, SIG_IGN)
}

extension SystemdNotify {
    /// `RELOADING=1` needs the monotonic time it started (systemd ≥ 253 checks it for Type=notify-reload).
    public static var monotonicMicroseconds: UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
    }
}
