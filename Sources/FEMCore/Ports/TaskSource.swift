/// A message from the broker, with the means to acknowledge it once it is safely journaled.
public struct InboundMessage: Sendable {
    /// `pool`: taken from the work pool of that name (`fem.pool.<name>`); one the node cannot take goes back there.
    public enum Channel: Sendable, Equatable { case task, control, pool(String) }

    public var channel: Channel
    public var body: [UInt8]
    /// The size the message declared; larger than `body.count` when the source dropped an oversize body unread.
    public var size: Int
    public var redelivered: Bool
    public var ack: @Sendable () -> Void
    /// Returns the delivery to the broker, which delivers it again (to this node or another consumer): for a task
    /// the node cannot journal now. Never leaves a delivery held.
    public var requeue: @Sendable () -> Void
    /// The account the broker says published it (AMQP `user_id`, validated by RabbitMQ against the publisher's
    /// login); nil when the publisher set none. Only configured orchestrator accounts may send tasks and controls.
    public var userID: String? = nil

    public init(channel: Channel, body: [UInt8], redelivered: Bool, size: Int? = nil,
                ack: @escaping @Sendable () -> Void, requeue: @escaping @Sendable () -> Void = {}) {
        self.channel = channel
        self.body = body
        self.size = max(size ?? body.count, body.count)
        self.redelivered = redelivered
        self.ack = ack
        self.requeue = requeue
    }
}

/// Where tasks come from: the broker in the daemon, a file for `fem-client run`, a fake in tests.
public protocol TaskSource: Sendable {
    func messages() -> AsyncStream<InboundMessage>
}
