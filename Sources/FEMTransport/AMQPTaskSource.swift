import FEMCore
import FEMSystem
import Foundation
import Logging
import Synchronization

/// Consumes the node's task queue and control queue. One dedicated thread owns the connection; acks from async
/// code wake it through a pipe. After a reconnect, acks for the old connection's delivery tags are dropped
/// (the broker redelivers those messages, and the journal recognises them as duplicates).
public final class AMQPTaskSource: TaskSource, Sendable {
    public static let taskChannel: UInt16 = 1
    public static let controlChannel: UInt16 = 2
    /// Work pools are read here, by basic.get (see `pullPools`).
    public static let poolChannel: UInt16 = 3

    private let endpoint: AMQPEndpoint
    private let nodeID: String
    private let prefetch: UInt16
    private let maxMessageBytes: Int
    private let logger: Logger
    /// Work pools consumed besides the node's own queue.
    private let pools: [String]
    /// How many more tasks the node could start now (free slots); the source holds at most that many pool
    /// deliveries not yet settled.
    private let poolRoom: @Sendable () -> Int
    private let wakeup = WakeupPipe()
    private typealias Ack = (generation: Int, channel: UInt16, tag: UInt64, requeue: Bool)
    private struct State {
        var pendingAcks: [Ack] = []
        var generation = 0
        var started = false
        /// No pool is asked for work before this time: set after a delivery was passed on, so another node gets a
        /// chance at it first.
        var poolsPausedUntil = ContinuousClock.now
        /// The pool whose queue the outstanding basic.get asked (get-ok received, message still arriving): the
        /// delivery belongs to it, whatever its routing key says.
        var poolAsked: String?
    }
    private let state = Mutex(State())
    /// Set by `stop`: ends the loop, and any backoff wait at once.
    private let stopping = CancelFlag()
    private let continuation: AsyncStream<InboundMessage>.Continuation
    /// Deliveries of the current connection not yet acked or returned, by channel. Only the consumer thread uses it
    /// (the lock is for the compiler's sake, never contended).
    private let unsettled = Mutex<[UInt16: Set<UInt64>]>([:])
    private let stream: AsyncStream<InboundMessage>
    private let connection: @Sendable (Bool) -> Void

    /// `maxMessageBytes`: a message whose content header declares more is read and dropped frame by frame, never
    /// held whole, and handed on with an empty body and its declared size (the receiver rejects it).
    /// `connection`: told `true` each time the consumer is connected (queues declared, consuming) and `false` when
    /// that connection is lost (the daemon's status file and systemd's READY=1).
    public init(endpoint: AMQPEndpoint, nodeID: String, prefetch: Int, maxMessageBytes: Int = 1 << 20, logger: Logger,
                pools: [String] = [], poolRoom: @escaping @Sendable () -> Int = { 0 },
                connection: @escaping @Sendable (Bool) -> Void = { _ in }) {
        self.pools = pools
        self.poolRoom = poolRoom
        self.connection = connection
        self.endpoint = endpoint
        self.nodeID = nodeID
        self.prefetch = UInt16(clamping: max(1, prefetch))
        self.maxMessageBytes = maxMessageBytes
        self.logger = logger
        let (stream, continuation) = AsyncStream<InboundMessage>.makeStream()
        self.stream = stream
        self.continuation = continuation
    }

    public func messages() -> AsyncStream<InboundMessage> {
        let start = state.withLock { s -> Bool in
            defer { s.started = true }
            return !s.started
        }
        if start {
            let wakeup = self.wakeup
            stopping.onCancel { wakeup.wake() }
            let thread = Thread { [self] in
                nameThread("fem-amqp-consume")
                runLoop()
            }
            thread.name = "fem-amqp-consumer"
            thread.start()
        }
        return stream
    }

    public func stop() {
        stopping.cancel()
        wakeup.wake()
    }

    private var isStopped: Bool { stopping.isCancelled }

    /// After this node passed a pool delivery on: it asks the pools for nothing for `seconds`, so the delivery goes
    /// to another node rather than straight back here.
    public func pausePools(seconds: Double) {
        let until = ContinuousClock.now.advanced(by: .seconds(seconds))
        state.withLock { $0.poolsPausedUntil = max($0.poolsPausedUntil, until) }
    }

