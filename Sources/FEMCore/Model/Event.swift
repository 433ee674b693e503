import Foundation

/// The detail object of an event. Known fields are typed; `data` carries the rest (progress metrics, the
/// manifest summary, the duplicate's state).
public struct EventDetail: Sendable, Codable, Equatable {
    public var exitCode: Int32?
    public var failureClass: FailureClass?
    public var message: String?
    public var data: [String: JSONValue]?

    public init(exitCode: Int32? = nil, failureClass: FailureClass? = nil, message: String? = nil,
                data: [String: JSONValue]? = nil) {
        self.exitCode = exitCode
        self.failureClass = failureClass
        self.message = message
        self.data = data
    }

    enum CodingKeys: String, CodingKey {
        case exitCode = "exit_code"
        case failureClass = "failure_class"
        case message
        case data
    }

    public static let none = EventDetail()
}

/// What an event reports: a state change, or something that happened without one.
public enum EventKind: String, Sendable, Codable {
    case state
    case duplicate
    case progress
    case notice
    /// An airlock decision on a task's outputs (who, when, why), journaled by `fem-client outputs approve|reject`.
    case approval
    /// A pool task no node could take: given up after its passes, moved to the pool's dead-letter queue; the detail
    /// lists every node's reason. Sent by the node that gave it up (not journaled: the task never was on it).
    case unplaceable
}

/// Wire protocol v1: one task event, published on `fem.events` with key `node.<id>.task.<state|kind>`.
public struct TaskEvent: Sendable, Codable, Equatable {
    public static let schemaVersion = 1

    public var schemaVersion: Int
    public var kind: EventKind
    public var nodeID: String
    public var taskID: String?
    public var executionID: String?
    public var state: TaskState
    /// Per task, starting at 1, without gaps: an orchestrator can order events and notice a missing one.
    public var seq: Int
    public var time: Date
    public var detail: EventDetail
    /// Which attempt of the task this is (1 for the first; a pool task retried elsewhere comes with the next).
    public var attempt: Int?

    public init(kind: EventKind, nodeID: String, taskID: String?, executionID: String?, state: TaskState, seq: Int,
                time: Date, detail: EventDetail) {
        self.schemaVersion = Self.schemaVersion
        self.kind = kind
        self.nodeID = nodeID
        self.taskID = taskID
        self.executionID = executionID
        self.state = state
        self.seq = seq
        self.time = time
        self.detail = detail
    }

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case kind
        case nodeID = "node_id"
        case taskID = "task_id"
        case executionID = "execution_id"
        case state, seq, time, detail, attempt
    }

    public var routingKey: String {
        "node.\(nodeID).task.\(kind == .state ? state.rawValue : kind.rawValue)"
    }

    public func encoded() -> Data { (try? JSONEncoder.fem.encode(self)) ?? Data() }
}

/// Wire protocol v1: the node's periodic sign of life, key `node.<id>.heartbeat`.
public struct Heartbeat: Sendable, Codable, Equatable {
    public var schemaVersion = 1
    public var kind = "heartbeat"
    /// The wire protocol version the node speaks (`WireNames.protocolVersion`).
    public var protocolVersion: Int? = WireNames.protocolVersion
    public var nodeID: String
    public var version: String
    public var time: Date
    public var running: Int
    public var queued: Int
    public var freeDiskBytes: UInt64?
    public var launchers: [String]
    public var datasets: [DatasetAdvert]
    /// Set while the node takes no new tasks because of a fault (`disk`: free space below `node.min_free_mb`),
    /// with the reason; absent when all is well.
    public var pressure: String?
    /// State changes the journal refused and the node keeps trying to write (their tasks' real states are in memory).
    public var unrecorded: Int?
    /// The node is draining for a stop: it takes no new tasks, and running ones finish.
    public var draining: Bool?
    /// The node's attributes (what `constraints` are evaluated against), a flat object.
    public var attributes: NodeAttributes?
    /// `[node.capacity]`: what task resources may reserve in all, and what is free of it now.
    public var capacity: Capacity?
    public var free: Capacity?

