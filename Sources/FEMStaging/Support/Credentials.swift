import FEMCore
import FEMSystem
import Foundation

/// A login from the node config's `[credentials."name"]`, named by plans and tasks by reference only. With a
/// username it is HTTP basic (and a git https login); without one, the secret is a bearer token. A secret: never
/// described, logged or put in an error. `urls` says where it may be sent (`[credentials."name"] urls`); a
/// credential without a list (registry logins, which go only to their own registry) is sent nowhere else.
public struct Credential: Sendable, Equatable, CustomStringConvertible {
    public var username: String?
    public var secret: String
    public var urls: URLPolicy

    public init(username: String?, secret: String, urls: URLPolicy = URLPolicy(entries: [])) {
        self.username = username
        self.secret = secret
        self.urls = urls
    }

    /// Why credential `name` (this one) may not go to `url`, read from `field`; nil when it may.
    public func refusal(name: String, url: ParsedURL, field: String) -> String? {
        if urls.allows(url) { return nil }
        return "\(field): the credential \"\(name)\" may not be sent to \(url) (its urls: \(urls.listing))"
    }

    /// Why the credential a message names (`ref`, read from `field`) cannot be used for `url`: not defined on this
    /// node, or not bound to that destination. Nil when there is none to use or it may be sent there.
    public static func refusal(_ ref: String?, in credentials: [String: Credential], url: ParsedURL,
                               field: String) -> String? {
        guard let ref else { return nil }
        guard let credential = credentials[ref] else {
            return "\(field): \"\(ref)\" is not defined in this node's [credentials]"
        }
        return credential.refusal(name: ref, url: url, field: field)
    }

    /// The `Authorization` header value.
    public var authorization: String {
        guard let username else { return "Bearer \(secret)" }
        return "Basic " + Data("\(username):\(secret)".utf8).base64EncodedString()
    }

    public var description: String { username.map { "Credential(basic \($0), ***)" } ?? "Credential(bearer ***)" }
}

/// Where a login's secret is kept: a file, or an environment variable of the daemon; never the configuration itself.
/// The environment is the one the daemon was given (injected), so what a test or a caller passes is what is read.
public enum SecretSource: Sendable, Equatable {
    case file(String)
    case environment(String)

    /// The secret. `field` names the setting in errors (`credentials."git".token_env`); an error names the file or
    /// the variable, never a value. A variable that is set but empty counts as not set.
    public func read(field: String, environment: [String: String]) throws(SecretSourceError) -> String {
        switch self {
        case .environment(let name):
            guard let value = environment[name], !value.isEmpty else {
                throw SecretSourceError(description: "\(field): \(name) is not set")
            }
            return value
        case .file(let path):
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw SecretSourceError(description: "\(field): cannot read \(path)")
            }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }
}

/// A secret that could not be read: names the setting and the file or variable only.
public struct SecretSourceError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// How transfers are retried: connection errors, timeouts, broken transfers, 429 and 5xx answers are tried again
/// after `base`, 2×`base`, 4×`base`… up to `attempts` tries in all; anything else fails at once.
public struct RetryPolicy: Sendable, Equatable {
    public var attempts: Int
    public var base: Duration

    public init(attempts: Int, base: Duration) {
        self.attempts = max(1, attempts)
        self.base = base
    }

    public func delay(afterAttempt n: Int) -> Duration { base * (1 << min(n - 1, 10)) }

    /// The transfer failures worth another try: connection errors, timeouts (a stall included), broken transfers,
    /// and 429 or 5xx answers.
    public static func transient(_ error: any Error) -> Bool {
        if let e = error as? HTTPStatusError { return e.retryable }
        if let e = error as? HTTPError { return [.connect, .timeout, .transfer].contains(e.code) }
        return false
    }

    /// Runs `body` until it succeeds, throws a non-retryable error, or the attempts are used up. `retryable`
    /// tells which errors are worth another try; `waiting` hears of each retry (attempt, delay, error). A set
    /// `cancel` ends the wait between attempts at once (`OperationCancelled`).
    public func run<T>(retryable: (any Error) -> Bool, waiting: (Int, Duration, any Error) -> Void,
                       cancel: CancelFlag? = nil, _ body: () throws -> T) throws -> T {
        var attempt = 1
        while true {
            do {
                return try body()
            } catch {
                if cancel?.isCancelled == true { throw OperationCancelled("retry") }
                guard retryable(error), attempt < attempts else { throw error }
                let pause = delay(afterAttempt: attempt)
                waiting(attempt, pause, error)
                // Without a flag of the caller's, a flag nobody sets: the same timed wait on a semaphore.
                guard (cancel ?? CancelFlag()).sleep(seconds: pause.seconds) else { throw OperationCancelled("retry") }
                attempt += 1
            }
        }
    }
}

/// An HTTP answer that is not a success: the status and the server's status line (never its body), for the event.
public struct HTTPStatusError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var what: String
    public var serverText: String

    public var retryable: Bool { status == 429 || status >= 500 }

    public var description: String {
        let reason: String
        switch status {
        case 401: reason = "the server asks for credentials, or refused the ones given (401)"
        case 403: reason = "the server forbids it (403)"
        case 404: reason = "not found on the server (404)"
        default: reason = "the server answered \(status)"
        }
        // Only the server's status line, printable ASCII and short: a body never goes into an event.
        let text = String(String.UnicodeScalarView(serverText.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7f }))
            .trimmingCharacters(in: .whitespaces)
        return "\(what): \(reason)" + (text.isEmpty ? "" : ": \(text.prefix(80))")
    }
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
