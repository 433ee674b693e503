import Foundation

/// A task as the journal holds it.
public struct TaskRecord: Sendable, Equatable {
    public var taskID: String
    public var executionID: String
    public var state: TaskState
    /// The task document as received (validated), the source of truth for re-reading the spec.
    public var document: JSONValue
    public var launcher: String
    public var receivedAt: Date
    public var updatedAt: Date
    /// The last event sequence number used for this task.
    public var seq: Int
    public var handle: LaunchHandle?
    public var exitCode: Int32?
    public var failureClass: FailureClass?
    /// The message of the latest state change (nil when it had none).
    public var message: String?
    public var cancelRequested: Bool

    public init(taskID: String, executionID: String, state: TaskState, document: JSONValue, launcher: String,
                receivedAt: Date, updatedAt: Date, seq: Int, handle: LaunchHandle?, exitCode: Int32?,
                failureClass: FailureClass?, message: String?, cancelRequested: Bool) {
        self.taskID = taskID
        self.executionID = executionID
        self.state = state
        self.document = document
        self.launcher = launcher
        self.receivedAt = receivedAt
        self.updatedAt = updatedAt
        self.seq = seq
        self.handle = handle
        self.exitCode = exitCode
        self.failureClass = failureClass
        self.message = message
        self.cancelRequested = cancelRequested
    }
}

public enum Admission: Sendable, Equatable {
    case admitted
    case duplicate(TaskRecord)
}

/// An event waiting in the outbox until the broker confirms it.
public struct OutboxEntry: Sendable, Equatable {
    public var id: Int64
    public var routingKey: String
    public var body: Data

    public init(id: Int64, routingKey: String, body: Data) {
        self.id = id
        self.routingKey = routingKey
        self.body = body
    }
}

/// Events not yet confirmed by the broker. The publisher removes an entry only after the broker confirmed it.
public protocol Outbox: Sendable {
    func pendingEvents(limit: Int) throws -> [OutboxEntry]
    func confirmEvents(_ ids: [Int64]) throws
}

/// The node's single source of truth. Every state change and its event are written in one transaction, so an
/// event can be late but never lost, and never sent for a change that did not happen.
///
/// ## Threading
///
/// Every method is **synchronous and blocking**: it returns once its transaction is committed (a write) or its
/// snapshot is read. A write can wait: `SQLiteJournal` waits up to its busy timeout (10 s) while another process holds
/// the write lock (`fem-client outputs approve|reject` from a shell), and a full or failing disk makes a write slow to
/// fail. So **never call a writing method on Swift's cooperative pool** (from a plain `async` function or an actor on
/// the default executor): the runner calls it on its `JournalThread` (its actor's executor, or `JournalThread.run` /
/// `submit`), other callers on a thread of their own. Reads (`task`, `tasks`, `count`, `status`, `history`,
/// `completedStep`, `pendingEvents`) do not wait for writers (WAL mode) and may be called from anywhere.
///
/// Implementations are **thread-safe** (`Sendable`): any thread may call any method at any time; writes are
/// serialised by the journal, and each read sees a committed state (never half of a transaction).
///
/// ## Errors
///
/// A method throws when its change was not made (nothing is half-written):
/// - an unknown task id (`transition`, `note`), or a transition `TaskState.canMove(to:)` does not allow: a
///   programming error, not worth retrying;
/// - the storage failed: a full disk (its message matches `DiskFull.matches`), an I/O error, a busy timeout. Worth
///   retrying later (the runner retries state changes until they are written, see `UnrecordedChanges`).
/// Reads of an unknown id return nil (or an empty list) instead of throwing.
public protocol Journal: Outbox {
    var nodeID: String { get }

    /// Records a new task in state `received` (with its event), or reports the existing one.
    func admit(_ spec: TaskSpec, document: JSONValue, at: Date) throws -> Admission
    /// Several tasks at once, each admitted or reported as `admit` would; one result per item, in order. A journal
    /// that can writes them in one transaction (group commit); the default admits them one by one.
    func admit(all items: [(spec: TaskSpec, document: JSONValue)], at: Date) -> [Result<Admission, any Error>]
    /// Records an event for a message that could not be accepted. No task row is made: the id stays free for a
    /// later valid task (whose events continue the id's sequence numbers).
    func recordRejection(taskID: String?, executionID: String?, message: String, at: Date) throws
    @discardableResult
    func transition(_ taskID: String, to state: TaskState, detail: EventDetail, at: Date) throws -> TaskEvent
    /// An event without a state change (duplicate, progress, notice).
    @discardableResult
    func note(_ taskID: String, kind: EventKind, detail: EventDetail, at: Date) throws -> TaskEvent
    func task(_ id: String) throws -> TaskRecord?
    func tasks(states: Set<TaskState>?, limit: Int) throws -> [TaskRecord]
    /// How many tasks are in these states, without reading them (the heartbeat asks every few seconds).
    func count(states: Set<TaskState>) throws -> Int
    /// A task's state and when it last changed, without its document (the sandbox sweep asks for every sandbox).
    func status(_ id: String) throws -> (state: TaskState, updatedAt: Date)?
    /// Every event of a task, in order.
    func history(_ taskID: String) throws -> [TaskEvent]
    func setHandle(_ taskID: String, _ handle: LaunchHandle?) throws
    func setCancelRequested(_ taskID: String) throws
    /// Step markers: what stage-in or stage-out already did, so a restarted daemon does not repeat it. Marking a step
    /// again replaces its info.
    func markStep(_ taskID: String, _ step: String, info: String) throws
    /// The info a completed step of the task was marked with (`markStep`), or nil when it is not marked.
    func completedStep(_ step: String, of taskID: String) throws -> String?
}

extension Journal {
    public func counts() throws -> (running: Int, queued: Int) {
        (try count(states: [.stagingIn, .running, .stagingOut]), try count(states: [.received, .queued]))
    }

    public func count(states: Set<TaskState>) throws -> Int { try tasks(states: states, limit: .max).count }

    public func status(_ id: String) throws -> (state: TaskState, updatedAt: Date)? {
        try task(id).map { ($0.state, $0.updatedAt) }
    }
}

extension EventDetail {
    /// A duplicate's detail with the journaled state filled in (`data.state`, and `{state}` in the message), by the
    /// journal in the transaction that writes the event, so that both agree with the event's `state`.
    public func withState(_ state: TaskState) -> EventDetail {
        var d = self
        d.message = d.message?.replacingOccurrences(of: "{state}", with: state.rawValue)
        d.data = (d.data ?? [:]).merging(["state": .string(state.rawValue)]) { $1 }
        return d
    }
}

extension Journal {
    public func admit(all items: [(spec: TaskSpec, document: JSONValue)], at: Date) -> [Result<Admission, any Error>] {
        items.map { item in Result { try admit(item.spec, document: item.document, at: at) } }
    }
}