    public init(nodeID: String, version: String, time: Date, running: Int, queued: Int, freeDiskBytes: UInt64?,
                launchers: [String], datasets: [DatasetAdvert] = []) {
        self.nodeID = nodeID
        self.version = version
        self.time = time
        self.running = running
        self.queued = queued
        self.freeDiskBytes = freeDiskBytes
        self.launchers = launchers
        self.datasets = datasets
    }

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case kind
        case protocolVersion = "protocol"
        case nodeID = "node_id"
        case version, time, running, queued
        case freeDiskBytes = "free_disk_bytes"
        case launchers, datasets, pressure, unrecorded, draining
        case attributes
        case capacity, free
    }

    public var routingKey: String { "node.\(nodeID).heartbeat" }
}

/// Wire protocol v1: news about the node itself, key `node.<id>.notice`: disk pressure and its end, a log that
/// cannot be written, a delivery returned to the broker because it could not be journaled. Not journaled (the journal
/// may be what fails): sent directly with publisher confirms, kept in memory until the broker confirmed it.
public struct NodeNotice: Sendable, Codable, Equatable {
    public var schemaVersion = 1
    public var kind = "node_notice"
    public var nodeID: String
    public var time: Date
    /// A short word for what happened: `disk_pressure`, `disk_pressure_ended`, `log_dropping`, `log_recovered`,
    /// `delivery_returned`, `docker_unreachable`, `draining`.
    public var reason: String
    public var message: String
    public var data: [String: JSONValue]?

    public init(nodeID: String, time: Date = Date(), reason: String, message: String, data: [String: JSONValue]? = nil) {
        self.nodeID = nodeID
        self.time = time
        self.reason = reason
        self.message = message
        self.data = data
    }

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case kind
        case nodeID = "node_id"
        case time, reason, message, data
    }

    public var routingKey: String { "node.\(nodeID).notice" }
}

/// What the heartbeat says about a dataset: its id and labels, never its host path.
public struct DatasetAdvert: Sendable, Codable, Equatable {
    public var id: String
    public var labels: [String: String]

    public init(id: String, labels: [String: String]) {
        self.id = id
        self.labels = labels
    }
}

/// Wire protocol v1: a control message on `fem.control`, key `node.<id>`.
public struct ControlMessage: Sendable, Codable, Equatable {
    public var schemaVersion: Int
    public var type: String
    public var taskID: String
    public var reason: String?

    public init(type: String = "cancel", taskID: String, reason: String? = nil) {
        self.schemaVersion = 1
        self.type = type
        self.taskID = taskID
        self.reason = reason
    }

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case type
        case taskID = "task_id"
        case reason
    }
}

/// Exchange and queue names of the wire protocol, in one place.
public enum WireNames {
    /// docs/protocol.md's version. 2: deliveries go to `<url>/<execution_id>/<node_id>/<task_id>/<path>`; 3: a plan may
    /// carry an Ed25519 `signature` over its canonical form.
    public static let protocolVersion = 3
    public static let tasksExchange = "fem.tasks"
    public static let controlExchange = "fem.control"
    public static let eventsExchange = "fem.events"
    public static func taskQueue(node: String) -> String { "fem.node.\(node)" }
    public static func controlQueue(node: String) -> String { "fem.node.\(node).control" }
    public static func nodeKey(_ node: String) -> String { "node.\(node)" }
    /// A work pool: the quorum queue `fem.pool.<name>`, bound to `fem.tasks` with the key `pool.<name>`; tasks no
    /// node could take end in `fem.pool.<name>.dead` (key `pool.<name>.dead`).
    public static func poolQueue(_ pool: String) -> String { "fem.pool.\(pool)" }
    public static func poolKey(_ pool: String) -> String { "pool.\(pool)" }
    public static func deadPoolQueue(_ pool: String) -> String { "fem.pool.\(pool).dead" }
    public static func deadPoolKey(_ pool: String) -> String { "pool.\(pool).dead" }
    public static let broadcastKey = "all"
}
