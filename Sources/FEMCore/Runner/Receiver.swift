import Foundation
import Logging

/// Turns broker deliveries into journal rows. A delivery is acknowledged only after its row is committed; a task
/// id seen before is acknowledged and not run again; a malformed message is rejected with an event and
/// acknowledged, so it never blocks the messages behind it.
public struct Receiver: Sendable {
    public var nodeID: String
    public var maxMessageBytes: Int
    let journal: any Journal
    let runner: Runner
    let logger: Logger
    let eventsAdded: @Sendable () -> Void

    public init(nodeID: String, maxMessageBytes: Int, journal: any Journal, runner: Runner, logger: Logger,
                eventsAdded: @escaping @Sendable () -> Void) {
        self.nodeID = nodeID
        self.maxMessageBytes = maxMessageBytes
        self.journal = journal
        self.runner = runner
        self.logger = logger
        self.eventsAdded = eventsAdded
    }

    /// Consumes messages until the source ends.
    public func run(_ source: any TaskSource) async {
        for await message in source.messages() {
            await handle(message)
        }
    }

    public func handle(_ message: InboundMessage) async {
        switch message.channel {
        case .task: await handleTask(message)
        case .control: await handleControl(message)
        }
    }

    private func handleTask(_ message: InboundMessage) async {
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
                await runner.enqueue(spec.taskID)
            case .duplicate(let existing):
                let text = "task \(spec.taskID) was already received (now \(existing.state.rawValue)); "
                    + "this delivery was not run again"
                try journal.note(spec.taskID, kind: .duplicate,
                                 detail: EventDetail(message: text, data: ["state": .string(existing.state.rawValue)]),
                                 at: now)
                logger.notice("duplicate delivery ignored (task is \(existing.state.rawValue))",
                              metadata: ["task": "\(spec.taskID)"])
                eventsAdded()
                message.ack()
            }
        } catch {
            // Not acknowledged: the broker redelivers after a reconnect, and the journal decides again.
            logger.error("cannot journal the task, leaving it unacknowledged: \(error)",
                         metadata: ["task": "\(spec.taskID)"])
        }
    }

    private func reject(_ message: InboundMessage, taskID: String?, executionID: String?, reason: String, at: Date) {
        do {
            try journal.recordRejection(taskID: taskID, executionID: executionID, message: reason, at: at)
            logger.warning("rejected: \(reason)", metadata: taskID.map { ["task": "\($0)"] } ?? [:])
            eventsAdded()
            message.ack()
        } catch {
            logger.error("cannot journal a rejection, leaving it unacknowledged: \(error)")
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
