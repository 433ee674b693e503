import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What the kernel says about the host, for the node's fingerprint.
public enum HostInfo {
    /// CPUs online (at least 1).
    public static func onlineCPUs() -> Int { max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    /// uname(2): the machine (`x86_64`, `aarch64`) and the kernel release.
    public static func uname() -> (machine: String, release: String) {
        var u = utsname()
        guard Glibc.uname(&u) == 0 else { return ("unknown", "unknown") }
        func text<T>(_ field: T) -> String {
            withUnsafeBytes(of: field) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return (text(u.machine), text(u.release))
    }
}
