import CRabbitMQ
#if canImport(Glibc)
import Glibc
#endif

/// Where and how to reach an AMQP broker over TLS. The password, if any, is a secret: it is never part of a
/// description or an error.
public struct AMQPEndpoint: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var vhost: String
    public var user: String
    public var password: String?
    public var caFile: String
    public var certFile: String
    public var keyFile: String
    /// Seconds; 0 disables AMQP heartbeats.
    public var heartbeatSeconds: Int
    public var connectTimeoutSeconds: Int

    public init(host: String, port: Int, vhost: String, user: String, password: String?, caFile: String,
                certFile: String, keyFile: String, heartbeatSeconds: Int = 30, connectTimeoutSeconds: Int = 10) {
        self.host = host
        self.port = port
        self.vhost = vhost
        self.user = user
        self.password = password
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.heartbeatSeconds = heartbeatSeconds
        self.connectTimeoutSeconds = connectTimeoutSeconds
    }

    /// `amqps://user@host:port/vhost`, never with the password.
    public var description: String {
        let v = vhost == "/" ? "%2f" : vhost
        return "amqps://\(user)@\(host):\(port)/\(v)"
    }
}

/// An AMQP failure, classified so that callers can tell "fix your certificates" from "the broker is down".
public struct AMQPError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        case connect          // TCP connect failed or timed out
        case tls              // handshake, peer or hostname verification failed
        case tlsSetup         // local CA / certificate / key files unusable
        case login            // broker refused the credentials
        case closedByServer   // connection.close or channel.close from the broker
        case connectionLost   // socket error, heartbeat timeout
        case protocolError    // anything else the library reported
    }
    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// One received message. Bodies are copied out of rabbitmq-c's buffers before the envelope is destroyed.
public struct AMQPDelivery: Sendable {
    public var channel: UInt16
    public var deliveryTag: UInt64
    public var exchange: String
    public var routingKey: String
    public var redelivered: Bool
    public var body: [UInt8]
    /// The message's `user_id` property: RabbitMQ refuses a publish whose user_id is not the publishing
    /// connection's login, so this names the account that sent it (nil when the publisher set none).
    public var userID: String? = nil
    /// The body size the message's content header declared. With a size limit (`nextDelivery(…maxBodyBytes:)`),
    /// a larger message arrives with an empty `body`: its frames were read and dropped, never held whole.
    public var declaredBodySize: UInt64 = 0
    public var oversize: Bool { UInt64(body.count) < declaredBodySize }
}

/// Owns one rabbitmq-c connection and its TLS socket. Not thread-safe: exactly one thread may use an instance
/// (two threads on one connection corrupt frames). The handle is freed only in `deinit`, so a throwing
/// `init` cannot free it twice.
public final class AMQPConnection {
    // Method ids from amqp_framing.h; the C macros are casts, which Swift does not import.
    static let basicAckMethod: UInt32 = 0x003C_0050
    static let basicNackMethod: UInt32 = 0x003C_0078
    static let basicReturnMethod: UInt32 = 0x003C_0032
    static let basicDeliverMethod: UInt32 = 0x003C_003C
    static let basicGetOkMethod: UInt32 = 0x003C_0047
    static let basicGetEmptyMethod: UInt32 = 0x003C_0048
    static let channelCloseMethod: UInt32 = 0x0014_0028
    static let connectionCloseMethod: UInt32 = 0x000A_0032

    private let state: amqp_connection_state_t
    private var opened = false
    public let endpoint: AMQPEndpoint

