/// URLs as parsed, normalised values, and allowlists that compare them by parts: scheme, exact host (or an explicit
/// `*.domain` entry, which matches subdomains only), port, and path prefix on a segment boundary. Every URL a
/// message names and every allowlist entry goes through `ParsedURL.parse`; the normalised form is what is checked
/// and what is then used, so the node never fetches or writes anything other than what it checked.
///
/// Normalisation: scheme and host lowercased; the scheme's default port made explicit; percent-encoded unreserved
/// characters decoded (other escapes kept, with upper-case hex); repeated slashes merged; `.` and `..` segments
/// resolved. Refused outright: a login (`user@`), control characters, spaces and other characters a URL cannot
/// hold, backslashes, percent-encoded `.`, `/`, `\` or NUL (`%2e`, `%2f`, `%5c`, `%00`), a fragment, a path that
/// still climbs above the root after resolving, and (except for https/http) a query.
public struct ParsedURL: Sendable, Equatable, CustomStringConvertible {
    /// Lower-case: `https`, `http`, `git` or `file`.
    public var scheme: String
    /// Lower-case; empty for `file`.
    public var host: String
    /// Always explicit for network schemes (443, 80, 9418); nil for `file`.
    public var port: Int?
    /// Normalised, percent-encoded except for unreserved characters, always starting with `/`.
    public var path: String
    /// The raw query (https/http only), not part of any comparison.
    public var query: String?

    public static let supportedSchemes = ["https", "http", "git", "file"]
    static let defaultPorts = ["https": 443, "http": 80, "git": 9418]

    /// The path's segments (no empty ones): what prefix comparison works on.
    public var segments: [Substring] { path.split(separator: "/") }

    /// For `file` URLs: the local path, fully percent-decoded.
    public var filePath: String { Self.percentDecoded(path) }

    /// The normalised URL, with the default port left out (for messages and as the URL actually used).
    public var description: String {
        var s = "\(scheme)://\(host)"
        if let port, port != Self.defaultPorts[scheme] { s += ":\(port)" }
        s += path
        if let query { s += "?\(query)" }
        return s
    }

