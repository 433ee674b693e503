import FEMSystem
import Foundation

/// `amqps://user@host:port/vhost`: the broker address the node (`broker.url`) and femctl (`--broker-url`) are given.
public enum BrokerURL {
    /// What is wrong with a broker URL, naming the setting it came from; never the URL's password.
    public struct Problem: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// The endpoint, with `password` from wherever the caller keeps it (never from the URL itself).
    /// `key` names the setting in messages (`broker.url`, `--broker-url`).
    public static func parse(_ url: String, password: String?, caFile: String, certFile: String, keyFile: String,
                             key: String = "broker.url", passwordHint: String = "use broker.password_file or FEM_BROKER_PASSWORD")
        throws(Problem) -> AMQPEndpoint {
        guard let c = URLComponents(string: url), c.scheme == "amqps", let host = c.host, !host.isEmpty else {
            throw Problem(description: "\(key): \"\(redacted(url))\" is not an amqps://user@host:port/vhost URL "
                                       + "(only TLS is supported)")
        }
        if c.password != nil {
            throw Problem(description: "\(key): must not contain a password; \(passwordHint)")
        }
        var vhost = c.percentEncodedPath
        if vhost.hasPrefix("/") { vhost.removeFirst() }
        vhost = vhost.isEmpty ? "/" : (vhost.removingPercentEncoding ?? vhost)
        return AMQPEndpoint(host: host, port: c.port ?? 5671, vhost: vhost, user: c.user ?? "guest", password: password,
                            caFile: caFile, certFile: certFile, keyFile: keyFile)
    }

    /// The URL with any login part (`user:password@`) replaced by `***@`, for messages; also for text that is not
    /// a URL at all, which a parser would hand back whole, password included.
    public static func redacted(_ url: String) -> String {
        guard let scheme = url.range(of: "://") else {
            return url.contains("@") ? "***" : url
        }
        let rest = url[scheme.upperBound...]
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@") else { return url }
        let login = rest[..<at]
        guard login.contains(":") else { return url }
        let user = login.prefix { $0 != ":" }
        return String(url[..<scheme.upperBound]) + user + ":***" + String(rest[at...])
    }
}