    public init(endpoint: AMQPEndpoint) throws {
        guard let state = amqp_new_connection() else {
            throw AMQPError(.protocolError, "rabbitmq-c could not allocate a connection")
        }
        self.state = state
        self.endpoint = endpoint
        guard let socket = amqp_ssl_socket_new(state) else {
            throw AMQPError(.tlsSetup, "rabbitmq-c could not create a TLS socket")
        }
        // Peer and hostname verification are always on; there is no switch to turn them off.
        amqp_ssl_socket_set_verify_peer(socket, 1)
        amqp_ssl_socket_set_verify_hostname(socket, 1)
        if amqp_ssl_socket_set_cacert(socket, endpoint.caFile) != AMQP_STATUS_OK.rawValue {
            throw AMQPError(.tlsSetup, "cannot load the CA certificate file \(endpoint.caFile)")
        }
        if amqp_ssl_socket_set_key(socket, endpoint.certFile, endpoint.keyFile) != AMQP_STATUS_OK.rawValue {
            throw AMQPError(.tlsSetup,
                            "cannot load the client certificate \(endpoint.certFile) with key \(endpoint.keyFile)")
        }
        var handshake = timeval(tv_sec: endpoint.connectTimeoutSeconds, tv_usec: 0)
        _ = amqp_set_handshake_timeout(state, &handshake)
        // The RPC timeout is infinite by default; a broker that stops answering must not hang a thread forever.
        var rpc = timeval(tv_sec: max(endpoint.connectTimeoutSeconds, 10), tv_usec: 0)
        _ = amqp_set_rpc_timeout(state, &rpc)

        var connectTimeout = timeval(tv_sec: endpoint.connectTimeoutSeconds, tv_usec: 0)
        let status = amqp_socket_open_noblock(socket, endpoint.host, Int32(endpoint.port), &connectTimeout)
        if status != AMQP_STATUS_OK.rawValue {
            throw Self.openError(status, endpoint: endpoint)
        }
        opened = true
        let reply: amqp_rpc_reply_t
        if let password = endpoint.password {
            reply = fem_amqp_login_plain(state, endpoint.vhost, 0, 131_072, Int32(endpoint.heartbeatSeconds),
                                         endpoint.user, password)
        } else {
            reply = fem_amqp_login_external(state, endpoint.vhost, 0, 131_072, Int32(endpoint.heartbeatSeconds),
                                            endpoint.user)
        }
        if let error = Self.error(from: reply, doing: "log in to \(endpoint)") {
            if error.code == .connectionLost || error.code == .protocolError {
                // A broker that rejects our client certificate closes the socket right after the handshake, so
                // the failure surfaces here (TLS 1.3) rather than in the open call.
                throw AMQPError(.tls, "the broker at \(endpoint.host):\(endpoint.port) closed the connection during "
                                + "login (\(error.message)); is the client certificate \(endpoint.certFile) "
                                + "signed by a CA the broker trusts?")
            }
            throw AMQPError(error.code == .closedByServer ? .login : error.code, error.message)
        }
    }

    deinit {
        if opened {
            _ = amqp_connection_close(state, Int32(AMQP_REPLY_SUCCESS))
        }
        amqp_destroy_connection(state)
    }

    private static func openError(_ status: Int32, endpoint: AMQPEndpoint) -> AMQPError {
        let text = String(cString: amqp_error_string2(status))
        let place = "\(endpoint.host):\(endpoint.port)"
        switch status {
        case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
            return AMQPError(.tls, "TLS: the broker certificate at \(place) does not match the name \(endpoint.host)")
        case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue:
            return AMQPError(.tls, "TLS: the broker certificate at \(place) is not signed by the CA in "
                             + "\(endpoint.caFile)")
        case AMQP_STATUS_SSL_CONNECTION_FAILED.rawValue, AMQP_STATUS_SSL_ERROR.rawValue:
            return AMQPError(.tls, "TLS handshake with \(place) failed (\(text)); check the CA file "
                             + "\(endpoint.caFile) and that the broker accepts the client certificate "
                             + "\(endpoint.certFile)")
        default:
            return AMQPError(.connect, "cannot connect to the broker at \(place): \(text)")
        }
    }

