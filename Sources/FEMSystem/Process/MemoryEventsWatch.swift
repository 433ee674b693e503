import Foundation

/// Watches the cgroup v2 `memory.events` of a process's cgroup while it runs: how often its usage hit the memory
/// limit (`max`) and how many processes the OOM killer ended (`oom_kill`). dockerd 20.10 can miss an OOM kill
/// (its flag and event lose a race with the exit); the counters, read while the cgroup still exists, do not.
public final class MemoryEventsWatch: @unchecked Sendable {
    public struct Counts: Sendable, Equatable {
        public var limitHits = 0
        public var oomKills = 0
    }

    private let path: String
    private let lock = NSLock()
    private var counts = Counts()
    private var stopped = false
    private var thread: Thread?

    /// Nil when the process has no cgroup v2 `memory.events` (not running any more, or cgroup v1).
    public init?(pid: Int32, interval: TimeInterval = 0.05) {
        guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
        path = "/sys/fs/cgroup\(line.dropFirst(3))/memory.events"
        guard FileManager.default.isReadableFile(atPath: path) else { return nil }
        read()
        let t = Thread { [weak self] in
            while let self, !self.isStopped {
                self.read()
                Thread.sleep(forTimeInterval: interval)
            }
        }
        t.name = "fem-memory-events"
        thread = t
        t.start()
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func read() {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        var now = Counts()
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let n = Int(parts[1]) else { continue }
            if parts[0] == "max" { now.limitHits = n }
            if parts[0] == "oom_kill" { now.oomKills = n }
        }
        lock.withLock {
            counts.limitHits = max(counts.limitHits, now.limitHits)
            counts.oomKills = max(counts.oomKills, now.oomKills)
        }
    }

    /// Stops watching (a last read first) and returns the highest counts seen.
    public func stop() -> Counts {
        read()
        return lock.withLock {
            stopped = true
            return counts
        }
    }
}
