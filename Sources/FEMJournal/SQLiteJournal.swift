import FEMCore
import Foundation
import GRDB

/// The journal in SQLite (WAL, through GRDB). A state change, its history row and its outbox row are one
/// transaction: after a crash the database says exactly what happened and which events are still to send.
public final class SQLiteJournal: Journal, @unchecked Sendable {
    public let nodeID: String
    public let path: String
    let db: DatabasePool
    /// Hears every committed state change and event (the daemon's `[metrics]`); nothing by default.
    private let metrics: any TaskMetrics

    public init(path: String, nodeID: String, metrics: any TaskMetrics = NoTaskMetrics()) throws {
        self.nodeID = nodeID
        self.path = path
        self.metrics = metrics
        var config = Configuration()
        config.busyMode = .timeout(10)
        // Footprint: the journal is small and the OS caches its file, so each connection keeps a small page cache
        // (512 KiB instead of SQLite's 2 MiB) and the pool opens at most two readers (instead of five).
        config.maximumReaderCount = 2
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            try db.execute(sql: "PRAGMA cache_size = -512")
        }
        db = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(db)
        // The journal can hold tokens of stage-out targets: readable by the node's user only (after migrating, so
        // the WAL and shared-memory files exist too). A file that cannot be protected fails the open, naming it.
        for suffix in ["", "-wal", "-shm"] where suffix.isEmpty || FileManager.default.fileExists(atPath: path + suffix) {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path + suffix)
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE tasks (
                    task_id TEXT PRIMARY KEY,
                    execution_id TEXT NOT NULL,
                    state TEXT NOT NULL,
                    document TEXT NOT NULL,
                    launcher TEXT NOT NULL,
                    received_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    handle TEXT,
                    exit_code INTEGER,
                    failure_class TEXT,
                    message TEXT,
                    cancel_requested INTEGER NOT NULL DEFAULT 0
                );
                CREATE INDEX tasks_state ON tasks(state);
                CREATE TABLE events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    task_id TEXT,
                    seq INTEGER NOT NULL,
                    kind TEXT NOT NULL,
                    state TEXT NOT NULL,
                    at TEXT NOT NULL,
                    body TEXT NOT NULL
                );
                CREATE INDEX events_task ON events(task_id, seq);
                CREATE TABLE outbox (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    routing_key TEXT NOT NULL,
                    body BLOB NOT NULL
                );
                CREATE TABLE steps (
                    task_id TEXT NOT NULL,
                    step TEXT NOT NULL,
                    info TEXT NOT NULL,
                    done_at TEXT NOT NULL,
                    PRIMARY KEY (task_id, step)
                );
                """)
        }
        // The node's tool registry (`fem-client tools`, ToolApprovals.swift).
        m.registerMigration("v2-tool-approvals") { db in try createToolApprovals(db) }
        return m
    }

    // MARK: - Writes

    public func admit(_ spec: TaskSpec, document: JSONValue, at: Date) throws -> Admission {
        try durableWrite { db in try self.admitRow(db, spec, document: document, at: at) }
    }

    /// The writer connection's `synchronous` setting (1 NORMAL, 2 FULL), for tests.
    func writerSynchronousMode() throws -> Int {
        try db.writeWithoutTransaction { try Int.fetchOne($0, sql: "PRAGMA synchronous") ?? -1 }
    }

    /// A write whose commit is on the disk before it returns (`synchronous = FULL` for this transaction; the
    /// journal's other writes keep NORMAL, which survives a crash of the daemon but not of the machine). Admissions
    /// and rejections are what the broker is then told to forget (the ack): they must survive a power loss too.
    private func durableWrite<T>(_ body: (Database) throws -> T) throws -> T {
        try db.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            defer { try? db.execute(sql: "PRAGMA synchronous = NORMAL") }
            var result: Result<T, any Error>?
            try db.inTransaction {
                result = Result { try body(db) }
                if case .failure = result { return .rollback }
                return .commit
            }
            guard let result else { throw DatabaseError(message: "the durable write ran no transaction") }
            return try result.get()
        }
    }

    /// Group commit: the tasks of one burst of deliveries in one transaction (one WAL append instead of one each).
    /// Should that transaction fail, each is tried in its own, so one bad row does not fail the others.
    public func admit(all items: [(spec: TaskSpec, document: JSONValue)], at: Date) -> [Result<Admission, any Error>] {
        if items.count > 1, let all = try? durableWrite({ db in
            try items.map { try self.admitRow(db, $0.spec, document: $0.document, at: at) }
        }) {
            return all.map { .success($0) }
        }
        return items.map { item in Result { try admit(item.spec, document: item.document, at: at) } }
    }

    private func admitRow(_ db: Database, _ spec: TaskSpec, document: JSONValue, at: Date) throws -> Admission {
        if let existing = try Self.fetchTask(db, spec.taskID) { return .duplicate(existing) }
        var doc = document.objectValue ?? [:]
        doc["task_id"] = .string(spec.taskID)
        try db.cachedStatement(sql: """
            INSERT INTO tasks (task_id, execution_id, state, document, launcher, received_at, updated_at, seq)
            VALUES (?, ?, ?, ?, ?, ?, ?, 0)
            """).execute(arguments: [spec.taskID, spec.executionID, TaskState.received.rawValue,
                             String(decoding: JSONValue.object(doc).encoded(), as: UTF8.self), spec.plan.launcher,
                             FEMTime.format(at), FEMTime.format(at)])
        _ = try self.appendEvent(db, taskID: spec.taskID, executionID: spec.executionID, kind: .state,
                                 state: .received, detail: .none, at: at)
        return .admitted
    }

    public func recordRejection(taskID: String?, executionID: String?, message: String, at: Date) throws {
        let event = try durableWrite { db -> TaskEvent in
            // No task row: a rejected message does not use up its task id (a later valid task with that id runs; its
            // events continue the id's sequence numbers). A task we already have is never touched, and is not said to
            // be `rejected`: a bad copy of it gets a notice in its own state.
            if let taskID, let live = try Self.fetchTask(db, taskID) {
                return try self.appendEvent(db, taskID: taskID, executionID: live.executionID, kind: .notice,
                                            state: live.state,
                                            detail: EventDetail(message: "a copy of this task's message was rejected "
                                                                + "(the task goes on): \(message)"), at: at)
            }
            return try self.appendEvent(db, taskID: taskID, executionID: executionID, kind: .state, state: .rejected,
                                        detail: EventDetail(message: message), at: at, updateRow: false)
        }
        if event.kind == .state { metrics.stateChanged(event, from: nil, since: nil) } else { metrics.noted(event) }
    }

    @discardableResult
    public func transition(_ taskID: String, to state: TaskState, detail: EventDetail, at: Date) throws -> TaskEvent {
        let (event, from, since) = try db.write { db -> (TaskEvent, TaskState, Date?) in
            guard let rec = try Self.fetchState(db, taskID) else { throw JournalError.unknownTask(taskID) }
            guard rec.state.canMove(to: state) else {
                throw JournalError.illegalTransition(taskID, rec.state, state)
            }
            try db.cachedStatement(sql: """
                UPDATE tasks SET state = ?, updated_at = ?, exit_code = COALESCE(?, exit_code),
                    failure_class = COALESCE(?, failure_class), message = ? WHERE task_id = ?
                """).execute(arguments: [state.rawValue, FEMTime.format(at), detail.exitCode, detail.failureClass?.rawValue,
                                 detail.message, taskID])
            if state.isTerminal {
                // The task's own stage_out token is needed only until its outputs are delivered.
                try db.cachedStatement(sql: """
                    UPDATE tasks SET document = json_remove(document, '$.stage_out.token')
                    WHERE task_id = ? AND json_extract(document, '$.stage_out.token') IS NOT NULL
                    """).execute(arguments: [taskID])
            }
            return (try self.appendEvent(db, taskID: taskID, executionID: rec.executionID, kind: .state, state: state,
                                         detail: detail, at: at), rec.state, rec.since)
        }
        metrics.stateChanged(event, from: from, since: since)
        return event
    }

    @discardableResult
    public func note(_ taskID: String, kind: EventKind, detail: EventDetail, at: Date) throws -> TaskEvent {
        let event = try db.write { db in
            guard let rec = try Self.fetchState(db, taskID) else { throw JournalError.unknownTask(taskID) }
            return try self.appendEvent(db, taskID: taskID, executionID: rec.executionID, kind: kind, state: rec.state,
                                        detail: kind == .duplicate ? detail.withState(rec.state) : detail, at: at)
        }
        metrics.noted(event)
        return event
    }

    /// Adds the event to the history and the outbox, with the task's next sequence number.
    private func appendEvent(_ db: Database, taskID: String?, executionID: String?, kind: EventKind, state: TaskState,
                             detail: EventDetail, at: Date, updateRow: Bool = true) throws -> TaskEvent {
        var seq = 1
        if let taskID {
            let last = try Int.fetchOne(db.cachedStatement(sql: "SELECT MAX(seq) FROM events WHERE task_id = ?"),
                                        arguments: [taskID]) ?? 0
            seq = last + 1
            if updateRow {
                try db.cachedStatement(sql: "UPDATE tasks SET seq = ? WHERE task_id = ?").execute(arguments: [seq, taskID])
            }
        }
        var event = TaskEvent(kind: kind, nodeID: nodeID, taskID: taskID, executionID: executionID, state: state,
                              seq: seq, time: at, detail: detail)
        if let taskID {
            // Every task event says which attempt it belongs to (the document's `attempt`, 1 when absent).
            event.attempt = try Int.fetchOne(db.cachedStatement(sql: """
                SELECT COALESCE(json_extract(document, '$.attempt'), 1) FROM tasks WHERE task_id = ?
                """), arguments: [taskID]) ?? 1
        }
        let body = event.encoded()
        try db.cachedStatement(sql: "INSERT INTO events (task_id, seq, kind, state, at, body) VALUES (?, ?, ?, ?, ?, ?)")
            .execute(arguments: [taskID, seq, kind.rawValue, state.rawValue, FEMTime.format(at),
                                 String(decoding: body, as: UTF8.self)])
        try db.cachedStatement(sql: "INSERT INTO outbox (routing_key, body) VALUES (?, ?)")
            .execute(arguments: [event.routingKey, body])
        return event
    }

    public func setHandle(_ taskID: String, _ handle: LaunchHandle?) throws {
        let text = try handle.map { String(decoding: try JSONEncoder.fem.encode($0), as: UTF8.self) }
        try db.write { db in
            try db.cachedStatement(sql: "UPDATE tasks SET handle = ? WHERE task_id = ?").execute(arguments: [text, taskID])
        }
    }

    public func setCancelRequested(_ taskID: String) throws {
        try db.write { db in
            try db.execute(sql: "UPDATE tasks SET cancel_requested = 1 WHERE task_id = ?", arguments: [taskID])
        }
    }

    /// An airlock decision, all or nothing, in one transaction: only while the task is `awaiting_approval` and has
    /// no decision yet, the `approval` event, then `steps` (in order), then `decisionStep`. Returns nil, having
    /// written nothing, when the task is no longer waiting or another decision came first (two stewards at once).
    public func recordDecision(_ taskID: String, detail: EventDetail, steps: [(step: String, info: String)],
                               decisionStep: String, decision: String, at: Date) throws -> TaskEvent? {
        let event: TaskEvent? = try db.write { db in
            guard let rec = try Self.fetchState(db, taskID) else { throw JournalError.unknownTask(taskID) }
            guard rec.state == .awaitingApproval else { return nil }
            let decided = try String.fetchOne(db, sql: "SELECT info FROM steps WHERE task_id = ? AND step = ?",
                                              arguments: [taskID, decisionStep])
            guard decided == nil else { return nil }
            let event = try self.appendEvent(db, taskID: taskID, executionID: rec.executionID, kind: .approval,
                                             state: rec.state, detail: detail, at: at)
            let now = FEMTime.format(Date())
            for (step, info) in steps + [(decisionStep, decision)] {
                try db.execute(sql: "INSERT OR REPLACE INTO steps (task_id, step, info, done_at) VALUES (?, ?, ?, ?)",
                               arguments: [taskID, step, info, now])
            }
            return event
        }
        if let event { metrics.noted(event) }
        return event
    }

    public func markStep(_ taskID: String, _ step: String, info: String) throws {
        try db.write { db in
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO steps (task_id, step, info, done_at) VALUES (?, ?, ?, ?)")
                .execute(arguments: [taskID, step, info, FEMTime.format(Date())])
        }
    }

    // MARK: - Reads

    public func completedStep(_ step: String, of taskID: String) throws -> String? {
        try db.read { db in
            try String.fetchOne(db.cachedStatement(sql: "SELECT info FROM steps WHERE task_id = ? AND step = ?"),
                                arguments: [taskID, step])
        }
    }

    public func task(_ id: String) throws -> TaskRecord? {
        try db.read { db in try Self.fetchTask(db, id) }
    }

    public func count(states: Set<TaskState>) throws -> Int {
        try db.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM tasks WHERE state IN (\(states.map { _ in "?" }.joined(separator: ",")))",
                             arguments: StatementArguments(states.map(\.rawValue))) ?? 0
        }
    }

    public func status(_ id: String) throws -> (state: TaskState, updatedAt: Date)? {
        try db.read { db in
            guard let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT state, updated_at FROM tasks WHERE task_id = ?"),
                                             arguments: [id]) else { return nil }
            guard let state = TaskState(rawValue: row["state"]), let updated = FEMTime.parse(row["updated_at"]) else {
                throw JournalError.corrupt(id, "its state or time does not read")
            }
            return (state, updated)
        }
    }

    public func tasks(states: Set<TaskState>?, limit: Int) throws -> [TaskRecord] {
        try db.read { db in
            var sql = "SELECT * FROM tasks"
            var args: [String] = []
            if let states {
                sql += " WHERE state IN (\(states.map { _ in "?" }.joined(separator: ",")))"
                args = states.map(\.rawValue)
            }
            sql += " ORDER BY received_at DESC, rowid DESC LIMIT \(limit)"
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map { try Self.record($0) }
        }
    }

    public func history(_ taskID: String) throws -> [TaskEvent] {
        try db.read { db in
            // An event that no longer decodes is an error, not a gap nobody notices.
            try String.fetchAll(db.cachedStatement(sql: "SELECT body FROM events WHERE task_id = ? ORDER BY seq"), arguments: [taskID])
                .map { try JSONDecoder.fem.decode(TaskEvent.self, from: Data($0.utf8)) }
        }
    }

    public func pendingEvents(limit: Int) throws -> [OutboxEntry] {
        try db.read { db in
            try Row.fetchAll(db.cachedStatement(sql: "SELECT id, routing_key, body FROM outbox ORDER BY id LIMIT ?"),
                             arguments: [limit]).map {
                OutboxEntry(id: $0["id"], routingKey: $0["routing_key"], body: $0["body"])
            }
        }
    }

    public func confirmEvents(_ ids: [Int64]) throws {
        guard !ids.isEmpty else { return }
        try db.write { db in
            try db.execute(sql: "DELETE FROM outbox WHERE id IN (\(ids.map { _ in "?" }.joined(separator: ",")))",
                           arguments: StatementArguments(ids))
        }
    }

    public func outboxCount() throws -> Int {
        try db.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox") ?? 0 }
    }

    /// Empties the stored documents (the messages as received) of tasks that ended before `cutoff`, and drops
    /// their step markers; their rows and events stay (a redelivered task id is still recognised). Returns how many
    /// documents were pruned.
    @discardableResult
    public func pruneDocuments(finishedBefore cutoff: Date) throws -> Int {
        let terminal = TaskState.allCases.filter(\.isTerminal).map(\.rawValue)
        let marks = terminal.map { _ in "?" }.joined(separator: ",")
        return try db.write { db in
            let args = StatementArguments(terminal + [FEMTime.format(cutoff)])
            try db.execute(sql: """
                DELETE FROM steps WHERE task_id IN
                    (SELECT task_id FROM tasks WHERE state IN (\(marks)) AND updated_at < ?)
                """, arguments: args)
            try db.execute(sql: """
                UPDATE tasks SET document = '{}' WHERE state IN (\(marks)) AND updated_at < ? AND document != '{}'
                """, arguments: args)
            return db.changesCount
        }
    }

    /// A task's state, since when it is in it, and its execution id only: what a state change needs, without
    /// reading its document.
    private static func fetchState(_ db: Database, _ id: String) throws
        -> (state: TaskState, executionID: String, since: Date?)? {
        guard let row = try Row.fetchOne(db.cachedStatement(
            sql: "SELECT state, execution_id, updated_at FROM tasks WHERE task_id = ?"), arguments: [id]) else { return nil }
        guard let state = TaskState(rawValue: row["state"]) else {
            throw JournalError.corrupt(id, "state \"\(row["state"] as String)\" is not a known state")
        }
        return (state, row["execution_id"], FEMTime.parse(row["updated_at"]))
    }

    private static func fetchTask(_ db: Database, _ id: String) throws -> TaskRecord? {
        try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM tasks WHERE task_id = ?"), arguments: [id]).map { try record($0) }
    }

    /// A row as it was written, or an error naming what does not read: an unknown state or an unreadable time is
    /// never silently turned into `failed` or "now".
    private static func record(_ row: Row) throws -> TaskRecord {
        let id: String = row["task_id"]
        let doc = (try? JSONValue.parse(Data((row["document"] as String).utf8))) ?? .object([:])
        let handle = (row["handle"] as String?).flatMap { try? JSONDecoder.fem.decode(LaunchHandle.self, from: Data($0.utf8)) }
        guard let state = TaskState(rawValue: row["state"]) else {
            throw JournalError.corrupt(id, "state \"\(row["state"] as String)\" is not a known state")
        }
        guard let receivedAt = FEMTime.parse(row["received_at"]), let updatedAt = FEMTime.parse(row["updated_at"]) else {
            throw JournalError.corrupt(id, "its times do not read (received_at, updated_at)")
        }
        return TaskRecord(taskID: id, executionID: row["execution_id"],
                          state: state, document: doc, launcher: row["launcher"],
                          receivedAt: receivedAt, updatedAt: updatedAt, seq: row["seq"], handle: handle,
                          exitCode: (row["exit_code"] as Int64?).map { Int32(truncatingIfNeeded: $0) },
                          failureClass: (row["failure_class"] as String?).flatMap(FailureClass.init),
                          message: row["message"], cancelRequested: (row["cancel_requested"] as Int64) != 0)
    }
}

public enum JournalError: Error, CustomStringConvertible {
    case unknownTask(String)
    case illegalTransition(String, TaskState, TaskState)
    case corrupt(String, String)

    public var description: String {
        switch self {
        case .unknownTask(let id): "task \(id) is not in the journal"
        case .illegalTransition(let id, let from, let to): "task \(id) cannot go from \(from.rawValue) to \(to.rawValue)"
        case .corrupt(let id, let what): "the journal's row of task \(id) is damaged: \(what)"
        }
    }
}
