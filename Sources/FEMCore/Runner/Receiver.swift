import Foundation
import Logging
import Synchronization

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
    /// Work pools: whether this node takes a pool task, and how one it does not take goes back.
    let pools: PoolPlacement?
    /// Node accounts whose returned pool tasks this node accepts (besides the orchestrators').
    public var poolPeers: Set<String>
    /// The node's attributes as last fingerprinted: what tasks' `constraints` are evaluated against.
    let attributes: @Sendable () -> NodeAttributes

    public init(nodeID: String, maxMessageBytes: Int, journal: any Journal, runner: Runner, logger: Logger,
                admission: @escaping @Sendable () -> String? = { nil },
                notify: @escaping @Sendable (String, String, [String: JSONValue]) -> Void = { _, _, _ in },
                requeueDelay: Duration = .seconds(1), orchestrators: Set<String>? = nil,
                pools: PoolPlacement? = nil, poolPeers: Set<String> = [],
                attributes: @escaping @Sendable () -> NodeAttributes = { NodeAttributes() },
                eventsAdded: @escaping @Sendable () -> Void) {
        self.pools = pools
        self.poolPeers = poolPeers
        self.attributes = attributes
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

    /// Consumes messages until the source ends (or this task is cancelled). The deliveries that arrived while the
    /// previous ones were being journaled are handled together: their tasks go into the journal in one
    /// transaction (group commit), and are acknowledged after it (the source sends one ack with `multiple`).
    public func run(_ source: any TaskSource) async {
        let inbox = Inbox()
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await message in source.messages() { inbox.put(message) }
                inbox.finish()
            }
            while let batch = await inbox.take() {
                await handle(batch)
            }
        }
    }

    /// Handles deliveries in order; consecutive valid tasks among them are journaled in one transaction.
    public func handle(_ batch: [InboundMessage]) async {
        var group: [(message: InboundMessage, spec: TaskSpec, document: JSONValue)] = []
        for message in batch {
            if message.channel == .task, unauthorised(message) == nil {
                if let task = await read(message) { group.append((message, task.spec, task.document)) }
                continue
            }
            await admit(group)
            group = []
            await handle(message)
        }
        await admit(group)
    }

    public func handle(_ message: InboundMessage) async {
        if let reason = unauthorised(message) {
            // Never under the task id the message claims: that would let anyone occupy an id before its real task.
            await reject(message, taskID: nil, executionID: nil, reason: reason, at: Date())
            return
        }
        switch message.channel {
        case .task: await handleTask(message)
        case .control: await handleControl(message)
        case .pool(let name): await handlePoolTask(message, pool: name)
        }
    }

    /// A task from a work pool: taken (journaled like a task of the node's own queue) when this node can start it
    /// now, else returned to the pool with this node's reason.
    private func handlePoolTask(_ message: InboundMessage, pool: String) async {
        guard var task = await read(message) else { return }
        if task.spec.pool == nil, case .object(var fields) = task.document {
            // Journaled with its pool, so that a retry (even after a restart) knows where the task goes back to.
            let ticket = PoolTicket(name: pool)
            fields["pool"] = ticket.json
            task.document = .object(fields)
            task.spec.pool = ticket
        }
        guard let pools else {
            await admit([(message, task.spec, task.document)])
            return
        }
        // Constraints first: a pool task this node does not match goes to another node, not `declined` here.
        let verdict = constraintVerdict(for: task.spec)
        if !verdict.matched {
            let reason = verdict.reason ?? "constraints not met by this node"
            logger.info("pool \(pool): passed on (\(reason))", metadata: ["task": "\(task.spec.taskID)"])
            await pools.pass(message, task.document, pool, reason)
            return
        }
        if let reason = await pools.gate(task.spec, task.document, pool) {
            logger.info("pool \(pool): passed on (\(reason))", metadata: ["task": "\(task.spec.taskID)"])
            await pools.pass(message, task.document, pool, reason)
            return
        }
        await admit([(message, task.spec, task.document)])
    }

    /// Why the message's sender may not task or control this node; nil when it may.
    func unauthorised(_ message: InboundMessage) -> String? {
        guard let orchestrators else { return nil }
        let what = message.channel == .control ? "control message" : "task"
        var accepted = orchestrators
        if case .pool = message.channel { accepted.formUnion(poolPeers) }
        let allowed = accepted.sorted().joined(separator: ", ")
        guard let user = message.userID, !user.isEmpty else {
            return "\(what) refused: it carries no user_id, and this node accepts tasks and control messages only from "
                + "its orchestrator accounts (\(allowed))"
        }
        guard accepted.contains(user) else {
            let shown = Patterns.matches(#"^[A-Za-z0-9_.@-]{1,64}$"#, user) ? user : "(an unprintable name)"
            return "\(what) refused: it was published by the broker account \"\(shown)\", which is not one of this "
                + "node's orchestrator accounts\(message.channel == .control || message.channel == .task ? "" : " or pool peers") (\(allowed))"
        }
        return nil
    }

    private func handleTask(_ message: InboundMessage) async {
        guard let task = await read(message) else { return }
        await admit([(message, task.spec, task.document)])
    }

    /// The task a delivery carries, or nil when it was already dealt with (requeued while the node takes no tasks,
    /// or rejected with an event).
    private func read(_ message: InboundMessage) async -> (spec: TaskSpec, document: JSONValue)? {
        if let why = admission() {
            // Not read, not journaled: back to the broker (the node said why in a notice when it began refusing).
            requeueLater(message, failed: false)
            logger.debug("delivery returned to the broker: \(why)")
            return nil
        }
        let now = Date()
        let value: JSONValue
        do {
            if message.size > maxMessageBytes {
                throw DocumentError.tooLarge(limit: maxMessageBytes, actual: message.size)
            }
            value = try JSONValue.parse(Data(message.body))
        } catch {
            await reject(message, taskID: nil, executionID: nil, reason: "\(error)", at: now)
            return nil
        }
        // Best effort, for the rejected event: which task was this meant to be?
        let claimedID = value["task_id"]?.stringValue.flatMap { Patterns.matches(Patterns.taskID, $0) ? $0 : nil }
        let claimedExecution = value["execution_id"]?.stringValue
            .flatMap { Patterns.matches(Patterns.taskID, $0) ? $0 : nil }
        let spec: TaskSpec
        do {
            spec = try DocumentReader.readTask(value, requireTaskID: true)
        } catch {
            await reject(message, taskID: claimedID, executionID: claimedExecution, reason: "invalid task: \(error)", at: now)
            return nil
        }
        return (spec, value)
    }

    /// Journals the tasks (one transaction when there are several), then acknowledges each delivery and hands the
    /// admitted tasks to the runner.
    private func admit(_ group: [(message: InboundMessage, spec: TaskSpec, document: JSONValue)]) async {
        guard !group.isEmpty else { return }
        let now = Date()
        let items = group.map { ($0.spec, $0.document) }
        let journal = self.journal
        // On the runner's journal thread, never on the cooperative pool: a write may wait for SQLite's lock.
        let results: [Result<Admission, any Error>]
        do {
            results = try await runner.journalThread.run { journal.admit(all: items, at: now) }
        } catch {
            results = items.map { _ in .failure(error) }
        }
        // All acks first (the source sends them together), then the runner gets the tasks.
        var admitted: [String] = []
        var unmet: [(String, String)] = []
        for (item, result) in zip(group, results) {
            if await settle(item.message, spec: item.spec, result: result, at: now) {
                // A task this node does not meet the constraints of ends here, journaled and declined with why.
                let verdict = constraintVerdict(for: item.spec)
                if verdict.matched {
                    admitted.append(item.spec.taskID)
                } else {
                    unmet.append((item.spec.taskID, verdict.reason ?? "constraints not met by this node"))
                }
            }
        }
        for (id, reason) in unmet { await runner.record(id, .declined, EventDetail(message: reason)) }
        for id in admitted { await runner.enqueue(id) }
    }

    /// Whether this node meets the task's constraints (its plan's and its own), against the node's attributes now.
    public func constraintVerdict(for task: TaskSpec) -> ConstraintVerdict {
        task.constraintVerdict(on: attributes())
    }

    /// Acknowledges the delivery once its task is journaled (or returns it to the broker); true when the task is
    /// new and is to run.
    private func settle(_ message: InboundMessage, spec: TaskSpec, result: Result<Admission, any Error>,
                        at now: Date) async -> Bool {
        do {
            switch try result.get() {
            case .admitted:
                logger.info("received \(spec.plan.id) \(spec.plan.version) (\(spec.plan.launcher)), execution \(spec.executionID)",
                            metadata: ["task": "\(spec.taskID)"])
                eventsAdded()
                message.ack()
                backoff.success()
                return true
            case .duplicate:
                // The journal fills in the state (`{state}` and data.state) in the same transaction as the event's
                // own `state`, so they always agree.
                let text = "task \(spec.taskID) was already received (now {state}); this delivery was not run again"
                let journal = self.journal
                let event = try await runner.journalThread.run {
                    try journal.note(spec.taskID, kind: .duplicate, detail: EventDetail(message: text), at: now)
                }
                logger.notice("duplicate delivery ignored (task is \(event.state.rawValue))",
                              metadata: ["task": "\(spec.taskID)"])
                eventsAdded()
                message.ack()
                return false
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
            return false
        }
    }

    private func reject(_ message: InboundMessage, taskID: String?, executionID: String?, reason: String,
                        at: Date) async {
        do {
            let journal = self.journal
            try await runner.journalThread.run {
                try journal.recordRejection(taskID: taskID, executionID: executionID, message: reason, at: at)
            }
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
public final class RequeueBackoff: Sendable {
    let base: Duration
    /// Journal failures in a row.
    private let failures = Mutex(0)

    init(base: Duration) { self.base = base }

    func failure() -> Duration {
        failures.withLock { n in
            defer { n += 1 }
            return delay(n)
        }
    }

    func peek() -> Duration { failures.withLock { delay($0) } }

    func success() { failures.withLock { $0 = 0 } }

    private func delay(_ n: Int) -> Duration { min(base * (1 << min(n, 5)), .seconds(30)) }
}

/// The receiver's queue of deliveries: the consuming task puts them in one by one, the receiver takes all there
/// are at once (nil once the source ended and everything was taken).
final class Inbox: Sendable {
    private struct State {
        var buffer: [InboundMessage] = []
        var finished = false
        var waiter: CheckedContinuation<[InboundMessage]?, Never>?
    }
    private let state = Mutex(State())

    func put(_ message: InboundMessage) {
        let waiter = state.withLock { s -> CheckedContinuation<[InboundMessage]?, Never>? in
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.buffer.append(message)
            return nil
        }
        waiter?.resume(returning: [message])
    }

    func finish() {
        let waiter = state.withLock { s -> CheckedContinuation<[InboundMessage]?, Never>? in
            s.finished = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: nil)
    }

    func take() async -> [InboundMessage]? {
        await withCheckedContinuation { (c: CheckedContinuation<[InboundMessage]?, Never>) in
            let ready = state.withLock { s -> [InboundMessage]?? in
                if !s.buffer.isEmpty {
                    defer { s.buffer = [] }
                    return .some(s.buffer)
                }
                if s.finished { return .some(nil) }
                s.waiter = c
                return .none
            }
            if let ready { c.resume(returning: ready) }
        }
    }
}
