#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address parsed from its text form (inet_pton), never resolved: settings that must be an address
/// compare these bytes, not names.
public struct IPAddress: Sendable, Equatable {
    /// 4 bytes (IPv4) or 16 (IPv6), in network order.
    public let bytes: [UInt8]

    /// `127.0.0.1`, `::1` (no brackets), or nil for anything else (a name, a port, a zone).
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            bytes = withUnsafeBytes(of: v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            bytes = withUnsafeBytes(of: v6) { Array($0) }
            return
        }
        return nil
    }

    public var isIPv6: Bool { bytes.count == 16 }

    /// 127.0.0.0/8, ::1, or an IPv4-mapped 127.x address (::ffff:127.0.0.1).
    public var isLoopback: Bool {
        if bytes.count == 4 { return bytes[0] == 127 }
        if bytes == Array(repeating: 0, count: 15) + [1] { return true }
        return bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF && bytes[12] == 127
    }
}
