import FEMCore
import Foundation

/// A `host:port` address, parsed so that allowlists compare values, not strings: the host lowercased and without
/// IPv6 brackets, the port a number. `localhost:9092` and `127.0.0.1:9092` are different entries (no DNS lookup).
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    /// `host:port`, `[v6]:port`; nil for anything else (no scheme, path, user, empty host or port 0).
    public static func parse(_ text: String) -> HostPort? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port > 0 else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return nil }
        } else {
            guard !host.isEmpty, host.allSatisfy({ ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "." || $0 == "-" })
            else { return nil }
        }
        return HostPort(host: host.lowercased(), port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// One entry of a plan's `flower.requirements`: a pinned PEP 508 name and an exact PEP 440 version, optionally with
/// sha256 hashes in pip's requirements-file form: `"numpy==2.1.3"` or
/// `"numpy==2.1.3 --hash=sha256:<64 hex> --hash=sha256:<64 hex>"`. Nothing else reaches pip: no options (`-r`,
/// `--index-url`, `--target`), no URLs or `name @ url` direct references, no paths, no extras or markers, no ranges.
public struct PythonRequirement: Sendable, Equatable {
    public var name: String
    public var version: String
    public var hashes: [String]

    /// The line for the requirements file pip reads.
    public var line: String { ([name + "==" + version] + hashes.map { "--hash=sha256:\($0)" }).joined(separator: " ") }

    static let namePattern = #"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"#
    static let versionPattern = #"^([0-9]+!)?[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?$"#

    /// Parses one entry; the error says what is wrong with it (the caller names the entry's position).
    public static func parse(_ entry: String) -> Result<PythonRequirement, PolicyDecline> {
        func no(_ why: String) -> Result<PythonRequirement, PolicyDecline> {
            .failure(PolicyDecline("\"\(entry)\" \(why); only name==version entries are allowed, optionally followed "
                                   + "by --hash=sha256:<hex> (e.g. \"numpy==2.1.3\")"))
        }
        let parts = entry.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard let spec = parts.first, !spec.isEmpty else { return no("is empty or starts with a space") }
        if spec.hasPrefix("-") { return no("is a pip option") }
        if entry.contains("://") || entry.contains("@") { return no("is a URL or a direct reference") }
        if spec.contains("/") || spec.contains("\\") || spec.hasPrefix(".") || spec.hasPrefix("~") {
            return no("is a path")
        }
        let pin = spec.components(separatedBy: "==")
        guard pin.count == 2, Patterns.matches(namePattern, pin[0]) else { return no("is not a pinned name==version") }
        guard Patterns.matches(versionPattern, pin[1]) else {
            return no("does not pin an exact version (\(pin[1].isEmpty ? "none" : pin[1]))")
        }
        var hashes: [String] = []
        for option in parts.dropFirst() {
            guard option.hasPrefix("--hash=sha256:"), Patterns.matches(Patterns.sha256, String(option.dropFirst(14)))
            else {
                return no("has \"\(option)\" where only --hash=sha256:<64 lowercase hex digits> may follow")
            }
            hashes.append(String(option.dropFirst(14)))
        }
        return .success(PythonRequirement(name: pin[0], version: pin[1], hashes: hashes))
    }

    /// Every entry, or the first problem naming the entry's position (`flower.requirements[2]: …`). Either every
    /// entry has hashes or none does: pip checks hashes for all requirements or for none.
    public static func parseAll(_ entries: [String]) -> Result<[PythonRequirement], PolicyDecline> {
        var out: [PythonRequirement] = []
        for (i, entry) in entries.enumerated() {
            switch parse(entry) {
            case .success(let r): out.append(r)
            case .failure(let d): return .failure(PolicyDecline("flower.requirements[\(i)]: \(d.reason)"))
            }
        }
        let hashed = out.filter { !$0.hashes.isEmpty }.count
        if hashed > 0 && hashed < out.count {
            return .failure(PolicyDecline("flower.requirements: either every entry has --hash=sha256:... or none does "
                                          + "(pip checks hashes for all requirements or none)"))
        }
        return .success(out)
    }
}
