/// A message from the broker, with the means to acknowledge it once it is safely journaled.
public struct InboundMessage: Sendable {
    public enum Channel: Sendable { case task, control }

    public var channel: Channel
    public var body: [UInt8]
    /// The size the message declared; larger than `body.count` when the source dropped an oversize body unread.
    public var size: Int
    public var redelivered: Bool
    public var ack: @Sendable () -> Void

    public init(channel: Channel, body: [UInt8], redelivered: Bool, size: Int? = nil,
                ack: @escaping @Sendable () -> Void) {
        self.channel = channel
        self.body = body
        self.size = max(size ?? body.count, body.count)
        self.redelivered = redelivered
        self.ack = ack
    }
}

/// Where tasks come from: the broker in the daemon, a file for `fem-client run`, a fake in tests.
public protocol TaskSource: Sendable {
    func messages() -> AsyncStream<InboundMessage>
}
