import Foundation

/// A journal in memory with the same rules as the SQLite one (legal transitions, per-task sequence numbers,
/// outbox). For tests of the core and for tools that need no durability.
public final class MemoryJournal: Journal, @unchecked Sendable {
    public let nodeID: String
    private let lock = NSLock()
    private var rows: [String: TaskRecord] = [:]
    private var order: [String] = []
    private var events: [String: [TaskEvent]] = [:]
    private var orphanEvents: [TaskEvent] = []
    private var outbox: [OutboxEntry] = []
    private var nextOutboxID: Int64 = 1
    private var steps: [String: String] = [:]

    public init(nodeID: String) {
        self.nodeID = nodeID
    }

    private func append(_ taskID: String?, _ executionID: String?, _ kind: EventKind, _ state: TaskState,
                        _ detail: EventDetail, _ at: Date) -> TaskEvent {
        let seq = taskID.map { (events[$0]?.last?.seq ?? 0) + 1 } ?? 1
        let e = TaskEvent(kind: kind, nodeID: nodeID, taskID: taskID, executionID: executionID, state: state, seq: seq,
                          time: at, detail: detail)
        if let taskID {
            events[taskID, default: []].append(e)
            rows[taskID]?.seq = seq
        } else {
            orphanEvents.append(e)
        }
        outbox.append(OutboxEntry(id: nextOutboxID, routingKey: e.routingKey, body: e.encoded()))
        nextOutboxID += 1
        return e
    }

    public func admit(_ spec: TaskSpec, document: JSONValue, at: Date) throws -> Admission {
        lock.withLock {
            if let r = rows[spec.taskID] { return .duplicate(r) }
            var doc = document.objectValue ?? [:]
            doc["task_id"] = .string(spec.taskID)
            rows[spec.taskID] = TaskRecord(taskID: spec.taskID, executionID: spec.executionID, state: .received,
                                           document: .object(doc), launcher: spec.plan.launcher, receivedAt: at,
                                           updatedAt: at, seq: 0, handle: nil, exitCode: nil, failureClass: nil,
                                           message: nil, cancelRequested: false)
            order.append(spec.taskID)
            _ = append(spec.taskID, spec.executionID, .state, .received, .none, at)
            return .admitted
        }
    }

    public func recordRejection(taskID: String?, executionID: String?, message: String, at: Date) throws {
        lock.withLock {
            // No task row: a rejected message does not use up its task id. A live task is not said to be rejected.
            if let taskID, let live = rows[taskID] {
                _ = append(taskID, live.executionID, .notice, live.state, EventDetail(
                    message: "a copy of this task's message was rejected (the task goes on): \(message)"), at)
                return
            }
            _ = append(taskID, executionID, .state, .rejected, EventDetail(message: message), at)
        }
    }

    public func transition(_ taskID: String, to state: TaskState, detail: EventDetail, at: Date) throws -> TaskEvent {
        try lock.withLock {
            guard var r = rows[taskID] else { throw MemoryJournalError.unknownTask(taskID) }
            guard r.state.canMove(to: state) else { throw MemoryJournalError.illegal(r.state, state) }
            r.state = state
            r.updatedAt = at
            r.exitCode = detail.exitCode ?? r.exitCode
            r.failureClass = detail.failureClass ?? r.failureClass
            r.message = detail.message
            rows[taskID] = r
            return append(taskID, r.executionID, .state, state, detail, at)
        }
    }

    public func note(_ taskID: String, kind: EventKind, detail: EventDetail, at: Date) throws -> TaskEvent {
        try lock.withLock {
            guard let r = rows[taskID] else { throw MemoryJournalError.unknownTask(taskID) }
            return append(taskID, r.executionID, kind, r.state, kind == .duplicate ? detail.withState(r.state) : detail, at)
        }
    }

    public func task(_ id: String) throws -> TaskRecord? { lock.withLock { rows[id] } }

    public func tasks(states: Set<TaskState>?, limit: Int) throws -> [TaskRecord] {
        lock.withLock {
            Array(order.reversed().compactMap { rows[$0] }.filter { states?.contains($0.state) ?? true }.prefix(limit))
        }
    }

    public func history(_ taskID: String) throws -> [TaskEvent] { lock.withLock { events[taskID] ?? [] } }

    public func setHandle(_ taskID: String, _ handle: LaunchHandle?) throws { lock.withLock { rows[taskID]?.handle = handle } }

    public func setCancelRequested(_ taskID: String) throws { lock.withLock { rows[taskID]?.cancelRequested = true } }

    public func markStep(_ taskID: String, _ step: String, info: String) throws {
        lock.withLock { steps["\(taskID)\u{0}\(step)"] = info }
    }

    public func completedStep(_ step: String, of taskID: String) throws -> String? {
        lock.withLock { steps["\(taskID)\u{0}\(step)"] }
    }

    public func pendingEvents(limit: Int) throws -> [OutboxEntry] { lock.withLock { Array(outbox.prefix(limit)) } }

    public func confirmEvents(_ ids: [Int64]) throws {
        let set = Set(ids)
        lock.withLock { outbox.removeAll { set.contains($0.id) } }
    }

    /// Events without a task id (rejections of unreadable messages).
    public var unattributedEvents: [TaskEvent] { lock.withLock { orphanEvents } }
}

public enum MemoryJournalError: Error {
    case unknownTask(String)
    case illegal(TaskState, TaskState)
}
