import FEMCore
import FEMSystem
import Foundation
import Logging

/// Drains the journal's outbox to `fem.events` with publisher confirms, on its own connection and thread.
/// An entry leaves the outbox only after the broker confirmed it: a broker outage delays events, never loses them.
public final class AMQPEventPublisher: @unchecked Sendable {
    private let endpoint: AMQPEndpoint
    private let outbox: any Outbox
    private let logger: Logger
    private let wakeup = WakeupPipe()
    private let lock = NSLock()
    private var stopped = false
    private var heartbeat: (key: String, body: Data)?
    /// Messages sent without the outbox (node notices, and events the outbox could not take), kept until confirmed.
    private var direct: [(key: String, body: Data)] = []
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)
    public let batchSize: Int

    public init(endpoint: AMQPEndpoint, outbox: any Outbox, logger: Logger, batchSize: Int = 256) {
        self.endpoint = endpoint
        self.outbox = outbox
        self.logger = logger
        self.batchSize = batchSize
    }

    public func start() {
        let t = Thread { [self] in
            runLoop()
            done.signal()
        }
        t.name = "fem-amqp-publisher"
        thread = t
        t.start()
    }

    /// New events are in the outbox.
    public func wake() { wakeup.wake() }

    /// Heartbeats are not journaled: only the newest matters, and it is sent at the next chance.
    public func publishHeartbeat(routingKey: String, body: Data) {
        lock.withLock { heartbeat = (routingKey, body) }
        wakeup.wake()
    }

    /// Publishes `body` without the journal's outbox (which may be what fails: a full disk), persistent and with
    /// confirms; kept in memory until the broker confirmed it (at most 1000; the oldest go first).
    public func publishDirect(routingKey: String, body: Data) {
        lock.withLock {
            direct.append((routingKey, body))
            if direct.count > 1000 { direct.removeFirst(direct.count - 1000) }
        }
        wakeup.wake()
    }

    /// Stops after one more attempt to drain the outbox, waiting at most `timeout`.
    public func stop(timeout: Double = 5) {
        lock.withLock { stopped = true }
        wakeup.wake()
        _ = done.wait(timeout: .now() + timeout)
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func runLoop() {
        runReconnecting(endpoint, label: "event publisher", logger: logger, isStopped: { isStopped }) { conn, again in
            try conn.openChannel(1)
            // Declared by `femctl setup`; the node only looks it up (no configure permission needed).
            try conn.declareExchange(WireNames.eventsExchange, passive: true)
            try conn.enablePublisherConfirms()
            if again { logger.notice("event publisher reconnected") }
            try serve(conn)
        }
    }

    private func serve(_ conn: AMQPConnection) throws {
        while true {
            let stopping = isStopped
            let beat = lock.withLock { () -> (key: String, body: Data)? in
                defer { heartbeat = nil }
                return heartbeat
            }
            let extra = lock.withLock { () -> [(key: String, body: Data)] in
                defer { direct.removeAll() }
                return direct
            }
            let batch: [OutboxEntry]
            do {
                batch = try outbox.pendingEvents(limit: batchSize)
            } catch {
                lock.withLock { direct.insert(contentsOf: extra, at: 0) }
                throw error
            }
            if batch.isEmpty && beat == nil && extra.isEmpty {
                if stopping { return }
                let ready = wakeup.poll(socket: conn.socketDescriptor, timeoutMilliseconds: 1000)
                if ready.socket || !ready.wakeup {
                    // Service the connection (heartbeats, a close from the broker).
                    _ = try conn.nextDelivery(timeoutMilliseconds: 1)
                }
                continue
            }
            // With a password login the events carry the node's account as user_id (the broker checks it), so an
            // orchestrator can tell who published them.
            let userID = endpoint.password != nil && !endpoint.user.isEmpty ? endpoint.user : nil
            var tags: [UInt64] = []
            for entry in batch {
                tags.append(try conn.publish(exchange: WireNames.eventsExchange, routingKey: entry.routingKey,
                                             body: Array(entry.body), userID: userID))
            }
            var directTags: [UInt64] = []
            do {
                for m in extra {
                    directTags.append(try conn.publish(exchange: WireNames.eventsExchange, routingKey: m.key,
                                                       body: Array(m.body)))
                }
            } catch {
                lock.withLock { direct.insert(contentsOf: extra, at: 0) }
                throw error
            }
            if let beat {
                try conn.publish(exchange: WireNames.eventsExchange, routingKey: beat.key, body: Array(beat.body),
                                 persistent: false, userID: userID)
            }
            let nacked: Set<UInt64>
            do {
                nacked = Set(try conn.waitForConfirms())
            } catch {
                lock.withLock { direct.insert(contentsOf: extra, at: 0) }
                throw error
            }
            let refusedDirect = zip(extra, directTags).filter { nacked.contains($0.1) }.map(\.0)
            if !refusedDirect.isEmpty { lock.withLock { direct.insert(contentsOf: refusedDirect, at: 0) } }
            let confirmed = zip(batch, tags).filter { !nacked.contains($0.1) }.map(\.0.id)
            try outbox.confirmEvents(confirmed)
            if !nacked.isEmpty {
                logger.warning("the broker refused \(nacked.count) event(s); they stay in the outbox")
                Thread.sleep(forTimeInterval: 0.5)
            }
            if stopping && batch.count < batchSize { return }
        }
    }
}
