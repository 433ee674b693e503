import FEMCore
import FEMSystem
import FEMTransport
import Foundation
import Logging
import Synchronization

/// Disk pressure as a node state: free space on the work dir's and the log's filesystems (statvfs), against
/// `node.min_free_mb`. Under pressure the node takes no new tasks (the receiver returns deliveries to the broker),
/// says so in its heartbeat and in a notice, and resumes by itself when space returns.
final class DiskWatch: Sendable {
    let places: [Place]
    let minFreeBytes: UInt64
    struct Place: Sendable { let what: String; let path: String }
    private struct State {
        var current: String?
        /// The last time pressure was measured, and why.
        var lastSeen: (Date, String)?
    }
    private let state = Mutex(State())

    init(workDir: String, logFile: String, minFreeMB: Int) {
        var places = [Place(what: "the work dir", path: workDir)]
        let logDir = (logFile as NSString).deletingLastPathComponent
        if !logDir.isEmpty { places.append(Place(what: "the log's folder", path: logDir)) }
        self.places = places
        minFreeBytes = UInt64(max(0, minFreeMB)) * 1_048_576
    }

    /// Why the node is under pressure now, or nil.
    var pressure: String? { state.withLock { $0.current } }

    /// Was the disk under pressure at any time since `date` (measured now, or seen since)? The reason, or nil.
    func pressure(since date: Date) -> String? {
        if let now = measure() { return now }
        return state.withLock { s in s.lastSeen.flatMap { $0.0 >= date ? $0.1 : nil } }
    }

    /// Measures again; returns the new pressure when it changed (`.some(nil)`: it ended).
    func check() -> String?? {
        guard minFreeBytes > 0 else { return nil }
        let now = measure()
        return state.withLock { s in
            if (now == nil) == (s.current == nil) {
                s.current = now
                return nil
            }
            s.current = now
            return .some(now)
        }
    }

    /// Free space now, against the limit: why there is pressure, or nil.
    private func measure() -> String? {
        guard minFreeBytes > 0 else { return nil }
        var reasons: [String] = []
        for place in places {
            let (what, path) = (place.what, place.path)
            guard let free = freeDiskBytes(at: path) else { continue }
            if free < minFreeBytes {
                reasons.append("\(what) \(path) has \(free / 1_048_576) MB free, below node.min_free_mb "
                               + "\(minFreeBytes / 1_048_576)")
            }
        }
        guard !reasons.isEmpty else { return nil }
        let why = "disk: " + reasons.joined(separator: "; ")
        state.withLock { $0.lastSeen = (Date(), why) }
        return why
    }
}

/// Node notices, sent directly (not through the journal's outbox, which may be what fails).
struct NodeNotices: Sendable {
    let nodeID: String
    let publisher: AMQPEventPublisher

    func send(_ reason: String, _ message: String, _ data: [String: JSONValue] = [:]) {
        let notice = NodeNotice(nodeID: nodeID, reason: reason, message: message, data: data.isEmpty ? nil : data)
        guard let body = try? JSONEncoder.fem.encode(notice) else { return }
        publisher.publishDirect(routingKey: notice.routingKey, body: body)
    }
}

/// Whether the node takes new tasks: not while it drains for a stop, nor under disk pressure.
final class Admission: Sendable {
    private let drainingSince = Mutex<Date?>(nil)
    let disk: DiskWatch

    init(disk: DiskWatch) { self.disk = disk }

    var draining: Bool { drainingSince.withLock { $0 != nil } }

    /// True the first time.
    func startDraining() -> Bool {
        drainingSince.withLock { since in
            if since != nil { return false }
            since = Date()
            return true
        }
    }

    /// Nil while the node takes tasks.
    var refusal: String? {
        if draining { return "the node is draining for a stop" }
        return disk.pressure
    }
}
