import FEMCore
import FEMSystem
import Foundation
import Synchronization

/// `[console]` as the daemon serves it (ConsoleSection, validated).
public struct ConsoleSettings: Sendable {
    public enum Role: String, Sendable {
        case viewer, steward
    }

    public struct Account: Sendable {
        public var passwordHash: String
        public var role: Role
    }

    public struct TLSFiles: Sendable {
        public var certFile: String
        public var keyFile: String
    }

    public var listen: MetricsListen
    /// nil: plain HTTP (loopback only; the config refuses anything else).
    public var tls: TLSFiles?
    public var sessionMinutes: Int
    public var accounts: [String: Account]

    static func isAccountName(_ name: String) -> Bool { Patterns.matches(#"^[A-Za-z0-9_.@-]{1,64}$"#, name) }

    /// `$2b$12$` + 53 characters of bcrypt's base64 (salt and hash): what `fem-client console hash-password` prints.
    static func isBcryptHash(_ text: String) -> Bool {
        guard Patterns.matches(#"^\$2[ab]\$[0-9]{2}\$[./A-Za-z0-9]{53}$"#, text),
              let cost = Int(text.dropFirst(4).prefix(2)) else { return false }
        return (4...31).contains(cost)
    }
}

/// HTML escaping for everything a page shows that a tool, a task or a file chose.
enum HTML {
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for u in text.unicodeScalars {
            switch u {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            // Control characters (but tab and newline) and bidi overrides: shown, never acted on.
            case "\t", "\n": out.unicodeScalars.append(u)
            default:
                switch u.value {
                case 0..<0x20, 0x7F..<0xA0, 0x2028, 0x2029, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069:
                    out += String(format: "\\u{%x}", u.value)
                default:
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out
    }

    /// A path segment or query value for a link.
    static func urlComponent(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }
}

/// Security helpers of the console: random tokens, constant-time comparison, form and cookie parsing.
enum ConsoleCrypto {
    /// 256 random bits as 64 hex digits (the system's CSPRNG).
    static func token() -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<4).map { _ in
            let v = rng.next() as UInt64
            let hex = String(v, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    /// Equal strings, in time that depends on their lengths only.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        let n = max(x.count, y.count)
        for i in 0..<n {
            let p = i < x.count ? x[i] : 0
            let q = i < y.count ? y[i] : 0
            diff |= p ^ q
        }
        return diff == 0
    }

    /// `application/x-www-form-urlencoded`; nil when a name or value is not valid percent-encoded UTF-8.
    static func form(_ body: String) -> [String: String]? {
        var fields: [String: String] = [:]
        for pair in body.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String? {
                s.replacingOccurrences(of: "+", with: " ").removingPercentEncoding
            }
            guard let name = decode(parts[0]), let value = parts.count > 1 ? decode(parts[1]) : "" else { return nil }
            // A repeated field is ambiguous: refused.
            if fields[name] != nil { return nil }
            fields[name] = value
        }
        return fields
    }

    /// The value of one cookie in a `Cookie` header.
    static func cookie(_ name: String, in header: String?) -> String? {
        guard let header else { return nil }
        for part in header.split(separator: ";") {
            let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == name { return String(kv[1]) }
        }
        return nil
    }
}

/// The console's sessions, in memory: a random 256-bit id (the cookie) → the account, its role, the session's CSRF
/// token and when it was last used. A session unused for `idle` is gone.
final class ConsoleSessions: Sendable {
    struct Session: Sendable {
        var account: String
        var role: ConsoleSettings.Role
        var csrf: String
        var lastSeen: Date
    }

    private let sessions = Mutex<[String: Session]>([:])
    let idle: TimeInterval

    init(idle: TimeInterval) {
        self.idle = idle
    }

    /// A new session: its id (for the cookie) and the session.
    func open(account: String, role: ConsoleSettings.Role, now: Date = Date()) -> (id: String, session: Session) {
        let id = ConsoleCrypto.token()
        let session = Session(account: account, role: role, csrf: ConsoleCrypto.token(), lastSeen: now)
        sessions.withLock { all in
            all = all.filter { now.timeIntervalSince($0.value.lastSeen) < idle }
            all[id] = session
        }
        return (id, session)
    }

    /// The session behind a cookie, touched; nil when unknown or idle too long (then forgotten).
    func session(_ id: String?, now: Date = Date()) -> Session? {
        guard let id, id.utf8.count == 64 else { return nil }
        return sessions.withLock { all in
            guard var s = all[id] else { return nil }
            if now.timeIntervalSince(s.lastSeen) >= idle {
                all[id] = nil
                return nil
            }
            s.lastSeen = now
            all[id] = s
            return s
        }
    }

    func close(_ id: String?) {
        guard let id else { return }
        sessions.withLock { _ = $0.removeValue(forKey: id) }
    }

    var count: Int { sessions.withLock { $0.count } }
}

/// Bounds on password guessing and on the bcrypt work logins cost: per account name (known or not), five failures in
/// fifteen minutes lock that name for a minute, doubling with each lockout up to fifteen minutes; at most four logins
/// are checked at once; past fifty failures in a minute on the whole console, logins wait for the minute to pass.
/// A locked or refused login costs no bcrypt. A success clears the account's failures.
final class LoginThrottle: Sendable {
    static let failuresToLock = 5
    static let failureWindow: TimeInterval = 15 * 60
    static let firstLock: TimeInterval = 60
    static let longestLock: TimeInterval = 15 * 60
    static let maxInFlight = 4
    static let consoleFailuresPerMinute = 50

    private struct Account {
        var failures: [Date] = []
        var lockedUntil: Date?
        var lockouts = 0
    }
    private struct State {
        var accounts: [String: Account] = [:]
        var recentFailures: [Date] = []
        var inFlight = 0
    }
    private let state = Mutex(State())

    /// Why a login for `name` is not checked now (nil: go ahead, and call `finish` after).
    func admit(_ name: String, now: Date = Date()) -> String? {
        state.withLock { s in
            if let until = s.accounts[name]?.lockedUntil, until > now {
                return "Too many failed logins for this account: try again in \(Int(until.timeIntervalSince(now).rounded(.up))) s."
            }
            s.recentFailures.removeAll { now.timeIntervalSince($0) > 60 }
            if s.recentFailures.count >= Self.consoleFailuresPerMinute {
                return "Too many failed logins on this console in the last minute: try again in a minute."
            }
            guard s.inFlight < Self.maxInFlight else { return "The console is busy checking other logins: try again." }
            s.inFlight += 1
            return nil
        }
    }

    /// The outcome of an admitted login. Returns the lock's length when this failure locked the account.
    @discardableResult
    func finish(_ name: String, succeeded: Bool, now: Date = Date()) -> TimeInterval? {
        state.withLock { s in
            s.inFlight = max(0, s.inFlight - 1)
            if succeeded {
                s.accounts[name] = nil
                return nil
            }
            s.recentFailures.append(now)
            var a = s.accounts[name] ?? Account()
            a.failures = a.failures.filter { now.timeIntervalSince($0) <= Self.failureWindow } + [now]
            var locked: TimeInterval?
            if a.failures.count >= Self.failuresToLock {
                let length = min(Self.longestLock, Self.firstLock * pow(2, Double(a.lockouts)))
                a.lockedUntil = now.addingTimeInterval(length)
                a.lockouts += 1
                a.failures = []
                locked = length
            }
            // Bounded: names nobody has tried for a window are forgotten (an attacker's invented names included).
            if s.accounts.count > 10_000 {
                s.accounts = s.accounts.filter { ($0.value.lockedUntil ?? .distantPast) > now || !$0.value.failures.isEmpty }
            }
            s.accounts[name] = a
            return locked
        }
    }
}
