import FEMSystem
import Foundation
import Logging

/// Runs `session` on a fresh broker connection until it returns normally or `isStopped` says to give up;
/// a failed or lost connection is retried with exponential backoff (0.5 s doubling to 15 s). `session` gets
/// whether this is a reconnection, to say so in the log.
func runReconnecting(_ endpoint: AMQPEndpoint, label: String, logger: Logger, isStopped: () -> Bool,
                     session: (AMQPConnection, _ reconnected: Bool) throws -> Void) {
    var backoff = 0.5
    var everConnected = false
    while !isStopped() {
        do {
            let conn = try AMQPConnection(endpoint: endpoint)
            let reconnected = everConnected
            everConnected = true
            backoff = 0.5
            try session(conn, reconnected)
            return
        } catch {
            if isStopped() { return }
            logger.warning("\(label): \(error); retrying in \(String(format: "%.1f", backoff)) s")
            let deadline = Date().addingTimeInterval(backoff)
            while Date() < deadline && !isStopped() { Thread.sleep(forTimeInterval: 0.1) }
            backoff = min(backoff * 2, 15)
        }
    }
}