    /// Declares the node's side of wire protocol v1 on a connection: its two queues and their bindings. The shared
    /// exchanges are only looked up (a passive declare): `femctl setup` declares them, so a node's broker account
    /// needs no configure permission on them (which would also let it delete them).
    public static func declareTopology(_ conn: AMQPConnection, nodeID: String, prefetch: UInt16) throws {
        try conn.openChannel(taskChannel)
        try conn.declareExchange(WireNames.tasksExchange, channel: taskChannel, passive: true)
        let queue = WireNames.taskQueue(node: nodeID)
        _ = try conn.declareQueue(queue, channel: taskChannel)
        try conn.bindQueue(queue, exchange: WireNames.tasksExchange, routingKey: WireNames.nodeKey(nodeID),
                           channel: taskChannel)
        try conn.bindQueue(queue, exchange: WireNames.tasksExchange, routingKey: WireNames.broadcastKey,
                           channel: taskChannel)
        try conn.setPrefetch(prefetch, channel: taskChannel)

        try conn.openChannel(controlChannel)
        try conn.declareExchange(WireNames.controlExchange, channel: controlChannel, passive: true)
        let control = WireNames.controlQueue(node: nodeID)
        _ = try conn.declareQueue(control, channel: controlChannel)
        try conn.bindQueue(control, exchange: WireNames.controlExchange, routingKey: WireNames.nodeKey(nodeID),
                           channel: controlChannel)
        try conn.setPrefetch(32, channel: controlChannel)
    }

    /// Work pools: durable quorum queues `fem.pool.<name>` bound to `fem.tasks` with `pool.<name>`, and their
    /// dead-letter queues `fem.pool.<name>.dead` (where a task no node could take ends), on the pool channel.
    public static func declarePools(_ conn: AMQPConnection, pools: [String]) throws {
        guard !pools.isEmpty else { return }
        try conn.openChannel(poolChannel)
        for pool in pools {
            for (queue, key) in [(WireNames.poolQueue(pool), WireNames.poolKey(pool)),
                                 (WireNames.deadPoolQueue(pool), WireNames.deadPoolKey(pool))] {
                try conn.declareQuorumQueue(queue, channel: poolChannel)
                try conn.bindQueue(queue, exchange: WireNames.tasksExchange, routingKey: key, channel: poolChannel)
            }
        }
    }

    private func runLoop() {
        runReconnecting(endpoint, label: "broker connection", logger: logger, stop: stopping) { conn, again in
            try Self.declareTopology(conn, nodeID: nodeID, prefetch: prefetch)
            try conn.consume(queue: WireNames.taskQueue(node: nodeID), channel: Self.taskChannel)
            try conn.consume(queue: WireNames.controlQueue(node: nodeID), channel: Self.controlChannel)
            try Self.declarePools(conn, pools: pools)
            let gen = state.withLock { s -> Int in
                s.generation += 1
                s.pendingAcks.removeAll()
                return s.generation
            }
            unsettled.withLock { $0.removeAll() }
            logger.notice("\(again ? "reconnected" : "connected") to the broker at \(endpoint)")
            connection(true)
            defer { connection(false) }
            try serve(conn, generation: gen)
        }
        continuation.finish()
    }

    private func serve(_ conn: AMQPConnection, generation gen: Int) throws {
        var pull = PoolPull()
        while !isStopped {
            try flushAcks(conn, generation: gen)
            try pullPools(conn, &pull)
            if conn.hasBufferedData {
                if try receive(conn, timeout: 1000, generation: gen) == Self.poolChannel { pull.awaiting = false }
                continue
            }
            // While a pool message is arriving, or the pools may be asked again soon, wait briefly.
            let wait = pull.awaiting || !pools.isEmpty ? 100 : 1000
            let ready = wakeup.poll(socket: conn.socketDescriptor, timeoutMilliseconds: wait)
            if ready.socket {
                if try receive(conn, timeout: 1000, generation: gen) == Self.poolChannel { pull.awaiting = false }
            } else if !ready.wakeup {
                // Idle: let rabbitmq-c process heartbeats and notice a dead connection.
                if try receive(conn, timeout: 1, generation: gen) == Self.poolChannel { pull.awaiting = false }
            }
        }
        try flushAcks(conn, generation: gen)
        continuation.finish()
    }

    /// Where the pool pull stands on one connection.
    struct PoolPull {
        /// A basic.get answered get-ok; its message is still arriving.
        var awaiting = false
        /// The next pool to ask first (round robin).
        var next = 0
        /// When the pools may be asked again after they were all empty.
        var notBefore = ContinuousClock.now
    }

