import Foundation
import Logging

/// Turns broker deliveries into journal rows. A delivery is acknowledged only after its row is committed; a task
/// id seen before is acknowledged and not run again; a malformed message is rejected with an event and
/// acknowledged, so it never blocks the messages behind it. No delivery is ever held: a task the node will not take
/// now (disk pressure, a drain) or cannot journal goes back to the broker (nack, requeue) after a short wait, with a
/// notice saying why, so the node never sits on its prefetch.
public struct Receiver: Sendable {
    public var nodeID: String
    public var maxMessageBytes: Int
    /// Accounts whose tasks and control messages this node accepts (the AMQP `user_id` RabbitMQ validated against
    /// the publisher's login). Nil: no check (sources that are not a broker).
    public var orchestrators: Set<String>?
    let journal: any Journal
    let runner: Runner
    let logger: Logger
    let eventsAdded: @Sendable () -> Void
    /// Nil while the node takes tasks; else why it does not (the delivery is requeued, not read).
    let admission: @Sendable () -> String?
    /// A node notice sent directly, not through the outbox: reason, message, data.
    let notify: @Sendable (String, String, [String: JSONValue]) -> Void
    let backoff: RequeueBackoff

    public init(nodeID: String, maxMessageBytes: Int, journal: any Journal, runner: Runner, logger: Logger,
                admission: @escaping @Sendable () -> String? = { nil },
                notify: @escaping @Sendable (String, String, [String: JSONValue]) -> Void = { _, _, _ in },
                requeueDelay: Duration = .seconds(1), orchestrators: Set<String>? = nil,
                eventsAdded: @escaping @Sendable () -> Void) {
        self.orchestrators = orchestrators
        self.nodeID = nodeID
        self.maxMessageBytes = maxMessageBytes
        self.journal = journal
        self.runner = runner
        self.logger = logger
        self.admission = admission
        self.notify = notify
        self.backoff = RequeueBackoff(base: requeueDelay)
        self.eventsAdded = eventsAdded
    }

    /// Gives the delivery back to the broker after a wait (longer after each failure in a row, up to 30 s), without
    /// holding up the messages behind it (a cancel among them is still read at once).
    private func requeueLater(_ message: InboundMessage, failed: Bool) {
        let delay = failed ? backoff.failure() : backoff.base
        Task {
            try? await Task.sleep(for: delay)
            message.requeue()
        }
    }

    /// Consumes messages until the source ends.
    public func run(_ source: any TaskSource) async {
        for await message in source.messages() {
            await handle(message)
        }
    }

    public func handle(_ message: InboundMessage) async {
        if let reason = unauthorised(message) {
            // Never under the task id the message claims: that would let anyone occupy an id before its real task.
            reject(message, taskID: nil, executionID: nil, reason: reason, at: Date())
            return
        }
        switch message.channel {
        case .task: await handleTask(message)
        case .control: await handleControl(message)
        }
    }

