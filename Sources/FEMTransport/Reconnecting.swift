import FEMSystem
import Foundation
import Logging

/// Runs `session` on a fresh broker connection until it returns normally or `stop` is set; a failed or lost
/// connection is retried with exponential backoff (0.5 s doubling to 15 s), a wait that `stop` ends at once.
/// `session` gets whether this is a reconnection, to say so in the log.
func runReconnecting(_ endpoint: AMQPEndpoint, label: String, logger: Logger, stop: CancelFlag,
                     session: (AMQPConnection, _ reconnected: Bool) throws -> Void) {
    var backoff = 0.5
    var everConnected = false
    while !stop.isCancelled {
        do {
            let conn = try AMQPConnection(endpoint: endpoint)
            let reconnected = everConnected
            everConnected = true
            backoff = 0.5
            try session(conn, reconnected)
            return
        } catch {
            if stop.isCancelled { return }
            logger.warning("\(label): \(error); retrying in \(String(format: "%.1f", backoff)) s")
            guard stop.sleep(seconds: backoff) else { return }
            backoff = min(backoff * 2, 15)
        }
    }
}
