import FEMCore
import FEMSystem
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import ServiceLifecycle

/// `[metrics] listen`: an IP address (or `localhost`) and a port, as parsed values, never a name to resolve.
public struct MetricsListen: Sendable, Equatable, CustomStringConvertible {
    /// An IPv4 or IPv6 address in its usual text form, or `localhost`.
    public var host: String
    /// 0 lets the system choose a free port (the log says which).
    public var port: Int
    public var isLoopback: Bool

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    struct Problem: Error, CustomStringConvertible {
        var description: String
    }

    /// `127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`, `0.0.0.0:9464`; anything else is refused with why.
    static func parse(_ text: String) throws -> MetricsListen {
        let example = "(e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")"
        guard let colon = text.lastIndex(of: ":") else {
            throw Problem(description: "\"\(TextEscaping.escaped(text))\" is not host:port \(example)")
        }
        let portText = text[text.index(after: colon)...]
        guard !portText.isEmpty, portText.allSatisfy(\.isASCII), portText.allSatisfy(\.isNumber), portText.count <= 5,
              let port = Int(portText), port <= 65_535 else {
            throw Problem(description: "\"\(TextEscaping.escaped(text))\": the port must be a number from 0 to 65535 "
                          + "\(example)")
        }
        var host = String(text[..<colon])
        let bracketed = host.hasPrefix("[") && host.hasSuffix("]")
        if bracketed { host = String(host.dropFirst().dropLast()) }
        if host.lowercased() == "localhost" && !bracketed {
            return MetricsListen(host: "localhost", port: port, isLoopback: true)
        }
        if let address = IPAddress(host), address.isIPv6 == bracketed {
            return MetricsListen(host: host.lowercased(), port: port, isLoopback: address.isLoopback)
        }
        throw Problem(description: "\"\(TextEscaping.escaped(text))\": the host must be an IP address (IPv6 in "
                      + "brackets) or localhost \(example)")
    }
}

/// Serves the node's metrics on `[metrics] listen` with Hummingbird: `GET /metrics` only, everything else 404. A
/// `Service` of the daemon's group: started first and stopped last, so the metrics watch a drain to its end.
struct MetricsService: Service {
    let listen: MetricsListen
    let metrics: NodeMetrics
    let sample: @Sendable () async -> NodeMetrics.Sample
    let logger: Logger

    func run() async throws {
        let router = Router()
        let metrics = self.metrics, sample = self.sample
        router.get("/metrics") { _, _ -> Response in
            let body = metrics.exposition(await sample())
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
        }
        let logger = self.logger, listen = self.listen
        // Hummingbird's own lines (its start at info) repeat ours: only its notices and errors reach the log.
        var serverLogger = logger
        serverLogger.logLevel = .notice
        let app = Application(
            router: router,
            // A scraper or two: a few connections at once are plenty, and bound what a flood of them can hold.
            configuration: ApplicationConfiguration(address: .hostname(listen.host, port: listen.port),
                                                    availableConnectionsDelegate: MaximumAvailableConnections(16)),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? listen.port
                var bound = listen
                bound.port = port
                logger.notice("metrics: serving http://\(bound)/metrics")
            },
            logger: serverLogger)
        do {
            try await app.run()
        } catch {
            logger.error("metrics: cannot serve on \(listen) ([metrics] listen): \(error)")
            throw error
        }
    }
}
