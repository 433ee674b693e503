#if canImport(Glibc)
import Glibc
#endif

/// A terminal's echo, off while a secret is typed (`fem-client console hash-password`).
public enum TerminalEcho {
    /// Runs `body` with echo off on `fd` when it is a terminal (restored after); as is otherwise.
    public static func off<T>(_ fd: Int32, _ body: () throws -> T) rethrows -> T {
        var saved = termios()
        guard isatty(fd) == 1, tcgetattr(fd, &saved) == 0 else { return try body() }
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        _ = tcsetattr(fd, TCSANOW, &quiet)
        defer { _ = tcsetattr(fd, TCSANOW, &saved) }
        return try body()
    }
}