    /// Prefetch follows free capacity: the node asks its pools for one task at a time (basic.get) and only while it
    /// holds fewer unsettled pool deliveries than it could start now, so a busy node never sits on work an idle node
    /// could run. Chosen over a consumer with basic.qos because quorum queues have no channel-wide (global) QoS, and
    /// a per-consumer prefetch changed by a new basic.qos applies only to consumers made after it: following the free
    /// slots would mean cancelling and re-consuming at every change, and the deliveries the old consumer still held
    /// would not count against the new one's limit. basic.get holds exactly what was asked for. An empty round asks
    /// again after 0.5 s; a delivery that arrived lets the next one be asked for at once.
    private func pullPools(_ conn: AMQPConnection, _ pull: inout PoolPull) throws {
        guard !pools.isEmpty, !pull.awaiting else { return }
        let now = ContinuousClock.now
        guard now >= pull.notBefore, now >= state.withLock({ $0.poolsPausedUntil }) else { return }
        let held = unsettled.withLock { $0[Self.poolChannel]?.count ?? 0 }
        guard poolRoom() > held else { return }
        for i in 0..<pools.count {
            let pool = pools[(pull.next + i) % pools.count]
            if try conn.basicGet(queue: WireNames.poolQueue(pool), channel: Self.poolChannel) {
                state.withLock { $0.poolAsked = pool }
                pull.awaiting = true
                pull.next = (pull.next + i + 1) % pools.count
                return
            }
        }
        pull.notBefore = now.advanced(by: .milliseconds(500))
    }

    private func flushAcks(_ conn: AMQPConnection, generation gen: Int) throws {
        let acks = state.withLock { s -> [Ack] in
            defer { s.pendingAcks.removeAll() }
            return s.pendingAcks
        }
        var acked: [UInt16: Set<UInt64>] = [:]
        for ack in acks where ack.generation == gen {
            if ack.requeue {
                try conn.nack(deliveryTag: ack.tag, requeue: true, channel: ack.channel)
                _ = unsettled.withLock { $0[ack.channel]?.remove(ack.tag) }
            } else {
                acked[ack.channel, default: []].insert(ack.tag)
            }
        }
        for (channel, tags) in acked {
            let open = unsettled.withLock { $0[channel] ?? [] }
            for (tag, multiple) in Self.coalesce(acks: tags, unsettled: open) {
                try conn.ack(deliveryTag: tag, channel: channel, multiple: multiple)
            }
            unsettled.withLock { $0[channel] = open.subtracting(tags) }
        }
    }

    /// The acks to send for `acks` (delivery tags of one channel) given the channel's unsettled deliveries: the run
    /// of the lowest unsettled tags that are all being acked goes as one ack with `multiple` (its highest tag), the
    /// rest one by one. A delivery still held (to be requeued, or not yet journaled) is never covered by `multiple`.
    static func coalesce(acks: Set<UInt64>, unsettled: Set<UInt64>) -> [(tag: UInt64, multiple: Bool)] {
        var run: UInt64?
        var runLength = 0
        for tag in unsettled.union(acks).sorted() {
            guard acks.contains(tag) else { break }
            run = tag
            runLength += 1
        }
        guard let last = run, runLength > 1 else { return acks.sorted().map { ($0, false) } }
        return [(last, true)] + acks.filter { $0 > last }.sorted().map { ($0, false) }
    }

    /// Hands on the next delivery, if one arrives within `timeout`; returns its channel.
    @discardableResult
    private func receive(_ conn: AMQPConnection, timeout: Int, generation gen: Int) throws -> UInt16? {
        guard let d = try conn.nextDelivery(timeoutMilliseconds: timeout, maxBodyBytes: maxMessageBytes) else { return nil }
        let channel: InboundMessage.Channel
        switch d.channel {
        case Self.controlChannel: channel = .control
        case Self.poolChannel:
            // The pool is the one whose queue the basic.get asked (recorded by `pullPools`), not a guess from the
            // routing key: a message published to one pool's key may sit in another's queue (dead-lettering, a
            // shovel). Without a recorded ask (cannot happen: this channel only reads by basic.get) the delivery
            // is returned rather than attributed to a pool it may not belong to.
            guard let name = state.withLock({ s -> String? in defer { s.poolAsked = nil }; return s.poolAsked }) else {
                _ = unsettled.withLock { $0[d.channel, default: []].insert(d.deliveryTag) }
                state.withLock { $0.pendingAcks.append((gen, d.channel, d.deliveryTag, true)) }
                return d.channel
            }
            channel = .pool(name)
        default: channel = .task
        }
        _ = unsettled.withLock { $0[d.channel, default: []].insert(d.deliveryTag) }
        var message = InboundMessage(channel: channel, body: d.body, redelivered: d.redelivered,
                                     size: Int(clamping: d.declaredBodySize), ack: { [weak self] in
            guard let self else { return }
            self.state.withLock { $0.pendingAcks.append((gen, d.channel, d.deliveryTag, false)) }
            self.wakeup.wake()
        }, requeue: { [weak self] in
            guard let self else { return }
            self.state.withLock { $0.pendingAcks.append((gen, d.channel, d.deliveryTag, true)) }
            self.wakeup.wake()
        })
        message.userID = d.userID
        continuation.yield(message)
        return d.channel
    }
}