    /// Why the message's sender may not task or control this node; nil when it may.
    func unauthorised(_ message: InboundMessage) -> String? {
        guard let orchestrators else { return nil }
        let what = message.channel == .task ? "task" : "control message"
        let allowed = orchestrators.sorted().joined(separator: ", ")
        guard let user = message.userID, !user.isEmpty else {
            return "\(what) refused: it carries no user_id, and this node accepts tasks and control messages only from "
                + "its orchestrator accounts (\(allowed))"
        }
        guard orchestrators.contains(user) else {
            let shown = Patterns.matches(#"^[A-Za-z0-9_.@-]{1,64}$"#, user) ? user : "(an unprintable name)"
            return "\(what) refused: it was published by the broker account \"\(shown)\", which is not one of this "
                + "node's orchestrator accounts (\(allowed))"
        }
        return nil
    }

    private func handleTask(_ message: InboundMessage) async {
        if let why = admission() {
            // Not read, not journaled: back to the broker (the node said why in a notice when it began refusing).
            requeueLater(message, failed: false)
            logger.debug("delivery returned to the broker: \(why)")
            return
        }
        let now = Date()
        let value: JSONValue
        do {
            if message.size > maxMessageBytes {
                throw DocumentError.tooLarge(limit: maxMessageBytes, actual: message.size)
            }
            value = try JSONValue.parse(Data(message.body))
        } catch {
            reject(message, taskID: nil, executionID: nil, reason: "\(error)", at: now)
            return
        }
        // Best effort, for the rejected event: which task was this meant to be?
        let claimedID = value["task_id"]?.stringValue.flatMap { Patterns.matches(Patterns.taskID, $0) ? $0 : nil }
        let claimedExecution = value["execution_id"]?.stringValue
            .flatMap { Patterns.matches(Patterns.taskID, $0) ? $0 : nil }
        let spec: TaskSpec
        do {
            spec = try DocumentReader.readTask(value, requireTaskID: true)
        } catch {
            reject(message, taskID: claimedID, executionID: claimedExecution, reason: "invalid task: \(error)", at: now)
            return
        }
        do {
            switch try journal.admit(spec, document: value, at: now) {
            case .admitted:
                logger.info("received \(spec.plan.id) \(spec.plan.version) (\(spec.plan.launcher)), execution \(spec.executionID)",
                            metadata: ["task": "\(spec.taskID)"])
                eventsAdded()
                message.ack()
                backoff.success()
                await runner.enqueue(spec.taskID)
            case .duplicate:
                // The journal fills in the state (`{state}` and data.state) in the same transaction as the event's
                // own `state`, so they always agree.
                let text = "task \(spec.taskID) was already received (now {state}); this delivery was not run again"
                let event = try journal.note(spec.taskID, kind: .duplicate, detail: EventDetail(message: text), at: now)
                logger.notice("duplicate delivery ignored (task is \(event.state.rawValue))",
                              metadata: ["task": "\(spec.taskID)"])
                eventsAdded()
                message.ack()
            }
        } catch {
            // Returned to the broker after a backoff: it comes again, and the journal decides again.
            let delay = backoff.peek()
            logger.error("cannot journal the task; returning it to the broker in \(delay): \(error)",
                         metadata: ["task": "\(spec.taskID)"])
            notify("delivery_returned", "task \(spec.taskID) could not be journaled (\(error)); it was returned to the "
                   + "broker and will be delivered again",
                   ["task_id": .string(spec.taskID), "execution_id": .string(spec.executionID),
                    "error": .string("\(error)")])
            requeueLater(message, failed: true)
        }
    }

    private func reject(_ message: InboundMessage, taskID: String?, executionID: String?, reason: String, at: Date) {
        do {
            try journal.recordRejection(taskID: taskID, executionID: executionID, message: reason, at: at)
            logger.warning("rejected: \(reason)", metadata: taskID.map { ["task": "\($0)"] } ?? [:])
            eventsAdded()
            message.ack()
        } catch {
            logger.error("cannot journal a rejection; returning the message to the broker: \(error)")
            notify("delivery_returned", "a message that is rejected (\(reason)) could not be journaled (\(error)); it "
                   + "was returned to the broker", taskID.map { ["task_id": .string($0), "error": .string("\(error)")] }
                   ?? ["error": .string("\(error)")])
            requeueLater(message, failed: true)
        }
    }

    private func handleControl(_ message: InboundMessage) async {
        defer { message.ack() }
        guard message.size <= maxMessageBytes,
              let control = try? JSONDecoder().decode(ControlMessage.self, from: Data(message.body)) else {
            logger.warning("ignored a malformed control message (\(message.size) bytes)")
            return
        }
        guard control.type == "cancel" else {
            logger.warning("ignored a control message of unknown type \"\(control.type)\"")
            return
        }
        await runner.cancel(control.taskID, reason: control.reason)
    }
}

/// The wait before a delivery goes back to the broker: `base` while all is well, doubling with each journal failure
/// in a row (up to 30 s), so a node whose journal fails does not spin on its deliveries.
public final class RequeueBackoff: @unchecked Sendable {
    let base: Duration
    private let lock = NSLock()
    private var failures = 0

    init(base: Duration) { self.base = base }

    func failure() -> Duration {
        lock.withLock {
            defer { failures += 1 }
            return delay(failures)
        }
    }

    func peek() -> Duration { lock.withLock { delay(failures) } }

    func success() { lock.withLock { failures = 0 } }

    private func delay(_ n: Int) -> Duration { min(base * (1 << min(n, 5)), .seconds(30)) }
}
