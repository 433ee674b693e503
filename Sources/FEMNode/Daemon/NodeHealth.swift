import FEMCore
import FEMSystem
import FEMTransport
import Foundation
import Logging

/// Disk pressure as a node state: free space on the work dir's and the log's filesystems (statvfs), against
/// `node.min_free_mb`. Under pressure the node takes no new tasks (the receiver returns deliveries to the broker),
/// says so in its heartbeat and in a notice, and resumes by itself when space returns.
final class DiskWatch: @unchecked Sendable {
    let places: [(what: String, path: String)]
    let minFreeBytes: UInt64
    private let lock = NSLock()
    private var current: String?
    /// The last time pressure was measured, and why.
    private var lastSeen: (Date, String)?

    init(workDir: String, logFile: String, minFreeMB: Int) {
        var places = [("the work dir", workDir)]
        let logDir = (logFile as NSString).deletingLastPathComponent
        if !logDir.isEmpty { places.append(("the log's folder", logDir)) }
        self.places = places
        minFreeBytes = UInt64(max(0, minFreeMB)) * 1_048_576
    }

    /// Why the node is under pressure now, or nil.
    var pressure: String? { lock.withLock { current } }

    /// Was the disk under pressure at any time since `date` (measured now, or seen since)? The reason, or nil.
    func pressure(since date: Date) -> String? {
        if let now = measure() { return now }
        return lock.withLock { lastSeen.flatMap { $0.0 >= date ? $0.1 : nil } }
    }

    /// Measures again; returns the new pressure when it changed (`.some(nil)`: it ended).
    func check() -> String?? {
        guard minFreeBytes > 0 else { return nil }
        let now = measure()
        return lock.withLock {
            if (now == nil) == (current == nil) {
                current = now
                return nil
            }
            current = now
            return .some(now)
        }
    }

    /// Free space now, against the limit: why there is pressure, or nil.
    private func measure() -> String? {
        guard minFreeBytes > 0 else { return nil }
        var reasons: [String] = []
        for (what, path) in places {
            guard let free = freeDiskBytes(at: path) else { continue }
            if free < minFreeBytes {
                reasons.append("\(what) \(path) has \(free / 1_048_576) MB free, below node.min_free_mb "
                               + "\(minFreeBytes / 1_048_576)")
            }
        }
        guard !reasons.isEmpty else { return nil }
        let why = "disk: " + reasons.joined(separator: "; ")
        lock.withLock { lastSeen = (Date(), why) }
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
final class Admission: @unchecked Sendable {
    private let lock = NSLock()
    private var drainingSince: Date?
    let disk: DiskWatch

    init(disk: DiskWatch) { self.disk = disk }

    var draining: Bool { lock.withLock { drainingSince != nil } }

    /// True the first time.
    func startDraining() -> Bool {
        lock.withLock {
            if drainingSince != nil { return false }
            drainingSince = Date()
            return true
        }
    }

    /// Nil while the node takes tasks.
    var refusal: String? {
        if draining { return "the node is draining for a stop" }
        return disk.pressure
    }
}