    /// Turns an `amqp_rpc_reply_t` into an error, or nil when it is normal.
    static func error(from reply: amqp_rpc_reply_t, doing what: String) -> AMQPError? {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return nil
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            let text = String(cString: amqp_error_string2(reply.library_error))
            let code: AMQPError.Code
            switch reply.library_error {
            case AMQP_STATUS_CONNECTION_CLOSED.rawValue, AMQP_STATUS_SOCKET_ERROR.rawValue,
                 AMQP_STATUS_HEARTBEAT_TIMEOUT.rawValue, AMQP_STATUS_SSL_ERROR.rawValue,
                 AMQP_STATUS_SOCKET_CLOSED.rawValue, AMQP_STATUS_TIMEOUT.rawValue:
                code = .connectionLost
            default:
                code = .protocolError
            }
            return AMQPError(code, "cannot \(what): \(text)")
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if reply.reply.id == connectionCloseMethod, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return AMQPError(.closedByServer, "cannot \(what): the broker closed the connection: "
                                 + "\(close.reply_code) \(string(close.reply_text))")
            }
            if reply.reply.id == channelCloseMethod, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return AMQPError(.closedByServer, "cannot \(what): the broker closed the channel: "
                                 + "\(close.reply_code) \(string(close.reply_text))")
            }
            return AMQPError(.closedByServer, "cannot \(what): the broker answered with method \(reply.reply.id)")
        default:
            return AMQPError(.protocolError, "cannot \(what): no reply from the library")
        }
    }

    static func string(_ bytes: amqp_bytes_t) -> String {
        guard bytes.len > 0, let p = bytes.bytes else { return "" }
        let buffer = UnsafeRawBufferPointer(start: p, count: bytes.len)
        return String(decoding: buffer, as: UTF8.self)
    }

    /// rabbitmq-c keeps `amqp_bytes_t` as pointer + length; a Swift String's C pointer lives only for one call,
    /// so every string argument is copied for the duration of `body`.
    private func withBytes<R>(_ strings: [String], _ body: ([amqp_bytes_t]) throws -> R) rethrows -> R {
        let copies = strings.map { strdup($0)! }
        defer { copies.forEach { free($0) } }
        return try body(copies.map { amqp_bytes_t(len: strlen($0), bytes: UnsafeMutableRawPointer($0)) })
    }

    private func check(_ what: String) throws {
        if let error = Self.error(from: amqp_get_rpc_reply(state), doing: what) { throw error }
    }

    // MARK: - Topology

    public func openChannel(_ channel: UInt16) throws {
        _ = amqp_channel_open(state, channel)
        try check("open channel \(channel)")
    }

    /// `passive`: only checks that the exchange exists (needs no configure permission); a missing one closes the
    /// channel with NOT_FOUND.
    public func declareExchange(_ name: String, type: String = "topic", durable: Bool = true, channel: UInt16 = 1,
                                passive: Bool = false) throws {
        withBytes([name, type]) { b in
            _ = amqp_exchange_declare(state, channel, b[0], b[1], passive ? 1 : 0, durable ? 1 : 0, 0, 0,
                                      amqp_empty_table)
        }
        try check(passive ? "find exchange \(name) (declared by `femctl setup`)" : "declare exchange \(name)")
    }

    public func declareQueue(_ name: String, durable: Bool = true, exclusive: Bool = false, autoDelete: Bool = false,
                             channel: UInt16 = 1) throws -> String {
        let declared = withBytes([name]) { b in
            amqp_queue_declare(state, channel, name.isEmpty ? amqp_empty_bytes : b[0], 0, durable ? 1 : 0,
                               exclusive ? 1 : 0, autoDelete ? 1 : 0, amqp_empty_table)
        }
        guard let ok = declared else {
            try check("declare queue \(name)")
            throw AMQPError(.protocolError, "cannot declare queue \(name)")
        }
        return Self.string(ok.pointee.queue)
    }

    /// A durable quorum queue (`x-queue-type = quorum`): replicated on a cluster, it keeps a delivery count; work
    /// pools use it. Declaring it again with the same arguments is a no-op.
    public func declareQuorumQueue(_ name: String, channel: UInt16 = 1) throws {
        let declared = withBytes([name]) { b in fem_amqp_queue_declare_quorum(state, channel, b[0]) }
        if declared == nil {
            try check("declare quorum queue \(name)")
            throw AMQPError(.protocolError, "cannot declare quorum queue \(name)")
        }
    }

    /// How many consumers a queue has, by a passive declare: nil when the queue does not exist (the broker then
    /// closes `channel`, so give a channel of its own). `femctl submit` warns with it when no node takes a queue.
    public func queueConsumers(_ name: String, channel: UInt16) throws -> UInt32? {
        let declared = withBytes([name]) { b in
            amqp_queue_declare(state, channel, b[0], 1, 0, 0, 0, amqp_empty_table)
        }
        guard let ok = declared else {
            let reply = amqp_get_rpc_reply(state)
            if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION,
               reply.reply.id == Self.channelCloseMethod,
               let close = reply.reply.decoded?.assumingMemoryBound(to: amqp_channel_close_t.self),
               close.pointee.reply_code == 404 {
                var closeOK = amqp_channel_close_ok_t()
                _ = amqp_send_method(state, channel, Self.channelCloseMethod + 1, &closeOK)  // channel.close-ok
                return nil
            }
            try check("look up queue \(name)")
            throw AMQPError(.protocolError, "cannot look up queue \(name)")
        }
        return ok.pointee.consumer_count
    }

    public func bindQueue(_ queue: String, exchange: String, routingKey: String, channel: UInt16 = 1) throws {
        withBytes([queue, exchange, routingKey]) { b in
            _ = amqp_queue_bind(state, channel, b[0], b[1], b[2], amqp_empty_table)
        }
        try check("bind queue \(queue) to \(exchange) with \(routingKey)")
    }

    public func setPrefetch(_ count: UInt16, channel: UInt16 = 1) throws {
        _ = amqp_basic_qos(state, channel, 0, count, 0)
        try check("set prefetch \(count)")
    }

    public func consume(queue: String, channel: UInt16 = 1, noAck: Bool = false) throws {
        withBytes([queue]) { b in
            _ = amqp_basic_consume(state, channel, b[0], amqp_empty_bytes, 0, noAck ? 1 : 0, 0, amqp_empty_table)
        }
        try check("consume from \(queue)")
    }

    public func enablePublisherConfirms(channel: UInt16 = 1) throws {
        _ = amqp_confirm_select(state, channel)
        try check("enable publisher confirms")
    }

    // MARK: - Messages

    /// The socket's file descriptor, for `poll()` beside a wake-up pipe.
    public var socketDescriptor: Int32 {
        guard let socket = amqp_get_socket(state) else { return -1 }
        return amqp_socket_get_sockfd(socket)
    }

    /// True when rabbitmq-c already holds data or frames, so `poll()` on the socket would wrongly say "nothing".
    public var hasBufferedData: Bool {
        amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0
    }

    /// A delivery whose frames are still arriving, per channel.
    private struct PartialDelivery {
        var delivery: AMQPDelivery
        var bodySize: UInt64?
        var received: UInt64 = 0
        var keep: Bool = true
    }
    private var partial: [UInt16: PartialDelivery] = [:]

    /// Waits up to `timeoutMilliseconds` for a delivery, reading frame by frame so that a message whose content
    /// header declares more than `maxBodyBytes` is never held whole: its body frames are read and dropped as they
    /// come (memory stays at one frame), and it arrives with an empty body and `declaredBodySize` set, to be
    /// answered and acknowledged. rabbitmq-c 0.11's `amqp_consume_message` would allocate the whole body first,
    /// and its `amqp_simple_wait_frame_on_channel` is not public, so frames of all channels go through one small
    /// state machine here (deliveries on different channels may interleave).
    public func nextDelivery(timeoutMilliseconds: Int, maxBodyBytes: Int) throws -> AMQPDelivery? {
        let deadline = monotonicSeconds() + Double(timeoutMilliseconds) / 1000
        while true {
            amqp_maybe_release_buffers(state)
            let remaining = max(0, deadline - monotonicSeconds())
            var tv = timeval(tv_sec: Int(remaining), tv_usec: Int((remaining - Double(Int(remaining))) * 1_000_000))
            var frame = amqp_frame_t()
            let status = amqp_simple_wait_frame_noblock(state, &frame, &tv)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
            if status != AMQP_STATUS_OK.rawValue {
                throw AMQPError(.connectionLost, "connection lost: \(String(cString: amqp_error_string2(status)))")
            }
            let channel = frame.channel
            switch Int32(frame.frame_type) {
            case AMQP_FRAME_METHOD:
                let id = frame.payload.method.id
                if id == Self.connectionCloseMethod || id == Self.channelCloseMethod {
                    throw AMQPError(.closedByServer, "the broker closed the connection or channel")
                }
                guard id == Self.basicDeliverMethod, let decoded = frame.payload.method.decoded else { continue }
                let d = decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
                partial[channel] = PartialDelivery(delivery: AMQPDelivery(
                    channel: channel, deliveryTag: d.delivery_tag, exchange: Self.string(d.exchange),
                    routingKey: Self.string(d.routing_key), redelivered: d.redelivered != 0, body: []))
            case AMQP_FRAME_HEADER:
                guard var p = partial[channel] else { continue }
                let size = frame.payload.properties.body_size
                p.bodySize = size
                p.delivery.declaredBodySize = size
                if let props = frame.payload.properties.decoded {
                    p.delivery.userID = Self.userID(of: props.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee)
                }
                p.keep = size <= UInt64(max(0, maxBodyBytes))
                if p.keep { p.delivery.body.reserveCapacity(Int(size)) }
                if size == 0 {
                    partial[channel] = nil
                    return p.delivery
                }
                partial[channel] = p
            case AMQP_FRAME_BODY:
                // Taken out of the dictionary while it grows: appending to a copy the dictionary still shares would
                // copy the whole body so far at every frame.
                guard var p = partial.removeValue(forKey: channel), let size = p.bodySize else { continue }
                let fragment = frame.payload.body_fragment
                p.received += UInt64(fragment.len)
                if p.keep, fragment.len > 0, let bytes = fragment.bytes {
                    p.delivery.body.append(contentsOf: UnsafeRawBufferPointer(start: bytes, count: fragment.len))
                }
                if p.received >= size { return p.delivery }
                partial[channel] = p
            default:
                continue
            }
        }
    }

    /// basic.get: asks `queue` for one message (pull). True when one is on its way: it arrives through
    /// `nextDelivery(timeoutMilliseconds:maxBodyBytes:)` like a pushed delivery (same size limit, frame by frame);
    /// false when the queue is empty. Deliveries of other channels that arrive meanwhile stay queued in rabbitmq-c.
    public func basicGet(queue: String, channel: UInt16) throws -> Bool {
        let reply = withBytes([queue]) { b in amqp_basic_get(state, channel, b[0], 0) }
        if let error = Self.error(from: reply, doing: "get a message from \(queue)") { throw error }
        if reply.reply.id == Self.basicGetEmptyMethod { return false }
        guard reply.reply.id == Self.basicGetOkMethod, let decoded = reply.reply.decoded else {
            throw AMQPError(.protocolError, "cannot get a message from \(queue): unexpected reply \(reply.reply.id)")
        }
        let ok = decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee
        partial[channel] = PartialDelivery(delivery: AMQPDelivery(
            channel: channel, deliveryTag: ok.delivery_tag, exchange: Self.string(ok.exchange),
            routingKey: Self.string(ok.routing_key), redelivered: ok.redelivered != 0, body: []))
        return true
    }

    /// Waits up to `timeoutMilliseconds` for a delivery. Returns nil on timeout or on a frame that was not a
    /// delivery (heartbeats, confirms); throws when the connection or channel is gone.
    public func nextDelivery(timeoutMilliseconds: Int) throws -> AMQPDelivery? {
        amqp_maybe_release_buffers(state)
        var envelope = amqp_envelope_t()
        var timeout = timeval(tv_sec: timeoutMilliseconds / 1000, tv_usec: Int((timeoutMilliseconds % 1000) * 1000))
        let reply = amqp_consume_message(state, &envelope, &timeout, 0)
        if reply.reply_type == AMQP_RESPONSE_NORMAL {
            defer { amqp_destroy_envelope(&envelope) }
            let body: [UInt8]
            if envelope.message.body.len > 0, let p = envelope.message.body.bytes {
                body = Array(UnsafeRawBufferPointer(start: p, count: envelope.message.body.len))
            } else {
                body = []
            }
            return AMQPDelivery(channel: envelope.channel, deliveryTag: envelope.delivery_tag,
                                exchange: Self.string(envelope.exchange), routingKey: Self.string(envelope.routing_key),
                                redelivered: envelope.redelivered != 0, body: body,
                                userID: Self.userID(of: envelope.message.properties))
        }
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_TIMEOUT.rawValue {
            return nil
        }
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
            && reply.library_error == AMQP_STATUS_UNEXPECTED_STATE.rawValue {
            // A frame other than a delivery arrived (as rabbitmq-c's examples handle it): read it and see whether
            // the broker is closing something.
            var frame = amqp_frame_t()
            var zero = timeval(tv_sec: 0, tv_usec: 0)
            let status = amqp_simple_wait_frame_noblock(state, &frame, &zero)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return nil }
            if status != AMQP_STATUS_OK.rawValue {
                throw AMQPError(.connectionLost, "connection lost: \(String(cString: amqp_error_string2(status)))")
            }
            if frame.frame_type == UInt8(AMQP_FRAME_METHOD) {
                let id = frame.payload.method.id
                if id == Self.connectionCloseMethod || id == Self.channelCloseMethod {
                    throw AMQPError(.closedByServer, "the broker closed the connection or channel")
                }
            }
            return nil
        }
        throw Self.error(from: reply, doing: "receive a message")
            ?? AMQPError(.protocolError, "cannot receive a message")
    }

    /// The `user_id` property of a message's properties, when set.
    static func userID(of properties: amqp_basic_properties_t) -> String? {
        guard properties._flags & 0x0010 != 0 else { return nil }  // AMQP_BASIC_USER_ID_FLAG
        return string(properties.user_id)
    }

    /// `multiple`: acknowledges every unacknowledged delivery on the channel up to and including `deliveryTag`.
    public func ack(deliveryTag: UInt64, channel: UInt16 = 1, multiple: Bool = false) throws {
        let status = amqp_basic_ack(state, channel, deliveryTag, multiple ? 1 : 0)
        if status != AMQP_STATUS_OK.rawValue {
            throw AMQPError(.connectionLost, "cannot ack: \(String(cString: amqp_error_string2(status)))")
        }
    }

    /// Returns a delivery to the broker (`requeue`: to its queue, for this or another consumer to take again).
    public func nack(deliveryTag: UInt64, requeue: Bool, channel: UInt16 = 1) throws {
        let status = amqp_basic_nack(state, channel, deliveryTag, 0, requeue ? 1 : 0)
        if status != AMQP_STATUS_OK.rawValue {
            throw AMQPError(.connectionLost, "cannot nack: \(String(cString: amqp_error_string2(status)))")
        }
    }

    /// Publishes one persistent JSON message. With confirms enabled, the broker's ack arrives later
    /// (see `waitForConfirms`).
    @discardableResult
    public func publish(exchange: String, routingKey: String, body: [UInt8], persistent: Bool = true,
                        channel: UInt16 = 1, userID: String? = nil, mandatory: Bool = false) throws -> UInt64 {
        var props = amqp_basic_properties_t()
        props._flags = 0x8000 | 0x1000  // AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG
        props.delivery_mode = persistent ? 2 : 1
        if userID != nil { props._flags |= 0x0010 }  // AMQP_BASIC_USER_ID_FLAG: the broker checks it is our login
        let status: Int32 = withBytes(["application/json", exchange, routingKey, userID ?? ""]) { b in
            props.content_type = b[0]
            if userID != nil { props.user_id = b[3] }
            return body.withUnsafeBufferPointer { buffer in
                let bytes = amqp_bytes_t(len: buffer.count, bytes: UnsafeMutableRawPointer(mutating: buffer.baseAddress))
                return amqp_basic_publish(state, channel, b[1], b[2], mandatory ? 1 : 0, 0, &props, bytes)
            }
        }
        if status != AMQP_STATUS_OK.rawValue {
            throw AMQPError(.connectionLost, "cannot publish: \(String(cString: amqp_error_string2(status)))")
        }
        publishedTags += 1
        return publishedTags
    }

    /// Waits until the broker has confirmed (acked or nacked) every publish made so far on channel 1 in confirm
    /// mode. Returns the publish tags (counting from 1 on the channel) that were nacked since the last call.
    public func waitForConfirms(timeoutSeconds: Int = 30) throws -> Set<UInt64> {
        let lastTag = publishedTags
        let deadline = monotonicSeconds() + Double(timeoutSeconds)
        while confirmedThrough < lastTag {
            let remaining = deadline - monotonicSeconds()
            if remaining <= 0 {
                throw AMQPError(.connectionLost, "the broker did not confirm publishes within \(timeoutSeconds) s")
            }
            var frame = amqp_frame_t()
            var tv = timeval(tv_sec: Int(remaining), tv_usec: Int((remaining - Double(Int(remaining))) * 1_000_000))
            let status = amqp_simple_wait_frame_noblock(state, &frame, &tv)
            if status == AMQP_STATUS_TIMEOUT.rawValue { continue }
            if status != AMQP_STATUS_OK.rawValue {
                throw AMQPError(.connectionLost, "connection lost while waiting for confirms: "
                                + String(cString: amqp_error_string2(status)))
            }
            guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { continue }
            let id = frame.payload.method.id
            if id == Self.basicAckMethod, let d = frame.payload.method.decoded {
                let ack = d.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
                confirm(tag: ack.delivery_tag, multiple: ack.multiple != 0, nack: false)
            } else if id == Self.basicNackMethod, let d = frame.payload.method.decoded {
                let nack = d.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
                confirm(tag: nack.delivery_tag, multiple: nack.multiple != 0, nack: true)
            } else if id == Self.basicReturnMethod {
                // A `mandatory` publish no queue took (its content frames follow and are skipped above).
                returnedPublishes += 1
            } else if id == Self.connectionCloseMethod || id == Self.channelCloseMethod {
                throw AMQPError(.closedByServer, "the broker closed the connection while confirming publishes")
            }
        }
        defer { nackedTags.removeAll() }
        return nackedTags
    }

    /// `mandatory` publishes the broker returned because no queue was bound for their routing key (seen while
    /// waiting for confirms; RabbitMQ sends the return before the confirm). Reading it resets it.
    public func takeReturnedPublishes() -> Int {
        defer { returnedPublishes = 0 }
        return returnedPublishes
    }
    private var returnedPublishes = 0

    /// Publisher-confirm bookkeeping: tags are per channel and cumulative for the connection's life.
    private var publishedTags: UInt64 = 0
    private var confirmedThrough: UInt64 = 0
    private var confirmedSingles = Set<UInt64>()
    private var nackedTags = Set<UInt64>()

    private func confirm(tag: UInt64, multiple: Bool, nack: Bool) {
        if multiple {
            if nack { for t in (confirmedThrough + 1)...max(tag, confirmedThrough + 1) where t <= tag { nackedTags.insert(t) } }
            confirmedThrough = max(confirmedThrough, tag)
        } else {
            if nack { nackedTags.insert(tag) }
            confirmedSingles.insert(tag)
        }
        while confirmedSingles.remove(confirmedThrough + 1) != nil { confirmedThrough += 1 }
        confirmedSingles = confirmedSingles.filter { $0 > confirmedThrough }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
