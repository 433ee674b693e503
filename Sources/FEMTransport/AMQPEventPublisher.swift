import FEMCore
import FEMSystem
import Foundation
import Logging
import Synchronization

/// Drains the journal's outbox to `fem.events` with publisher confirms, on its own connection and thread.
/// An entry leaves the outbox only after the broker confirmed it: a broker outage delays events, never loses them.
public final class AMQPEventPublisher: Sendable {
    private let endpoint: AMQPEndpoint
    private let outbox: any Outbox
    private let logger: Logger
    private let wakeup = WakeupPipe()
    private struct State {
        var heartbeat: (key: String, body: Data)?
        /// Messages sent without the outbox (node notices, and events the outbox could not take), kept until
        /// confirmed.
        var direct: [(key: String, body: Data)] = []
        var link = LinkStatus()
        /// Pool tasks to put back on `fem.tasks` (returned or retried ones, dead letters), each with what to do once
        /// the broker confirmed it (true) or refused it (false).
        var tasks: [TaskPublish] = []
    }
    struct TaskPublish {
        var key: String
        var body: Data
        var done: @Sendable (Bool) -> Void
        /// Connections this publish was lost with: a publish the broker refuses by closing the channel (no
        /// permission) must not wedge the events behind it forever.
        var failures = 0
    }
    static let maxTaskPublishFailures = 5

    /// Puts task publishes back after a failed connection, except those that failed too often (told `false`).
    private func keep(_ tasks: [TaskPublish]) {
        var again: [TaskPublish] = []
        for var t in tasks {
            t.failures += 1
            if t.failures >= Self.maxTaskPublishFailures {
                let key = t.key, failures = t.failures
                logger.error("gave up publishing a task with key \(key) after \(failures) failed connections")
                t.done(false)
            } else {
                again.append(t)
            }
        }
        state.withLock { $0.tasks.insert(contentsOf: again, at: 0) }
    }

    /// The publisher's connection to the broker, for the node's metrics.
    public struct LinkStatus: Sendable, Equatable {
        /// Connected, with the events exchange found and confirms on.
        public var connected = false
        /// Connections made again after a loss (the first connection is not counted).
        public var reconnects = 0
        /// When the broker last confirmed a heartbeat (nil: none yet).
        public var lastHeartbeatConfirmed: Date?
    }
    private let state = Mutex(State())
    /// Set by `stop`: ends the loop after one more drain, and any backoff wait at once.
    private let stopping = CancelFlag()
    /// Opens when the publisher's thread has ended.
    private let finished = Latch()
    public let batchSize: Int

    public init(endpoint: AMQPEndpoint, outbox: any Outbox, logger: Logger, batchSize: Int = 256) {
        self.endpoint = endpoint
        self.outbox = outbox
        self.logger = logger
        self.batchSize = batchSize
    }

    /// Starts the publisher's thread (it owns the rabbitmq-c connection, which is not thread-safe).
    public func start() {
        let wakeup = self.wakeup
        stopping.onCancel { wakeup.wake() }
        let t = Thread { [self] in
            nameThread("fem-amqp-publish")
            runLoop()
            finished.open()
        }
        t.name = "fem-amqp-publisher"
        t.start()
    }

    /// New events are in the outbox.
    public func wake() { wakeup.wake() }

    /// Whether the broker connection is up, how often it was made again, and the last confirmed heartbeat.
    public var link: LinkStatus { state.withLock { $0.link } }

    /// Heartbeats are not journaled: only the newest matters, and it is sent at the next chance.
    public func publishHeartbeat(routingKey: String, body: Data) {
        state.withLock { $0.heartbeat = (routingKey, body) }
        wakeup.wake()
    }

    /// Publishes `body` without the journal's outbox (which may be what fails: a full disk), persistent and with
    /// confirms; kept in memory until the broker confirmed it (at most 1000; the oldest go first).
    public func publishDirect(routingKey: String, body: Data) {
        state.withLock {
            $0.direct.append((routingKey, body))
            if $0.direct.count > 1000 { $0.direct.removeFirst($0.direct.count - 1000) }
        }
        wakeup.wake()
    }