    /// Appends path segments (each percent-encoded) below this URL's path.
    public func appending(_ components: [String]) -> ParsedURL {
        var copy = self
        let base = path.hasSuffix("/") ? String(path.dropLast()) : path
        copy.path = base + components.map { "/" + Self.percentEncoded($0) }.joined()
        return copy
    }

    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// Parses and normalises `text`. `pattern: true` allows a `*.domain` host (allowlist entries only).
    public static func parse(_ text: String, pattern: Bool = false) throws -> ParsedURL {
        for u in text.unicodeScalars {
            if u.value < 0x20 || u.value == 0x7f || (0x80...0x9f).contains(u.value) || u.value == 0x2028
                || u.value == 0x2029 {
                throw Problem("contains a control character")
            }
            if u.value > 0x7e { throw Problem("contains a non-ASCII character (percent-encode it)") }
            if u == "\\" { throw Problem("contains a backslash") }
            if u == " " { throw Problem("contains a space (percent-encode it)") }
        }
        guard let sep = text.range(of: "://") else {
            throw Problem("is not an absolute URL (scheme://host/path)")
        }
        let scheme = text[..<sep.lowerBound].lowercased()
        guard let first = scheme.first, first.isLetter,
              scheme.allSatisfy({ $0.isLetter || $0.isNumber || "+.-".contains($0) }) else {
            throw Problem("has no valid scheme")
        }
        guard supportedSchemes.contains(scheme) else {
            throw Problem("uses the scheme \"\(scheme)\"; only " + supportedSchemes.map { "\($0)://" }
                .joined(separator: ", ") + " are supported")
        }
        var rest = text[sep.upperBound...]
        if rest.contains("#") { throw Problem("must not have a fragment (#)") }
        var query: String?
        if let q = rest.firstIndex(of: "?") {
            query = String(rest[rest.index(after: q)...])
            rest = rest[..<q]
            guard scheme == "https" || scheme == "http" else {
                throw Problem("must not have a query (?) with \(scheme)://")
            }
            if pattern { throw Problem("must not have a query (?)") }
            if let bad = query?.first(where: { !Self.isURLCharacter($0) && $0 != "?" }) {
                throw Problem("has the character \"\(bad)\" in its query (percent-encode it)")
            }
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let rawPath = rest[slash...]
        if authority.contains("@") {
            throw Problem("must not carry a login (user@host); name one of the node's [credentials] instead")
        }
        var host = String(authority)
        var port: Int?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw Problem("has an unclosed IPv6 address") }
            let after = host[host.index(after: close)...]
            let literal = host[...close].lowercased()
            guard literal.dropFirst().dropLast().allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw Problem("has an invalid IPv6 address")
            }
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw Problem("has text after its IPv6 address") }
                port = try parsePort(after.dropFirst())
            }
            host = literal
        } else {
            if let colon = host.lastIndex(of: ":") {
                port = try parsePort(host[host.index(after: colon)...])
                host = String(host[..<colon])
            }
            host = host.lowercased()
            if host.contains("%") { throw Problem("has a percent-encoded host") }
            var name = Substring(host)
            if pattern && name.hasPrefix("*.") { name = name.dropFirst(2) }
            if !host.isEmpty {
                let labels = name.split(separator: ".", omittingEmptySubsequences: false)
                guard labels.allSatisfy({ label in
                    !label.isEmpty && label.count <= 63 && label.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }
                        && label.first != "-" && label.last != "-"
                }) else {
                    throw Problem("has an invalid host name \"\(host)\"" + (host.contains("*") && !pattern
                                  ? " (a wildcard is only for allowlist entries)" : ""))
                }
            }
        }
        if scheme == "file" {
            if host == "localhost" { host = "" }
            guard host.isEmpty else { throw Problem("names a host (\(host)); file:// URLs are local (file:///path)") }
            guard port == nil else { throw Problem("has a port; file:// URLs are local") }
        } else {
            guard !host.isEmpty else { throw Problem("has no host") }
            port = port ?? defaultPorts[scheme]
        }
        let path = try normalisedPath(rawPath)
        return ParsedURL(scheme: scheme, host: host, port: port, path: path, query: query)
    }

    private static func parsePort(_ text: Substring) throws -> Int? {
        if text.isEmpty { return nil }
        guard text.count <= 5, text.allSatisfy(\.isASCII), text.allSatisfy(\.isNumber), let p = Int(text),
              (1...65535).contains(p) else {
            throw Problem("has an invalid port \"\(text)\"")
        }
        return p
    }

    static func isUnreserved(_ c: Character) -> Bool {
        c.isASCII && (c.isLetter || c.isNumber || "-._~".contains(c))
    }

    /// pchar (RFC 3986) plus `/` and `%`.
    static func isURLCharacter(_ c: Character) -> Bool {
        isUnreserved(c) || "!$&'()*+,;=:@/%".contains(c)
    }

    private static func normalisedPath(_ raw: Substring) throws -> String {
        var segments: [String] = []
        let chars = Array(raw)
        var current = ""
        var i = 0
        func endSegment() throws {
            switch current {
            case "", ".": break
            case "..":
                guard !segments.isEmpty else { throw Problem("has a path that climbs above the root (..)") }
                segments.removeLast()
            default: segments.append(current)
            }
            current = ""
        }
        while i < chars.count {
            let c = chars[i]
            if c == "/" {
                try endSegment()
            } else if c == "%" {
                guard i + 2 < chars.count, chars[i + 1].isHexDigit, chars[i + 2].isHexDigit,
                      let byte = UInt8(String(chars[(i + 1)...(i + 2)]), radix: 16) else {
                    throw Problem("has an invalid percent-encoding")
                }
                switch byte {
                case 0x2e: throw Problem("has a percent-encoded '.' (%2e) in its path")
                case 0x2f: throw Problem("has a percent-encoded '/' (%2f) in its path")
                case 0x5c: throw Problem("has a percent-encoded backslash (%5c) in its path")
                case 0x00: throw Problem("has a percent-encoded NUL (%00) in its path")
                default: break
                }
                let decoded = Character(Unicode.Scalar(byte))
                if byte < 0x80 && isUnreserved(decoded) {
                    current.append(decoded)
                } else {
                    current += "%" + String(chars[(i + 1)...(i + 2)]).uppercased()
                }
                i += 2
            } else if isURLCharacter(c) {
                current.append(c)
            } else {
                throw Problem("has the character \"\(c)\" in its path (percent-encode it)")
            }
            i += 1
        }
        let trailing = raw.hasSuffix("/") || current == "." || current == ".."
        try endSegment()
        if segments.isEmpty { return "/" }
        return "/" + segments.joined(separator: "/") + (trailing ? "/" : "")
    }

    /// One path segment as a file name (percent-decoded).
    public static func percentDecodedSegment(_ s: String) -> String { percentDecoded(s) }

    static func percentDecoded(_ s: String) -> String {
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "%"), i + 2 < u.count,
               let b = UInt8(String(decoding: u[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) {
                bytes.append(b)
                i += 3
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func percentEncoded(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            let c = Character(Unicode.Scalar(b))
            if b < 0x80 && (isUnreserved(c) || "!$&'()*+,;=:@".contains(c)) {
                out.append(c)
            } else {
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(2)
            }
        }
        return out
    }
}

private extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

/// An allowlist of URL prefixes (`[stage_in] git_allowed_urls`, `file_allowed_urls`, `[outputs] allowed_urls`,
/// a credential's `urls`). Empty means nothing is allowed.
public struct URLPolicy: Sendable, Equatable {
    public struct Entry: Sendable, Equatable, CustomStringConvertible {
        public var url: ParsedURL
        /// `*.example.org`: any subdomain of example.org, not example.org itself.
        public var wildcardDomain: String?
        public var original: String

        public var description: String { original }

        public func matches(_ u: ParsedURL) -> Bool {
            guard u.scheme == url.scheme, u.port == url.port else { return false }
            if let domain = wildcardDomain {
                guard u.host.hasSuffix("." + domain), u.host.count > domain.count + 1 else { return false }
            } else if u.host != url.host {
                return false
            }
            let prefix = url.segments
            let segments = u.segments
            return segments.count >= prefix.count && Array(segments.prefix(prefix.count)) == prefix
        }
    }

    public var entries: [Entry]

    public init(entries: [Entry]) { self.entries = entries }

    /// Parses allowlist entries; the error names the bad entry and what is wrong with it.
    public init(_ texts: [String]) throws {
        var entries: [Entry] = []
        for text in texts {
            let url: ParsedURL
            do {
                url = try ParsedURL.parse(text, pattern: true)
            } catch let e as ParsedURL.Problem {
                throw ParsedURL.Problem("\"\(text)\" \(e.description)")
            }
            var wildcard: String?
            if url.host.hasPrefix("*.") { wildcard = String(url.host.dropFirst(2)) }
            entries.append(Entry(url: url, wildcardDomain: wildcard, original: text))
        }
        self.entries = entries
    }

    public var isEmpty: Bool { entries.isEmpty }

    public func allows(_ url: ParsedURL) -> Bool { entries.contains { $0.matches(url) } }

    /// The entries, for messages: `none` when empty.
    public var listing: String { entries.isEmpty ? "none" : entries.map(\.original).joined(separator: ", ") }

    /// Parses `text` (a URL named by a message at `field`) and checks it against this list. Returns the normalised
    /// URL, or throws a problem naming the field and the reason.
    public func check(_ text: String, field: String) throws -> ParsedURL {
        let url: ParsedURL
        do {
            url = try ParsedURL.parse(text)
        } catch let e as ParsedURL.Problem {
            throw ParsedURL.Problem("\(field): \"\(Self.shown(text))\" \(e.description)")
        }
        guard allows(url) else {
            let normalised = url.description == text ? "" : " (normalised: \(Self.shown(url.description)))"
            throw ParsedURL.Problem("\(field): \"\(Self.shown(text))\"\(normalised) is not allowed on this node "
                                    + "(allowed: \(listing))")
        }
        return url
    }

    /// A URL for a message: any login in it replaced by `***`, control characters escaped, its length bounded.
    static func shown(_ text: String) -> String {
        var text = text
        if let sep = text.range(of: "://") {
            let rest = text[sep.upperBound...]
            let end = rest.firstIndex(where: { "/?#".contains($0) }) ?? rest.endIndex
            if let at = rest[..<end].lastIndex(of: "@") {
                text = String(text[..<sep.upperBound]) + "***" + String(text[at...])
            }
        }
        let escaped = text.unicodeScalars.map { u -> String in
            (u.value < 0x20 || u.value == 0x7f || (0x80...0x9f).contains(u.value) || u.value == 0x2028 || u.value == 0x2029)
                ? "\\u{\(String(u.value, radix: 16))}" : String(u)
        }.joined()
        return escaped.count > 300 ? String(escaped.prefix(300)) + "…" : escaped
    }
}