    /// Publishes a task on `fem.tasks` with `routingKey` (a work pool's `pool.<name>` or `pool.<name>.dead`),
    /// persistent, with confirms and the node's account as user_id (password logins); `done` gets true once the
    /// broker confirmed it, false when it refused it. Kept (and published again after a reconnect) until then.
    public func publishTask(routingKey: String, body: Data, done: @escaping @Sendable (Bool) -> Void) {
        state.withLock { $0.tasks.append(TaskPublish(key: routingKey, body: body, done: done)) }
        wakeup.wake()
    }

    /// Stops after one more attempt to drain the outbox, waiting at most `timeout` for it (a Service's shutdown
    /// awaits this; no thread is blocked). True when the publisher ended within the time.
    @discardableResult
    public func stop(timeout: Duration = .seconds(5)) async -> Bool {
        stopping.cancel()
        return await finished.wait(upTo: timeout)
    }

    private var isStopped: Bool { stopping.isCancelled }

    private func runLoop() {
        runReconnecting(endpoint, label: "event publisher", logger: logger, stop: stopping) { conn, again in
            try conn.openChannel(1)
            // Declared by `femctl setup`; the node only looks it up (no configure permission needed).
            try conn.declareExchange(WireNames.eventsExchange, passive: true)
            try conn.enablePublisherConfirms()
            if again { logger.notice("event publisher reconnected") }
            state.withLock {
                $0.link.connected = true
                if again { $0.link.reconnects += 1 }
            }
            defer { state.withLock { $0.link.connected = false } }
            try serve(conn)
        }
    }

    private func serve(_ conn: AMQPConnection) throws {
        while true {
            let stopping = isStopped
            let beat = state.withLock { s -> (key: String, body: Data)? in
                defer { s.heartbeat = nil }
                return s.heartbeat
            }
            let extra = state.withLock { s -> [(key: String, body: Data)] in
                defer { s.direct.removeAll() }
                return s.direct
            }
            let tasks = state.withLock { s -> [TaskPublish] in
                defer { s.tasks.removeAll() }
                return s.tasks
            }
            let batch: [OutboxEntry]
            do {
                batch = try outbox.pendingEvents(limit: batchSize)
            } catch {
                // Not sent at all: back as they were.
                state.withLock {
                    $0.direct.insert(contentsOf: extra, at: 0)
                    $0.tasks.insert(contentsOf: tasks, at: 0)
                }
                throw error
            }
            if batch.isEmpty && beat == nil && extra.isEmpty && tasks.isEmpty {
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
            var taskTags: [UInt64] = []
            do {
                for m in extra {
                    directTags.append(try conn.publish(exchange: WireNames.eventsExchange, routingKey: m.key,
                                                       body: Array(m.body)))
                }
                for t in tasks {
                    taskTags.append(try conn.publish(exchange: WireNames.tasksExchange, routingKey: t.key,
                                                     body: Array(t.body), userID: userID))
                }
            } catch {
                state.withLock { $0.direct.insert(contentsOf: extra, at: 0) }
                keep(tasks)
                throw error
            }
            var beatTag: UInt64?
            if let beat {
                beatTag = try conn.publish(exchange: WireNames.eventsExchange, routingKey: beat.key,
                                           body: Array(beat.body), persistent: false, userID: userID)
            }
            let nacked: Set<UInt64>
            do {
                nacked = Set(try conn.waitForConfirms())
            } catch {
                state.withLock { $0.direct.insert(contentsOf: extra, at: 0) }
                keep(tasks)
                throw error
            }
            if let beatTag, !nacked.contains(beatTag) { state.withLock { $0.link.lastHeartbeatConfirmed = Date() } }
            for (t, tag) in zip(tasks, taskTags) { t.done(!nacked.contains(tag)) }
            let refusedDirect = zip(extra, directTags).filter { nacked.contains($0.1) }.map(\.0)
            if !refusedDirect.isEmpty { state.withLock { $0.direct.insert(contentsOf: refusedDirect, at: 0) } }
            let confirmed = zip(batch, tags).filter { !nacked.contains($0.1) }.map(\.0.id)
            try outbox.confirmEvents(confirmed)
            if !nacked.isEmpty {
                logger.warning("the broker refused \(nacked.count) event(s); they stay in the outbox")
                // A pause before trying them again, which a stop ends at once.
                _ = self.stopping.sleep(seconds: 0.5)
            }
            if stopping && batch.count < batchSize { return }
        }
    }
}
